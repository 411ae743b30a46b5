"""Sharing models on the Hub (issue #5), against the loopback Hub of `tests/hub_server.py`.

One tiny model is trained for the whole module (seconds); each test pushes it to a fresh repo. Tests marked
`@xet_modes` run over both upload paths: Xet and plain Git LFS.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import HfApi, ModelCard, hf_hub_download, snapshot_download
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import RepositoryNotFoundError
from transformers import pipeline

from gts_hf import GTSConfig, GTSEngine, GTSForFewShotClassification, KNNDatastore, load_task, load_trained, predict
from gts_hf.backbones import DEFAULT_STUDENT
from gts_hf.cli import main
from gts_hf.data import Example
from gts_hf.hub import download_knn_files, hub_model_id, push_model, render_model_card
from gts_hf.retrieval import KNN_FILES
from tests.conftest import NEGATIVE, POSITIVE, write_jsonl
from tests.conftest_hub import xet_modes

LABELS = ["negative", "positive"]
PROBE_TEXTS = POSITIVE[5:] + NEGATIVE[5:] + ["物流很快", "质量太差", "今天天气怎么样"]
TOLERANCE = 1e-6
LARGE_FILES = {"model.safetensors", "knn/index.faiss", "knn/datastore.safetensors"}


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest sentiment task (its `sentiment_dir` fixture is per test; one trained model serves this module)."""
    folder = tmp_path_factory.mktemp("sentiment")
    records = {label: [{"content": text, "label": label} for text in texts]
               for label, texts in (("positive", POSITIVE), ("negative", NEGATIVE))}
    held = records["positive"][5:] + records["negative"][5:]
    write_jsonl(folder / "train.json", records["positive"][:5] + records["negative"][:5])
    write_jsonl(folder / "dev.json", held)
    write_jsonl(folder / "test.json", held)
    write_jsonl(folder / "labels.json", [{"labels": LABELS, "descriptions": {"negative": "负面", "positive": "正面"}}])
    return folder


@pytest.fixture(scope="module")
def model_dir(tiny_student: Path, task_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained model folder with a kNN datastore and test results."""
    engine = GTSEngine(mode="fast", student=str(tiny_student), use_knn=True)
    return engine.train(load_task(task_dir), output_dir=tmp_path_factory.mktemp("trained") / "model").output_dir


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> np.ndarray:
    """Probabilities (kNN included) of the local model on the probe texts."""
    return _probabilities(*load_trained(model_dir))


def _probabilities(model: GTSForFewShotClassification, tokenizer: object) -> np.ndarray:
    return predict(model, tokenizer, [Example(text=text) for text in PROBE_TEXTS]).probabilities


def _pipeline_probabilities(classifier: object) -> np.ndarray:
    outputs = classifier(PROBE_TEXTS, top_k=len(LABELS))
    return np.array([[{item["label"]: item["score"] for item in row}[label] for label in LABELS] for row in outputs])


def _without_knn(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the model folder without its kNN datastore (a changed model: its predictions differ)."""
    return Path(shutil.copytree(model_dir, tmp_path / "without-knn", ignore=shutil.ignore_patterns("knn")))


def _local_files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


# ---------------------------------------------------------------------------------------------------------- push
@xet_modes
def test_push_model_uploads_folder_and_card_in_one_commit(use_xet, loopback_hub, hub_repo_id, model_dir, task_dir):
    # Data only: the remote-code module and its config entries are tested in tests/test_remote_code.py.
    info = push_model(model_dir, hub_repo_id, commit_message="Add the sentiment model", data_dir=task_dir,
                      include_code=False)

    local = _local_files(model_dir)
    assert loopback_hub.list_files(hub_repo_id) == sorted([*local, ".gitattributes", "README.md"])
    assert LARGE_FILES <= set(local)
    large = loopback_hub.xet_files(hub_repo_id) if use_xet else loopback_hub.lfs_files(hub_repo_id)
    assert LARGE_FILES <= set(large)
    assert loopback_hub.storage_of(hub_repo_id, "knn/config.json") == "regular"
    assert all(loopback_hub.file_bytes(hub_repo_id, path) == data for path, data in local.items())
    assert {Path(path).suffix for path in local} <= {".json", ".safetensors", ".faiss"}  # data only, no code
    assert "auto_map" not in json.loads(local["config.json"])  # nothing for trust_remote_code to run
    commits = loopback_hub.commits(hub_repo_id)
    assert len(commits) == 2 and commits[0].message == "Add the sentiment model"
    assert info.oid == commits[0].oid == loopback_hub.head(hub_repo_id)

    card = ModelCard(loopback_hub.file_bytes(hub_repo_id, "README.md").decode())
    assert (card.data.library_name, card.data.pipeline_tag, card.data.language) == \
        ("gts-hf", "text-classification", "zh")
    assert card.data.widget and {item["text"] for item in card.data.widget} <= set(POSITIVE[:5] + NEGATIVE[:5])

    stats = loopback_hub.upload_stats(hub_repo_id)
    again = push_model(model_dir, hub_repo_id, commit_message="Nothing changed", data_dir=task_dir,
                       include_code=False)
    assert loopback_hub.upload_stats(hub_repo_id).uploaded_bytes == stats.uploaded_bytes
    assert again.oid == loopback_hub.head(hub_repo_id) == info.oid  # no new commit either


@xet_modes
def test_hub_model_predicts_like_the_local_one(use_xet, hub_repo_id, model_dir, reference, tmp_path):
    push_model(model_dir, hub_repo_id)

    model, tokenizer = load_trained(hub_repo_id)
    assert model.knn is not None and model.knn.settings.lam > 0, "λ > 0: the kNN vote must be part of the comparison"
    np.testing.assert_allclose(_probabilities(model, tokenizer), reference, atol=TOLERANCE, rtol=0)
    classifier = pipeline("gts-few-shot", model=hub_repo_id)
    assert classifier.model.knn is not None
    np.testing.assert_allclose(_pipeline_probabilities(classifier), reference, atol=TOLERANCE, rtol=0)

    downloaded = _local_files(Path(snapshot_download(hub_repo_id, local_dir=tmp_path / "snapshot")))
    assert all(downloaded[path] == data for path, data in _local_files(model_dir).items()
               if path != "config.json")  # the pushed config also points trust_remote_code users at gts_remote.py


@xet_modes
def test_model_push_to_hub_carries_the_knn_files(use_xet, loopback_hub, hub_repo_id, model_dir, reference):
    model, tokenizer = load_trained(model_dir)
    model.push_to_hub(hub_repo_id, private=True, revision="dev", commit_message="push_to_hub with kNN")
    tokenizer.push_to_hub(hub_repo_id, revision="dev")

    assert loopback_hub.is_private(hub_repo_id)
    assert set(KNN_FILES) | {"config.json", "model.safetensors", "tokenizer.json"} <= \
        set(loopback_hub.list_files(hub_repo_id, revision="dev"))
    large = loopback_hub.xet_files if use_xet else loopback_hub.lfs_files
    assert LARGE_FILES <= set(large(hub_repo_id, revision="dev"))
    assert loopback_hub.commits(hub_repo_id, revision="dev")[1].message == "push_to_hub with kNN"
    loaded = GTSForFewShotClassification.from_pretrained(hub_repo_id, revision="dev")
    assert loaded.knn is not None and loaded.knn.settings == model.knn.settings
    np.testing.assert_allclose(_probabilities(loaded, tokenizer), reference, atol=TOLERANCE, rtol=0)


def test_revision_pinning_branches_and_stale_knn(loopback_hub, hub_repo_id, model_dir, reference, tmp_path):
    first = push_model(model_dir, hub_repo_id)
    second = push_model(_without_knn(model_dir, tmp_path), hub_repo_id, commit_message="Drop the kNN datastore")
    assert second.oid != first.oid
    assert not any(path.startswith("knn/") for path in loopback_hub.list_files(hub_repo_id))  # deleted in that commit
    assert set(KNN_FILES) <= set(loopback_hub.list_files(hub_repo_id, revision=first.oid))

    assert GTSForFewShotClassification.from_pretrained(hub_repo_id).knn is None
    pinned, tokenizer = load_trained(hub_repo_id, revision=first.oid)
    assert pinned.knn is not None
    np.testing.assert_allclose(_probabilities(pinned, tokenizer), reference, atol=TOLERANCE, rtol=0)
    classifier = pipeline("gts-few-shot", model=hub_repo_id, revision=first.oid)
    np.testing.assert_allclose(_pipeline_probabilities(classifier), reference, atol=TOLERANCE, rtol=0)

    branch = push_model(model_dir, hub_repo_id, revision="with-knn", commit_message="kNN on a branch")
    assert loopback_hub.head(hub_repo_id, "with-knn") == branch.oid and loopback_hub.head(hub_repo_id) == second.oid
    assert GTSForFewShotClassification.from_pretrained(hub_repo_id, revision="with-knn").knn is not None


def test_private_repo(loopback_hub, hub_repo_id, model_dir):
    push_model(model_dir, hub_repo_id, private=True)
    assert loopback_hub.is_private(hub_repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(hub_repo_id, "config.json", token=False)
    assert GTSForFewShotClassification.from_pretrained(hub_repo_id).knn is not None  # HF_TOKEN grants access


# ---------------------------------------------------------------------------------------------------------- safety
def _wrong_label_count(knn_dir: Path) -> None:
    config = json.loads((knn_dir / "config.json").read_text())
    (knn_dir / "config.json").write_text(json.dumps({**config, "num_labels": 3}))


def _wrong_dimension(knn_dir: Path) -> None:
    keys = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)  # the model's embeddings have 32
    KNNDatastore.build(keys, np.arange(8) % 2, num_labels=2).save(knn_dir)


@pytest.mark.parametrize(("breakage", "message"), [(_wrong_label_count, "3 labels, but the model has 2"),
                                                   (_wrong_dimension, "keys of dimension 16")],
                         ids=["label-count", "dimension"])
def test_mismatched_knn_datastore_is_refused(hub_repo_id, model_dir, tmp_path, breakage, message):
    push_model(model_dir, hub_repo_id)
    broken = tmp_path / "knn"
    shutil.copytree(model_dir / "knn", broken)
    breakage(broken)
    HfApi().upload_folder(repo_id=hub_repo_id, folder_path=broken, path_in_repo="knn", commit_message="Break kNN")
    with pytest.raises(ValueError, match=f"does not match its model: .*{message}"):
        GTSForFewShotClassification.from_pretrained(hub_repo_id)


def test_download_knn_files(hub_repo_id, model_dir, tmp_path, monkeypatch):
    push_model(model_dir, hub_repo_id)
    folder = download_knn_files(hub_repo_id)
    assert folder is not None and folder.name == "knn"
    assert all((folder / path.split("/", 1)[1]).read_bytes() == (model_dir / path).read_bytes() for path in KNN_FILES)

    push_model(_without_knn(model_dir, tmp_path), hub_repo_id, commit_message="Drop the kNN datastore")
    assert download_knn_files(hub_repo_id) is None
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # offline: the cache knows the file is absent
    assert download_knn_files(hub_repo_id) is None
    monkeypatch.undo()
    with pytest.raises(RepositoryNotFoundError):
        download_knn_files(hub_repo_id + "-missing")


# ------------------------------------------------------------------------------------------------------ model card
def test_model_card(loopback_hub, hub_repo_id, model_dir, task_dir, tiny_student):
    card = render_model_card(model_dir, hub_repo_id, data_dir=task_dir, datasets="loopback-user/sentiment")
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license, data.language) == \
        ("gts-hf", "text-classification", "apache-2.0", "zh")
    assert {"gts-hf", "few-shot", "text-classification", "knn"} <= set(data.tags)
    assert data.datasets == ["loopback-user/sentiment"] and data.base_model is None  # a local student: no Hub id
    assert [item["example_title"] for item in data.widget] == LABELS
    test_metrics = json.loads((model_dir / "eval_results.json").read_text())
    accuracy = next(result for result in data.eval_results if result.metric_type == "accuracy")
    assert accuracy.metric_value == round(test_metrics["accuracy"], 4) and accuracy.dataset_split == "test"

    knn = json.loads((model_dir / "knn" / "config.json").read_text())
    body = card.text
    options = json.loads((model_dir / "config.json").read_text())["label_options"]  # the label texts as scored
    assert "负面" in options[0] and "正面" in options[1]  # the descriptions, in dev's template if it took one
    for expected in (f"| 0 | negative | {options[0]} |", f"| 1 | positive | {options[1]} |", "- " + NEGATIVE[0],
                     "| mode | fast |", "| option template | ",
                     f"| kNN k | {knn['k']} |", f"| kNN λ | {knn['lam']} |", "| label-text prior | weight 0.5 (dev",
                     "| accuracy |", "texts/s",
                     f'pipeline("gts-few-shot", model="{hub_repo_id}")', "import gts_hf", "from transformers import"):
        assert expected in body, expected
    assert str(tiny_student) not in str(card)  # no local paths leak into a public card
    assert ModelCard(str(card)).data.to_dict() == data.to_dict()  # the YAML reads back as written
    card.validate()  # POSTs to the (loopback) Hub's validate-yaml endpoint


def test_model_card_without_examples_or_test_set(model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("eval_results.json"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "base_model": DEFAULT_STUDENT}))
    card = render_model_card(folder, "someone/model")
    assert card.data.base_model == DEFAULT_STUDENT
    assert card.data.eval_results is None and "widget" not in card.data.to_dict()
    assert "No test set was given" in card.text and "## Training examples" not in card.text


def test_model_card_of_a_pair_task(model_dir, tmp_path):
    folder = Path(shutil.copytree(model_dir, tmp_path / "model"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "task_type": "similarity"}))
    examples = [Example("今天天气怎么样", "今天天气如何", label="positive"),
                Example("你叫什么名字", "北京很大", label="negative")]
    card = render_model_card(folder, "someone/pairs", examples=examples)
    assert "widget" not in card.data.to_dict()  # the Hub's text-classification widget takes one text
    assert "similarity" in card.data.tags and "- 今天天气怎么样 ↔ 今天天气如何" in card.text


def test_model_card_of_an_advanced_multiple_choice_model(model_dir, tmp_path):
    folder = Path(shutil.copytree(model_dir, tmp_path / "model"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "task_type": "multiple_choice", "labels": [],
                                                    "label_options": [], "id2label": {}, "label2id": {}}))
    record = json.loads((folder / "gts_training.json").read_text())
    record["advanced"] = {"teacher": {"model": "Qwen/Qwen2.5-Coder-0.5B-Instruct"}, "generator": None,
                          "pool": {"generated": 0, "unlabeled": 600},
                          "rounds": [{"kept": 412, "threshold": 0.71, "teacher_weight": 0.5,
                                      "distillation": {"best_dev_accuracy": 0.84}}]}
    (folder / "gts_training.json").write_text(json.dumps(record))
    card = render_model_card(folder, "someone/chooser")
    assert "multiple-choice model" in card.text
    assert "[Qwen/Qwen2.5-Coder-0.5B-Instruct](https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct)" in card.text
    assert "412 texts kept (threshold 0.71, teacher weight 0.5), dev accuracy 0.84" in card.text


def test_hub_model_id(tiny_student):
    assert hub_model_id(DEFAULT_STUDENT) == DEFAULT_STUDENT
    assert hub_model_id(str(tiny_student)) is None and hub_model_id(None) is None


# ------------------------------------------------------------------------------------------------------------- CLI
def test_cli_push(loopback_hub, hub_repo_id, model_dir, task_dir, capsys):
    code = main(["push", "--model", str(model_dir), "--repo-id", hub_repo_id, "--private", "--revision", "release",
                 "--commit-message", "Release from the CLI", "--data-dir", str(task_dir)])
    assert code == 0 and hub_repo_id in capsys.readouterr().out
    assert loopback_hub.is_private(hub_repo_id)
    assert loopback_hub.commits(hub_repo_id, revision="release")[0].message == "Release from the CLI"
    assert set(KNN_FILES) <= set(loopback_hub.list_files(hub_repo_id, revision="release"))
    assert "widget:" in loopback_hub.file_bytes(hub_repo_id, "README.md", revision="release").decode()


def test_cli_push_refuses_a_folder_that_is_not_a_model(hub_repo_id, tmp_path, capsys):
    assert main(["push", "--model", str(tmp_path), "--repo-id", hub_repo_id]) == 2
    assert "not a saved gts-hf model" in capsys.readouterr().err


def test_model_card_rows_describe_the_training_stages():
    from gts_hf.hub import _training_rows

    body = {"body_steps": 40, "body_batch_size": 32, "body_learning_rate": 2e-05, "body_loss_first": 0.36,
            "body_loss_last": 0.19, "dev_accuracy_before": 0.25, "dev_accuracy_after": 0.5, "kept": True}
    rows = dict(_training_rows({"mode": "standard", "body": body}, {}))
    assert rows["contrastive body stage"] == ("40 steps of 32 texts, learning rate 2e-05, pair loss 0.36 → 0.19, dev "
                                              "accuracy 0.25 → 0.5: kept")
    rows = dict(_training_rows({"mode": "standard", "body": {**body, "pretrained_encoder_kept": True}}, {}))
    assert rows["contrastive body stage"].endswith(": kept, beside the pretrained encoder (frozen; texts are scored by "
                                                   "both embeddings)")
    rows = dict(_training_rows({"mode": "standard", "body": {**body, "dev_accuracy_after": 0.25, "kept": False}}, {}))
    assert rows["contrastive body stage"].endswith("0.25 → 0.25: undone (dev accuracy did not rise)")
    skipped = {"skipped": "the cosine pair head"}
    rows = dict(_training_rows({"mode": "standard", "body": skipped, "label_prior": skipped, "knn": skipped}, {}))
    assert rows["contrastive body stage"] == rows["label-text prior"] == rows["kNN datastore"] == \
        "skipped (the cosine pair head)"
    assert dict(_training_rows({"mode": "fast"}, {}))["kNN datastore"] == "none"


def test_knn_tag_follows_the_saved_datastore():
    """A Trainer-made record notes a datastore as ``{}``; the tag follows ``knn/config.json``, not the record."""
    from gts_hf.hub import _tags

    config = GTSConfig(labels=["0", "1"], task_type="similarity")
    assert "knn" in _tags(config, {"knn": {}}, has_knn=True)
    assert "knn" not in _tags(config, {"knn": {"skipped": "the cosine pair head"}}, has_knn=False)
