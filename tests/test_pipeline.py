"""The `gts-few-shot` pipeline: input forms, output format, kNN, and the same predictions in a new process."""

import json
import subprocess
import sys

import numpy as np
import pytest
from transformers import pipeline

from gts_hf import GTSEngine, load_task

from .conftest import PAIRS_SAME


@pytest.fixture()
def model_dir(tiny_student, sentiment_dir, tmp_path):
    GTSEngine(mode="fast", student=str(tiny_student), head_steps=50, use_knn=True).train(load_task(sentiment_dir),
                                                                                         tmp_path / "m")
    return tmp_path / "m"


def test_single_text_list_and_top_k(model_dir):
    classifier = pipeline("gts-few-shot", model=str(model_dir))
    single = classifier("这个手机很好用")
    assert isinstance(single, list) and len(single) == 1 and set(single[0]) == {"label", "score"}
    assert single[0]["label"] in ("negative", "positive")
    batch = classifier(["很好", "很差", "还可以"], batch_size=2)
    assert len(batch) == 3 and all(isinstance(item, dict) for item in batch)
    ranked = classifier("很好", top_k=2)
    assert [item["label"] for item in ranked] != [] and abs(sum(item["score"] for item in ranked) - 1) < 1e-5
    assert ranked[0]["score"] >= ranked[1]["score"]


def test_batched_equals_one_by_one_and_knn_switch(model_dir):
    classifier = pipeline("gts-few-shot", model=str(model_dir))
    texts = ["很好", "质量太差了，用了两天就坏了", "物流很快"]
    batched = classifier(texts, top_k=2)
    for text, expected in zip(texts, batched):
        one = classifier(text, top_k=2)
        assert [item["label"] for item in one] == [item["label"] for item in expected]
        np.testing.assert_allclose([i["score"] for i in one], [i["score"] for i in expected], atol=1e-5)
    assert classifier.model.knn is not None
    classifier(texts, use_knn=False)


def test_pair_inputs(tiny_student, pair_dir, tmp_path):
    GTSEngine(mode="fast", student=str(tiny_student), head_steps=20).train(load_task(pair_dir), tmp_path / "p")
    classifier = pipeline("gts-few-shot", model=str(tmp_path / "p"))
    a, b = PAIRS_SAME[0]
    assert classifier({"text": a, "text_pair": b})[0]["label"] in ("0", "1")
    assert len(classifier([(a, b), {"text": b, "text_pair": a}])) == 2
    with pytest.raises(ValueError, match="sentence pairs"):
        classifier("a single text")


def test_bad_inputs_get_clear_errors(model_dir):
    classifier = pipeline("gts-few-shot", model=str(model_dir))
    with pytest.raises(ValueError, match="empty text"):
        classifier("   ")
    with pytest.raises(ValueError, match="takes a string"):
        classifier([42])


def test_new_process_gives_the_same_predictions(model_dir):
    texts = ["很好用", "太差了", "物流很快，好评"]
    here = pipeline("gts-few-shot", model=str(model_dir))(texts, top_k=2)
    script = ("import json, sys, gts_hf; from transformers import pipeline; "
              "print(json.dumps(pipeline('gts-few-shot', model=sys.argv[1])(json.loads(sys.argv[2]), top_k=2)))")
    result = subprocess.run([sys.executable, "-c", script, str(model_dir), json.dumps(texts)],
                            capture_output=True, text=True, check=True)
    there = json.loads(result.stdout.strip().splitlines()[-1])
    for mine, theirs in zip(here, there):
        assert [i["label"] for i in mine] == [i["label"] for i in theirs]
        np.testing.assert_allclose([i["score"] for i in mine], [i["score"] for i in theirs], atol=1e-6)


def test_bf16_on_cpu_agrees_with_full_precision(model_dir):
    classifier = pipeline("gts-few-shot", model=str(model_dir))
    texts = ["很好", "质量太差了，用了两天就坏了", "物流很快"]
    full = classifier(texts, top_k=2, precision="fp32")
    half = classifier(texts, top_k=2, precision="bf16")
    for a, b in zip(full, half):
        np.testing.assert_allclose([i["score"] for i in a], [i["score"] for i in b], atol=0.05)
    with pytest.raises(ValueError, match="precision must be one of"):
        classifier("很好", precision="fp8")
