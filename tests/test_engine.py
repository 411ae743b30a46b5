"""The production line on a tiny random student: modes, the training record, safe saving, save/load round trips."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel

from gts_hf import GTSConfig, GTSEngine, GTSForFewShotClassification, load_task, load_trained, predict
from gts_hf.engine import RECORD_FILE, save_trained

FAST = {"mode": "fast", "head_steps": 50}
STANDARD = {"mode": "standard", "min_finetune_steps": 8, "training_overrides": {"disable_tqdm": True}}


def train(student, data_dir, output_dir=None, **settings):
    settings = {**FAST, **settings}
    return GTSEngine(student=str(student), **settings).train(load_task(data_dir), output_dir=output_dir)


def test_fast_mode_writes_a_complete_model(tiny_student, sentiment_dir, tmp_path):
    trained = train(tiny_student, sentiment_dir, tmp_path / "model")
    files = {path.relative_to(tmp_path / "model").as_posix() for path in (tmp_path / "model").rglob("*")}
    assert {"config.json", "model.safetensors", "tokenizer.json", RECORD_FILE, "eval_results.json",
            "knn/index.faiss", "knn/datastore.safetensors", "knn/config.json"} <= files
    assert not any(name.endswith((".bin", ".pkl", ".pt")) for name in files)
    record = json.loads((tmp_path / "model" / RECORD_FILE).read_text())
    assert record["mode"] == "fast" and record["labels"] == ["negative", "positive"]
    assert 1 <= record["knn"]["k"] <= 32 and 0 <= record["knn"]["lambda"] <= 1
    assert set(trained.test_metrics) >= {"accuracy", "macro_f1", "n", "texts_per_second"}


def test_standard_mode_fine_tunes_and_keeps_the_best_dev_epoch(tiny_student, sentiment_dir):
    trained = train(tiny_student, sentiment_dir, **STANDARD)
    finetune = trained.record["finetune"]
    assert finetune["steps"] >= 8
    assert finetune["best_dev_accuracy"] >= trained.record["zero_shot_dev_accuracy"]


def test_without_dev_the_head_still_learns(tiny_student, sentiment_dir):
    (sentiment_dir / "dev.json").unlink()
    task = load_task(sentiment_dir)
    assert not task.dev
    start, _ = GTSEngine(student=str(tiny_student), **FAST).build_student(task)
    trained = train(tiny_student, sentiment_dir)
    assert trained.record["head"] == {"head_steps": 50, "head_best_step": 50, "head_dev_accuracy": None}
    assert not torch.equal(trained.model.option_embeddings, start.option_embeddings)


def test_pair_task_trains_with_the_similarity_term(tiny_student, pair_dir):
    trained = train(tiny_student, pair_dir, **STANDARD)
    assert trained.model.config.task_type == "similarity"
    assert trained.model.pair_weight.abs().sum() > 0  # the head learned to use the sentences' cosine
    prediction = trained.predict(load_task(pair_dir).dev)
    assert prediction.pair_similarity is not None and prediction.probabilities.shape == (4, 2)


def test_same_seed_same_model(tiny_student, sentiment_dir):
    first, second = (train(tiny_student, sentiment_dir) for _ in range(2))
    assert torch.equal(first.model.option_embeddings, second.model.option_embeddings)


def test_reload_gives_identical_predictions_knn_included(tiny_student, sentiment_dir, tmp_path):
    trained = train(tiny_student, sentiment_dir, tmp_path / "model")
    examples = load_task(sentiment_dir).test
    before = trained.predict(examples)
    model, tokenizer = load_trained(tmp_path / "model")
    assert model.knn is not None and model.knn.settings == trained.model.knn.settings
    after = predict(model, tokenizer, examples)
    np.testing.assert_allclose(after.probabilities, before.probabilities, atol=1e-6)


def test_auto_classes_load_the_gts_model(tiny_student, sentiment_dir, tmp_path):
    train(tiny_student, sentiment_dir, tmp_path / "model")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "model"), GTSConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path / "model"), GTSForFewShotClassification)


def test_failed_training_leaves_the_previous_model_intact(tiny_student, sentiment_dir, tmp_path, monkeypatch):
    output = tmp_path / "model"
    train(tiny_student, sentiment_dir, output)
    before = {path.name: path.read_bytes() for path in output.iterdir() if path.is_file()}

    def broken_save(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(GTSForFewShotClassification, "save_pretrained", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        train(tiny_student, sentiment_dir, output, seed=7)
    assert {path.name: path.read_bytes() for path in output.iterdir() if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model", "sentiment"]  # no staging folder left


def test_output_dir_with_foreign_files_is_refused(tiny_student, sentiment_dir, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="does not hold a gts-hf model"):
        train(tiny_student, sentiment_dir, tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"


def test_long_texts_are_truncated_to_max_seq_length(tiny_student, sentiment_dir):
    trained = train(tiny_student, sentiment_dir, max_seq_length=16)
    long_text = "很好" * 500
    prediction = trained.predict(load_task(sentiment_dir).test[:1] + [type(load_task(sentiment_dir).test[0])(long_text)])
    assert prediction.probabilities.shape == (2, 2)


def test_zero_shot_option_scoring_before_training(tiny_student, sentiment_dir):
    model, tokenizer = GTSEngine(student=str(tiny_student)).build_student(load_task(sentiment_dir))
    probs = model.score_options(tokenizer, ["很好", "很差"], ["正面", "负面", "两句话意思相同"])
    assert probs.shape == (2, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(2))
    expected = model.encode_texts(tokenizer, ["负面", "正面"])
    assert torch.allclose(torch.nn.functional.normalize(model.option_embeddings, dim=-1), expected, atol=1e-5)


def test_save_trained_is_reusable_for_an_existing_model_dir(tiny_student, sentiment_dir, tmp_path):
    trained = train(tiny_student, sentiment_dir, tmp_path / "model")
    save_trained(trained, tmp_path / "model")
    assert (tmp_path / "model" / "knn" / "index.faiss").is_file()


def test_label_prior_blends_the_zero_shot_scores(tiny_student, sentiment_dir, tmp_path):
    task = load_task(sentiment_dir)
    model, tokenizer = GTSEngine(student=str(tiny_student), **FAST).build_student(task)
    zero_shot = predict(model, tokenizer, task.dev, use_knn=False).model_probabilities
    with torch.no_grad():
        model.option_embeddings.add_(torch.randn_like(model.option_embeddings))  # stands for a trained head
        model.log_logit_scale.fill_(3.0)
    trained = predict(model, tokenizer, task.dev, use_knn=False).model_probabilities
    model.set_label_prior(tokenizer, 0.5)
    blended = predict(model, tokenizer, task.dev, use_knn=False).model_probabilities
    expected = torch.softmax(0.5 * torch.log(torch.from_numpy(zero_shot)) + 0.5 * torch.log(torch.from_numpy(trained)),
                             -1).numpy()  # a product of the two experts
    np.testing.assert_allclose(blended, expected, atol=1e-5)
    model.save_pretrained(tmp_path / "model")
    reloaded = GTSForFewShotClassification.from_pretrained(tmp_path / "model")
    assert reloaded.config.label_prior_weight == 0.5 and torch.equal(reloaded.label_prior, model.label_prior)
    with pytest.raises(ValueError, match="within"):
        model.set_label_prior(tokenizer, 1.5)


def test_engine_records_the_label_prior(tiny_student, sentiment_dir):
    trained = train(tiny_student, sentiment_dir)
    assert trained.record["label_prior"]["weight"] == 0.5
    assert trained.model.config.label_prior_weight == 0.5
    assert train(tiny_student, sentiment_dir, label_prior_weight=0.0).model.config.label_prior_weight == 0.0
    with pytest.raises(ValueError, match="label_prior_weight"):
        GTSEngine(student=str(tiny_student), label_prior_weight=-0.1)
