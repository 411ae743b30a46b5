"""The ``advanced`` mode: Generator-Teacher-Student on top of a ``standard`` student.

1. **Teacher**: a causal LM (default: the packaged Qwen2.5-0.5B-Instruct; any Hub id online) scores every option,
   optionally after LoRA fine-tuning on the gold examples, and is calibrated on dev.
2. **Generator**: the same or another chat LM writes new texts per label and paraphrases of training texts.
3. **Pool**: generated texts plus a seeded sample of the unlabelled texts (never the test file: the pool is only
   what the user passes as ``unlabeled``). Nothing is written into the user's data folder.
4. **Verification**: pool texts are labelled by a mix of teacher and student, ``w·p_teacher + (1-w)·p_student``
   (``w`` chosen on dev); a text is kept when the mix is confident above a threshold chosen on dev (the lowest one
   whose dev precision reaches ``target_precision``) and, for generated texts, agrees with the intended label.
5. **Distillation**: :class:`~gts_hf.trainer.DistillationTrainer` continues the student on gold labels plus the
   kept texts' soft labels and keeps its best dev step. The ``standard`` student is not a candidate (its dev score
   is optimistic: it was chosen on the same dev set); it comes back only when distillation ends more than
   ``max_dev_drop`` below it on dev. Further rounds let the improved student re-label the pool (self-training).

The work is bounded by ``time_budget`` (seconds for the whole stage): generation gets a share of it, teacher scoring
stops at its deadline (unscored texts are left out), and the distillation steps are capped.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
from transformers import TrainerCallback, TrainerControl

from .backbones import DEFAULT_LLM
from .data import Example, FewShotTask, sample_examples
from .generator import GenerationSettings, Generator
from .engine import _num_processes, evaluate_examples
from .inference import predict
from .teacher import (CausalLMTeacher, EncoderTeacher, LoRASettings, Teacher, dev_report, finetune_teacher_lora,
                      is_causal_lm)
from .trainer import DistillationTrainer, EvaluateAtStart

logger = logging.getLogger(__name__)

MIX_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Generated and paraphrased texts would come without the marked noun and pronoun a coreference example needs.
NO_GENERATION_FOR_COREFERENCE = {"skipped": "coreference: generated texts would not mark the noun and the pronoun"}


@dataclass
class AdvancedSettings:
    """Settings of the advanced stage (see the module docstring)."""

    teacher: str | None = DEFAULT_LLM
    generator: str | None = DEFAULT_LLM
    teacher_lora: bool = False
    lora: LoRASettings = field(default_factory=LoRASettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    max_pool: int = 600
    target_precision: float = 0.9
    min_coverage: float = 0.25
    rounds: int = 2
    distill_temperature: float = 2.0
    distill_weight: float = 1.0
    max_distill_steps: int = 80
    max_dev_drop: float = 0.05
    time_budget: float = 35 * 60.0
    generation_share: float = 0.25
    cache_dir: str | None = None


def run_advanced(engine: Any, model: Any, tokenizer: Any, task: FewShotTask,
                 settings: AdvancedSettings) -> dict[str, Any]:
    """Improve the fine-tuned ``model`` in place with teacher-verified generated and unlabelled texts."""
    started = time.monotonic()
    deadline = started + settings.time_budget
    record: dict[str, Any] = {"settings": _settings_record(settings)}
    if _num_processes() > 1:
        raise ValueError("the advanced stage runs in one process (its time budget and LLM calls are per process): "
                         "train `standard` with several processes, or `advanced` with one")
    if not task.dev:
        record["skipped"] = "no dev set: the teacher's calibration and the thresholds are chosen on dev"
        logger.warning("advanced: %s", record["skipped"])
        return record
    teacher = load_teacher(settings, task, record, seed=engine.settings.seed)
    if isinstance(teacher, CausalLMTeacher) and settings.teacher_lora:
        record["teacher_lora"] = finetune_teacher_lora(teacher, task.train, settings.lora, seed=engine.settings.seed)
    generated = generate_examples(settings, task, teacher, record, started)
    pool = generated + sample_examples(task.unlabeled, settings.max_pool, engine.settings.seed)
    record["pool"] = {"generated": len(generated), "unlabeled": len(pool) - len(generated),
                      "unlabeled_available": len(task.unlabeled)}
    if not pool:
        record["skipped"] = "nothing to learn from: no unlabelled file and no generated text"
        logger.warning("advanced: %s", record["skipped"])
        return record
    dev_gold = np.asarray(task.label_ids(task.dev))
    teacher_dev = teacher_pool = None
    if teacher is not None:
        scores = teacher.scores(task.dev)
        record["teacher_dev"] = teacher.calibrate(task.dev, scores)
        teacher_dev = teacher.calibration.apply(scores)
        teacher_pool = teacher.predict_proba(pool, show_progress=True, deadline=_teacher_deadline(deadline, settings))
        scored = ~np.isnan(teacher_pool).any(-1)
        pool, teacher_pool = [example for example, keep in zip(pool, scored) if keep], teacher_pool[scored]
        record["pool"]["teacher_scored"] = len(pool)
        release(teacher)  # everything the rounds need from it is in teacher_dev and teacher_pool
    record["rounds"] = []
    for round_number in range(settings.rounds):
        if time.monotonic() > deadline:
            logger.warning("advanced: time budget spent before round %d", round_number + 1)
            break
        labels = label_pool(model, tokenizer, task, pool, dev_gold, teacher_dev, teacher_pool, settings)
        if not labels["kept"]:
            record["rounds"].append(labels["summary"])
            break
        distillation = distill(engine, model, tokenizer, task, labels, settings, deadline)
        labels["summary"]["distillation"] = distillation
        record["rounds"].append(labels["summary"])
        if distillation["kept_start"]:  # the student is unchanged: another round would repeat this one exactly
            break
    record["seconds"] = round(time.monotonic() - started, 1)
    return record


# ------------------------------------------------------------------------------------------------ the pieces
def load_teacher(settings: AdvancedSettings, task: FewShotTask, record: dict[str, Any],
                 seed: int = 42) -> Teacher | None:
    """The causal-LM teacher (or, for an encoder id, an encoder trained with the standard recipe)."""
    if not settings.teacher:
        record["teacher"] = None
        return None
    try:
        if is_causal_lm(settings.teacher):
            teacher: Teacher = CausalLMTeacher.from_pretrained(settings.teacher, task)
        else:
            teacher = EncoderTeacher.train(settings.teacher, task, seed=seed)
    except (ImportError, OSError) as err:
        logger.warning("advanced: no teacher (%s); the student labels the pool itself (self-training only)", err)
        record["teacher"] = {"unavailable": str(err)}
        return None
    record["teacher"] = {"model": settings.teacher}
    return teacher


def generate_examples(settings: AdvancedSettings, task: FewShotTask, teacher: Teacher | None,
                      record: dict[str, Any], started: float) -> list[Example]:
    if not settings.generator or task.is_pair and settings.generation.paraphrases_per_example <= 0:
        record["generator"] = None
        return []
    if task.is_coreference:
        record["generator"] = NO_GENERATION_FOR_COREFERENCE
        return []
    try:
        if isinstance(teacher, CausalLMTeacher) and settings.generator == settings.teacher and not teacher.is_lora:
            generator = Generator.share_model(teacher)
        else:
            generator = Generator.from_pretrained(settings.generator)
    except (ImportError, OSError, ValueError) as err:
        logger.warning("advanced: no generator (%s); using the unlabelled pool only", err)
        record["generator"] = {"unavailable": str(err)}
        return []
    generation = GenerationSettings(**{**asdict(settings.generation),
                                       "max_seconds": _generation_seconds(settings, started)})
    cache_dir = settings.cache_dir or _default_cache_dir()
    begun = time.monotonic()
    examples = generator.generate(task, generation, cache_dir=cache_dir)
    record["generator"] = {"model": settings.generator, "examples": len(examples),
                           "seconds": round(time.monotonic() - begun, 1), "cache_dir": str(cache_dir)}
    return examples


def choose_mix_weight(student_dev: np.ndarray, teacher_dev: np.ndarray | None, gold: np.ndarray) -> float:
    """The weight of the teacher in the mix, best dev accuracy then log-loss (the student alone without a teacher)."""
    if teacher_dev is None:
        return 0.0
    def quality(weight: float) -> tuple[float, float]:
        report = dev_report(weight * teacher_dev + (1 - weight) * student_dev, gold)
        return report["accuracy"], -report["log_loss"]
    return max(MIX_WEIGHTS, key=quality)


def choose_threshold(probabilities: np.ndarray, gold: np.ndarray, target_precision: float,
                     min_coverage: float) -> dict[str, float]:
    """The lowest confidence threshold whose dev precision reaches ``target_precision`` while keeping at least
    ``min_coverage`` of dev; failing that, the most precise threshold that keeps ``min_coverage``."""
    confidence, predicted = probabilities.max(-1), probabilities.argmax(-1)
    candidates = []
    for threshold in np.unique(confidence):
        covered = confidence >= threshold
        coverage = float(covered.mean())
        if coverage < min_coverage:
            continue
        precision = float((predicted[covered] == gold[covered]).mean())
        candidates.append({"threshold": float(threshold), "dev_precision": round(precision, 4),
                           "dev_coverage": round(coverage, 4)})
    if not candidates:  # e.g. min_coverage above 1: nothing can be trusted
        return {"threshold": float("inf"), "dev_precision": None, "dev_coverage": 0.0}
    reaching = [candidate for candidate in candidates if candidate["dev_precision"] >= target_precision]
    if reaching:
        return min(reaching, key=lambda candidate: candidate["threshold"])
    return max(candidates, key=lambda candidate: (candidate["dev_precision"], -candidate["threshold"]))


def label_pool(model: Any, tokenizer: Any, task: FewShotTask, pool: list[Example], dev_gold: np.ndarray,
               teacher_dev: np.ndarray | None, teacher_pool: np.ndarray | None,
               settings: AdvancedSettings) -> dict[str, Any]:
    """Label the pool with the teacher/student mix and keep what passes the dev-chosen threshold."""
    student_dev = predict(model, tokenizer, task.dev, use_knn=False).probabilities
    student_pool = predict(model, tokenizer, pool, use_knn=False, show_progress=len(pool) > 500).probabilities
    weight = choose_mix_weight(student_dev, teacher_dev, dev_gold)
    mixed_dev = weight * teacher_dev + (1 - weight) * student_dev if teacher_dev is not None else student_dev
    mixed_pool = weight * teacher_pool + (1 - weight) * student_pool if teacher_pool is not None else student_pool
    threshold = choose_threshold(mixed_dev, dev_gold, settings.target_precision, settings.min_coverage)
    predicted = mixed_pool.argmax(-1)
    label2id = task.label2id
    keep = mixed_pool.max(-1) >= threshold["threshold"]
    generated = np.asarray([(example.source or "").startswith("generated:") for example in pool], dtype=bool)
    intended = np.asarray([label2id.get(example.label, -1) if is_generated else -1
                           for example, is_generated in zip(pool, generated)])
    keep &= ~generated | (predicted == intended)
    kept = [Example(example.text, example.text_pair, task.labels[label], example.source)
            for example, label, chosen in zip(pool, predicted, keep) if chosen]
    summary = {"teacher_weight": weight, "dev": dev_report(mixed_dev, dev_gold), **threshold,
               "kept": int(keep.sum()), "kept_generated": int((keep & generated).sum()),
               "generated_agreeing": int((generated & (predicted == intended)).sum()),
               "kept_per_label": {task.labels[index]: int(count) for index, count in
                                  enumerate(np.bincount(predicted[keep], minlength=len(task.labels)))}}
    return {"kept": kept, "probabilities": mixed_pool[keep], "summary": summary}


def distill(engine: Any, model: Any, tokenizer: Any, task: FewShotTask, labels: dict[str, Any],
            settings: AdvancedSettings, deadline: float) -> dict[str, Any]:
    """Continue the student on gold + kept examples (soft labels), keeping the best dev step (the start included)."""
    total = len(task.train) + len(labels["kept"])
    args = engine.training_arguments(total)
    steps_per_epoch = max(math.ceil(total / (args.per_device_train_batch_size * args.gradient_accumulation_steps)), 1)
    steps = min(math.ceil(args.num_train_epochs * steps_per_epoch), settings.max_distill_steps)
    args.max_steps = steps
    args.eval_steps = args.logging_steps = max(steps // engine.settings.evaluations, 1)
    args.rdrop_alpha = 0.0  # the teacher's soft labels regularise already; R-Drop would double the cost of a step
    trainer = DistillationTrainer(model=model, args=args, train_examples=task.train, distill_examples=labels["kept"],
                                  teacher_probabilities=labels["probabilities"], eval_examples=task.dev,
                                  processing_class=tokenizer, temperature=settings.distill_temperature,
                                  distill_weight=settings.distill_weight, callbacks=[StopAtDeadline(deadline)])
    # The start's dev score is optimistic (the standard stage picked it on this very dev set), so it is not a
    # candidate of the best-step choice; it is only restored when distillation falls clearly below it.
    trainer.remove_callback(EvaluateAtStart)
    start_accuracy = evaluate_examples(model, tokenizer, task.dev, use_knn=False)["accuracy"]
    start_state = {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}
    result = trainer.train()
    best = trainer.best_on_dev
    best_accuracy = best.best[0] if best and best.best else None
    restored = best_accuracy is None or best_accuracy < start_accuracy - settings.max_dev_drop
    if restored:
        model.load_state_dict(start_state, strict=False)
    return {"examples": total, "epochs": round(steps / steps_per_epoch, 2), "steps": result.global_step,
            "train_loss": round(result.training_loss, 4), "best_epoch": best.best_epoch if best else None,
            "start_dev_accuracy": start_accuracy, "best_dev_accuracy": best_accuracy, "kept_start": restored,
            "seconds_left": round(deadline - time.monotonic(), 1)}


class StopAtDeadline(TrainerCallback):
    """Ends training (after an evaluation, so the best dev step is still kept) once the time budget is spent."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def on_step_end(self, args: Any, state: Any, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        if time.monotonic() > self.deadline:
            logger.warning("advanced: time budget spent at step %d; stopping the distillation", state.global_step)
            control.should_training_stop = control.should_evaluate = True
        return control


# --------------------------------------------------------------------------------------------------- budget
def _generation_seconds(settings: AdvancedSettings, started: float) -> float:
    share = settings.time_budget * settings.generation_share - (time.monotonic() - started)
    limit = settings.generation.max_seconds
    return max(min(share, limit) if limit is not None else share, 0.0)


def _teacher_deadline(deadline: float, settings: AdvancedSettings) -> float:
    """Leave the distillation rounds about a third of the budget."""
    return deadline - settings.time_budget / 3


def release(teacher: Teacher) -> None:
    """Free the teacher's weights (a GPU's memory is needed for the distillation rounds)."""
    import gc

    import torch

    teacher.model = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _default_cache_dir() -> str:
    from .backbones import cache_root

    return str(cache_root() / "generated")


def _settings_record(settings: AdvancedSettings) -> dict[str, Any]:
    return {key: value for key, value in asdict(settings).items() if key != "cache_dir"}
