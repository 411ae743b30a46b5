"""Labelling big pools: streamed shards equal predict(), atomic files and manifest, resume after a failure, clear
errors for a changed source or model and for malformed lines, confident selections, the CLI."""

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import gts_hf.pool as pool_module
from gts_hf import DataError, GTSEngine, load_task, load_trained, predict
from gts_hf.cli import main
from gts_hf.data import Example
from gts_hf.pool import (MANIFEST_FILE, PoolMismatchError, iter_confident_examples, iter_pool_results, label_pool,
                         select_confident, stream_examples)
from tests.conftest import NEGATIVE, POSITIVE, write_jsonl

QUIET = {"show_progress": False}


@pytest.fixture(scope="module")
def trained(tiny_student, tmp_path_factory):
    """One tiny fast-mode model for the module (the sentiment task of conftest, kNN included), loaded from disk."""
    folder = tmp_path_factory.mktemp("pool_task")
    write_jsonl(folder / "train.json", [{"content": text, "label": "positive"} for text in POSITIVE[:5]] +
                [{"content": text, "label": "negative"} for text in NEGATIVE[:5]])
    write_jsonl(folder / "dev.json", [{"content": text, "label": "positive"} for text in POSITIVE[5:]] +
                [{"content": text, "label": "negative"} for text in NEGATIVE[5:]])
    write_jsonl(folder / "labels.json", [{"labels": ["negative", "positive"]}])
    GTSEngine(mode="fast", student=str(tiny_student), head_steps=20, use_knn=True).train(load_task(folder),
                                                                                         folder / "m")
    model, tokenizer = load_trained(folder / "m")
    assert model.knn is not None
    return SimpleNamespace(model=model, tokenizer=tokenizer, path=folder / "m")


def pool_texts(count=23):
    texts = POSITIVE + NEGATIVE
    texts += [a + "，" + b for a, b in zip(POSITIVE, reversed(NEGATIVE))]  # longer texts: length sorting matters
    return texts[:count]


def write_pool(path: Path, texts) -> tuple[Path, list[int]]:
    """Mixed layouts, labels present but ignored, a blank line after the 3rd record; returns the texts' lines."""
    lines, numbers = [], []
    for index, text in enumerate(texts):
        field = ("content", "text", "sentence")[index % 3]
        lines.append(json.dumps({field: text, "label": "junk"} if index % 2 else {field: text}, ensure_ascii=False))
        numbers.append(len(lines))
        if index == 2:
            lines.append("   ")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, numbers


def collect(output_dir):
    shards = list(iter_pool_results(output_dir))
    return tuple(np.concatenate([getattr(shard, name) for shard in shards])
                 for name in ("line_numbers", "probabilities", "label_ids"))


def counting_predict(monkeypatch, fail_on=None):
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(len(args[2]))
        if fail_on is not None and len(calls) == fail_on:
            raise RuntimeError("simulated crash")
        return predict(*args, **kwargs)

    monkeypatch.setattr(pool_module, "predict", wrapped)
    return calls


def test_shards_equal_predict_and_files_are_complete(trained, tmp_path, monkeypatch):
    source, numbers = write_pool(tmp_path / "pool.jsonl", pool_texts())
    result = label_pool(trained.model, trained.tokenizer, source, tmp_path / "out", shard_size=5, **QUIET)

    assert (result.num_texts, result.num_shards, result.reused_shards) == (23, 5, 0)
    assert result.computed_shards == [0, 1, 2, 3, 4]
    files = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert files == [MANIFEST_FILE] + [f"shard-{index:05d}.safetensors" for index in range(5)]  # no temp files left
    manifest = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())
    assert manifest["complete"] and manifest["shard_size"] == 5
    assert manifest["source"]["path"] == str(source.resolve())
    assert manifest["source"]["size"] == source.stat().st_size
    assert manifest["model"]["labels"] == ["negative", "positive"] and manifest["model"]["use_knn"]
    assert [shard["count"] for shard in manifest["shards"]] == [5, 5, 5, 5, 3]
    assert manifest["totals"]["texts"] == 23 and sum(manifest["totals"]["label_counts"].values()) == 23
    assert result.label_counts == manifest["totals"]["label_counts"]

    lines, probabilities, label_ids = collect(tmp_path / "out")
    assert lines.dtype == np.int64 and probabilities.dtype == np.float32 and label_ids.dtype == np.int64
    assert lines.tolist() == numbers  # the blank line shifts later line numbers; every text keeps its own
    expected = predict(trained.model, trained.tokenizer, [Example(text) for text in pool_texts()])
    np.testing.assert_allclose(probabilities, expected.probabilities, atol=1e-6)
    assert label_ids.tolist() == expected.label_ids.tolist()
    assert [example.text for example in stream_examples(source)] == pool_texts()

    calls = counting_predict(monkeypatch)  # a finished pool: a rerun computes nothing
    again = label_pool(trained.model, trained.tokenizer, source, tmp_path / "out", shard_size=5, **QUIET)
    assert calls == [] and again.computed_shards == [] and again.reused_shards == 5 and again.num_texts == 23


def test_interrupted_labelling_resumes_with_only_the_missing_shards(trained, tmp_path, monkeypatch):
    source, _ = write_pool(tmp_path / "pool.jsonl", pool_texts())
    label_pool(trained.model, trained.tokenizer, source, tmp_path / "reference", shard_size=5, **QUIET)

    counting_predict(monkeypatch, fail_on=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        label_pool(trained.model, trained.tokenizer, source, tmp_path / "out", shard_size=5, **QUIET)
    manifest = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())
    assert not manifest["complete"] and [shard["index"] for shard in manifest["shards"]] == [0, 1]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        MANIFEST_FILE, "shard-00000.safetensors", "shard-00001.safetensors"]

    calls = counting_predict(monkeypatch)
    result = label_pool(trained.model, trained.tokenizer, source, tmp_path / "out", shard_size=5, **QUIET)
    assert calls == [5, 5, 3]  # shards 2, 3 and 4 only
    assert result.computed_shards == [2, 3, 4] and result.reused_shards == 2 and result.num_texts == 23
    for resumed, reference in zip(collect(tmp_path / "out"), collect(tmp_path / "reference")):
        np.testing.assert_array_equal(resumed, reference)


def test_a_changed_source_model_or_shard_size_is_refused(trained, tmp_path):
    source, _ = write_pool(tmp_path / "pool.jsonl", pool_texts(12))
    label_pool(trained.model, trained.tokenizer, source, tmp_path / "out", shard_size=5, **QUIET)

    with pytest.raises(PoolMismatchError, match="shard_size 5"):
        label_pool(trained.model, trained.tokenizer, source, tmp_path / "out", shard_size=4, **QUIET)
    other = copy.deepcopy(trained.model)
    with torch.no_grad():
        other.option_embeddings.add_(0.01)
    with pytest.raises(PoolMismatchError, match="different model"):
        label_pool(other, trained.tokenizer, source, tmp_path / "out", shard_size=5, **QUIET)
    with pytest.raises(PoolMismatchError, match="without the kNN"):
        label_pool(trained.model, trained.tokenizer, source, tmp_path / "out", shard_size=5, use_knn=False, **QUIET)

    with source.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"content": "新的一行"}, ensure_ascii=False) + "\n")
    with pytest.raises(PoolMismatchError) as error:
        label_pool(trained.model, trained.tokenizer, source, tmp_path / "out", shard_size=5, **QUIET)
    message = str(error.value)
    assert "different source" in message and "new output directory" in message and "overwrite=True" in message
    result = label_pool(trained.model, trained.tokenizer, source, tmp_path / "out", shard_size=5, overwrite=True,
                        **QUIET)
    assert result.num_texts == 13 and result.computed_shards == [0, 1, 2]


def test_malformed_line_names_file_and_line_before_any_labelling(trained, tmp_path):
    source, _ = write_pool(tmp_path / "pool.jsonl", pool_texts(10))
    lines = source.read_text(encoding="utf-8").split("\n")
    lines[7] = '{"content": "坏的'  # line 8
    source.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=f"{source}:8: malformed JSON"):
        label_pool(trained.model, trained.tokenizer, source, tmp_path / "out", shard_size=2, **QUIET)
    assert not (tmp_path / "out").exists()  # validated first: nothing computed, nothing written

    lines[7] = '{"content": 3}'
    source.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=rf"{source}:8: expected a string.*'content'"):  # without validation: at line 8
        label_pool(trained.model, trained.tokenizer, source, tmp_path / "out", shard_size=2, validate=False, **QUIET)
    assert json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())["totals"]["texts"] == 6

    array = tmp_path / "pool.json"
    array.write_text(json.dumps([{"content": "一"}]), encoding="utf-8")
    with pytest.raises(DataError, match="JSON array cannot be streamed"):
        label_pool(trained.model, trained.tokenizer, array, tmp_path / "out2", **QUIET)


def test_select_confident_and_confident_examples(trained, tmp_path):
    source, numbers = write_pool(tmp_path / "pool.jsonl", pool_texts())
    label_pool(trained.model, trained.tokenizer, source, tmp_path / "out", shard_size=4, **QUIET)
    lines, probabilities, label_ids = collect(tmp_path / "out")
    top = probabilities.max(axis=1)
    threshold = float(np.median(top))

    confident = select_confident(tmp_path / "out", threshold)
    keep = top >= threshold
    assert confident.line_numbers.tolist() == lines[keep].tolist()
    assert confident.label_ids.tolist() == label_ids[keep].tolist()
    np.testing.assert_array_equal(confident.confidences, top[keep])
    assert len(select_confident(tmp_path / "out", 0.0)) == 23 and len(select_confident(tmp_path / "out", 1.0)) == 0

    examples = list(iter_confident_examples(tmp_path / "out", threshold))
    by_line = dict(zip(numbers, pool_texts()))
    assert [example.text for example in examples] == [by_line[line] for line in confident.line_numbers]
    assert [example.label for example in examples] == confident.labels


def test_cli_label_pool(trained, tmp_path, capsys):
    source, _ = write_pool(tmp_path / "pool.jsonl", pool_texts(9))
    arguments = ["label-pool", "--model", str(trained.path), "--input", str(source), "--output-dir",
                 str(tmp_path / "out"), "--shard-size", "4", "--batch-size", "2"]
    assert main(arguments) == 0
    assert "labelled 9 texts in 3 shards (3 computed, 0 reused)" in capsys.readouterr().out
    assert main(arguments) == 0
    assert "(0 computed, 3 reused)" in capsys.readouterr().out
    assert main(arguments + ["--no-knn"]) == 2
    assert "without the kNN" in capsys.readouterr().err
    assert main(arguments + ["--no-knn", "--overwrite"]) == 0
    assert not json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())["model"]["use_knn"]
