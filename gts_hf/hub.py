"""Sharing GTS students on the Hugging Face Hub: push a trained model folder with a generated model card, and fetch
the kNN datastore that :meth:`GTSForFewShotClassification.from_pretrained` loads beside the weights.

>>> from gts_hf.hub import push_model
>>> push_model("my_model", "me/sentiment-gts", data_dir="data/my_task")     # one commit, README.md included
>>> from transformers import pipeline
>>> pipeline("gts-few-shot", model="me/sentiment-gts")                       # weights, tokenizer and kNN files

Everything gts-hf loads from a model repo is data: safetensors, JSON and a faiss index. Loading with gts-hf installed
runs no code from the repo (no ``trust_remote_code``); a kNN datastore that does not fit its model is refused with a
``ValueError``. For users without gts-hf, a push also uploads ``gts_remote.py`` (the template
``gts_hf/hub_cards/gts_remote.py``, which needs only transformers, torch and numpy) and points the pushed
``config.json`` at it, so that ``pipeline("text-classification", model="me/sentiment-gts", trust_remote_code=True)``
works too; ``include_code=False`` leaves it out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from huggingface_hub import (
    _CACHED_NO_EXIST,
    CommitInfo,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    hf_hub_download,
    try_to_load_from_cache,
)
from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

from .configuration import GTSConfig
from .data import Example, as_examples, load_task
from .engine import EVAL_FILE, RECORD_FILE
from .hub_cards import template_bytes, template_text
from .retrieval import CONFIG_FILE, KNN_DIRNAME, KNN_FILES

LIBRARY_NAME = "gts-hf"
PIPELINE_TAG = "text-classification"
DEFAULT_LICENSE = "apache-2.0"
DEFAULT_COMMIT_MESSAGE = "Upload GTS few-shot classifier"
CARD_TEMPLATE = "model_card.md"
CARD_FILE = "README.md"
KNN_CONFIG = f"{KNN_DIRNAME}/{CONFIG_FILE}"
EXAMPLES_PER_LABEL = 3  # training texts per label shown in the card
WIDGET_PER_LABEL = 1  # of which this many become widget examples
# A push mirrors the model folder: remote files the new folder lacks (a stale knn/ above all) are deleted in the
# same commit. `.gitattributes` is never deleted by huggingface_hub.
MIRROR_PATTERNS = ["*"]
HUB_URL = "https://huggingface.co"
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
REMOTE_CODE_FILE = "gts_remote.py"  # uploaded as is from gts_hf/hub_cards for trust_remote_code users
# The pipeline task the remote module serves: the Hub's own snippet for a text-classification model then works with
# trust_remote_code. (Not "gts-few-shot": transformers would then demand trust_remote_code from gts-hf users too.)
REMOTE_PIPELINE_TASK = PIPELINE_TAG


# ------------------------------------------------------------------------------------------------------------ load
def download_knn_files(repo_id: str, revision: str | None = None, **download_kwargs: Any) -> Path | None:
    """Download the kNN datastore files of a Hub model (:data:`gts_hf.retrieval.KNN_FILES`) into the local cache.

    Returns the local ``knn`` folder, or ``None`` when the repo has no ``knn/config.json`` (a model saved without a
    datastore). Any other problem (unknown repo or revision, no access, a repo that has the config but lacks the
    index, no network) is raised. ``download_kwargs`` (``token``, ``cache_dir``, ``local_files_only``, ...) go to
    :func:`huggingface_hub.hf_hub_download`. Offline (``HF_HUB_OFFLINE=1``) a cached datastore, or a cached "this
    repo has none", is used.
    """
    try:
        config_path = Path(hf_hub_download(repo_id, KNN_CONFIG, revision=revision, **download_kwargs))
    except RemoteEntryNotFoundError:
        return None
    except LocalEntryNotFoundError:  # offline: fine if an earlier download learned the repo has no datastore
        if _cached_as_absent(repo_id, KNN_CONFIG, revision, download_kwargs.get("cache_dir")):
            return None
        raise
    knn_dir = config_path.parent
    pinned = _snapshot_commit(knn_dir) or revision  # the other files from the very commit the config came from
    for filename in KNN_FILES:
        if filename != KNN_CONFIG:
            hf_hub_download(repo_id, filename, revision=pinned, **download_kwargs)
    return knn_dir


def _cached_as_absent(repo_id: str, filename: str, revision: str | None, cache_dir: str | os.PathLike | None) -> bool:
    """Whether the local cache records that ``filename`` does not exist at ``revision``."""
    return try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision) is _CACHED_NO_EXIST


def _snapshot_commit(knn_dir: Path) -> str | None:
    """The commit sha of a cache snapshot folder ``.../snapshots/<sha>/knn`` (``None`` outside the cache layout)."""
    snapshot = knn_dir.parent
    if snapshot.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", snapshot.name):
        return snapshot.name
    return None


# ------------------------------------------------------------------------------------------------------------ push
def push_model(
    model_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    *,
    examples: Any = None,
    data_dir: str | os.PathLike | None = None,
    license: str = DEFAULT_LICENSE,
    datasets: str | Sequence[str] | None = None,
    include_code: bool = True,
) -> CommitInfo:
    """Upload a saved model folder (``GTSEngine.train(output_dir=...)`` or ``model.save_pretrained``) with a generated
    model card, in one commit.

    Args:
        model_dir: the model folder (config.json, weights, tokenizer, ``knn/``, training record, test results).
        repo_id: ``user/name`` or ``org/name``; the repo is created when missing (``private`` applies only then).
        revision: the branch to commit to (created from the default branch when missing); default: ``main``.
        commit_message: the commit's summary (default :data:`DEFAULT_COMMIT_MESSAGE`).
        token: a Hub token (default: the logged-in user's or ``HF_TOKEN``).
        examples, data_dir: labelled training texts for the card's examples and widget (see
            :func:`render_model_card`).
        license, datasets: the card's licence and dataset ids.
        include_code: also upload ``gts_remote.py`` and add ``auto_map``/``custom_pipelines`` to the pushed
            ``config.json`` (never to the local one), for ``trust_remote_code=True`` users without gts-hf.

    The branch ends up mirroring the folder: files it held that the folder lacks are deleted in the same commit. Files
    already on the Hub with the same content are not uploaded again; when nothing changed, no commit is made and the
    returned :class:`~huggingface_hub.CommitInfo` names the current head.
    """
    model_dir = _check_model_dir(model_dir)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr/"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    card = render_model_card(model_dir, repo_id, examples=examples, data_dir=data_dir, license=license,
                             datasets=datasets, include_code=include_code)
    with _staged_folder(model_dir, card, include_code) as folder:
        return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                 commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
                                 delete_patterns=MIRROR_PATTERNS)


def _check_model_dir(model_dir: str | os.PathLike) -> Path:
    model_dir = Path(model_dir)
    config = model_dir / "config.json"
    if not config.is_file() or _read_json(config).get("model_type") != GTSConfig.model_type:
        raise ValueError(f"{model_dir} is not a saved gts-hf model (no config.json with model_type "
                         f"'{GTSConfig.model_type}')")
    return model_dir


@contextmanager
def _staged_folder(model_dir: Path, card: ModelCard, include_code: bool = False) -> Iterator[Path]:
    """A temporary folder holding the model's files (hard links where possible, else copies) plus the card (and the
    remote-code module), so that one ``upload_folder`` commits them all without writing into the user's folder."""
    with tempfile.TemporaryDirectory(prefix="gts-hf-push-") as staging:
        staging_dir = Path(staging)
        for source in _model_files(model_dir):
            _link_or_copy(source, staging_dir / source.relative_to(model_dir))
        card.save(staging_dir / CARD_FILE)
        if include_code:
            _add_remote_code(staging_dir)
        yield staging_dir


def _add_remote_code(folder: Path) -> None:
    """Add ``gts_remote.py`` and point the staged ``config.json`` at it (written as new files: the staged ones may be
    hard links to the user's)."""
    config = remote_code_config(_read_json(folder / "config.json"))
    _write_new_file(folder / "config.json", (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    _write_new_file(folder / REMOTE_CODE_FILE, remote_code_module())


def remote_code_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A saved model's ``config.json`` contents with the ``auto_map`` and ``custom_pipelines`` entries that make
    transformers load :data:`REMOTE_CODE_FILE` when asked to ``trust_remote_code``."""
    module = Path(REMOTE_CODE_FILE).stem
    model_class = f"{module}.GTSForFewShotClassification"
    return {
        **config,
        "auto_map": {"AutoConfig": f"{module}.GTSConfig", "AutoModel": model_class,
                     "AutoModelForSequenceClassification": model_class},
        "custom_pipelines": {REMOTE_PIPELINE_TASK: {"impl": f"{module}.GTSFewShotPipeline", "pt": ["AutoModel"],
                                                    "type": "text"}},
    }


def remote_code_module() -> bytes:
    """The source of the self-contained module uploaded as :data:`REMOTE_CODE_FILE`."""
    return template_bytes(REMOTE_CODE_FILE)


def _write_new_file(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)  # never write through a hard link into the model folder
    path.write_bytes(data)


def _model_files(model_dir: Path) -> list[Path]:
    """The files to upload: everything but hidden files/folders and an existing README.md (the card replaces it)."""
    return sorted(path for path in model_dir.rglob("*") if path.is_file()
                  and not any(part.startswith(".") for part in path.relative_to(model_dir).parts)
                  and path.relative_to(model_dir).as_posix() != CARD_FILE)


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


# ------------------------------------------------------------------------------------------------------ model card
def render_model_card(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    examples: Any = None,
    data_dir: str | os.PathLike | None = None,
    license: str = DEFAULT_LICENSE,
    datasets: str | Sequence[str] | None = None,
    per_label: int = EXAMPLES_PER_LABEL,
    include_code: bool = False,
) -> ModelCard:
    """The model card (``README.md``) of a saved model folder, from the template ``gts_hf/hub_cards/model_card.md``.

    Metadata: ``library_name: gts-hf``, ``pipeline_tag: text-classification``, ``base_model`` (when the student was a
    Hub id), ``language`` (from the training record), ``license``, ``datasets``, ``tags``, a ``widget`` of real
    training texts (single-text tasks) and a ``model-index`` with the test results of ``eval_results.json``.

    Args:
        examples: labelled examples to quote, up to ``per_label`` per label: anything :func:`gts_hf.data.as_examples`
            reads (a file, a list of :class:`~gts_hf.data.Example` or dicts, a ``datasets.Dataset``).
        data_dir: alternatively, a GTS-Engine data folder whose ``train.json`` is quoted.
        license, datasets: the card's licence (default ``apache-2.0``) and dataset ids.
        include_code: the repo carries the remote-code module: the card also shows how to load it without gts-hf.

    The training record stores no texts, so without ``examples``/``data_dir`` the card has no examples and no widget.
    """
    model_dir = Path(model_dir)
    config = GTSConfig.from_pretrained(model_dir)
    record = _read_json(model_dir / RECORD_FILE)
    test_metrics = _read_json(model_dir / EVAL_FILE)
    knn = _read_json(model_dir / KNN_CONFIG)
    quoted = _examples_per_label(_load_examples(examples, data_dir), config.labels, per_label)
    card_data = _card_data(config, record, test_metrics, repo_id, quoted, license, datasets, has_knn=bool(knn))
    template = template_text(CARD_TEMPLATE)
    return ModelCard.from_template(
        card_data, template_str=template, repo_id=repo_id, model_name=repo_id.split("/")[-1],
        task_summary=task_summary(config), input_example=_input_example(config),
        student=_model_link(record.get("student") or config.base_model),
        labels=[{"name": _cell(label), "option": _cell(option)}
                for label, option in zip(config.labels, config.label_options, strict=True)],
        examples={label: [_quote(example) for example in chosen] for label, chosen in quoted.items()},
        has_knn=bool(knn), remote_code=include_code, remote_task=REMOTE_PIPELINE_TASK,
        training_rows=_training_rows(record, knn), evaluation_rows=_evaluation_rows(test_metrics),
    )


def _card_data(config: GTSConfig, record: dict[str, Any], test_metrics: dict[str, Any], repo_id: str,
               quoted: Mapping[str, list[Example]], license: str,
               datasets: str | Sequence[str] | None, has_knn: bool) -> ModelCardData:
    dataset_ids = [datasets] if isinstance(datasets, str) else list(datasets or [])
    eval_results = _eval_results(test_metrics, dataset_ids[0] if dataset_ids else None)
    return ModelCardData(
        library_name=LIBRARY_NAME, pipeline_tag=PIPELINE_TAG, license=license,
        base_model=hub_model_id(config.base_model), language=record.get("language"),
        datasets=dataset_ids or None, tags=_tags(config, record, has_knn),
        metrics=["accuracy", "f1"] if eval_results else None,
        model_name=repo_id.split("/")[-1], eval_results=eval_results,
        widget=None if config.is_pair_task else _widget(quoted),
    )


def hub_model_id(name: str | None) -> str | None:
    """``name`` when it looks like a Hub model id (``owner/name``, not an existing local path), else ``None``."""
    if not name or not _HUB_ID.fullmatch(name) or Path(name).expanduser().exists():
        return None
    return name


def _tags(config: GTSConfig, record: dict[str, Any], has_knn: bool) -> list[str]:
    tags = [LIBRARY_NAME, "few-shot", "text-classification", "gts"]
    if config.task_type != "classification":
        tags.append(config.task_type)
    if has_knn:
        tags.append("knn")
    if record.get("mode"):
        tags.append(f"gts-{record['mode']}")
    return tags


def _widget(quoted: Mapping[str, list[Example]]) -> list[dict[str, str]] | None:
    widget = [{"text": example.text, "example_title": label}
              for label, chosen in quoted.items() for example in chosen[:WIDGET_PER_LABEL]]
    return widget or None


def _eval_results(test_metrics: dict[str, Any], dataset_id: str | None) -> list[EvalResult] | None:
    """``model-index`` entries (accuracy and macro-F1 on the held-out test set) from ``eval_results.json``."""
    if "accuracy" not in test_metrics:
        return None
    common = {"task_type": PIPELINE_TAG, "task_name": "Text Classification", "dataset_type": dataset_id or "custom",
              "dataset_name": dataset_id or "held-out test set", "dataset_split": "test"}
    results = [EvalResult(metric_type="accuracy", metric_name="Accuracy",
                          metric_value=round(float(test_metrics["accuracy"]), 4), **common)]
    if "macro_f1" in test_metrics:
        results.append(EvalResult(metric_type="f1", metric_name="Macro F1", metric_args={"average": "macro"},
                                  metric_value=round(float(test_metrics["macro_f1"]), 4), **common))
    return results


# --------------------------------------------------------------------------------------------------- card contents
def _load_examples(examples: Any, data_dir: str | os.PathLike | None) -> list[Example]:
    if examples is not None and data_dir is not None:
        raise ValueError("give examples or data_dir, not both")
    if data_dir is not None:
        return load_task(data_dir).train
    return as_examples(examples)


def _examples_per_label(examples: Sequence[Example], labels: Sequence[str], per_label: int) -> dict[str, list[Example]]:
    """Up to ``per_label`` examples for each label, in label order (labels without examples are left out)."""
    chosen: dict[str, list[Example]] = {label: [] for label in labels}
    for example in examples:
        if example.label in chosen and len(chosen[example.label]) < per_label:
            chosen[example.label].append(example)
    return {label: items for label, items in chosen.items() if items}


def _input_example(config: GTSConfig) -> str:
    """A call of the pipeline with an input of the model's kind, for the card's usage section."""
    if config.is_multiple_choice:
        return 'classifier({"text": "some text", "choices": ["option 1", "option 2"]})'
    if config.is_pair_task:
        return 'classifier({"text": "first sentence", "text_pair": "second sentence"})'
    if config.is_coreference:
        return 'classifier("The [trophy] did not fit in the suitcase because <it> was too big.")'
    return 'classifier("some text")'


def task_summary(config: GTSConfig) -> str:
    """What the model does, in words: the card's first line and the Space's description."""
    if config.is_multiple_choice:
        return "multiple-choice model (it picks one of the candidate answers given with each input)"
    kind = {"similarity": "sentence-pair similarity", "nli": "natural language inference",
            "coreference": "coreference (does the `<pronoun>` refer to the `[noun]` marked in the text?)"}.get(
        config.task_type, "text")
    return f"{kind} classifier over {len(config.labels)} labels"


def _training_rows(record: dict[str, Any], knn: dict[str, Any]) -> list[tuple[str, str]]:
    """(setting, value) rows of the recipe and the hyperparameters the engine chose."""
    rows = [("mode", record.get("mode")), ("student", _model_link(record.get("student"))),
            ("examples (train / dev / unlabelled)", _counts(record)), ("seed", record.get("seed"))]
    rows += _template_rows(record.get("option_template") or {})
    rows += _head_rows(record.get("head") or {}) + _body_rows(record.get("body") or {})
    rows += _finetune_rows(record.get("finetune") or {}) + _self_training_rows(record.get("self_training") or {})
    rows += _advanced_rows(record.get("advanced") or {}) + _prior_rows(record.get("label_prior") or {})
    rows += _knn_rows(knn, record.get("knn") or {})
    rows += [("training time", f"{record['train_seconds']} s" if "train_seconds" in record else None),
             ("versions", _versions(record))]
    return [(name, _cell(value)) for name, value in rows if value not in (None, "")]


def _skipped_row(stage: str, entry: dict[str, Any]) -> list[tuple[str, Any]]:
    """The row of a stage the engine left out, with its reason (``{"skipped": reason}`` in the record)."""
    return [(stage, f"skipped ({entry['skipped']})")] if "skipped" in entry else []


def _body_rows(body: dict[str, Any]) -> list[tuple[str, Any]]:
    if "body_steps" not in body:
        return _skipped_row("contrastive body stage", body)
    outcome = "kept" if body.get("kept", True) else "undone (dev accuracy did not rise)"
    if body.get("pretrained_encoder_kept"):
        outcome += ", beside the pretrained encoder (frozen; texts are scored by both embeddings)"
    loss = f"{_number(body.get('body_loss_first'))} → {_number(body.get('body_loss_last'))}"
    dev = f"{_number(body.get('dev_accuracy_before'))} → {_number(body.get('dev_accuracy_after'))}"
    return [("contrastive body stage", f"{body['body_steps']} steps of {body.get('body_batch_size')} texts, learning "
                                      f"rate {body.get('body_learning_rate')}, pair loss {loss}, dev accuracy {dev}: "
                                      f"{outcome}")]


def _self_training_rows(entry: dict[str, Any]) -> list[tuple[str, Any]]:
    if "pseudo_labelled" not in entry:
        return _skipped_row("self-training", entry)
    outcome = "kept" if entry["kept"] else "undone (dev accuracy fell)"
    dev = f"{_number(entry.get('dev_accuracy_before'))} → {_number(entry.get('dev_accuracy_after'))}"
    return [("self-training", f"{entry['pseudo_labelled']} of {entry['pool']} unlabelled texts pseudo-labelled (the "
                              f"surest {entry['per_label']} per label), fresh head, dev accuracy {dev}: {outcome}")]


def _template_rows(entry: dict[str, Any]) -> list[tuple[str, Any]]:
    if "template" not in entry:
        return _skipped_row("option template", entry)
    template = "the bare label texts" if entry["template"] == "{}" else f"`{entry['template']}`"
    losses = entry.get("dev_log_loss")
    return [("option template", f"{template} (the lowest zero-shot dev log-loss of {len(losses)} templates)"
             if losses else template)]


def _head_rows(head: dict[str, Any]) -> list[tuple[str, Any]]:
    if not head:
        return []
    if head.get("head_dev_accuracy") is None:
        return [("option head", f"{head.get('head_steps')} steps (no dev set: the last step is kept)")]
    return [("option head", f"{head.get('head_steps')} steps, best step {head.get('head_best_step')}, dev accuracy "
                            f"{_number(head.get('head_dev_accuracy'))}")]


def _finetune_rows(finetune: dict[str, Any]) -> list[tuple[str, Any]]:
    if not finetune:
        return []
    return [("fine-tuning", f"{_number(finetune.get('epochs'))} epochs ({finetune.get('steps')} steps), learning rate "
                            f"{finetune.get('learning_rate')}, best epoch {_number(finetune.get('best_epoch'))}, "
                            f"dev accuracy {_number(finetune.get('best_dev_accuracy'))}")]


def _advanced_rows(advanced: dict[str, Any]) -> list[tuple[str, Any]]:
    """The Generator-Teacher-Student stage: which models, how many texts, what was kept per round."""
    if not advanced:
        return []
    rows = [(role, _model_link(value.get("model")) if isinstance(value, Mapping) and value.get("model") else
             "none" if value is None else _describe(value)) for role in ("teacher", "generator")
            for value in [advanced.get(role)]]
    pool = advanced.get("pool") or {}
    if pool:
        rows.append(("pool (generated / unlabelled)", f"{pool.get('generated', 0)} / {pool.get('unlabeled', 0)}"))
    for number, round_ in enumerate(advanced.get("rounds") or [], 1):
        distillation = round_.get("distillation") or {}
        rows.append((f"distillation round {number}",
                     f"{round_.get('kept')} texts kept (threshold {_number(round_.get('threshold'))}, teacher weight "
                     f"{round_.get('teacher_weight')}), dev accuracy {_number(distillation.get('best_dev_accuracy'))}"))
    if advanced.get("skipped"):
        rows.append(("advanced stage", f"skipped: {advanced['skipped']}"))
    return rows


def _prior_rows(prior: dict[str, Any]) -> list[tuple[str, Any]]:
    if "weight" not in prior:
        return _skipped_row("label-text prior", prior)
    return [("label-text prior", f"weight {prior['weight']} (dev accuracy {_number(prior.get('dev_accuracy_before'))}"
                                 f" → {_number(prior.get('dev_accuracy_after'))})")]


def _knn_rows(knn: dict[str, Any], chosen: dict[str, Any]) -> list[tuple[str, Any]]:
    if not knn:
        return _skipped_row("kNN datastore", chosen) or [("kNN datastore", "none")]
    rows = [("kNN k", knn.get("k")), ("kNN λ", knn.get("lam")), ("kNN temperature", knn.get("temperature")),
            ("kNN datastore", f"{knn.get('size')} keys, whitened to {knn.get('dim')} dimensions")]
    if "dev_accuracy_model" in chosen:
        rows.append(("dev accuracy (model → with kNN)",
                     f"{_number(chosen['dev_accuracy_model'])} → {_number(chosen.get('dev_accuracy_knn'))}"))
    return rows


def _evaluation_rows(test_metrics: dict[str, Any]) -> list[tuple[str, str]]:
    names = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("n", "test examples"),
             ("texts_per_second", "speed (texts/s, measured on the training machine)"))
    return [(label, _cell(_number(test_metrics[key]))) for key, label in names if key in test_metrics]


def _counts(record: dict[str, Any]) -> str | None:
    if "num_train" not in record:
        return None
    return f"{record['num_train']} / {record.get('num_dev', 0)} / {record.get('num_unlabeled', 0)}"


def _versions(record: dict[str, Any]) -> str | None:
    parts = [f"{name} {record[key]}" for key, name in (("gts_hf_version", "gts-hf"),
                                                       ("transformers_version", "transformers")) if key in record]
    return ", ".join(parts) or None


def _model_link(name: str | None) -> str | None:
    """A Hub id as a link; a local folder by its name only (the card must not leak local paths)."""
    if not name:
        return None
    hub_id = hub_model_id(name)
    return f"[{hub_id}]({HUB_URL}/{hub_id})" if hub_id else f"a local model (`{Path(name).name}`)"


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{key}: {_describe(item)}" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_describe(item) for item in value)
    return _model_link(value) if isinstance(value, str) and hub_model_id(value) else str(_number(value))


def _number(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _quote(example: Example) -> str:
    text = example.text if example.text_pair is None else f"{example.text} ↔ {example.text_pair}"
    return " ".join(text.split())


def _cell(value: Any) -> str:
    """A value for a Markdown table cell (one line, pipes escaped)."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
