"""Loading a pushed model without gts-hf: the repo's `gts_remote.py` behind `trust_remote_code` (issue #5).

The remote module is a template kept apart from the library (`hub_cards/gts_remote.py`); these tests keep the two in
sync: the same config parameters, the same weight names and the same predictions (kNN vote included, searched with
faiss and with numpy), in this process and, against the loopback Hub, in a Python that cannot import gts_hf.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from huggingface_hub import ModelCard
from safetensors.numpy import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoTokenizer, pipeline

from gts_hf import (GTSConfig, GTSEngine, GTSForFewShotClassification, KNNDatastore, load_task, load_trained,
                    predict)
from gts_hf.data import Example
from gts_hf.hub import REMOTE_CODE_FILE, REMOTE_PIPELINE_TASK, push_model, remote_code_config, remote_code_module
from gts_hf.retrieval import KNNSettings
from tests.conftest import NEGATIVE, PAIRS_DIFF, PAIRS_SAME, POSITIVE, _sentiment_records, write_jsonl

TOLERANCE = 1e-5
SENTIMENT_PROBES: list[Any] = POSITIVE[5:] + NEGATIVE[5:] + ["物流很快", "质量太差", "今天天气怎么样"]
PAIR_PROBES: list[Any] = [{"text": a, "text_pair": b} for a, b in PAIRS_SAME[4:] + PAIRS_DIFF[4:] +
                          [("今天天气怎么样", "北京很大")]]
CORE_PROBES: list[Any] = ["[手机]很好用，<手机>质量很好", "[物流]很快，<质量>太差", "质量[很好]，<它>非常满意",
                          "[客服]态度很差，非常<失望>"]
CHILD_TIMEOUT = 300
RESULT_MARKER = "GTS-CHILD-RESULT "

# Run in a fresh Python: gts_hf (and, when asked, faiss) cannot be imported there, as for a user without gts-hf.
CHILD_SCRIPT = r"""
import glob, importlib.abc, json, os, sys

class Uninstalled(importlib.abc.MetaPathFinder):
    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None

request, RESULT_MARKER = json.loads(sys.argv[1]), sys.argv[2]
sys.meta_path.insert(0, Uninstalled(request["hidden"]))
try:
    import gts_hf
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("gts_hf is importable")

from transformers import AutoModel, pipeline
from transformers.dynamic_module_utils import HF_MODULES_CACHE

repo_id, result = request["repo_id"], {}

def copied_modules():
    return set(glob.glob(os.path.join(HF_MODULES_CACHE, "**", "gts_remote.py"), recursive=True))

copied_before = copied_modules()

def remote_code_ran():
    return any("gts_remote" in name for name in sys.modules) or copied_modules() != copied_before

if request["check_refusal"]:
    refusals = []
    for load in (lambda: pipeline(model=repo_id), lambda: pipeline(request["task"], model=repo_id),
                 lambda: AutoModel.from_pretrained(repo_id)):
        try:
            load()
        except ValueError as error:
            refusals.append(str(error))
        else:
            refusals.append(None)
    result.update(refusals=refusals, code_ran_before_trust=remote_code_ran())

classifier = pipeline(model=repo_id, trust_remote_code=True)
labels = classifier.model.config.labels
rows = classifier(request["inputs"], top_k=len(labels))
result.update(
    pipeline_class=f"{type(classifier).__module__}.{type(classifier).__qualname__}",
    knn_search=None if classifier.model.knn is None else "numpy" if classifier.model.knn.index is None else "faiss",
    probabilities=[[{item["label"]: item["score"] for item in row}[label] for label in labels] for row in rows],
    single=classifier(request["inputs"][0]),
    gts_hf_imported="gts_hf" in sys.modules,
    code_ran_after_trust=remote_code_ran(),
)
print("\n" + RESULT_MARKER + json.dumps(result))  # on a line of its own: a refused prompt leaves no newline
"""


# ------------------------------------------------------------------------------------------------------ fixtures
def _train(tiny_student: Path, folder: Path, train: list[dict], dev: list[dict], labels: dict,
           **settings: Any) -> Path:
    data = folder / "data"
    data.mkdir(parents=True)
    write_jsonl(data / "train.json", train)
    write_jsonl(data / "dev.json", dev)
    write_jsonl(data / "labels.json", [labels])
    engine = GTSEngine(student=str(tiny_student), **{"mode": "fast", "head_steps": 20, "use_knn": True, **settings})
    return engine.train(load_task(data), output_dir=folder / "model").output_dir


@pytest.fixture(scope="module")
def sentiment_model(tiny_student: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tiny_student, tmp_path_factory.mktemp("sentiment"),
                  _sentiment_records(POSITIVE[:5], "positive") + _sentiment_records(NEGATIVE[:5], "negative"),
                  _sentiment_records(POSITIVE[5:], "positive") + _sentiment_records(NEGATIVE[5:], "negative"),
                  {"labels": ["negative", "positive"], "descriptions": {"negative": "负面", "positive": "正面"}})


@pytest.fixture(scope="module")
def two_encoder_model(tiny_student: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three labels in ``standard`` mode: the body stage keeps the pretrained encoder beside the reshaped one."""
    neutral = [text for text, _ in PAIRS_SAME]
    # The bare label texts: with dev's template one probe's 6th-12th neighbours tie (2.0989) across two labels, so
    # float noise between the two code paths, not the code, decides which of them vote.
    model_dir = _train(tiny_student, tmp_path_factory.mktemp("two_encoders"),
                       _sentiment_records(POSITIVE[:4], "positive") + _sentiment_records(NEGATIVE[:4], "negative") +
                       _sentiment_records(neutral[:4], "neutral"),
                       _sentiment_records(POSITIVE[4:], "positive") + _sentiment_records(NEGATIVE[4:], "negative") +
                       _sentiment_records(neutral[4:], "neutral"),
                       {"labels": ["negative", "neutral", "positive"]}, mode="standard", body_steps=2,
                       option_template=None)
    assert GTSConfig.from_pretrained(model_dir).keep_pretrained_encoder
    return model_dir


@pytest.fixture(scope="module")
def pair_model(tiny_student: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    def records(pairs: list[tuple[str, str]], label: str) -> list[dict]:
        return [{"sentence1": a, "sentence2": b, "label": label} for a, b in pairs]

    return _train(tiny_student, tmp_path_factory.mktemp("pairs"),
                  records(PAIRS_SAME[:4], "1") + records(PAIRS_DIFF[:4], "0"),
                  records(PAIRS_SAME[4:], "1") + records(PAIRS_DIFF[4:], "0"), {"labels": ["0", "1"]})


@pytest.fixture(scope="module")
def coreference_model(tiny_student: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    def record(text: str, label: str) -> dict:
        return {"text": text, "label": label}

    same = ["[手机]很好用，<手机>坏了", "[质量]很好，<质量>满意", "[物流]很快，<物流>好评", "[味道]不错，<味道>很好"]
    other = ["[手机]很好用，<物流>太慢", "[质量]很好，<客服>很差", "[物流]很快，<味道>难吃", "[味道]不错，<做工>粗糙"]
    return _train(tiny_student, tmp_path_factory.mktemp("coreference"),
                  [record(text, "true") for text in same[:3]] + [record(text, "false") for text in other[:3]],
                  [record(same[3], "true"), record(other[3], "false")], {"labels": ["false", "true"]})


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The remote-code module exactly as a push uploads it, imported from a file of its own."""
    path = tmp_path_factory.mktemp("remote") / REMOTE_CODE_FILE
    path.write_bytes(remote_code_module())
    spec = importlib.util.spec_from_file_location("gts_remote_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _model(request: pytest.FixtureRequest, kind: str) -> tuple[Path, list[Any]]:
    if kind == "sentiment":
        return request.getfixturevalue("sentiment_model"), SENTIMENT_PROBES
    if kind == "coreference":
        return request.getfixturevalue("coreference_model"), CORE_PROBES
    if kind == "two encoders":
        return request.getfixturevalue("two_encoder_model"), SENTIMENT_PROBES
    return request.getfixturevalue("pair_model"), PAIR_PROBES


def _examples(inputs: list[Any]) -> list[Example]:
    return [Example(text=item) if isinstance(item, str) else Example(item["text"], item["text_pair"])
            for item in inputs]


def _reference(model_dir: Path, inputs: list[Any]) -> np.ndarray:
    """What gts_hf predicts (kNN included)."""
    model, tokenizer = load_trained(model_dir)
    return predict(model, tokenizer, _examples(inputs)).probabilities


def _pipeline_probabilities(classifier: Any, inputs: list[Any]) -> np.ndarray:
    labels = classifier.model.config.labels
    rows = classifier(inputs, top_k=len(labels))
    return np.array([[{item["label"]: item["score"] for item in row}[label] for label in labels] for row in rows])


def _local_files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


# ------------------------------------------------------------------------------------------- the module, in process
@pytest.mark.parametrize("kind", ["sentiment", "two encoders"])
def test_remote_module_has_the_library_config_and_weights(remote, request, kind):
    model_dir, _ = _model(request, kind)

    def parameters(cls: type) -> list[tuple[str, Any]]:
        return [(p.name, p.default) for p in inspect.signature(cls.__init__).parameters.values()]

    assert parameters(remote.GTSConfig) == parameters(GTSConfig)
    assert remote.GTSConfig.model_type == GTSConfig.model_type
    config = remote.GTSConfig.from_pretrained(model_dir)
    library_config = GTSConfig.from_pretrained(model_dir)
    for name, _ in parameters(GTSConfig)[1:-1]:  # all but self and **kwargs
        if name != "encoder_config":
            assert getattr(config, name) == getattr(library_config, name), name
    assert config.encoder_config.to_dict() == library_config.encoder_config.to_dict()
    model = remote.GTSForFewShotClassification.from_pretrained(model_dir)
    library_model = GTSForFewShotClassification.from_pretrained(model_dir)
    assert model.state_dict().keys() == library_model.state_dict().keys()
    assert (model.knn.k, model.knn.lam, model.knn.temperature) == \
        (library_model.knn.settings.k, library_model.knn.settings.lam, library_model.knn.settings.temperature)


@pytest.mark.parametrize(("kind", "search"), [("sentiment", "faiss"), ("sentiment", "numpy"), ("pair", None),
                                             ("coreference", None), ("two encoders", "faiss")])
def test_remote_module_predicts_like_gts_hf(remote, request, monkeypatch, kind, search):
    """Similarity pairs and coreference (the cosine pair head) have no datastore; the sentiment model's kNN is
    searched both ways."""
    model_dir, inputs = _model(request, kind)
    if search == "numpy":
        monkeypatch.setattr(remote, "faiss", None)
    model = remote.GTSForFewShotClassification.from_pretrained(model_dir)
    if search is None:
        assert model.knn is None
    else:
        assert (model.knn.index is not None) == (search == "faiss")
        assert model.knn.lam > 0, "λ > 0: the kNN vote must be part of the comparison"
    classifier = remote.GTSFewShotPipeline(model=model, tokenizer=AutoTokenizer.from_pretrained(model_dir))
    np.testing.assert_allclose(_pipeline_probabilities(classifier, inputs), _reference(model_dir, inputs),
                               atol=TOLERANCE, rtol=0)
    assert classifier(inputs[0]) == [classifier(inputs[0], top_k=1)[0]]  # the gts-few-shot pipeline's shapes


def test_remote_pipeline_refuses_what_gts_hf_refuses(remote, sentiment_model, pair_model):
    single = remote.GTSFewShotPipeline(model=remote.GTSForFewShotClassification.from_pretrained(sentiment_model),
                                       tokenizer=AutoTokenizer.from_pretrained(sentiment_model))
    pair = remote.GTSFewShotPipeline(model=remote.GTSForFewShotClassification.from_pretrained(pair_model),
                                     tokenizer=AutoTokenizer.from_pretrained(pair_model))
    with pytest.raises(ValueError, match="empty text"):
        single("  ")
    with pytest.raises(ValueError, match="single texts"):
        single({"text": "a", "text_pair": "b"})
    with pytest.raises(ValueError, match="sentence pairs"):
        pair("今天天气怎么样")
    assert pair(("今天天气怎么样", "今天天气如何"))[0]["label"] in ("0", "1")


def test_remote_pipeline_needs_the_marked_spans_of_a_coreference_model(remote, coreference_model):
    resolver = remote.GTSFewShotPipeline(model=remote.GTSForFewShotClassification.from_pretrained(coreference_model),
                                         tokenizer=AutoTokenizer.from_pretrained(coreference_model))
    with pytest.raises(ValueError, match="mark the noun"):
        resolver("手机很好用，它坏了")
    assert resolver(CORE_PROBES[0])[0]["label"] in ("false", "true")


def test_datastore_saved_without_keys(remote, sentiment_model, tmp_path, monkeypatch):
    """Datastores written before the whitened keys were stored: gts_hf rebuilds them from the faiss index; the remote
    module searches that index with faiss, and without faiss says what to install."""
    folder = Path(shutil.copytree(sentiment_model, tmp_path / "model"))
    tensors_file = folder / "knn" / "datastore.safetensors"
    tensors = load_file(str(tensors_file))
    keys = tensors.pop("keys")
    save_file(tensors, str(tensors_file))

    library_model = GTSForFewShotClassification.from_pretrained(folder)
    np.testing.assert_allclose(library_model.knn.keys, keys, atol=1e-6)
    np.testing.assert_allclose(_reference(folder, SENTIMENT_PROBES), _reference(sentiment_model, SENTIMENT_PROBES),
                               atol=1e-6, rtol=0)
    classifier = remote.GTSFewShotPipeline(model=remote.GTSForFewShotClassification.from_pretrained(folder),
                                           tokenizer=AutoTokenizer.from_pretrained(folder))
    np.testing.assert_allclose(_pipeline_probabilities(classifier, SENTIMENT_PROBES),
                               _reference(folder, SENTIMENT_PROBES), atol=TOLERANCE, rtol=0)
    monkeypatch.setattr(remote, "faiss", None)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        remote.GTSForFewShotClassification.from_pretrained(folder)


@pytest.mark.parametrize(("index_type", "search"), [("flat", "faiss"), ("flat", "numpy"), ("ivf_flat", "faiss")])
def test_remote_datastore_reads_what_the_library_saves(remote, tmp_path, monkeypatch, index_type, search):
    """Large datastores get an approximate (IVF) index in gts_hf; with faiss the remote module searches that very
    index (its nprobe is saved with it), without faiss it searches the stored keys exactly."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32)) * 3
    points = (centres[rng.integers(0, 20, 2100)] + rng.normal(size=(2100, 32)) * 0.3).astype(np.float32)
    store = KNNDatastore.build(points[:2000], rng.integers(0, 3, 2000), num_labels=3,
                               settings=KNNSettings(k=8, lam=0.5, temperature=0.1),
                               exact_max_keys=100 if index_type != "flat" else None)
    assert store.index_info["type"] == index_type
    store.save(tmp_path / "knn")
    if search == "numpy":
        monkeypatch.setattr(remote, "faiss", None)
    loaded = remote.KNNDatastore.load(str(tmp_path))
    model_probs = rng.dirichlet(np.ones(3), size=100)
    np.testing.assert_allclose(loaded.interpolate(model_probs, points[2000:]),
                               store.interpolate(model_probs, points[2000:]), atol=TOLERANCE, rtol=0)


# ------------------------------------------------------------------------------------------------- push and load
def test_push_uploads_the_module_and_points_only_the_pushed_config_at_it(loopback_hub, hub_repo_id, sentiment_model):
    before = _local_files(sentiment_model)
    info = push_model(sentiment_model, hub_repo_id)

    assert _local_files(sentiment_model) == before  # the user's folder is untouched (no auto_map, no module)
    assert loopback_hub.list_files(hub_repo_id) == sorted([*before, ".gitattributes", "README.md", REMOTE_CODE_FILE])
    assert loopback_hub.file_bytes(hub_repo_id, REMOTE_CODE_FILE) == remote_code_module()
    assert all(loopback_hub.file_bytes(hub_repo_id, path) == data for path, data in before.items()
               if path != "config.json")
    pushed = json.loads(loopback_hub.file_bytes(hub_repo_id, "config.json"))
    assert pushed == remote_code_config(json.loads(before["config.json"]))
    assert pushed["auto_map"]["AutoModel"] == "gts_remote.GTSForFewShotClassification"
    assert pushed["custom_pipelines"] == {REMOTE_PIPELINE_TASK: {"impl": "gts_remote.GTSFewShotPipeline",
                                                                 "pt": ["AutoModel"], "type": "text"}}
    card = ModelCard(loopback_hub.file_bytes(hub_repo_id, "README.md").decode()).text
    assert f'pipeline("{REMOTE_PIPELINE_TASK}", model="{hub_repo_id}", trust_remote_code=True)' in card

    assert push_model(sentiment_model, hub_repo_id).oid == info.oid  # unchanged: no new commit
    without = push_model(sentiment_model, hub_repo_id, include_code=False, commit_message="Data only")
    assert without.oid != info.oid and REMOTE_CODE_FILE not in loopback_hub.list_files(hub_repo_id)
    assert loopback_hub.file_bytes(hub_repo_id, "config.json") == before["config.json"]
    assert "trust_remote_code=True" not in loopback_hub.file_bytes(hub_repo_id, "README.md").decode()


def test_gts_hf_never_needs_trust_remote_code(hub_repo_id, sentiment_model):
    push_model(sentiment_model, hub_repo_id)
    assert type(AutoConfig.from_pretrained(hub_repo_id)) is GTSConfig
    assert type(AutoModel.from_pretrained(hub_repo_id)) is GTSForFewShotClassification
    classifier = pipeline("gts-few-shot", model=hub_repo_id)
    assert type(classifier.model) is GTSForFewShotClassification and classifier.model.knn is not None
    np.testing.assert_allclose(_pipeline_probabilities(classifier, SENTIMENT_PROBES),
                               _reference(sentiment_model, SENTIMENT_PROBES), atol=TOLERANCE, rtol=0)
    assert not any(name.endswith("gts_remote") for name in sys.modules)


@pytest.mark.parametrize(("kind", "hidden", "check_refusal", "knn_search"), [
    ("sentiment", ["gts_hf"], True, "faiss"),
    ("sentiment", ["gts_hf", "faiss"], False, "numpy"),
    ("pair", ["gts_hf", "faiss"], False, None),  # the cosine pair head has no datastore
], ids=["faiss", "numpy", "pair"])
def test_pipeline_with_trust_remote_code_and_without_gts_hf(request, hub_repo_id, tmp_path, kind, hidden,
                                                            check_refusal, knn_search):
    model_dir, inputs = _model(request, kind)
    push_model(model_dir, hub_repo_id)
    child = {"repo_id": hub_repo_id, "inputs": inputs, "hidden": hidden, "check_refusal": check_refusal,
             "task": REMOTE_PIPELINE_TASK}
    run = subprocess.run([sys.executable, "-c", CHILD_SCRIPT, json.dumps(child), RESULT_MARKER], cwd=tmp_path,
                         env=dict(os.environ), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=CHILD_TIMEOUT)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(next(line for line in run.stdout.splitlines() if line.startswith(RESULT_MARKER))
                        [len(RESULT_MARKER):])

    assert not result["gts_hf_imported"] and "gts_remote" in result["pipeline_class"]
    assert result["knn_search"] == knn_search
    np.testing.assert_allclose(np.array(result["probabilities"]), _reference(model_dir, inputs), atol=TOLERANCE,
                               rtol=0)
    assert len(result["single"]) == 1 and set(result["single"][0]) == {"label", "score"}
    if check_refusal:  # without trust_remote_code: transformers' own refusal, and nothing of the repo's code ran
        assert all(message and "trust_remote_code=True" in message for message in result["refusals"]), \
            result["refusals"]
        assert not result["code_ran_before_trust"] and result["code_ran_after_trust"]  # (the check sees it run)


def test_remote_coreference_matches_with_a_query_prefix_and_truncation(remote, coreference_model, tmp_path):
    """The span offsets shift by the prefix, and a span cut off by truncation leaves the cosine neutral, in both."""
    folder = Path(shutil.copytree(coreference_model, tmp_path / "model"))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config.update(query_prefix="query: ", max_seq_length=16)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    probes = CORE_PROBES + ["[手机]很好用，质量很好，非常满意，物流很快，<它>坏了"]  # its pronoun lies past 16 tokens
    classifier = remote.GTSFewShotPipeline(model=remote.GTSForFewShotClassification.from_pretrained(folder),
                                           tokenizer=AutoTokenizer.from_pretrained(folder))
    np.testing.assert_allclose(_pipeline_probabilities(classifier, probes), _reference(folder, probes),
                               atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("text", ["[手机]很好用，<它>坏了", "<它>在前，[手机]在后", "[ ]和<他>", "[a<b]c>", "没有标记", "[a]<b>"])
def test_remote_module_finds_the_spans_gts_hf_finds(remote, text):
    """The remote module cannot import gts_hf, so it keeps its own copy of ``find_spans``: the two must agree."""
    from gts_hf.data import find_spans

    assert remote._find_spans(text) == find_spans(text)
