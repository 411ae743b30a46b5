"""The Gradio Space of a model (issue #5): the files `gts-hf space` writes, their push, and the app in a browser.

The browser test starts the generated app on 127.0.0.1 and drives it with headless Chromium (Debian's `chromium` and
`chromium-driver`, through selenium); it is skipped when gradio, selenium or Chromium is missing. The other tests need
none of them.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import HfApi, SpaceCard

from gts_hf import GTSEngine, __version__, load_task
from gts_hf.cli import main
from gts_hf.hub import push_model
from gts_hf.space import SPACE_FILES, gradio_version, push_space, write_space
from tests.conftest import NEGATIVE, POSITIVE

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
MISSING = [name for name, found in (("gradio", importlib.util.find_spec("gradio")),
                                    ("selenium", importlib.util.find_spec("selenium")),
                                    ("chromium", CHROMIUM), ("chromium-driver", CHROMEDRIVER)) if not found]
needs_browser = pytest.mark.skipif(
    bool(MISSING), reason=f"the Space's browser test needs {', '.join(MISSING)} (pip install gradio selenium; "
                          "apt-get install chromium chromium-driver)")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--disable-dev-shm-usage", "--window-size=1280,800",
                  # nothing but the app on 127.0.0.1: other hosts do not resolve, and go to a dead proxy anyway
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--proxy-server=http://127.0.0.1:9")
APP_START_TIMEOUT = 180
BROWSER_TIMEOUT = 60


@pytest.fixture()
def model_dir(tiny_student: Path, sentiment_dir: Path, tmp_path: Path) -> Path:
    return GTSEngine(mode="fast", student=str(tiny_student), head_steps=20, use_knn=True).train(
        load_task(sentiment_dir), tmp_path / "m").output_dir


@pytest.fixture()
def hub_model(hub_repo_id: str, model_dir: Path, sentiment_dir: Path) -> str:
    """The model on the loopback Hub, with a card whose widget quotes training texts."""
    push_model(model_dir, hub_repo_id, data_dir=sentiment_dir)
    return hub_repo_id


def app_settings(app_file: Path) -> dict[str, Any]:
    """The ``SETTINGS`` literal of a generated ``app.py`` (which must compile)."""
    tree = ast.parse(compile(app_file.read_text(encoding="utf-8"), str(app_file), "exec", ast.PyCF_ONLY_AST))
    node = next(node for node in tree.body if isinstance(node, ast.AnnAssign) and node.target.id == "SETTINGS")
    return ast.literal_eval(node.value)


# ---------------------------------------------------------------------------------------------------- the files
def test_space_files_for_a_hub_model(loopback_hub, hub_model, tmp_path):
    folder = write_space(hub_model, tmp_path / "space")
    assert sorted(path.name for path in folder.iterdir()) == sorted(SPACE_FILES)

    card = SpaceCard.load(folder / "README.md")
    name = hub_model.split("/")[1]
    assert card.data.to_dict() == {
        "title": name, "sdk": "gradio", "sdk_version": gradio_version(), "app_file": "app.py",
        "license": "apache-2.0", "models": [hub_model], "tags": ["gts-hf", "few-shot", "text-classification"],
        "emoji": "🏷️", "colorFrom": "indigo", "colorTo": "green", "pinned": False}
    assert f"{loopback_hub.endpoint}" not in card.text and f"https://huggingface.co/{hub_model}" in card.text

    requirements = (folder / "requirements.txt").read_text().splitlines()
    assert f"gradio=={gradio_version()}" in requirements and f"gts-hf=={__version__}" in requirements

    settings = app_settings(folder / "app.py")
    widget = SpaceCard(loopback_hub.file_bytes(hub_model, "README.md").decode()).data.widget
    assert settings == {"model": hub_model, "title": name, "description": settings["description"], "pair": False,
                        "examples": [[item["text"]] for item in widget], "max_chars": 2000}
    assert {example[0] for example in settings["examples"]} <= set(POSITIVE[:5] + NEGATIVE[:5])
    app = (folder / "app.py").read_text()
    assert 'pipeline("gts-few-shot", model=model_id)' in app and "gr.Label(" in app and "127.0.0.1" in app


def test_space_for_a_local_pair_model(tiny_student, pair_dir, tmp_path):
    model = GTSEngine(mode="fast", student=str(tiny_student), head_steps=20).train(
        load_task(pair_dir), tmp_path / "pair-model").output_dir
    folder = write_space(model, tmp_path / "space", title="Pairs", max_chars=300, remote_code=True,
                         examples=[("今天天气怎么样", "今天天气如何")])
    settings = app_settings(folder / "app.py")
    assert (settings["model"], settings["pair"], settings["examples"], settings["max_chars"]) == \
        (str(model.resolve()), True, [["今天天气怎么样", "今天天气如何"]], 300)
    card = SpaceCard.load(folder / "README.md")
    assert card.data.title == "Pairs" and card.data.models is None  # a local model: nothing to link on the Hub
    requirements = (folder / "requirements.txt").read_text().splitlines()
    assert not any(line.startswith("gts-hf") for line in requirements)
    assert {"transformers>=5,<6", "faiss-cpu"} <= set(requirements)
    with pytest.raises(ValueError, match="demos a local model folder"):
        push_space(folder, "someone/pairs")
    with pytest.raises(ValueError, match=r"a \(text, text_pair\) pair"):
        write_space(model, tmp_path / "other", examples=["one text only"])


def test_cli_space_push(loopback_hub, hub_model, tmp_path, capsys):
    space_id = f"{hub_model}-demo"
    code = main(["space", "--model", hub_model, "--output-dir", str(tmp_path / "space"), "--push",
                 "--space-id", space_id])
    assert code == 0 and space_id in capsys.readouterr().out
    assert loopback_hub.list_files(space_id, repo_type="space") == [".gitattributes", *sorted(SPACE_FILES)]
    assert HfApi().space_info(space_id).sdk == "gradio"
    assert all(loopback_hub.file_bytes(space_id, name, repo_type="space") == (tmp_path / "space" / name).read_bytes()
               for name in SPACE_FILES)


def test_cli_space_errors(model_dir, tmp_path, capsys):
    assert main(["space", "--model", str(model_dir), "--output-dir", str(tmp_path / "space"), "--push"]) == 2
    assert "demos a local model folder" in capsys.readouterr().err
    assert main(["space", "--model", str(tmp_path), "--output-dir", str(tmp_path / "other")]) == 2
    assert "is not a gts-hf model" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- the browser
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_app(url: str, process: subprocess.Popen, log: Path) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + APP_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the Space app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"the Space app did not answer on {url} within {APP_START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


def _start_app(folder: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    log = (folder / "app.log").open("w")
    return subprocess.Popen([sys.executable, "app.py"], cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT)


def _chromium(profile: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


@needs_browser
def test_space_app_in_a_browser(hub_model, model_dir, tmp_path, monkeypatch, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    from gts_hf import load_trained, predict
    from gts_hf.data import Example

    folder = write_space(hub_model, tmp_path / "space")
    port = _free_port()
    app = _start_app(folder, port)
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium: never look for drivers online
    screenshot = tmp_path / "space.png"
    text = POSITIVE[6]
    try:
        _wait_for_app(f"http://127.0.0.1:{port}/", app, folder / "app.log")
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
            browser = _chromium(profile)
            try:
                browser.get(f"http://127.0.0.1:{port}/")
                wait = WebDriverWait(browser, BROWSER_TIMEOUT)
                box = wait.until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "textarea")))
                box.send_keys(text)
                next(button for button in browser.find_elements(By.TAG_NAME, "button")
                     if button.text.strip() == "Submit").click()
                predicted = wait.until(lambda page: page.find_element(
                    By.CSS_SELECTOR, "[data-testid='label-output-value']").text.strip())
                page_text = browser.find_element(By.TAG_NAME, "body").text
                browser.save_screenshot(str(screenshot))
            finally:
                browser.quit()
    finally:
        app.terminate()
        try:
            app.wait(timeout=30)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait()
    with capsys.disabled():
        print(f"\nSpace screenshot: {screenshot}")

    model, tokenizer = load_trained(model_dir)
    expected = model.config.labels[predict(model, tokenizer, [Example(text=text)]).label_ids[0]]
    assert predicted == expected
    assert all(label in page_text for label in model.config.labels)  # the chart lists every label
    assert "Examples" in page_text and any(example in page_text for example in POSITIVE[:5] + NEGATIVE[:5])
    assert screenshot.stat().st_size > 10_000
