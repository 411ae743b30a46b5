"""Generator-Teacher-Student with tiny random models: a 2-layer Qwen2-style causal LM built here, the tiny student."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gts_hf.advanced import AdvancedSettings, choose_mix_weight, choose_threshold
from gts_hf.data import sample_examples
from gts_hf.data import Example, load_task
from gts_hf.generator import GenerationCache, GenerationSettings, Generator, clean_lines, plan_requests
from gts_hf.losses import distillation_loss
from gts_hf.teacher import (CausalLMTeacher, Calibration, LoRASettings, PromptBuilder, fit_calibration,
                            finetune_teacher_lora, option_ids, option_log_probs, prompt_ids)

from .conftest import NEGATIVE, POSITIVE, all_fixture_texts, write_jsonl

CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_causal_lm(folder: Path, texts: list[str]) -> Path:
    """A random-weight 2-layer Qwen2 with a byte-level BPE tokenizer trained on ``texts`` and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from gts_hf.generator import PROMPTS as GENERATION_PROMPTS
    from gts_hf.teacher import PROMPTS as TEACHER_PROMPTS

    prompt_texts = [text for prompts in (*GENERATION_PROMPTS.values(), *TEACHER_PROMPTS.values())
                    for text in prompts.values()]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts + prompt_texts + ["assistant user Positive Negative"], trainers.BpeTrainer(
        vocab_size=800, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    config = Qwen2Config(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, eos_token_id=tokenizer.token_to_id("<|im_end|>"),
                         pad_token_id=tokenizer.token_to_id("<|endoftext|>"))
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm"), all_fixture_texts())


@pytest.fixture()
def sentiment_task(sentiment_dir: Path):
    return load_task(sentiment_dir)


# ---------------------------------------------------------------------------------------------------------- teacher
def test_cached_option_scores_equal_full_sequences(tiny_lm: Path, sentiment_task) -> None:
    teacher = CausalLMTeacher.from_pretrained(str(tiny_lm), sentiment_task)
    builder = PromptBuilder(options=["正面的评价", "负面"], task_type="classification", language="zh")
    prompt = prompt_ids(teacher.tokenizer, builder, sentiment_task.train[0])
    options = option_ids(teacher.tokenizer, builder)
    with torch.no_grad():
        cached = option_log_probs(teacher.model, prompt, options)
        for option, score in zip(options, cached):
            sequence = torch.tensor([prompt + option])
            log_probs = teacher.model(input_ids=sequence).logits[0].log_softmax(-1)
            expected = sum(log_probs[len(prompt) - 1 + offset, token] for offset, token in enumerate(option))
            assert score.item() == pytest.approx(expected.item(), abs=1e-4)


def test_calibration_fits_dev_and_is_centred() -> None:
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, size=60)
    scores = rng.normal(size=(60, 3))
    scores[np.arange(60), gold] += 1.0
    scores[:, 0] += 3.0  # a teacher biased towards label 0
    raw = -np.log(Calibration().apply(scores)[np.arange(60), gold]).mean()
    calibration = fit_calibration(scores, gold)
    fitted = -np.log(calibration.apply(scores)[np.arange(60), gold]).mean()
    assert fitted < raw - 0.5
    assert calibration.bias[0] < 0 and abs(sum(calibration.bias)) < 1e-6


def test_teacher_scores_every_option_and_stops_at_the_deadline(tiny_lm: Path, sentiment_task) -> None:
    teacher = CausalLMTeacher.from_pretrained(str(tiny_lm), sentiment_task)
    probabilities = teacher.predict_proba(sentiment_task.dev)
    assert probabilities.shape == (len(sentiment_task.dev), 2)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-6)
    report = teacher.calibrate(sentiment_task.dev)
    assert set(report) >= {"raw", "calibrated", "temperature", "bias"}
    late = teacher.scores(sentiment_task.dev, deadline=0.0)
    assert np.isnan(late).all()


def test_lora_teacher_saves_only_the_adapter_and_reloads(tiny_lm: Path, sentiment_task, tmp_path: Path) -> None:
    teacher = CausalLMTeacher.from_pretrained(str(tiny_lm), sentiment_task)
    before = teacher.scores(sentiment_task.dev[:3])
    summary = finetune_teacher_lora(teacher, sentiment_task.train,
                                    LoRASettings(rank=4, alpha=8, epochs=2, learning_rate=5e-2, batch_size=4))
    assert summary["steps"] > 0 and summary["trainable_parameters"] > 0
    after = teacher.scores(sentiment_task.dev[:3])
    assert not np.allclose(before, after)  # the adapter changed the scores
    teacher.calibrate(sentiment_task.dev)
    teacher.save_pretrained(tmp_path / "teacher")
    files = {path.name for path in (tmp_path / "teacher").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "gts_teacher.json"} <= files
    assert "model.safetensors" not in files
    reloaded = CausalLMTeacher.from_pretrained(str(tmp_path / "teacher"), sentiment_task)
    assert reloaded.is_lora and reloaded.calibration == teacher.calibration
    np.testing.assert_allclose(reloaded.scores(sentiment_task.dev[:3]), after, atol=1e-4)


# -------------------------------------------------------------------------------------------------------- generator
def test_clean_lines_strips_numbering_quotes_and_short_lines() -> None:
    completion = "1. “质量很好，喜欢”\n- 物流太慢了，差评\n（3）好\n\nb) Great value for money\n"
    assert clean_lines(completion) == ["质量很好，喜欢", "物流太慢了，差评", "Great value for money"]


def test_requests_alternate_labels(sentiment_task) -> None:
    requests = plan_requests(sentiment_task, GenerationSettings(per_label=4, per_request=2, paraphrases_per_example=1))
    labels = [request.label for request in requests]
    assert labels[:4] == [labels[0], labels[1], labels[0], labels[1]] and labels[0] != labels[1]
    assert sum(request.kind == "paraphrase" for request in requests) == len(sentiment_task.train)


def test_generation_deduplicates_and_caches(tiny_lm: Path, sentiment_task, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    generator = Generator.from_pretrained(str(tiny_lm))
    calls = []

    def fake_complete(message: str, settings: GenerationSettings, seed: int) -> str:
        calls.append(message)
        return f"全新的句子{len(calls)}号\n{POSITIVE[0]}\n全新的句子{len(calls)}号\n短"

    monkeypatch.setattr(generator, "complete", fake_complete)
    settings = GenerationSettings(per_label=2, per_request=2, paraphrases_per_example=0)
    examples = generator.generate(sentiment_task, settings, cache_dir=tmp_path, show_progress=False)
    assert len(calls) == 2
    assert [example.text for example in examples] == ["全新的句子1号", "全新的句子2号"]  # training text and repeat dropped
    assert {example.label for example in examples} == set(sentiment_task.labels)
    again = generator.generate(sentiment_task, settings, cache_dir=tmp_path, show_progress=False)
    assert len(calls) == 2 and again == examples  # read back from the cache
    (next(tmp_path.glob("generated-*.jsonl"))).open("a", encoding="utf-8").write('{"request": "new/')  # torn write
    assert GenerationCache(tmp_path, next(tmp_path.glob("generated-*.jsonl")).stem[10:]).done


def test_real_generation_runs_with_the_tiny_model(tiny_lm: Path, sentiment_task) -> None:
    generator = Generator.from_pretrained(str(tiny_lm))
    settings = GenerationSettings(per_label=1, per_request=1, paraphrases_per_example=0, max_new_tokens=12)
    examples = generator.generate(sentiment_task, settings, show_progress=False)
    assert all(example.label in sentiment_task.labels for example in examples)
    assert generator.generate(sentiment_task, GenerationSettings(max_seconds=0.0), show_progress=False) == []


# ----------------------------------------------------------------------------------------------------- verification
def test_threshold_is_the_lowest_reaching_the_target_precision() -> None:
    probabilities = np.array([[0.95, 0.05], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.55, 0.45]])
    gold = np.array([0, 0, 0, 1, 1, 0])
    chosen = choose_threshold(probabilities, gold, target_precision=0.9, min_coverage=0.25)
    assert chosen["threshold"] == pytest.approx(0.8) and chosen["dev_precision"] == 1.0
    fallback = choose_threshold(probabilities, gold, target_precision=1.01, min_coverage=0.25)
    assert fallback["dev_precision"] == 1.0 and fallback["threshold"] == pytest.approx(0.8)


def test_threshold_edge_cases() -> None:
    certain = np.array([[0.99996, 0.00004]] * 4)
    chosen = choose_threshold(certain, np.zeros(4, dtype=int), target_precision=0.9, min_coverage=0.25)
    assert chosen["threshold"] == pytest.approx(0.99996) and chosen["dev_coverage"] == 1.0  # not rounded up to 1
    nothing = choose_threshold(certain, np.zeros(4, dtype=int), target_precision=0.9, min_coverage=1.5)
    assert nothing["threshold"] == float("inf") and nothing["dev_coverage"] == 0.0


def test_mix_weight_prefers_the_better_labeller() -> None:
    gold = np.array([0, 1, 0, 1])
    good = np.eye(2)[gold] * 0.8 + 0.1
    bad = np.eye(2)[1 - gold] * 0.8 + 0.1
    assert choose_mix_weight(bad, good, gold) == 1.0
    assert choose_mix_weight(good, bad, gold) == 0.0
    assert choose_mix_weight(good, None, gold) == 0.0


def test_pool_sample_is_seeded_and_bounded() -> None:
    pool = [Example(text=str(index)) for index in range(100)]
    assert sample_examples(pool, 10, seed=1) == sample_examples(pool, 10, seed=1)
    assert len(sample_examples(pool, 10, seed=1)) == 10 and sample_examples(pool[:5], 10, seed=1) == pool[:5]


# ----------------------------------------------------------------------------------------------------- distillation
def test_distillation_loss_is_zero_when_the_student_matches_the_teacher() -> None:
    teacher = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    matching = teacher.log()
    assert distillation_loss(matching, teacher, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    wrong = torch.tensor([[0.0, 0.0, 3.0], [3.0, 0.0, 0.0]], requires_grad=True)
    loss = distillation_loss(wrong, teacher, temperature=2.0)
    loss.backward()
    assert loss.item() > 0.1 and wrong.grad[0, 2] > 0  # pushes the wrong logit down


def test_distillation_trainer_mixes_gold_and_soft_labels(tiny_student: Path, sentiment_task) -> None:
    from transformers import AutoTokenizer

    from gts_hf.configuration import GTSConfig
    from gts_hf.modeling import GTSForFewShotClassification
    from gts_hf.trainer import DistillationTrainer
    from gts_hf.training_args import GTSTrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(tiny_student)
    config = GTSConfig(labels=sentiment_task.labels, label_options=sentiment_task.option_texts())
    model = GTSForFewShotClassification.from_backbone(tiny_student, config)
    pseudo = [Example(text="很好很好", label=sentiment_task.labels[0])]
    trainer = DistillationTrainer(model=model, args=GTSTrainingArguments(num_train_epochs=1, rdrop_alpha=0, eval_strategy="no"),
                                  train_examples=sentiment_task.train[:2], distill_examples=pseudo,
                                  teacher_probabilities=np.array([[0.9, 0.1]]), processing_class=tokenizer)
    assert len(trainer.train_dataset) == 3 and trainer.train_dataset.gold == [True, True, False]
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    gold = torch.tensor([True, True, False])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    expected = torch.nn.functional.cross_entropy(logits[:2], labels[:2]) + \
        distillation_loss(logits[2:], targets[2:], trainer.temperature)
    assert trainer.label_loss(logits, labels, targets=targets, gold=gold).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="teacher distributions"):
        DistillationTrainer(model=model, args=GTSTrainingArguments(eval_strategy="no"), train_examples=sentiment_task.train,
                            distill_examples=pseudo, teacher_probabilities=np.zeros((2, 2)),
                            processing_class=tokenizer)


# ---------------------------------------------------------------------------------------------------------- engine
def test_advanced_mode_end_to_end(tiny_student: Path, tiny_lm: Path, sentiment_dir: Path, tmp_path: Path) -> None:
    from gts_hf.cli import main

    unlabeled = write_jsonl(tmp_path / "pool.json", [{"content": text + "啊"} for text in POSITIVE + NEGATIVE])
    output = tmp_path / "model"
    code = main(["train", "--data-dir", str(sentiment_dir), "--unlabeled", str(unlabeled), "--mode", "advanced",
                 "--student", str(tiny_student), "--teacher", str(tiny_lm), "--generator", str(tiny_lm),
                 "--generate-per-label", "2", "--paraphrases", "0", "--rounds", "1", "--epochs", "1",
                 "--output-dir", str(output)])
    assert code == 0
    record = json.loads((output / "gts_training.json").read_text())
    advanced = record["advanced"]
    assert advanced["teacher"] == {"model": str(tiny_lm)}
    assert advanced["pool"]["unlabeled"] == 16 and advanced["pool"]["teacher_scored"] >= 16
    assert {"raw", "calibrated"} <= set(advanced["teacher_dev"])
    assert advanced["rounds"] and "threshold" in advanced["rounds"][0]
    assert not any(path.name.startswith("generated") for path in sentiment_dir.iterdir())  # user's folder untouched
    # the student is the standard architecture: same weights, same inference cost
    weights = {path.name for path in output.iterdir()}
    assert "model.safetensors" in weights and not any("adapter" in name for name in weights)


def test_advanced_mode_without_teacher_or_generator_self_trains(tiny_student: Path, sentiment_dir: Path,
                                                                 tmp_path: Path) -> None:
    from gts_hf.engine import GTSEngine

    task = load_task(sentiment_dir)
    task.unlabeled = [Example(text=text + "呀") for text in POSITIVE + NEGATIVE]
    engine = GTSEngine(mode="advanced", student=str(tiny_student),
                       advanced=AdvancedSettings(teacher=None, generator=None, rounds=1, max_distill_steps=4),
                       training_overrides={"num_train_epochs": 1})
    advanced = engine.train(task).record["advanced"]
    assert advanced["teacher"] is None and advanced["generator"] is None
    assert advanced["rounds"][0]["teacher_weight"] == 0.0


def test_an_encoder_teacher_is_trained_with_the_standard_recipe(tiny_student: Path, sentiment_dir: Path) -> None:
    from gts_hf.engine import GTSEngine

    task = load_task(sentiment_dir)
    task.unlabeled = [Example(text=text + "呀") for text in POSITIVE + NEGATIVE]
    engine = GTSEngine(mode="advanced", student=str(tiny_student),
                       advanced=AdvancedSettings(teacher=str(tiny_student), generator=None, rounds=1,
                                                 max_distill_steps=2),
                       training_overrides={"num_train_epochs": 1})
    advanced = engine.train(task).record["advanced"]
    assert advanced["teacher"] == {"model": str(tiny_student)} and advanced["pool"]["teacher_scored"] == 16
    assert advanced["rounds"][0]["distillation"]["steps"] <= 2


def test_advanced_mode_reports_a_missing_generator(tiny_student: Path, sentiment_dir: Path) -> None:
    from gts_hf.engine import GTSEngine

    task = load_task(sentiment_dir)
    engine = GTSEngine(mode="advanced", student=str(tiny_student),
                       advanced=AdvancedSettings(teacher=None, generator="/no/such/generator", rounds=1),
                       training_overrides={"num_train_epochs": 1})
    advanced = engine.train(task).record["advanced"]
    assert "unavailable" in advanced["generator"]
    assert advanced["skipped"].startswith("nothing to learn from")
