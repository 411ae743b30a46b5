"""The production line on a tiny random student: modes, the training record, safe saving, save/load round trips."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel

from gts_hf import GTSConfig, GTSEngine, GTSForFewShotClassification, load_task, load_trained, predict
from gts_hf.data import OPTION_TEMPLATES
from gts_hf.engine import (KNN_OFF, NO_BODY_FOR_TWO_FEW_SHOT_LABELS, RECORD_FILE, TEMPLATES_ONLY_FOR_CLASSES,
                           save_trained)
from gts_hf.trainer import confident_per_label

from .conftest import NEGATIVE, POSITIVE, write_jsonl

FAST = {"mode": "fast", "head_steps": 50}
STANDARD = {"mode": "standard", "min_finetune_steps": 8, "training_overrides": {"disable_tqdm": True}}
#: 4-5 texts per label is beyond 3, so the two-label fixtures get a body stage (more steps, a fainter prior)
BODY_ON_TWO_LABELS = {"tuned_shots": 3}


def train(student, data_dir, output_dir=None, **settings):
    settings = {**FAST, **settings}
    return GTSEngine(student=str(student), **settings).train(load_task(data_dir), output_dir=output_dir)


def test_fast_mode_writes_a_complete_model(tiny_student, sentiment_dir, tmp_path):
    trained = train(tiny_student, sentiment_dir, tmp_path / "model", use_knn=True)
    files = {path.relative_to(tmp_path / "model").as_posix() for path in (tmp_path / "model").rglob("*")}
    assert {"config.json", "model.safetensors", "tokenizer.json", RECORD_FILE, "eval_results.json",
            "knn/index.faiss", "knn/datastore.safetensors", "knn/config.json"} <= files
    assert not any(name.endswith((".bin", ".pkl", ".pt")) for name in files)
    record = json.loads((tmp_path / "model" / RECORD_FILE).read_text())
    assert record["mode"] == "fast" and record["labels"] == ["negative", "positive"]
    assert 1 <= record["knn"]["k"] <= 32 and 0 <= record["knn"]["lambda"] <= 1
    assert set(trained.test_metrics) >= {"accuracy", "macro_f1", "n", "texts_per_second"}


def test_knn_is_off_by_default(tiny_student, sentiment_dir, tmp_path):
    trained = train(tiny_student, sentiment_dir, tmp_path / "model")
    assert trained.record["knn"] == KNN_OFF and trained.model.knn is None
    assert not (tmp_path / "model" / "knn").exists()
    assert load_trained(tmp_path / "model")[0].knn is None


def test_standard_mode_fine_tunes_on_request_and_keeps_the_best_dev_epoch(tiny_student, sentiment_dir):
    trained = train(tiny_student, sentiment_dir, **STANDARD, finetune="on")
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


@pytest.mark.parametrize("pair_head, task_type, cosine", [
    ("auto", "similarity", True), ("auto", "nli", False), ("cosine", "nli", True), ("joint", "similarity", False),
    ("auto", "coreference", True), ("joint", "coreference", False)])
def test_the_cosine_pair_head_is_for_similarity_and_coreference_unless_asked(pair_head, task_type, cosine):
    task = SimpleNamespace(is_pair=task_type != "coreference", is_coreference=task_type == "coreference",
                           task_type=task_type)
    assert GTSEngine(pair_head=pair_head).cosine_pair_head(task) is cosine
    single = SimpleNamespace(is_pair=False, is_coreference=False, task_type="classification")
    assert GTSEngine(pair_head=pair_head).cosine_pair_head(single) is False


@pytest.mark.parametrize("pair_head", ["cosine", "joint"])
def test_pair_head_cosine_ties_the_options_and_drops_the_prior(tiny_student, pair_dir, pair_head):
    trained = train(tiny_student, pair_dir, pair_head=pair_head, use_knn=False)
    options = trained.model.option_embeddings
    if pair_head == "cosine":  # started tied, held near the tie; the constant start is never the kept step
        assert torch.nn.functional.cosine_similarity(options[0], options[1], dim=0) > 0.99
        assert trained.record["head"]["head_best_step"] > 0
    assert ("skipped" in trained.record["label_prior"]) is (pair_head == "cosine")
    assert (trained.model.config.label_prior_weight == 0) is (pair_head == "cosine")


@pytest.mark.parametrize("pair_head", ["cosine", "joint"])
def test_cosine_led_pairs_skip_the_body_stage_and_knn(tiny_student, pair_dir, tmp_path, pair_head):
    trained = train(tiny_student, pair_dir, tmp_path / "model", **STANDARD, **BODY_ON_TWO_LABELS, body_steps=3,
                    pair_head=pair_head, use_knn=True)
    cosine = pair_head == "cosine"
    assert ("skipped" in trained.record["body"]) is cosine and ("kept" in trained.record["body"]) is not cosine
    assert ("skipped" in trained.record["knn"]) is cosine and (trained.model.knn is None) is cosine
    assert (tmp_path / "model" / "knn").is_dir() is not cosine
    reloaded, tokenizer = load_trained(tmp_path / "model")
    assert (reloaded.knn is None) is cosine
    assert predict(reloaded, tokenizer, load_task(pair_dir).dev).label_ids.shape == (4,)


def test_tied_options_cancel_out_of_the_scores(tiny_student, pair_dir):
    model, _ = GTSEngine(student=str(tiny_student), **FAST).build_student(load_task(pair_dir))
    model.tie_label_options()
    with torch.no_grad():
        model.pair_weight.copy_(torch.tensor([1.0, -1.0]))
        embeddings = torch.nn.functional.normalize(torch.randn(3, model.config.hidden_size), dim=-1)
        logits = model.score(embeddings, torch.full((3,), 0.5))
    margins = logits[:, 1] - logits[:, 0]  # the same for every input: only the (equal) cosine moves it
    assert torch.allclose(margins, margins[:1].expand_as(margins), atol=1e-5)


def test_tied_options_refuse_single_texts(tiny_student, sentiment_dir):
    from gts_hf.trainer import fit_head

    model, _ = GTSEngine(student=str(tiny_student), **FAST).build_student(load_task(sentiment_dir))
    with pytest.raises(ValueError, match="tie_options needs pair features"):
        fit_head(model, {"embeddings": torch.zeros(2, model.config.hidden_size)}, torch.tensor([0, 1]),
                 tie_options=True)


def test_same_seed_same_model(tiny_student, sentiment_dir):
    first, second = (train(tiny_student, sentiment_dir) for _ in range(2))
    assert torch.equal(first.model.option_embeddings, second.model.option_embeddings)


def test_reload_gives_identical_predictions_knn_included(tiny_student, sentiment_dir, tmp_path):
    trained = train(tiny_student, sentiment_dir, tmp_path / "model", use_knn=True)
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
    assert torch.allclose(probs.sum(-1).cpu(), torch.ones(2))  # .cpu(): the model is on the GPU where there is one
    expected = model.encode_texts(tokenizer, ["负面", "正面"])
    assert torch.allclose(torch.nn.functional.normalize(model.option_embeddings, dim=-1), expected, atol=1e-5)


def test_save_trained_is_reusable_for_an_existing_model_dir(tiny_student, sentiment_dir, tmp_path):
    trained = train(tiny_student, sentiment_dir, tmp_path / "model", use_knn=True)
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


def test_standard_mode_reshapes_the_encoder_before_the_head(tiny_student, sentiment_dir):
    trained = train(tiny_student, sentiment_dir, **STANDARD, **BODY_ON_TWO_LABELS, body_steps=3)
    body = trained.record["body"]
    assert body["body_steps"] == 5 and body["body_loss_first"] is not None and body["head"]["head_steps"] == 50
    assert body["kept"] == (body["dev_accuracy_after"] > body["dev_accuracy_before"])  # the rule for two labels
    assert "finetune" not in trained.record  # standard's default: no option fine-tuning for labelled classes


def test_two_labels_with_few_texts_per_label_skip_the_body_stage(tiny_student, sentiment_dir):
    assert train(tiny_student, sentiment_dir, **STANDARD, body_steps=4).record["body"] == \
        NO_BODY_FOR_TWO_FEW_SHOT_LABELS  # 5 per label, at most the 16 the defaults were tuned at


def with_a_third_label(data_dir):
    """The sentiment fixture with a "neutral" label (one training text)."""
    records = [json.loads(line) for line in (data_dir / "train.json").read_text().splitlines()]
    write_jsonl(data_dir / "train.json", records + [{"text": "It was fine, nothing more.", "label": "neutral"}])
    write_jsonl(data_dir / "labels.json", [{"labels": ["negative", "neutral", "positive"]}])
    return data_dir


@pytest.mark.parametrize("dev_accuracies", [(0.5, 0.75), (0.75, 0.75), (0.75, 0.5)])
def test_with_more_than_two_labels_the_body_stage_is_kept_whatever_dev_says(tiny_student, sentiment_dir, monkeypatch,
                                                                            dev_accuracies):
    with_a_third_label(sentiment_dir)
    answers = iter(dev_accuracies)
    monkeypatch.setattr(GTSEngine, "_dev_accuracy_with_prior", lambda *args: next(answers))
    body = train(tiny_student, sentiment_dir, **STANDARD, body_steps=2, self_training_pool=0).record["body"]
    assert body["kept"] and body["dev_accuracy_before"] == dev_accuracies[0]


def holds_a_frozen_pretrained_encoder(model):
    """Whether the model's pretrained encoder shares the trained one's word embeddings and trains nothing else."""
    shared = model.encoder.get_input_embeddings()
    return model.pretrained_encoder.get_input_embeddings() is shared and \
        not any(param.requires_grad for param in model.pretrained_encoder.parameters() if param is not shared.weight)


def test_more_than_two_labels_keep_the_pretrained_encoder_beside_the_reshaped_one(tiny_student, sentiment_dir,
                                                                                  tmp_path):
    trained = train(tiny_student, with_a_third_label(sentiment_dir), tmp_path / "model", **STANDARD, body_steps=2)
    model, width = trained.model, AutoConfig.from_pretrained(tiny_student).hidden_size
    assert trained.record["body"]["pretrained_encoder_kept"] and model.config.keep_pretrained_encoder
    assert model.option_embeddings.shape == model.label_prior.shape == (3, 2 * width)
    untrained = AutoModel.from_pretrained(tiny_student).state_dict()
    for name, value in model.pretrained_encoder.state_dict().items():  # frozen where it started
        assert torch.equal(value, untrained[name]), name
    assert holds_a_frozen_pretrained_encoder(model)
    examples = load_task(sentiment_dir).test
    embeddings = predict(model, trained.tokenizer, examples).embeddings
    assert embeddings.shape[1] == 2 * width and np.allclose(np.linalg.norm(embeddings[:, :width], axis=1), 0.5 ** 0.5)

    from safetensors import safe_open

    with safe_open(tmp_path / "model" / "model.safetensors", "pt") as stored:  # the shared word embeddings once
        assert sum("word_embeddings" in key for key in stored.keys()) == 1
    reloaded, tokenizer = load_trained(tmp_path / "model")
    assert holds_a_frozen_pretrained_encoder(reloaded)  # loading makes every weight trainable: frozen again
    assert np.allclose(predict(reloaded, tokenizer, examples).probabilities,
                       predict(model, trained.tokenizer, examples).probabilities, atol=1e-5)


def test_a_pretrained_encoder_is_added_once_before_any_datastore_and_keeps_its_word_embeddings_frozen(
        tiny_student, sentiment_dir):
    from gts_hf.engine import _encoder_copy
    from gts_hf.retrieval import KNNDatastore
    from gts_hf.trainer import GTSTrainer
    from gts_hf.training_args import GTSTrainingArguments

    task = load_task(with_a_third_label(sentiment_dir))
    model, tokenizer = GTSEngine(student=str(tiny_student)).build_student(task)
    model.knn = object.__new__(KNNDatastore)
    with pytest.raises(ValueError, match="before building the kNN datastore"):
        model.add_pretrained_encoder(_encoder_copy(model))
    model.knn = None
    model.add_pretrained_encoder(_encoder_copy(model))
    with pytest.raises(ValueError, match="already holds a pretrained encoder"):
        model.add_pretrained_encoder(_encoder_copy(model))
    with pytest.raises(ValueError, match="no trained encoder"):
        GTSForFewShotClassification.from_backbone(tiny_student, model.config)
    args = GTSTrainingArguments(freeze_word_embeddings=False, eval_strategy="no")
    GTSTrainer(model=model, args=args, train_examples=task.train, processing_class=tokenizer)
    assert not model.encoder.get_input_embeddings().weight.requires_grad  # shared: it would move both encoders


def test_self_training_beside_the_pretrained_encoder_sets_aside_the_head_alone(tiny_student, sentiment_dir):
    write_jsonl(with_a_third_label(sentiment_dir) / "unlabeled.json", [{"text": text} for text in POSITIVE + NEGATIVE])
    engine = GTSEngine(student=str(tiny_student), **STANDARD, body_steps=2, self_training_per_label=1)
    trained = engine.train(load_task(sentiment_dir))
    assert trained.record["body"]["pretrained_encoder_kept"] and "kept" in trained.record["self_training"]
    other = trained.other_heads["self_training"]
    assert other["option_embeddings"].shape == trained.model.option_embeddings.shape
    assert not any(name.startswith(("encoder.", "pretrained_encoder.")) for name in other)


@pytest.mark.parametrize("setting, folder", [({"keep_pretrained_encoder": False}, "three labels"),
                                             (BODY_ON_TWO_LABELS, "two labels")])
def test_the_pretrained_encoder_is_left_out_when_asked_or_with_two_labels(tiny_student, sentiment_dir, setting, folder):
    data_dir = with_a_third_label(sentiment_dir) if folder == "three labels" else sentiment_dir
    trained = train(tiny_student, data_dir, **STANDARD, body_steps=2, **setting)
    assert trained.record["body"]["pretrained_encoder_kept"] is False and trained.model.pretrained_encoder is None
    assert trained.model.option_embeddings.shape[1] == AutoConfig.from_pretrained(tiny_student).hidden_size


@pytest.mark.parametrize("train_size, labels, tuned, steps, prior", [
    (32, 2, 16, 40, 0.5), (16, 2, 16, 40, 0.5), (928, 119, 16, 40, 0.5),  # up to 16 per label: as set
    (128, 2, 16, 160, 0.125), (384, 6, 16, 160, 0.125), (100, 2, 16, 125, 0.16), (128, 2, 0, 40, 0.5),
    (128, 2, 32, 80, 0.25)])
def test_more_texts_per_label_lengthen_the_body_stage_and_weaken_the_prior(train_size, labels, tuned, steps, prior):
    task = SimpleNamespace(train=[None] * train_size, labels=[str(label) for label in range(labels)])
    engine = GTSEngine(body_steps=40, label_prior_weight=0.5, tuned_shots=tuned)
    assert engine.body_steps_for(task) == steps and engine.label_prior_weight_for(task) == pytest.approx(prior)


@pytest.mark.parametrize("mode, finetune, choices, expected", [
    ("standard", "auto", False, False), ("standard", "auto", True, True), ("advanced", "auto", False, True),
    ("standard", "on", False, True), ("advanced", "off", True, False), ("fast", "on", True, False)])
def test_option_fine_tuning_runs_where_it_is_the_stage_that_learns(mode, finetune, choices, expected):
    task = SimpleNamespace(is_multiple_choice=choices)
    assert GTSEngine(mode=mode, finetune=finetune).fine_tunes(task) is expected


@pytest.mark.parametrize("setting, value, message", [("finetune", "yes", "finetune must be one of"),
                                                     ("pair_head", "cross", "pair_head must be one of"),
                                                     ("pair_anchor_weight", -1.0, "pair_anchor_weight must be >= 0"),
                                                     ("self_training_pool", -1, "self_training_pool must be >= 0"),
                                                     ("self_training_per_label", 0,
                                                      "self_training_per_label must be >= 1"),
                                                     ("tuned_shots", -1, "tuned_shots must be >= 0"),
                                                     ("option_template", "It is positive.", "exactly one '{}' slot")])
def test_bad_settings_are_refused(setting, value, message):
    with pytest.raises(ValueError, match=message):
        GTSEngine(**{setting: value})


@pytest.mark.parametrize("stage, dev_accuracies, kept", [
    ("_train_body", (0.5, 0.75), True), ("_train_body", (0.75, 0.75), False),  # the body stage must raise it
    ("_self_train", (0.75, 0.75), True), ("_self_train", (0.75, 0.5), False)])  # self-training must not lower it
def test_a_stage_is_undone_when_dev_accuracy_says_so(tiny_student, sentiment_dir, monkeypatch, stage, dev_accuracies,
                                                     kept):
    write_jsonl(sentiment_dir / "unlabeled.json", [{"text": text} for text in POSITIVE + NEGATIVE])
    task = load_task(sentiment_dir)
    engine = GTSEngine(student=str(tiny_student), **{**STANDARD, "head_steps": 50}, body_steps=3)
    model, tokenizer = engine.build_student(task)
    engine._fit_head(model, tokenizer, task)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    answers = iter(dev_accuracies)
    monkeypatch.setattr(GTSEngine, "_dev_accuracy_with_prior", lambda *args: next(answers))
    assert getattr(engine, stage)(model, tokenizer, task)["kept"] is kept
    unchanged = all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    assert unchanged is not kept
    if stage == "_self_train":  # the head set aside: the one before it where kept, the self-trained one where undone
        other = engine._other_heads["self_training"]
        assert other and "label_prior" not in other and not any(name.startswith("encoder.") for name in other)
        assert all(torch.equal(tensor, before[name]) for name, tensor in other.items()) is kept


def test_dev_accuracy_with_prior_leaves_the_model_as_it_was(tiny_student, sentiment_dir):
    task = load_task(sentiment_dir)
    engine = GTSEngine(student=str(tiny_student), **FAST)
    model, tokenizer = engine.build_student(task)
    prior = model.label_prior.clone()
    assert 0 <= engine._dev_accuracy_with_prior(model, tokenizer, task) <= 1
    assert model.config.label_prior_weight == 0 and torch.equal(model.label_prior, prior)


@pytest.mark.parametrize("label_texts", [True, False])
def test_body_stage_trains_every_layer_but_the_word_embeddings(tiny_student, sentiment_dir, label_texts):
    from gts_hf.trainer import train_body_contrastive

    task = load_task(sentiment_dir)
    model, tokenizer = GTSEngine(student=str(tiny_student), **FAST).build_student(task)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    flags = {name: param.requires_grad for name, param in model.named_parameters()}
    summary = train_body_contrastive(model, tokenizer, task.train, steps=3, learning_rate=1e-3,
                                     label_texts=label_texts)
    assert summary["body_steps"] == 3 and summary["body_label_texts"] is label_texts
    changed = {name for name, param in model.named_parameters() if not torch.equal(param, before[name])}
    word_embeddings = next(name for name, param in model.named_parameters()
                           if param is model.encoder.get_input_embeddings().weight)
    assert word_embeddings not in changed and "option_embeddings" not in changed
    assert any(".layer.0." in name for name in changed) and any(".layer.1." in name for name in changed)
    assert {name: param.requires_grad for name, param in model.named_parameters()} == flags  # restored


def test_body_stage_is_off_in_fast_mode_and_with_zero_steps(tiny_student, sentiment_dir):
    assert "body" not in train(tiny_student, sentiment_dir).record
    assert "body" not in train(tiny_student, sentiment_dir, **STANDARD, body_steps=0).record


def test_class_balanced_batches_hold_same_label_pairs():
    import random

    from gts_hf.trainer import class_balanced_batch

    by_label = {label: list(range(label * 10, label * 10 + 10)) for label in range(20)}
    batch, labels = class_balanced_batch(by_label, 32, random.Random(0))
    assert len(batch) == 32 and len(set(labels)) == 16 and all(labels.count(label) == 2 for label in set(labels))
    assert all(index // 10 == label for index, label in zip(batch, labels))
    two_labels = {0: list(range(16)), 1: list(range(16, 32))}
    batch, labels = class_balanced_batch(two_labels, 32, random.Random(0))
    assert sorted(batch) == list(range(32))  # the whole training set when it fits in one batch


def test_embedding_by_length_matches_one_padded_batch(tiny_student, sentiment_dir):
    from gts_hf.inference import encode_examples
    from gts_hf.trainer import embed_by_length

    task = load_task(sentiment_dir)
    model, tokenizer = GTSEngine(student=str(tiny_student), **FAST).build_student(task)
    texts = [example.text * (1 + index % 5) for index, example in enumerate(task.train)]  # mixed lengths
    inputs = encode_examples(tokenizer, model.config, texts)
    model.eval()
    with torch.no_grad():
        padded = model.embed(inputs["input_ids"], inputs["attention_mask"])
        by_length = embed_by_length(model, inputs["input_ids"], inputs["attention_mask"], chunk_size=3)
    assert torch.allclose(padded, by_length, atol=1e-5)


def test_body_interpolation_averages_the_trained_and_starting_weights(tiny_student, sentiment_dir):
    from gts_hf.trainer import train_body_contrastive

    task = load_task(sentiment_dir)
    engine = GTSEngine(student=str(tiny_student), **FAST)
    outcomes = {}
    for interpolation in (0.0, 0.5, 1.0):
        model, tokenizer = engine.build_student(task)
        start = {name: param.detach().clone() for name, param in model.encoder.named_parameters()}
        torch.manual_seed(0)  # the same dropout masks in every run
        train_body_contrastive(model, tokenizer, task.train, steps=3, learning_rate=1e-3, interpolation=interpolation)
        outcomes[interpolation] = {name: param.detach() - start[name] for name, param in model.encoder.named_parameters()}
    assert all(torch.equal(delta, torch.zeros_like(delta)) for delta in outcomes[0.0].values())
    assert all(torch.allclose(outcomes[0.5][name], outcomes[1.0][name] / 2, atol=1e-6) for name in outcomes[1.0])
    with pytest.raises(ValueError, match="body_interpolation must be within"):
        GTSEngine(student=str(tiny_student), body_interpolation=1.5)


def test_body_stage_checkpointing_changes_memory_not_results(tiny_student, sentiment_dir):
    from gts_hf.trainer import train_body_contrastive

    task = load_task(sentiment_dir)
    engine = GTSEngine(student=str(tiny_student), **FAST)
    weights = []
    for checkpointing in (False, True):
        model, tokenizer = engine.build_student(task)
        torch.manual_seed(0)
        train_body_contrastive(model, tokenizer, task.train, steps=3, learning_rate=1e-3,
                               gradient_checkpointing=checkpointing)
        assert not any(getattr(module, "gradient_checkpointing", False) for module in model.encoder.modules())
        weights.append(dict(model.encoder.named_parameters()))
    assert all(torch.allclose(weights[0][name], weights[1][name], atol=1e-6) for name in weights[0])
    from gts_hf.trainer import _start_checkpointing, _stop_checkpointing

    model, _ = engine.build_student(task)
    assert _start_checkpointing(model.encoder, True)  # the tiny BERT supports it: the test compared two real modes
    assert any(getattr(module, "gradient_checkpointing", False) for module in model.encoder.modules())
    assert not _start_checkpointing(model.encoder, True)  # already on: left to whoever turned it on
    _stop_checkpointing(model.encoder)
    assert not _start_checkpointing(model.encoder, False)


def test_self_training_adds_the_surest_pool_texts_of_each_label(tiny_student, sentiment_dir):
    write_jsonl(sentiment_dir / "unlabeled.json", [{"text": text} for text in POSITIVE + NEGATIVE])
    task = load_task(sentiment_dir)
    trained = train(tiny_student, sentiment_dir, **STANDARD, body_steps=0, self_training_per_label=1)
    record = trained.record["self_training"]
    assert record["pool"] == len(task.unlabeled) and record["per_label"] == 5  # 1 × the 5 shots per label
    assert 0 < record["pseudo_labelled"] <= 10 and record["head"]["head_steps"] == 50
    assert record["kept"] == (record["dev_accuracy_after"] >= record["dev_accuracy_before"])
    assert trained.model.config.label_prior_weight == 0.5  # the prior is blended in once, after self-training
    assert "self_training" not in train(tiny_student, sentiment_dir).record  # fast mode
    skipped = train(tiny_student, sentiment_dir, **STANDARD, body_steps=0, self_training_pool=0).record
    assert "self_training" not in skipped


def test_the_label_prior_fades_beyond_the_tuned_shots(tiny_student, sentiment_dir):
    beyond = train(tiny_student, sentiment_dir, **STANDARD, body_steps=0, tuned_shots=1)  # 5 per label: 5 × tuned
    assert beyond.model.config.label_prior_weight == pytest.approx(0.1)  # 0.5 / 5, blended in once at the end


def test_self_training_needs_an_unlabelled_pool(tiny_student, sentiment_dir):
    record = train(tiny_student, sentiment_dir, **STANDARD, body_steps=0).record
    assert record["self_training"] == {"skipped": "no unlabelled texts (unlabeled.json in the data folder, or "
                                                  "--unlabeled)"}


def test_confident_per_label_keeps_every_label_represented():
    probabilities = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3], [0.45, 0.55], [0.95, 0.05]])
    rows, labels = confident_per_label(probabilities, 2)
    assert rows.tolist() == [5, 0, 2, 4] and labels.tolist() == [0, 0, 1, 1]
    rows, labels = confident_per_label(probabilities, 10)  # fewer predicted than asked: all of them
    assert sorted(rows.tolist()) == list(range(6))


def test_an_option_template_puts_each_label_text_in_a_sentence(tiny_student, sentiment_dir, tmp_path):
    texts = load_task(sentiment_dir).option_texts()
    trained = train(tiny_student, sentiment_dir, tmp_path / "model", option_template="It is {}.")
    assert trained.record["option_template"] == {"template": "It is {}."}
    assert trained.model.config.label_options == [f"It is {text}." for text in texts]
    assert trained.record["label_options"] == texts  # the task's own texts, as given
    assert load_trained(tmp_path / "model")[0].config.label_options == [f"It is {text}." for text in texts]
    assert "option_template" not in train(tiny_student, sentiment_dir, option_template=None).record
    bare = train(tiny_student, sentiment_dir, option_template="{}")
    assert bare.record["option_template"] == {"template": "{}"} and bare.model.config.label_options == texts


def test_auto_option_template_is_the_default(tiny_student, sentiment_dir):
    assert "dev_log_loss" in train(tiny_student, sentiment_dir).record["option_template"]


def test_auto_option_template_takes_the_lowest_dev_log_loss(tiny_student, sentiment_dir):
    record = train(tiny_student, sentiment_dir, option_template="auto").record["option_template"]
    losses = record["dev_log_loss"]
    assert list(losses) == list(OPTION_TEMPLATES["zh"])  # the fixture's texts are Chinese
    assert record["template"] == min(losses, key=losses.get)
    (sentiment_dir / "dev.json").unlink()
    without_dev = train(tiny_student, sentiment_dir, option_template="auto").record["option_template"]
    assert without_dev["template"] == "{}" and "no dev data" in without_dev["skipped"]


def test_option_templates_are_for_single_text_classes(tiny_student, pair_dir):
    record = train(tiny_student, pair_dir, option_template="It is {}.").record
    assert record["option_template"] == TEMPLATES_ONLY_FOR_CLASSES


def test_encoded_examples_are_reused_until_the_encoder_changes(tiny_student, sentiment_dir, monkeypatch):
    """The dev and training texts are embedded once per encoder state; changing a weight in place, restoring saved
    weights or another model embeds them again."""
    import gts_hf.engine as engine_module

    task = load_task(sentiment_dir)
    engine = GTSEngine(student=str(tiny_student), **FAST)
    model, tokenizer = engine.build_student(task)
    calls = []
    monkeypatch.setattr(engine_module, "predict", lambda *args, **kwargs: calls.append(1) or predict(*args, **kwargs))
    encoded = engine_module.EncodedExamples()
    first = encoded(model, tokenizer, task.dev)
    assert encoded(model, tokenizer, task.dev) is first and len(calls) == 1
    encoded(model, tokenizer, task.train)
    assert len(calls) == 2
    saved = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        next(model.encoder.parameters()).add_(0.5)
    changed = encoded(model, tokenizer, task.dev)
    assert len(calls) == 3 and not torch.equal(changed["embeddings"], first["embeddings"])
    model.load_state_dict(saved)
    assert torch.equal(encoded(model, tokenizer, task.dev)["embeddings"], first["embeddings"]) and len(calls) == 4
    other, _ = engine.build_student(task)
    encoded(other, tokenizer, task.dev)
    assert len(calls) == 5


def test_dev_accuracy_from_cached_features_equals_a_full_prediction(tiny_student, sentiment_dir):
    from gts_hf.engine import evaluate_examples

    task = load_task(sentiment_dir)
    engine = GTSEngine(student=str(tiny_student), **FAST)
    model, tokenizer = engine.build_student(task)
    engine._fit_head(model, tokenizer, task)
    model.set_label_prior(tokenizer, 0.5)
    expected = evaluate_examples(model, tokenizer, task.dev, use_knn=False)["accuracy"]
    assert engine._dev_accuracy(model, tokenizer, task) == pytest.approx(expected)


def test_standard_training_is_the_same_with_and_without_the_feature_cache(tiny_student, sentiment_dir, monkeypatch):
    """Without dev data the body stage is kept, so a stale cache would fit the new head on the old encoder's features."""
    import gts_hf.engine as engine_module

    write_jsonl(sentiment_dir / "unlabeled.json", [{"text": text} for text in POSITIVE + NEGATIVE])
    (sentiment_dir / "dev.json").unlink()
    settings = {**STANDARD, **BODY_ON_TWO_LABELS, "head_steps": 50, "body_steps": 3}
    cached = train(tiny_student, sentiment_dir, **settings)
    monkeypatch.setattr(engine_module.EncodedExamples, "__call__",
                        lambda self, model, tokenizer, examples: engine_module.features_of(
                            predict(model, tokenizer, examples, use_knn=False)))
    uncached = train(tiny_student, sentiment_dir, **settings)
    assert cached.record["body"]["kept"] and cached.record["self_training"]["kept"]
    without_times = [{key: value for key, value in trained.record.items() if key != "train_seconds"}
                     for trained in (cached, uncached)]
    assert without_times[0] == without_times[1]
    weights = uncached.model.state_dict()
    assert all(torch.equal(tensor, weights[name]) for name, tensor in cached.model.state_dict().items())
