"""Pytest plugin: one loopback Hub (`tests.hub_server.LoopbackHub`) for the whole test session.

`huggingface_hub` reads `HF_ENDPOINT`, `HF_HOME`, ... when it is *imported* and module-level helpers keep
those values, so the environment must point at the loopback Hub before anything imports `huggingface_hub`
(or a package that imports it).  Importing this module therefore starts the server and configures the
environment right away.  Wire it into `tests/conftest.py` with these lines at the very top, before any
other import that could pull in `huggingface_hub`::

    from tests.conftest_hub import install_loopback_hub

    install_loopback_hub()
    pytest_plugins = ["tests.conftest_hub"]

(or run pytest with `-p tests.conftest_hub`).  The environment it sets:

- `HF_ENDPOINT=http://127.0.0.1:<port>`, `HF_TOKEN=<token the server accepts>`, `HF_HOME=<session tmp dir>`
- `HF_HUB_DISABLE_TELEMETRY=1`, `HF_HUB_DISABLE_PROGRESS_BARS=1`
- `HTTP(S)_PROXY=ALL_PROXY=http://127.0.0.1:9` (a dead proxy) with `NO_PROXY=127.0.0.1,localhost`: any stray
  request to another host fails at once instead of reaching the internet.

Fixtures: `loopback_hub` (session), `hub_api`, `hub_repo_id`, `use_xet` (with the `xet_modes` marker).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.hub_server import LoopbackHub

if TYPE_CHECKING:
    from huggingface_hub import HfApi

DEAD_PROXY = "http://127.0.0.1:9"
NO_PROXY = "127.0.0.1,localhost"
# Variables that would make huggingface_hub talk to another Hub, use another token or go offline.
_CLEARED_VARS = ("HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_XET_CACHE", "HF_TOKEN_PATH")

_HUB: LoopbackHub | None = None

# Parametrize a test over both upload/download protocols: `@xet_modes` then take the `use_xet` fixture.
xet_modes = pytest.mark.parametrize("use_xet", [True, False], ids=["xet", "lfs"], indirect=True)


def hub_environment(hub: LoopbackHub, hf_home: Path) -> dict[str, str]:
    """The environment variables that point huggingface_hub at `hub` and block any other network traffic."""
    proxies = {name: DEAD_PROXY for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    return {
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": hub.token,
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        **proxies,
        **{name.lower(): value for name, value in proxies.items()},
        "NO_PROXY": NO_PROXY,
        "no_proxy": NO_PROXY,
    }


def configure_hub_env(hub: LoopbackHub, hf_home: Path) -> None:
    """Point the process environment at `hub`; fails if huggingface_hub was already imported elsewhere."""
    os.environ.update(hub_environment(hub, hf_home))
    for name in _CLEARED_VARS:
        os.environ.pop(name, None)
    _check_huggingface_hub_endpoint(hub)


def _check_huggingface_hub_endpoint(hub: LoopbackHub) -> None:
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and getattr(constants, "ENDPOINT", None) != hub.endpoint:
        raise RuntimeError(
            "huggingface_hub was imported before the loopback Hub was installed, so it kept the endpoint"
            f" {constants.ENDPOINT!r}. Call tests.conftest_hub.install_loopback_hub() (or import"
            " tests.conftest_hub) at the very top of tests/conftest.py, before importing huggingface_hub."
        )


def install_loopback_hub() -> LoopbackHub:
    """Start the session's loopback Hub and configure the environment for it (idempotent)."""
    global _HUB
    if _HUB is None:
        session_dir = Path(tempfile.mkdtemp(prefix="loopback-hub-session-"))
        hub = LoopbackHub(session_dir / "server").start()
        atexit.register(_shutdown, hub, session_dir)
        configure_hub_env(hub, session_dir / "hf_home")
        _HUB = hub
    return _HUB


def _shutdown(hub: LoopbackHub, session_dir: Path) -> None:
    hub.stop()
    shutil.rmtree(session_dir, ignore_errors=True)


install_loopback_hub()


def pytest_configure(config: pytest.Config) -> None:
    """Silence the DeprecationWarning httpx2 raises on every LFS PUT of huggingface_hub (`data=<file>`)."""
    config.addinivalue_line("filterwarnings", "ignore:Use 'content=<...>' to upload raw:DeprecationWarning")


@pytest.fixture(scope="session")
def loopback_hub() -> LoopbackHub:
    """The running loopback Hub (the environment already points huggingface_hub at it)."""
    return install_loopback_hub()


@pytest.fixture
def hub_api(loopback_hub: LoopbackHub) -> "HfApi":
    """An `HfApi` client bound to the loopback Hub with its token."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=loopback_hub.endpoint, token=loopback_hub.token)


@pytest.fixture
def hub_repo_id(loopback_hub: LoopbackHub, request: pytest.FixtureRequest) -> str:
    """A fresh `user/name` repo id (not created), unique per test."""
    name = re.sub(r"[^\w.-]+", "-", request.node.name).strip("-.")[:60]
    return f"{loopback_hub.user}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def use_xet(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """Select the Xet (True, default) or plain LFS (False) protocol for this test's uploads and downloads.

    Parametrize with `@xet_modes` or `@pytest.mark.parametrize("use_xet", [...], indirect=True)`.
    Sets `huggingface_hub.constants.HF_HUB_DISABLE_XET`, which the client reads at call time.
    """
    from huggingface_hub import constants

    enabled = bool(getattr(request, "param", True))
    if enabled and importlib.util.find_spec("hf_xet") is None:
        pytest.skip("hf_xet is not installed")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", not enabled)
    yield enabled
