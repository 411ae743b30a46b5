"""`GTSEngine`: the production line, from a few labelled texts to a saved classifier.

Modes (each a superset of the one before):

- ``fast``: the student starts as a zero-shot classifier (label texts as options) and its option head is fitted on
  frozen embeddings. Seconds to a minute on a CPU.
- ``standard``: ``fast``'s head, then a contrastive body stage reshapes the encoder's space around the labels
  (:func:`~gts_hf.trainer.train_body_contrastive`, SetFit's idea on in-batch pairs, the label texts included) and a
  new head is fitted on it (which tasks keep the stage depends on their number of labels, see
  :meth:`GTSEngine._train_body`; similarity pairs, led by the sentences' cosine, skip it). Single texts with more
  than two labels are then scored by the reshaped and the pretrained encoder side by side
  (:meth:`GTSEngine.keeps_pretrained_encoder`). Multiple choice, which has no head, is fine-tuned instead with GTS's
  recipe (:class:`~gts_hf.trainer.GTSTrainer`: option cross-entropy, R-Drop, mixup, masking, contrastive loss, best
  dev epoch); ``finetune="on"`` fine-tunes every task after the body stage. Given unlabelled texts, the head is then
  self-trained on the ones the model is surest of (:meth:`GTSEngine._self_train`; kept unless dev accuracy falls).
- ``advanced``: ``standard`` with fine-tuning, then Generator-Teacher-Student (:mod:`gts_hf.advanced`): a causal-LM
  teacher and a generator label and write extra texts, and the student is distilled on the verified ones.

Every mode ends by blending the label-text prior into the trained scores (``label_prior_weight``, a product of the
zero-shot and the trained experts; weaker beyond ``tuned_shots`` texts per label, see
:meth:`GTSEngine.shots_beyond_tuning`). ``use_knn=True`` then builds GTS's kNN datastore of the training embeddings
and tunes its interpolation on dev; it is off by default (:data:`KNN_OFF`). Similarity pairs are scored mainly by the
cosine of the two sentences (``pair_head``, :meth:`GTSEngine.cosine_pair_head`): their option vectors start tied, not
at the label texts, no label-text prior is blended in, and neither the body stage, self-training nor kNN applies to
them.
Coreference texts (a marked ``[noun]`` and ``<pronoun>``) get the same head, led by the cosine of the two spans.

Nothing is written until training has succeeded; the output folder is then replaced in one step, so a failed run
leaves the previous model intact.

Several processes (``accelerate launch`` / ``torchrun``): fine-tuning, where it runs, is data-parallel (the Trainer's
DDP); the body stage (a few dozen steps), the head fit, the kNN datastore and the test evaluation run on the full data
in every process (same seed, same data, so every replica ends identical, which the record checks); only the main process
writes the output folder, the others wait for it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, set_seed

from .backbones import DEFAULT_STUDENT, backbone_info, resolve_model_path
from .configuration import GTSConfig, check_unit_interval
from .data import OPTION_TEMPLATES, Example, FewShotTask, fill_template, label_index, sample_examples
from .inference import Predictions, classification_metrics, predict
from .modeling import GTSForFewShotClassification
from .retrieval import KNNDatastore
from .trainer import GTSTrainer, confident_per_label, fit_head, train_body_contrastive
from .training_args import GTSTrainingArguments

logger = logging.getLogger(__name__)

MODES = ("fast", "standard", "advanced")
FINETUNE_CHOICES = ("auto", "on", "off")
PAIR_HEADS = ("auto", "cosine", "joint")
RECORD_FILE = "gts_training.json"
#: Multiple choice has no label vectors to fit and no fixed labels to vote for: the head fit, kNN and the advanced
#: stage are skipped (recorded as such), and fine-tuning does the learning.
NOT_FOR_CHOICES = {"skipped": "multiple choice: each example brings its own options"}
#: The label texts scored against a jointly encoded pair do worse than chance on BUSTM (zero-shot 44.7%): the cosine
#: pair head does not start from them, and no label-text prior is blended in either.
NO_PRIOR_FOR_COSINE_PAIRS = {"skipped": "the cosine pair head scores pairs without label texts"}
#: On 32 sentence pairs a body stage cannot improve the sentences' cosine, which leads the cosine pair head: it
#: memorises the training pairs, and the head refitted on them places its threshold worse. Both stages tried scored
#: below the head alone on BUSTM (benchmarks/ABLATION.md §12).
NO_BODY_FOR_COSINE_PAIRS = {"skipped": "the cosine pair head: the body stage memorises the training pairs"}
#: Neighbours in the joint pair encoding share a topic, which says nothing about whether two sentences mean the same:
#: on BUSTM kNN lowered the cosine head's test accuracy on 4 of 5 splits, by 8.5 points on one, and the fifth chose
#: λ = 0 (benchmarks/ABLATION.md §12).
NO_KNN_FOR_COSINE_PAIRS = {"skipped": "the cosine pair head: neighbours in the joint encoding share a topic, not a "
                                      "meaning"}
#: With two labels and few texts per label the stage pulls the training texts into two tight clusters: in 10
#: frozen-feature runs (amazon_counterfactual_en and CR, N = 8) keeping it cost 3.4 and 2.3 points, the dev rule gained
#: nothing over skipping it, and its 16 dev texts let it through where it cost most (amazon_counterfactual_en seed 2 in
#: the bench: -12 points; benchmarks/ABLATION.md §21).
NO_BODY_FOR_TWO_FEW_SHOT_LABELS = {"skipped": "two labels with at most tuned_shots texts per label: the stage "
                                              "collapses them into two clusters"}
#: Self-training gave the cosine pair head nothing on BUSTM (67.16% before, 67.14% after, five splits, frozen screen of
#: benchmarks/ABLATION.md §15), while embedding the pool's pairs costs time; CLUEWSC has no unlabelled texts to try.
NO_SELF_TRAINING_FOR_COSINE_PAIRS = {"skipped": "the cosine pair head: no gain on sentence pairs"}
TEMPLATES_ONLY_FOR_CLASSES = {"skipped": "the label texts of pairs, coreference and choices describe a relation"}
#: kNN interpolation tuned on a few dozen dev examples lowered test accuracy by 1.5 points on average over 45 runs,
#: and by 0.9 even when adopted only on two more correct dev examples (benchmarks/ABLATION.md §13).
KNN_OFF = {"skipped": "off by default: tuned on a few dozen dev examples it lowered test accuracy (--knn turns it on)"}
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
    pair_head: str = "auto"  # "auto", "cosine" or "joint"; see GTSEngine.cosine_pair_head
    pair_anchor_weight: float = 100.0  # how closely the cosine head's option vectors stay tied
    body_steps: int = 40  # at up to tuned_shots texts per label; see GTSEngine.body_steps_for
    tuned_shots: int = 16  # texts per label the defaults were tuned at; see GTSEngine.shots_beyond_tuning (0: off)
    body_learning_rate: float = 2e-5
    body_interpolation: float = 1.0
    keep_pretrained_encoder: bool = True  # beside the reshaped one; see GTSEngine.keeps_pretrained_encoder
    self_training_pool: int = 1000  # unlabelled texts sampled for self-training the head (0: off); see _self_train
    self_training_per_label: int = 8  # pseudo-labelled texts kept per label, in multiples of the shots per label
    finetune: str = "auto"  # "auto" (advanced mode and multiple choice), "on" or "off"; see GTSEngine.fine_tunes
    min_finetune_steps: int = 30
    max_epochs: int = 30
    evaluations: int = 6
    label_prior_weight: float = 0.5
    option_template: str | None = "auto"  # or "It is {}.", or None: see GTSEngine._apply_option_template
    use_knn: bool = False  # kNN interpolation tuned on dev; off by default, see KNN_OFF
    training_overrides: dict[str, Any] = field(default_factory=dict)
    advanced: Any = None  # AdvancedSettings for mode="advanced" (defaults when None)


@dataclass
class TrainedModel:
    """What :meth:`GTSEngine.train` returns: the model, its tokenizer, the record of choices and test metrics."""

    model: GTSForFewShotClassification
    tokenizer: Any
    record: dict[str, Any]
    test_metrics: dict[str, float] | None = None
    output_dir: Path | None = None
    #: The head each dev decision set aside, by stage (only ``"self_training"``: the head with it where it was undone,
    #: without it where it was kept). The encoder is the same either way, so a benchmark can score both heads on one
    #: set of test embeddings (``gts_hf.bench.with_other_head``); not saved with the model.
    other_heads: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

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
        self._encoded = EncodedExamples()
        self._other_heads: dict[str, dict[str, torch.Tensor]] = {}  # see TrainedModel.other_heads
        if self.settings.finetune not in FINETUNE_CHOICES:
            raise ValueError(f"finetune must be one of {FINETUNE_CHOICES}, got {self.settings.finetune!r}")
        if self.settings.pair_head not in PAIR_HEADS:
            raise ValueError(f"pair_head must be one of {PAIR_HEADS}, got {self.settings.pair_head!r}")
        for name, least in (("pair_anchor_weight", 0), ("self_training_pool", 0), ("self_training_per_label", 1),
                            ("tuned_shots", 0)):
            if getattr(self.settings, name) < least:
                raise ValueError(f"{name} must be >= {least}, got {getattr(self.settings, name)}")
        for name in ("label_prior_weight", "body_interpolation"):  # before training, not after it
            check_unit_interval(name, getattr(self.settings, name))
        if self.settings.option_template not in (None, "auto"):
            fill_template(self.settings.option_template, [])  # refuses a template without one "{}" slot

    # ------------------------------------------------------------------------------------------------------- train
    def train(self, task: FewShotTask, output_dir: str | os.PathLike | None = None) -> TrainedModel:
        settings = self.settings
        if output_dir is not None:
            _check_output_dir(Path(output_dir))
        if _num_processes() > 1:
            _join_process_group()
        set_seed(settings.seed)
        started = time.perf_counter()
        self._other_heads = {}
        model, tokenizer = self.build_student(task)
        record: dict[str, Any] = self._record_header(task)
        if settings.option_template is not None:
            record["option_template"] = self._apply_option_template(model, tokenizer, task)
        record["zero_shot_dev_accuracy"] = self._dev_accuracy(model, tokenizer, task)
        record["head"] = NOT_FOR_CHOICES if task.is_multiple_choice else self._fit_head(model, tokenizer, task)
        if settings.mode in ("standard", "advanced") and settings.body_steps > 0:
            record["body"] = self._not_applicable(task, NO_BODY_FOR_COSINE_PAIRS) or \
                (NO_BODY_FOR_TWO_FEW_SHOT_LABELS if self._two_few_shot_labels(task) else
                 self._train_body(model, tokenizer, task))
        if self.fine_tunes(task):
            record["finetune"] = self._finetune(model, tokenizer, task)
        if settings.mode in ("standard", "advanced") and settings.self_training_pool > 0:
            record["self_training"] = self._not_applicable(task, NO_SELF_TRAINING_FOR_COSINE_PAIRS) or \
                self._self_train(model, tokenizer, task)
        if settings.mode == "advanced" and task.is_multiple_choice:
            record["advanced"] = NOT_FOR_CHOICES
        elif settings.mode == "advanced":
            from .advanced import AdvancedSettings, run_advanced

            record["advanced"] = run_advanced(self, model, tokenizer, task, settings.advanced or AdvancedSettings())
        if settings.label_prior_weight > 0:
            record["label_prior"] = self._not_applicable(task, NO_PRIOR_FOR_COSINE_PAIRS) or \
                self._blend_label_prior(model, tokenizer, task)
        record["knn"] = self._not_applicable(task, NO_KNN_FOR_COSINE_PAIRS) or \
            (attach_knn(model, tokenizer, task) if settings.use_knn else KNN_OFF)
        record["train_seconds"] = round(time.perf_counter() - started, 2)
        if _num_processes() > 1:
            record["distributed"] = _compare_replicas(model)
        trained = TrainedModel(model, tokenizer, record, other_heads=self._other_heads)
        if task.test:
            trained.test_metrics = evaluate_examples(model, tokenizer, task.test)
        if output_dir is not None:
            trained.output_dir = _save_from_main_process(trained, Path(output_dir))
        return trained

    def fine_tunes(self, task: FewShotTask) -> bool:
        """Whether training includes option fine-tuning (``standard`` and ``advanced`` modes only).

        ``"auto"`` leaves it out of ``standard`` for labelled classes: after the head and the body stage it beat its
        start on dev in 5 of 35 benchmark runs, leaving it out of three of those moved test accuracy by -2.5, +2.2 and
        +0.4 points, and those reruns trained in up to 43% less time (benchmarks/ABLATION.md §6). Multiple choice has
        no head, so there it is the stage that learns."""
        if self.settings.mode == "fast" or self.settings.finetune == "off":
            return False
        return self.settings.finetune == "on" or self.settings.mode == "advanced" or task.is_multiple_choice

    def cosine_pair_head(self, task: FewShotTask) -> bool:
        """Whether the task's head is led by the pair cosine (``pair_head="cosine"``): its option vectors start tied
        and are held there by ``pair_anchor_weight``, so the joint encoding only corrects.

        ``"auto"`` uses it for similarity tasks, whose question (do the two sentences mean the same?) is what the
        cosine measures, and not for NLI, where entailment is not symmetric. Over BUSTM splits 0-4 ``standard`` went
        from 59.45% to 63.97%; on OCNLI splits 0-3 the cosine head lost to the label-text start, 36.19% against
        38.83% (benchmarks/ABLATION.md §10). Such tasks also skip the label-text prior, the body stage and kNN, which
        took BUSTM to 67.47% (§12). Coreference is a similarity question too (does the pronoun's state in context match
        the noun's?), scored by the cosine of the two marked spans: on CLUEWSC it took ``standard`` from chance
        (49.18% on split 0) to 59.12% over splits 0-4 (§14)."""
        if not (task.is_pair or task.is_coreference) or self.settings.pair_head == "joint":
            return False
        return self.settings.pair_head == "cosine" or task.task_type in ("similarity", "coreference")

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

    def _apply_option_template(self, model: GTSForFewShotClassification, tokenizer: Any,
                               task: FewShotTask) -> dict[str, Any]:
        """Put each label text in a sentence (``option_template``, e.g. ``"It is {}."``) before anything is trained,
        so the zero-shot start, the head's anchor and the label prior all use it. ``"auto"`` takes the template of
        the task's language (:data:`~gts_hf.data.OPTION_TEMPLATES`) with the lowest zero-shot log-loss on dev; the
        bare label text wins ties and is kept without dev data.

        ``"auto"`` is the default: over the 25 English N = 8 bench runs it raised the five-task mean by 0.41 points
        (SST-5 +1.27 and CR +0.93, where dev picked "It is {}." in every run; emotion +0.25; amazon_counterfactual_en
        −0.42 in accuracy but +3.4 in MCC) and it keeps the bare label texts wherever they score best on dev (AG News,
        IFLYTEK, CSLDCP, EPRSTMT; benchmarks/ABLATION.md §24). ``None`` or ``"{}"`` keeps the bare label texts.
        """
        if task.task_type != "classification":
            return TEMPLATES_ONLY_FOR_CLASSES
        template, options = self.settings.option_template, task.option_texts()
        record: dict[str, Any] = {}
        if template == "auto":
            template, record = self._template_by_dev_loss(model, tokenizer, task)
        model.set_label_options(tokenizer, fill_template(template, options))
        return {"template": template, **record}

    def _template_by_dev_loss(self, model: GTSForFewShotClassification, tokenizer: Any,
                              task: FewShotTask) -> tuple[str, dict[str, Any]]:
        """The template of ``OPTION_TEMPLATES`` whose zero-shot scores have the lowest dev log-loss, and the losses."""
        candidates = OPTION_TEMPLATES[task.language]
        if not task.dev:
            return candidates[0], {"skipped": "no dev data to choose a template on: the bare label texts"}
        dev = self._encoded(model, tokenizer, task.dev)["embeddings"].to(model.device)
        labels = _label_tensor(task, task.dev).to(model.device)
        losses = {}
        for candidate in candidates:
            options = model.encode_texts(tokenizer, fill_template(candidate, task.option_texts()))
            logits = model.config.logit_scale * dev @ options.T
            losses[candidate] = round(torch.nn.functional.cross_entropy(logits, labels).item(), 4)
        return min(losses, key=losses.get), {"dev_log_loss": losses}  # in order: the bare text wins ties

    def _not_applicable(self, task: FewShotTask, for_cosine_pairs: dict[str, str]) -> dict[str, str] | None:
        """Why a stage built on the label head (body stage, label prior, kNN) does not apply to the task, as its
        record entry, or ``None`` where it does: multiple choice has no label head, and the cosine pair head skips
        all three."""
        if task.is_multiple_choice:
            return NOT_FOR_CHOICES
        return for_cosine_pairs if self.cosine_pair_head(task) else None

    def _two_few_shot_labels(self, task: FewShotTask) -> bool:
        """Whether the task has two labels and at most ``tuned_shots`` texts per label, where the body stage is
        skipped (:data:`NO_BODY_FOR_TWO_FEW_SHOT_LABELS`; beyond that it gained up to 27 points at 64 per label)."""
        return len(task.labels) == 2 and self.shots_beyond_tuning(task) == 1

    def _train_body(self, model: GTSForFewShotClassification, tokenizer: Any, task: FewShotTask) -> dict[str, Any]:
        """The contrastive body stage, then a fresh head on the reshaped encoder (options re-embedded, head refitted).

        With more than two labels it is always kept: in 27 frozen-feature runs of seven such tasks (AG News, emotion,
        SST-5, TNEWS, OCNLI, IFLYTEK, CSLDCP) it raised test accuracy on every task, by 2.4 points on average over the
        untrained encoder, and the old rule (kept only if the head-only dev accuracy rose) gave up 0.7 of those on dev
        sets of 32-345 texts (IFLYTEK: dev fell by 2 points, test rose by 1.7; benchmarks/ABLATION.md §21). With two
        labels (beyond ``tuned_shots`` texts per label, see :meth:`_two_few_shot_labels`) it is kept only if that dev
        accuracy (label prior included) rises. Without dev data it is kept. Similarity pairs never reach it
        (:meth:`_not_applicable`). Where :meth:`keeps_pretrained_encoder` says so, a copy of the encoder as it was
        before the stage joins the model after it, frozen."""
        settings = self.settings
        before = self._dev_accuracy_with_prior(model, tokenizer, task)
        always_kept = before is None or self._always_keeps_body(task)
        saved = None if always_kept else _trainable_copy(model)  # only a stage that may be undone needs it
        pretrained = _encoder_copy(model) if self.keeps_pretrained_encoder(task) else None
        summary = train_body_contrastive(model, tokenizer, task.train, steps=self.body_steps_for(task),
                                         learning_rate=settings.body_learning_rate,
                                         interpolation=settings.body_interpolation, seed=settings.seed)
        if pretrained is not None:
            model.add_pretrained_encoder(pretrained)
        summary["pretrained_encoder_kept"] = pretrained is not None
        model.set_label_options(tokenizer)
        summary["head"] = self._fit_head(model, tokenizer, task)
        after = self._dev_accuracy_with_prior(model, tokenizer, task)
        kept = always_kept or after > before
        if not kept:
            model.load_state_dict(saved, strict=False)
        return {**summary, "dev_accuracy_before": before, "dev_accuracy_after": after, "kept": kept}

    def keeps_pretrained_encoder(self, task: FewShotTask) -> bool:
        """Whether the body stage keeps the pretrained encoder beside the one it reshapes, each text then scored by
        both embeddings side by side (``GTSConfig.keep_pretrained_encoder``; ``keep_pretrained_encoder=False`` turns
        it off): for single texts with more than two labels, where the stage is always kept.

        The reshaped space separates the training labels, the pretrained one still holds what the encoder knew of the
        rest: in 22 frozen-feature runs of six such tasks one head on both embeddings beat the reshaped encoder alone
        by 1.4 points on average and on every task (TNEWS +0.6 to IFLYTEK +2.6), while on OCNLI's sentence pairs it
        lost 1.2 (benchmarks/ABLATION.md §22). It costs a second encoder pass per text; the word embeddings, most of
        a multilingual encoder's weights, are shared."""
        return self.settings.keep_pretrained_encoder and task.task_type == "classification" and \
            self._always_keeps_body(task)

    @staticmethod
    def _always_keeps_body(task: FewShotTask) -> bool:
        """Whether the body stage is kept whatever dev says (more than two labels, see :meth:`_train_body`); only
        such a stage may add the pretrained encoder (:meth:`keeps_pretrained_encoder`), which undoing could not
        remove."""
        return len(task.labels) > 2

    def shots_beyond_tuning(self, task: FewShotTask) -> float:
        """How many times more training texts per label (on average) the task holds than ``tuned_shots``, the most
        the defaults were tuned at; 1 at or below it (every FewCLUE task, English N = 8) or with ``tuned_shots=0``.
        More texts per label lengthen the body stage (:meth:`body_steps_for`) and weaken the label prior
        (:meth:`label_prior_weight_for`) in proportion."""
        tuned = self.settings.tuned_shots
        per_label = len(task.train) / max(len(task.labels), 1)
        return per_label / tuned if 0 < tuned < per_label else 1.0

    def body_steps_for(self, task: FewShotTask) -> int:
        """``body_steps`` × :meth:`shots_beyond_tuning`, so each text gets as many passes as at 16 per label (a
        class-balanced batch draws a fixed number of texts per label). On a two-label task forty steps give each text
        80 passes at 8 per label and 40 at 16, but 10 at 64, where 160 steps lifted amazon_counterfactual_en from
        59.85 to 86.42 and the N = 64 mean by 7 points (benchmarks/ABLATION.md §19-20)."""
        return math.ceil(self.settings.body_steps * self.shots_beyond_tuning(task))

    def label_prior_weight_for(self, task: FewShotTask) -> float:
        """``label_prior_weight`` ÷ :meth:`shots_beyond_tuning`: the zero-shot expert counts for less where there
        are more labelled texts (at N = 64 leaving it out scored higher on four of five English tasks;
        benchmarks/ABLATION.md §20)."""
        return self.settings.label_prior_weight / self.shots_beyond_tuning(task)

    def _dev_accuracy_with_prior(self, model: GTSForFewShotClassification, tokenizer: Any,
                                 task: FewShotTask) -> float | None:
        """Dev accuracy as the finished model would score (the label prior blended in), the model left unchanged."""
        with self._label_prior_blended(model, tokenizer, task):
            return self._dev_accuracy(model, tokenizer, task)

    def _dev_accuracy(self, model: GTSForFewShotClassification, tokenizer: Any, task: FewShotTask) -> float | None:
        """Dev accuracy of the model as it is (no kNN), scored on dev embeddings computed once per encoder state."""
        if not task.dev:
            return None
        if task.is_multiple_choice:  # scored against each example's own choices, not the option head
            return evaluate_examples(model, tokenizer, task.dev, use_knn=False)["accuracy"]
        predicted = score_features(model, self._encoded(model, tokenizer, task.dev)).argmax(-1)
        return (predicted == _label_tensor(task, task.dev)).float().mean().item()

    @contextmanager
    def _label_prior_blended(self, model: GTSForFewShotClassification, tokenizer: Any,
                             task: FewShotTask) -> Iterator[None]:
        """Score as the finished model will (the label prior blended in, where the task has one), then restore."""
        weight, prior = model.config.label_prior_weight, model.label_prior.clone()
        if not self.cosine_pair_head(task):
            model.set_label_prior(tokenizer, self.label_prior_weight_for(task))
        try:
            yield
        finally:
            model.config.label_prior_weight = weight
            model.label_prior.copy_(prior)

    def _self_train(self, model: GTSForFewShotClassification, tokenizer: Any, task: FewShotTask) -> dict[str, Any]:
        """Self-training on a seeded sample of the unlabelled pool: the model as it would finish (label prior
        included) labels the pool, the ``self_training_per_label`` × shots texts it is surest of for each label join
        the training set, and a fresh head is fitted on both. Kept unless dev accuracy (label prior included) falls.
        Over 35 frozen-feature runs of seven tasks it raised test accuracy by 1.23 points on average (AG News +4.9);
        without the dev rule it cost amazon_counterfactual_en, whose test set is imbalanced, 3.5 points, with it 0.2
        (benchmarks/ABLATION.md §15)."""
        if not task.unlabeled:
            return {"skipped": "no unlabelled texts (unlabeled.json in the data folder, or --unlabeled)"}
        settings = self.settings
        pool = sample_examples(task.unlabeled, settings.self_training_pool, settings.seed)
        features = features_of(predict(model, tokenizer, pool, use_knn=False, show_progress=len(pool) > 500))
        per_label = settings.self_training_per_label * max(Counter(task.label_ids(task.train)).values())
        with self._label_prior_blended(model, tokenizer, task):
            probabilities = score_features(model, features).softmax(-1)
        rows, labels = confident_per_label(probabilities, per_label)
        before = self._dev_accuracy_with_prior(model, tokenizer, task)
        saved = {name: tensor.clone() for name, tensor in model.state_dict().items()
                 if not name.startswith(("encoder.", "pretrained_encoder."))}
        model.set_label_options(tokenizer)
        head = self._fit_head(model, tokenizer, task, extra=({k: v[rows] for k, v in features.items()}, labels))
        after = self._dev_accuracy_with_prior(model, tokenizer, task)
        kept = before is None or after >= before
        other = saved if kept else {name: value.clone() for name, value in model.state_dict().items() if name in saved}
        # without the label prior's buffer: the prior is blended in after this stage, whichever head stays
        self._other_heads["self_training"] = {name: value for name, value in other.items() if name != "label_prior"}
        if not kept:
            model.load_state_dict(saved, strict=False)
        return {"pool": len(pool), "per_label": per_label, "pseudo_labelled": len(rows), "head": head,
                "dev_accuracy_before": before, "dev_accuracy_after": after, "kept": kept}

    def _fit_head(self, model: GTSForFewShotClassification, tokenizer: Any, task: FewShotTask,
                  extra: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
        """:func:`~gts_hf.trainer.fit_head` on the training set's current embeddings (plus ``extra`` features and
        labels: self-training's pseudo-labelled texts), dev-selected."""
        train = self._encoded(model, tokenizer, task.train)
        labels = _label_tensor(task, task.train)
        if extra is not None:
            train = {key: torch.cat([value, extra[0][key]]) for key, value in train.items()}
            labels = torch.cat([labels, extra[1]])
        dev = self._encoded(model, tokenizer, task.dev) if task.dev else None
        return fit_head(model, train, labels, dev, _label_tensor(task, task.dev) if task.dev else None,
                        **self.head_options(task))

    def head_options(self, task: FewShotTask) -> dict[str, Any]:
        """The keyword arguments of :func:`~gts_hf.trainer.fit_head` for this task (also used by the benchmarks'
        selection screen, so it fits exactly the engine's head)."""
        tied = self.cosine_pair_head(task)
        return {"steps": self.settings.head_steps, "learning_rate": self.settings.head_learning_rate,
                "tie_options": tied, "seed": self.settings.seed,
                "anchor_weight": self.settings.pair_anchor_weight if tied else self.settings.head_anchor_weight}

    def _finetune(self, model: GTSForFewShotClassification, tokenizer: Any, task: FewShotTask) -> dict[str, Any]:
        args = self.training_arguments(len(task.train))
        trainer = GTSTrainer(model=model, args=args, train_examples=task.train, eval_examples=task.dev or None,
                             processing_class=tokenizer)
        result = trainer.train()
        best = trainer.best_on_dev
        summary = {"epochs": args.num_train_epochs, "steps": result.global_step,
                   "learning_rate": args.learning_rate, "train_loss": round(result.training_loss, 4),
                   "best_epoch": best.best_epoch if best else None,
                   "best_dev_accuracy": best.best[0] if best and best.best else None}
        if _num_processes() > 1:  # DDP (or FSDP, DeepSpeed) wrapped the model: the processes trained as one
            summary["data_parallel"] = trainer.model_wrapped is not trainer.model
        return summary

    def _blend_label_prior(self, model: GTSForFewShotClassification, tokenizer: Any,
                           task: FewShotTask) -> dict[str, Any]:
        """A fixed weight, not chosen on dev: a few dozen dev examples are too few to weigh the prior (measured in
        benchmarks/ABLATION.md)."""
        before = self._dev_accuracy(model, tokenizer, task)
        weight = self.label_prior_weight_for(task)
        model.set_label_prior(tokenizer, weight)
        return {"weight": weight, "dev_accuracy_before": before,
                "dev_accuracy_after": self._dev_accuracy(model, tokenizer, task)}

    def training_arguments(self, num_train: int) -> GTSTrainingArguments:
        """Fine-tuning arguments: enough epochs for ``min_finetune_steps`` optimiser steps, then the overrides."""
        overrides = self.settings.training_overrides
        batch_size = overrides.get("per_device_train_batch_size", 16) * _num_processes() * \
            overrides.get("gradient_accumulation_steps", 1)  # one optimiser step consumes this many examples
        steps_per_epoch = max(math.ceil(num_train / batch_size), 1)
        epochs = min(max(math.ceil(self.settings.min_finetune_steps / steps_per_epoch), 4), self.settings.max_epochs)
        evaluate_every = max(int(steps_per_epoch * overrides.get("num_train_epochs", epochs)) //
                             self.settings.evaluations, 1)
        options = {"num_train_epochs": epochs, "seed": self.settings.seed, "eval_strategy": "steps",
                   "eval_steps": evaluate_every, "logging_strategy": "steps", "logging_steps": evaluate_every}
        if _num_processes() > 1 and not torch.cuda.is_available():
            options["use_cpu"] = True  # DDP over gloo (without it, CPU processes would each train alone)
        options.update(overrides)
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


class EncodedExamples:
    """The features (:func:`features_of`) of example lists under the encoder's current weights, computed once.

    Most of a training run changes only what sits on the encoder (the head, the label prior, self-training's refit),
    yet checks dev accuracy after each stage: without this, ``standard`` embedded the same dev texts ten times (seven
    of them under unchanged weights). A change of the encoder (the body stage, fine-tuning, restoring saved weights, a
    move to another device, a pretrained encoder added beside it) is seen in the parameters' version counters and
    storage, and empties the cache, as does another model."""

    def __init__(self) -> None:
        self._model: weakref.ref | None = None
        self._state: tuple[tuple[int, int], ...] = ()
        self._features: dict[tuple[tuple[str, str | None], ...], dict[str, torch.Tensor]] = {}

    def __call__(self, model: GTSForFewShotClassification, tokenizer: Any,
                 examples: list[Example]) -> dict[str, torch.Tensor]:
        encoders = [encoder for encoder in (model.encoder, model.pretrained_encoder) if encoder is not None]
        state = tuple((param.data_ptr(), param._version) for encoder in encoders for param in encoder.parameters())
        if self._model is None or self._model() is not model or state != self._state:
            self._model, self._state, self._features = weakref.ref(model), state, {}
        key = tuple((example.text, example.text_pair) for example in examples)
        if key not in self._features:
            self._features[key] = features_of(predict(model, tokenizer, examples, use_knn=False))
        return self._features[key]


@torch.no_grad()
def score_features(model: GTSForFewShotClassification, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """The option head's logits (label prior included, kNN not) of precomputed :func:`features_of`, on the CPU."""
    on_device = {key: value.to(model.device) for key, value in features.items()}
    return model.score(on_device["embeddings"], on_device.get("pair_similarity")).float().cpu()


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
                      batch_size: int = 64, use_knn: bool = True, precision: str = "auto") -> dict[str, float]:
    """Accuracy, macro-F1, count and texts/second on labelled examples."""
    label2id = model.config.label2id if model.config.labels else {}
    unknown = [example for example in examples
               if example.label not in (example.choices if example.choices is not None else label2id)]
    if unknown:
        raise ValueError(f"{unknown[0].source}: label {unknown[0].label!r} is not one of the model's labels "
                         f"{model.config.labels or 'nor of the example choices'}")
    predictions = predict(model, tokenizer, examples, batch_size=batch_size, use_knn=use_knn, precision=precision,
                          show_progress=len(examples) > 500)
    gold = np.asarray([label_index(example, label2id) for example in examples])
    metrics = classification_metrics(gold, predictions.label_ids, predictions.probabilities.shape[1])
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


def _save_from_main_process(trained: TrainedModel, output_dir: Path) -> Path:
    """One writer; with several processes the others wait until the folder is complete."""
    if _num_processes() == 1:
        return save_trained(trained, output_dir)
    from accelerate import PartialState

    if PartialState().is_main_process:
        save_trained(trained, output_dir)
    PartialState().wait_for_everyone()
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


def _trainable_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every weight that training can change (not the frozen word-embedding matrix, most of a multilingual
    encoder's memory)."""
    frozen = model.encoder.get_input_embeddings().weight
    return {name: tensor.detach().clone() for name, tensor in model.state_dict(keep_vars=True).items()
            if tensor is not frozen}


def _encoder_copy(model: GTSForFewShotClassification) -> torch.nn.Module:
    """A copy of the model's encoder that shares its word-embedding matrix instead of copying it."""
    weight = model.encoder.get_input_embeddings().weight
    return copy.deepcopy(model.encoder, memo={id(weight): weight})


def _label_tensor(task: FewShotTask, examples: list[Example]) -> torch.Tensor:
    return torch.tensor(task.label_ids(examples))


def _device() -> torch.device:
    if _num_processes() > 1 and torch.cuda.is_available():
        from accelerate import PartialState

        return PartialState().device  # this process's GPU, not cuda:0 for every process
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------- several processes
def _num_processes() -> int:
    """How many processes `accelerate launch`, `torchrun` or `mpirun` started for this run (1: a plain run)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def _join_process_group() -> None:
    """Start Accelerate's distributed state (NCCL on GPUs, gloo on CPUs) unless the Trainer already has: `fast` mode
    never builds training arguments, and its processes must still agree on who writes the output folder."""
    from accelerate import PartialState

    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    PartialState(cpu=use_cpu)


def _compare_replicas(model: GTSForFewShotClassification) -> dict[str, Any]:
    """Fingerprint the weights and the kNN datastore in every process and compare them (they should be identical:
    DDP keeps the weights in step, and everything else is computed on the same data with the same seed)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    if model.knn is not None:
        digest.update(np.ascontiguousarray(model.knn.keys).tobytes() if model.knn.keys is not None else b"")
        digest.update(json.dumps(asdict(model.knn.settings), sort_keys=True).encode())
    fingerprints: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(fingerprints, digest.hexdigest())
    identical = len(set(fingerprints)) == 1
    if not identical:
        logger.warning("the %d processes ended with different models; the main process's is saved", len(fingerprints))
    return {"num_processes": len(fingerprints), "replicas_identical": identical}
