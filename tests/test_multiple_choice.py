"""Multiple choice (CHID-style: each example brings its own candidate answers) through the engine, pipeline and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import pipeline

from gts_hf.data import load_task

from .conftest import NEGATIVE, POSITIVE, write_task_dir


def _records(count: int, offset: int = 0) -> list[dict]:
    """'Which review matches the blank's mood': the right choice is a review of the text's polarity."""
    records = []
    for index in range(offset, offset + count):
        positive = index % 2 == 0
        text = (POSITIVE if positive else NEGATIVE)[index % 8]
        right, wrong = (POSITIVE if positive else NEGATIVE)[(index + 3) % 8], \
            (NEGATIVE if positive else POSITIVE)[(index + 5) % 8]
        choices = [right, wrong, "正面"] if index % 3 else [wrong, "负面", right]
        records.append({"content": f"{text}，#idiom#", "candidates": choices, "answer": choices.index(right)})
    return records


@pytest.fixture()
def choice_dir(tmp_path: Path) -> Path:
    return write_task_dir(tmp_path / "chid", _records)


def test_multiple_choice_trains_saves_and_predicts(choice_dir: Path, tiny_student: Path, tmp_path: Path) -> None:
    from gts_hf.cli import main
    from gts_hf.engine import GTSEngine, evaluate_examples, load_trained

    task = load_task(choice_dir)
    trained = GTSEngine(mode="standard", student=str(tiny_student), training_overrides={"num_train_epochs": 2}) \
        .train(task, output_dir=tmp_path / "model")
    record = trained.record
    assert record["task_type"] == "multiple_choice" and record["finetune"]["steps"] > 0
    assert record["knn"]["skipped"].startswith("multiple choice") and record["head"] == record["knn"]
    assert 0.0 <= trained.test_metrics["accuracy"] <= 1.0

    model, tokenizer = load_trained(tmp_path / "model")
    assert model.config.is_multiple_choice and model.knn is None
    again = evaluate_examples(model, tokenizer, task.test)
    assert again["accuracy"] == pytest.approx(trained.test_metrics["accuracy"])

    chooser = pipeline("gts-few-shot", model=str(tmp_path / "model"))
    example = task.test[0]
    answer = chooser({"text": example.text, "choices": example.choices}, top_k=3)
    assert [item["label"] for item in answer] and {item["label"] for item in answer} == set(example.choices)
    assert sum(item["score"] for item in answer) == pytest.approx(1.0, abs=1e-5)
    streamed = list(chooser(iter([{"text": example.text, "choices": example.choices}])))
    assert streamed[0]["label"] == answer[0]["label"]
    with pytest.raises(ValueError, match="choices"):
        chooser("a text without choices")
    inputs = chooser.preprocess({"text": example.text, "choices": example.choices})  # Pipeline's one-by-one path
    assert chooser.postprocess(chooser.forward(inputs), top_k=1)[0]["label"] == answer[0]["label"]
    with pytest.raises(ValueError, match="choices"):
        chooser.preprocess("a text without choices")

    output = tmp_path / "predictions.json"
    assert main(["predict", "--model", str(tmp_path / "model"), "--input", str(choice_dir / "test.json"),
                 "--output", str(output)]) == 0
    written = json.loads(output.read_text(encoding="utf-8"))
    assert all(label in example.choices for label, example in zip(written["predictions"], task.test))
    np.testing.assert_allclose([sum(row) for row in written["probabilities"]], 1.0, atol=1e-4)


def test_fast_mode_is_the_zero_shot_chooser(choice_dir: Path, tiny_student: Path) -> None:
    from gts_hf.engine import GTSEngine

    trained = GTSEngine(mode="fast", student=str(tiny_student)).train(load_task(choice_dir))
    assert "finetune" not in trained.record and trained.record["head"]["skipped"]
