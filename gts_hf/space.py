"""A Gradio Space that demos a trained model: ``gts-hf space --model USER/NAME --output-dir DIR [--push]``.

>>> from gts_hf.space import push_space, write_space
>>> folder = write_space("me/sentiment-gts", "sentiment-space")   # app.py, README.md, requirements.txt
>>> push_space(folder, "me/sentiment-gts")                         # a Gradio Space repo, in one commit

The files come from the templates ``gts_hf/hub_cards/space_*``. The app loads ``pipeline("gts-few-shot", model=...)``
(or, where gts-hf is not installed, the model repo's remote-code pipeline), shows every label's probability as a
``gr.Label`` chart, offers the model card's widget texts as examples, has two text boxes for pair tasks, cuts inputs
to ``max_chars`` characters and serves on 127.0.0.1 unless ``GRADIO_SERVER_NAME`` says otherwise. Writing a Space
needs no Gradio; running it does (``pip install "gts-hf[space]"``).
"""

from __future__ import annotations

import json
import os
import pprint
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from string import Template
from typing import Any, Sequence

from huggingface_hub import CommitInfo, HfApi, ModelCard, SpaceCard, SpaceCardData, hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError

from . import __version__
from .configuration import GTSConfig
from .hub_cards import template_text
from .hub import DEFAULT_LICENSE, HUB_URL, hub_model_id, task_summary

APP_FILE, README_FILE, REQUIREMENTS_FILE = "app.py", "README.md", "requirements.txt"
SPACE_FILES = (APP_FILE, README_FILE, REQUIREMENTS_FILE)
APP_TEMPLATE, README_TEMPLATE, REQUIREMENTS_TEMPLATE = "space_app.py", "space_readme.md", "space_requirements.txt"
SETTINGS_LINE = "SETTINGS: dict[str, Any] = {}  # gts-hf space writes the settings here\n"
MAX_INPUT_CHARS = 2000
DEFAULT_GRADIO_VERSION = "6.31.0"  # the README's sdk_version when gradio is not installed where the Space is written
DEFAULT_EMOJI = "🏷️"
DEFAULT_COLORS = ("indigo", "green")
DEFAULT_COMMIT_MESSAGE = "Upload a Gradio demo of a GTS few-shot classifier"
# What the app needs without gts-hf: the model repo's gts_remote.py (see gts_hf.hub.push_model) runs on these.
REMOTE_CODE_REQUIREMENTS = ("transformers>=5,<6", "torch", "numpy", "safetensors", "faiss-cpu")


@dataclass
class ModelSummary:
    """What a Space needs to know about a model: where it is, its labels and task, its licence and example inputs."""

    model: str  # the Hub id, or the local folder's absolute path
    hub_id: str | None
    labels: list[str]
    is_pair: bool
    task_summary: str  # e.g. "sentence-pair similarity classifier over 2 labels" (as on the model card)
    license: str
    examples: list[list[str]]


# --------------------------------------------------------------------------------------------------------- writing
def write_space(
    model: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    title: str | None = None,
    examples: Sequence[str | Sequence[str]] | None = None,
    max_chars: int = MAX_INPUT_CHARS,
    remote_code: bool = False,
    emoji: str = DEFAULT_EMOJI,
    colors: tuple[str, str] = DEFAULT_COLORS,
    revision: str | None = None,
    token: str | None = None,
) -> Path:
    """Write ``app.py``, ``README.md`` (with the Spaces YAML header) and ``requirements.txt`` into ``output_dir``.

    Args:
        model: a gts-hf model's Hub id (``USER/NAME``) or a local model folder (a Space for a local folder runs only
            on this machine: it cannot be pushed).
        title: the Space's title (default: the model's name).
        examples: example inputs (texts, or ``(text, text_pair)`` pairs for pair tasks); default: the widget texts
            of the model's card (``README.md``), if it has any.
        max_chars: longer inputs are cut to this many characters (the model then truncates to its token limit).
        remote_code: require transformers, torch and numpy instead of gts-hf (the app then runs the model repo's
            ``gts_remote.py``, which ``gts_hf.hub.push_model`` uploads).
        emoji, colors: the Space's emoji and its thumbnail's ``colorFrom``/``colorTo``.
        revision, token: where to read the model's config and card on the Hub.
    """
    summary = describe_model(model, revision=revision, token=token)
    if examples is not None:
        summary.examples = _as_example_rows(examples, summary.is_pair)
    title = title or Path(summary.hub_id or summary.model).name
    description = _description(summary)
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"model": summary.model, "title": title, "description": description, "pair": summary.is_pair,
                "examples": summary.examples, "max_chars": max_chars}
    (folder / APP_FILE).write_text(render_app(settings), encoding="utf-8")
    card = _space_card(summary, title, description, max_chars, emoji, colors)
    card.save(folder / README_FILE)
    (folder / REQUIREMENTS_FILE).write_text(_requirements(remote_code), encoding="utf-8")
    return folder


def describe_model(model: str | os.PathLike, revision: str | None = None, token: str | None = None) -> ModelSummary:
    """Read a gts-hf model's ``config.json`` and card (a local folder or a Hub repo)."""
    model = str(model)
    local = Path(model).expanduser().is_dir()
    config_text = _read_model_file(model, "config.json", revision, token)
    config_dict = json.loads(config_text) if config_text else {}
    if config_dict.get("model_type") != GTSConfig.model_type:
        raise ValueError(f"{model} is not a gts-hf model (no config.json with model_type '{GTSConfig.model_type}')")
    config = GTSConfig.from_dict(config_dict)
    card_text = _read_model_file(model, "README.md", revision, token)
    card_data = ModelCard(card_text).data if card_text else None
    return ModelSummary(
        model=str(Path(model).expanduser().resolve()) if local else model,
        hub_id=None if local else hub_model_id(model),
        labels=list(config.labels), is_pair=config.is_pair_task, task_summary=task_summary(config),
        license=getattr(card_data, "license", None) or DEFAULT_LICENSE,
        examples=_widget_examples(getattr(card_data, "widget", None), config.is_pair_task),
    )


def render_app(settings: dict[str, Any]) -> str:
    """``app.py``: the template with its ``SETTINGS`` line replaced by ``settings`` (a Python literal)."""
    template = template_text(APP_TEMPLATE)
    if template.count(SETTINGS_LINE) != 1:
        raise RuntimeError(f"the template {APP_TEMPLATE} lost its settings line {SETTINGS_LINE!r}")
    literal = pprint.pformat(settings, width=100, sort_dicts=False)
    return template.replace(SETTINGS_LINE, f"SETTINGS: dict[str, Any] = {literal}\n")


def _read_model_file(model: str, filename: str, revision: str | None, token: str | None) -> str | None:
    """A text file of a local model folder or a Hub model repo; ``None`` when there is no such file."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        path = folder / filename
        return path.read_text(encoding="utf-8") if path.is_file() else None
    try:
        return Path(hf_hub_download(model, filename, revision=revision, token=token)).read_text(encoding="utf-8")
    except RemoteEntryNotFoundError:
        return None


def _widget_examples(widget: Any, is_pair: bool) -> list[list[str]]:
    """Example rows from a card's ``widget`` entries (``text``, and ``text_pair`` for pair tasks)."""
    rows = []
    for item in widget or []:
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            row = [item["text"], item.get("text_pair")] if is_pair else [item["text"]]
            if all(isinstance(part, str) and part.strip() for part in row):
                rows.append(row)
    return rows


def _as_example_rows(examples: Sequence[str | Sequence[str]], is_pair: bool) -> list[list[str]]:
    rows = [[example] if isinstance(example, str) else list(example) for example in examples]
    width = 2 if is_pair else 1
    for row in rows:
        if len(row) != width or not all(isinstance(part, str) for part in row):
            raise ValueError(f"each example must be {'a (text, text_pair) pair' if is_pair else 'one text'}; "
                             f"got {row!r}")
    return rows


def _description(summary: ModelSummary) -> str:
    labels = ", ".join(f"`{label}`" for label in summary.labels)
    source = f"[{summary.hub_id}]({HUB_URL}/{summary.hub_id})" if summary.hub_id else "a local model"
    return f"A few-shot {summary.task_summary}, trained with gts-hf ({source}). Labels: {labels}."


def _space_card(summary: ModelSummary, title: str, description: str, max_chars: int, emoji: str,
                colors: tuple[str, str]) -> SpaceCard:
    data = SpaceCardData(title=title, sdk="gradio", sdk_version=gradio_version(), app_file=APP_FILE,
                         license=summary.license, models=[summary.hub_id] if summary.hub_id else None,
                         tags=["gts-hf", "few-shot", "text-classification"], emoji=emoji, colorFrom=colors[0],
                         colorTo=colors[1], pinned=False)
    return SpaceCard.from_template(data, template_str=template_text(README_TEMPLATE), title=title,
                                   description=description, pair=summary.is_pair, max_chars=max_chars)


def _requirements(remote_code: bool) -> str:
    model_requirements = REMOTE_CODE_REQUIREMENTS if remote_code else (f"gts-hf=={__version__}",)
    return Template(template_text(REQUIREMENTS_TEMPLATE)).substitute(
        gradio_version=gradio_version(), model_requirements="\n".join(model_requirements))


def gradio_version() -> str:
    """The installed gradio's version (the Space runs what was tried here), else :data:`DEFAULT_GRADIO_VERSION`."""
    try:
        return metadata.version("gradio")
    except metadata.PackageNotFoundError:
        return DEFAULT_GRADIO_VERSION


# --------------------------------------------------------------------------------------------------------- pushing
def push_space(
    folder: str | os.PathLike,
    space_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> CommitInfo:
    """Upload a Space written by :func:`write_space` (its three files only) to the Gradio Space repo ``space_id``,
    created when missing (``private`` applies only then)."""
    folder = Path(folder)
    card = SpaceCard.load(folder / README_FILE)
    if not card.data.models:
        raise ValueError(f"the Space in {folder} demos a local model folder: write it for a Hub model id to push it")
    api = HfApi(token=token)
    space_id = api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private,
                               exist_ok=True).repo_id
    return api.upload_folder(repo_id=space_id, repo_type="space", folder_path=folder,
                             allow_patterns=list(SPACE_FILES),
                             commit_message=commit_message or DEFAULT_COMMIT_MESSAGE)
