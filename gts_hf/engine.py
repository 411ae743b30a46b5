"""`GTSEngine`: the production line, from a few labelled texts to a saved, retrieval-augmented classifier.

Modes (each a superset of the one before):

- ``fast``: the student starts as a zero-shot classifier (label texts as options), its option head is fitted on frozen
  embeddings, then the kNN datastore is built and its ``k``/``λ`` tuned on dev. Seconds to a minute on a CPU.
- ``standard``: ``fast``'s head fit as a warm start, then the whole encoder is fine-tuned with GTS's recipe
  (:class:`~gts_hf.trainer.GTSTrainer`: R-Drop, mixup, masking, contrastive loss, best dev epoch), then kNN.
- ``advanced`` (teacher and generator) builds on ``standard``; see its own module when present.

Nothing is written until training has succeeded; the output folder is then replaced in one step, so a failed run
leaves the previous model intact.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, set_seed

from .backbones import DEFAULT_STUDENT, backbone_info, resolve_model_path
from .configuration import GTSConfig
from .data import Example, FewShotTask
from .inference import Predictions, classification_metrics, predict
from .modeling import GTSForFewShotClassification
from .retrieval import KNNDatastore
from .trainer import GTSTrainer, fit_head
from .training_args import GTSTrainingArguments

logger = logging.getLogger(__name__)

MODES = ("fast", "standard")
RECORD_FILE = "gts_training.json"
EVAL_FILE = "eval_results.json"


@dataclass
class EngineSettings:
    """What the engine does, beyond the training arguments of the fine-tuning stage."""

    mode: str = "standard"
    student: str = DEFAULT_STUDENT
    seed: int = 42
    max_seq_length: int = 256
    head_steps: int = 300
    head_learning_rate: float = 1e-2
    head_anchor_weight: float = 1.0
    min_finetune_steps: int = 60
    max_epochs: int = 30
    evaluations: int = 8
    use_knn: bool = True
    training_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainedModel:
    """What :meth:`GTSEngine.train` returns: the model, its tokenizer, the record of choices and test metrics."""

    model: GTSForFewShotClassification
    tokenizer: Any
    record: dict[str, Any]
    test_metrics: dict[str, float] | None = None
    output_dir: Path | None = None

    def predict(self, examples: list[Example], **kwargs: Any) -> Predictions:
        return predict(self.model, self.tokenizer, examples, **kwargs)


class GTSEngine:
    """Train a few-shot classifier end to end.

    >>> from gts_hf import GTSEngine, load_task
    >>> task = load_task("data/my_task")                  # train.json, dev.json, labels.json
    >>> trained = GTSEngine(mode="standard").train(task, output_dir="my_model")
    """

    def __init__(self, mode: str = "standard", student: str = DEFAULT_STUDENT, seed: int = 42, **settings: Any):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.settings = EngineSettings(mode=mode, student=student, seed=seed, **settings)

    # ------------------------------------------------------------------------------------------------------- train
    def train(self, task: FewShotTask, output_dir: str | os.PathLike | None = None) -> TrainedModel:
        settings = self.settings
        if output_dir is not None:
            _check_output_dir(Path(output_dir))
        set_seed(settings.seed)
        started = time.perf_counter()
        model, tokenizer = self.build_student(task)
        record: dict[str, Any] = self._record_header(task)
        record["zero_shot_dev_accuracy"] = _dev_accuracy(model, tokenizer, task)
        record["head"] = self._fit_head(model, tokenizer, task)
        if settings.mode == "standard":
            record["finetune"] = self._finetune(model, tokenizer, task)
        if settings.use_knn:
            record["knn"] = attach_knn(model, tokenizer, task)
        record["train_seconds"] = round(time.perf_counter() - started, 2)
        trained = TrainedModel(model, tokenizer, record)
        if task.test:
            trained.test_metrics = evaluate_examples(model, tokenizer, task.test)
        if output_dir is not None:
            trained.output_dir = save_trained(trained, Path(output_dir))
        return trained

    def build_student(self, task: FewShotTask) -> tuple[GTSForFewShotClassification, Any]:
        """The untrained student: the backbone with the task's label options (already a zero-shot classifier)."""
        path = resolve_model_path(self.settings.student)
        tokenizer = AutoTokenizer.from_pretrained(path)
        info = backbone_info(self.settings.student)
        config = GTSConfig(labels=task.labels, label_options=task.option_texts(), task_type=task.task_type,
                           query_prefix=info["query_prefix"], pooling=info["pooling"],
                           max_seq_length=min(self.settings.max_seq_length, tokenizer.model_max_length),
                           base_model=self.settings.student)
        model = GTSForFewShotClassification.from_backbone(path, config)
        model.to(_device())
        model.set_label_options(tokenizer)
        return model, tokenizer

    def _fit_head(self, model: GTSForFewShotClassification, tokenizer: Any, task: FewShotTask) -> dict[str, Any]:
        train = features_of(predict(model, tokenizer, task.train, use_knn=False))
        dev = features_of(predict(model, tokenizer, task.dev, use_knn=False)) if task.dev else None
        return fit_head(model, train, _label_tensor(task, task.train), dev,
                        _label_tensor(task, task.dev) if task.dev else None, steps=self.settings.head_steps,
                        learning_rate=self.settings.head_learning_rate,
                        anchor_weight=self.settings.head_anchor_weight, seed=self.settings.seed)

    def _finetune(self, model: GTSForFewShotClassification, tokenizer: Any, task: FewShotTask) -> dict[str, Any]:
        args = self.training_arguments(len(task.train))
        trainer = GTSTrainer(model=model, args=args, train_examples=task.train, eval_examples=task.dev or None,
                             processing_class=tokenizer)
        result = trainer.train()
        best = trainer.best_on_dev
        return {"epochs": args.num_train_epochs, "steps": result.global_step,
                "learning_rate": args.learning_rate, "train_loss": round(result.training_loss, 4),
                "best_epoch": best.best_epoch if best else None,
                "best_dev_accuracy": best.best[0] if best and best.best else None}

    def training_arguments(self, num_train: int) -> GTSTrainingArguments:
        """Fine-tuning arguments: enough epochs for ``min_finetune_steps`` optimiser steps, then the overrides."""
        batch_size = self.settings.training_overrides.get("per_device_train_batch_size", 16)
        steps_per_epoch = max(math.ceil(num_train / batch_size), 1)
        epochs = min(max(math.ceil(self.settings.min_finetune_steps / steps_per_epoch), 4), self.settings.max_epochs)
        evaluate_every = max(steps_per_epoch * epochs // self.settings.evaluations, 1)
        options = {"num_train_epochs": epochs, "seed": self.settings.seed, "eval_strategy": "steps",
                   "eval_steps": evaluate_every, "logging_strategy": "steps", "logging_steps": evaluate_every}
        options.update(self.settings.training_overrides)
        return GTSTrainingArguments(**options)

    def _record_header(self, task: FewShotTask) -> dict[str, Any]:
        import transformers

        from . import __version__

        return {
            "gts_hf_version": __version__, "transformers_version": transformers.__version__,
            "mode": self.settings.mode, "student": self.settings.student, "seed": self.settings.seed,
            "task_type": task.task_type, "language": task.language, "labels": task.labels,
            "label_options": task.option_texts(), "num_train": len(task.train), "num_dev": len(task.dev),
            "num_unlabeled": len(task.unlabeled),
        }


# ---------------------------------------------------------------------------------------------------------- pieces
def features_of(predictions: Predictions) -> dict[str, torch.Tensor]:
    features = {"embeddings": torch.from_numpy(predictions.embeddings)}
    if predictions.pair_similarity is not None:
        features["pair_similarity"] = torch.from_numpy(predictions.pair_similarity)
    return features


def attach_knn(model: GTSForFewShotClassification, tokenizer: Any, task: FewShotTask) -> dict[str, Any]:
    """Build the datastore from the trained student's embeddings of the training set; tune it on dev."""
    model.knn = None
    train = predict(model, tokenizer, task.train, use_knn=False)
    store = KNNDatastore.build(train.embeddings, np.asarray(task.label_ids(task.train)), len(task.labels))
    if task.dev:
        dev = predict(model, tokenizer, task.dev, use_knn=False)
        choice = store.tune(dev.embeddings, dev.model_probabilities, np.asarray(task.label_ids(task.dev)))
    else:
        logger.warning("no dev set: the kNN datastore is kept with λ = 0 (no dev data to choose λ on)")
        choice = {"k": store.settings.k, "lambda": 0.0}
    model.knn = store
    return {"size": len(store.labels), "dim": int(store.projection.shape[1]), **choice}


def evaluate_examples(model: GTSForFewShotClassification, tokenizer: Any, examples: list[Example],
                      batch_size: int = 64, use_knn: bool = True) -> dict[str, float]:
    """Accuracy, macro-F1, count and texts/second on labelled examples."""
    label2id = model.config.label2id
    unknown = [example for example in examples if example.label not in label2id]
    if unknown:
        raise ValueError(f"{unknown[0].source}: label {unknown[0].label!r} is not one of the model's labels "
                         f"{model.config.labels}")
    predictions = predict(model, tokenizer, examples, batch_size=batch_size, use_knn=use_knn,
                          show_progress=len(examples) > 500)
    gold = np.asarray([label2id[example.label] for example in examples])
    metrics = classification_metrics(gold, predictions.label_ids, len(model.config.labels))
    metrics.update(n=len(examples), texts_per_second=round(len(examples) / max(predictions.seconds, 1e-9), 2))
    return metrics


def load_trained(path: str | os.PathLike, revision: str | None = None) -> tuple[GTSForFewShotClassification, Any]:
    """A saved student and its tokenizer (a local folder or a Hub id)."""
    model = GTSForFewShotClassification.from_pretrained(path, revision=revision)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    return model.to(_device()), tokenizer


# ---------------------------------------------------------------------------------------------------------- saving
def save_trained(trained: TrainedModel, output_dir: Path) -> Path:
    """Write model, tokenizer, kNN files and the record into a sibling staging folder, then swap it into place."""
    _check_output_dir(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.parent / f".{output_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        trained.model.save_pretrained(staging)
        trained.tokenizer.save_pretrained(staging)
        _write_json(staging / RECORD_FILE, trained.record)
        if trained.test_metrics is not None:
            _write_json(staging / EVAL_FILE, trained.test_metrics)
        _swap_into_place(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def _swap_into_place(staging: Path, output_dir: Path) -> None:
    retired = output_dir.parent / f".{output_dir.name}.old-{os.getpid()}"
    if output_dir.exists():
        os.replace(output_dir, retired)
    os.replace(staging, output_dir)
    shutil.rmtree(retired, ignore_errors=True)


def _check_output_dir(output_dir: Path) -> None:
    """Refuse to replace a folder that is neither empty nor a gts-hf model (it could hold the user's data)."""
    if output_dir.is_file():
        raise FileExistsError(f"{output_dir}: the output directory is a file")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / RECORD_FILE).is_file():
        raise FileExistsError(f"{output_dir}: the output directory is not empty and does not hold a gts-hf model; "
                              "choose an empty or new folder")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _dev_accuracy(model: GTSForFewShotClassification, tokenizer: Any, task: FewShotTask) -> float | None:
    if not task.dev:
        return None
    return evaluate_examples(model, tokenizer, task.dev, use_knn=False)["accuracy"]


def _label_tensor(task: FewShotTask, examples: list[Example]) -> torch.Tensor:
    return torch.tensor(task.label_ids(examples))


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
