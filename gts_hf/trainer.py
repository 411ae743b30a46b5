"""`GTSTrainer`: a `transformers.Trainer` running GTS's standard recipe; the contrastive body stage; the fast
head-only fit.

The loss is cross-entropy over the label options, plus (each switchable in :class:`GTSTrainingArguments`) R-Drop,
mixup of embeddings, token masking, and a supervised contrastive loss, optionally kNN-expanded with a memory bank of
the whole training set. The best dev epoch (the untrained start included) is kept in memory and restored at the end.
Training runs through Accelerate (the Trainer's), so several GPUs or machines need no code change.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import (Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments,
                          get_linear_schedule_with_warmup)
from transformers.trainer_utils import EvalPrediction

from .configuration import check_unit_interval
from .data import Example, label_index
from .inference import classification_metrics, encode_examples, tokenize_texts
from .losses import (distillation_loss, mixup, pairwise_cosine_loss, rdrop_loss, soft_cross_entropy,
                     supervised_contrastive_loss)
from .training_args import GTSTrainingArguments

logger = logging.getLogger(__name__)


class ExampleDataset(Dataset):
    """Labelled examples as a torch dataset of raw texts (tokenised by :class:`GTSDataCollator`).

    With ``targets`` (one distribution over the labels per example, e.g. a teacher's soft labels) each item also
    carries its target row and whether it is gold (``gold``: a boolean per example, default all)."""

    def __init__(self, examples: Sequence[Example], label2id: dict[str, int], targets: np.ndarray | None = None,
                 gold: Sequence[bool] | None = None):
        self.examples = list(examples)
        self.label_ids = [label_index(example, label2id) for example in self.examples]
        self.targets = targets
        self.gold = list(gold) if gold is not None else [True] * len(self.examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        item = {"text": example.text, "text_pair": example.text_pair, "choices": example.choices,
                "label": self.label_ids[index], "index": index}
        if self.targets is not None:
            item.update(targets=self.targets[index], gold=self.gold[index])
        return item


class GTSDataCollator:
    """Tokenises a list of dataset items with the model's prefix, truncation and pair layout."""

    def __init__(self, tokenizer: Any, config: Any):
        self.tokenizer, self.config = tokenizer, config

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pairs = [item["text_pair"] for item in items] if self.config.is_pair_task else None
        choices = [item["choices"] for item in items] if self.config.is_multiple_choice else None
        batch = encode_examples(self.tokenizer, self.config, [item["text"] for item in items], pairs, choices)
        batch["labels"] = torch.tensor([item["label"] for item in items])
        batch["example_ids"] = torch.tensor([item["index"] for item in items])
        if "targets" in items[0]:
            batch["targets"] = torch.tensor(np.stack([item["targets"] for item in items]), dtype=torch.float32)
            batch["gold"] = torch.tensor([item["gold"] for item in items])
        return batch


class KeepBestOnDev(TrainerCallback):
    """Remembers the trainable weights of the best evaluation (accuracy, then loss) and restores them at the end."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.best: tuple[float, float] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch: float | None = None

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not metrics or "eval_accuracy" not in metrics:
            return
        score = (metrics["eval_accuracy"], -metrics.get("eval_loss", 0.0))
        if self.best is None or score > self.best:
            self.best, self.best_epoch = score, state.epoch or 0.0
            self.best_state = {name: param.detach().clone() for name, param in self.model.named_parameters()
                               if param.requires_grad}

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state, strict=False)
            logger.info("restored the best dev epoch %s (accuracy %.4f)", self.best_epoch, self.best[0])


class EvaluateAtStart(TrainerCallback):
    """Evaluates the untrained model (zero-shot or head-only: a candidate for the best dev step too) once training has
    begun. Not before `train`: an evaluation first would leave Accelerate taking the model for prepared, and DDP would
    never wrap it (several processes would then train apart, each on its shard)."""

    def __init__(self, trainer: "GTSTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        self.trainer.evaluate()


class ContrastiveBank(TrainerCallback):
    """Re-embeds the whole training set at the start of each epoch (the memory bank of kNN-expanded contrast)."""

    def __init__(self, trainer: "GTSTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        self.trainer.refresh_bank()


def freeze_encoder_parts(encoder: torch.nn.Module, word_embeddings: bool, train_top_layers: int | None) -> None:
    """Freeze the word embeddings and/or every transformer layer below the top ``train_top_layers``."""
    if word_embeddings:
        encoder.get_input_embeddings().weight.requires_grad_(False)
    if train_top_layers is None:
        return
    layers = transformer_layers(encoder)
    for layer in layers[: max(len(layers) - train_top_layers, 0)]:
        layer.requires_grad_(False)
    if train_top_layers < len(layers):
        encoder.get_input_embeddings().requires_grad_(False)
        for module in encoder.modules():  # position/type embeddings and their LayerNorm sit below every layer
            if "Embeddings" in type(module).__name__:
                module.requires_grad_(False)


def transformer_layers(encoder: torch.nn.Module) -> torch.nn.ModuleList:
    """The encoder's stack of transformer layers (the ModuleList as long as ``num_hidden_layers``)."""
    depth = encoder.config.num_hidden_layers
    for module in encoder.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == depth:
            return module
    raise ValueError(f"cannot find the {depth} transformer layers of {type(encoder).__name__}")


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, rate: float, mask_id: int,
                special_ids: Sequence[int]) -> torch.Tensor:
    """Replace a ``rate`` share of the real, non-special tokens with ``mask_id``."""
    if rate <= 0:
        return input_ids
    candidates = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(list(special_ids), device=input_ids.device))
    chosen = candidates & (torch.rand(input_ids.shape, device=input_ids.device) < rate)
    return input_ids.masked_fill(chosen, mask_id)


class GTSTrainer(Trainer):
    """A `Trainer` for :class:`~gts_hf.modeling.GTSForFewShotClassification` with GTS's standard recipe.

    Args (beyond `Trainer`'s):
        train_examples / eval_examples: lists of :class:`~gts_hf.data.Example`, wrapped into datasets for you.
    """

    args: GTSTrainingArguments

    def __init__(self, model: Any = None, args: GTSTrainingArguments | None = None,
                 train_examples: Sequence[Example] | None = None, eval_examples: Sequence[Example] | None = None,
                 processing_class: Any = None, **kwargs: Any):
        args = args or GTSTrainingArguments()
        label2id = model.config.label2id
        kwargs.setdefault("train_dataset", ExampleDataset(train_examples, label2id) if train_examples else None)
        kwargs.setdefault("eval_dataset", ExampleDataset(eval_examples, label2id) if eval_examples else None)
        kwargs.setdefault("data_collator", GTSDataCollator(processing_class, model.config))
        kwargs.setdefault("compute_metrics", self._metrics_for(len(model.config.labels)))
        super().__init__(model=model, args=args, processing_class=processing_class, **kwargs)
        # a pretrained encoder held beside this one shares its word embeddings: training them would move both
        frozen_words = args.freeze_word_embeddings or getattr(model, "pretrained_encoder", None) is not None
        freeze_encoder_parts(model.encoder, frozen_words, args.train_top_layers)
        self.best_on_dev = KeepBestOnDev(model) if args.select_on_dev and self.eval_dataset is not None else None
        if self.best_on_dev:
            self.add_callback(self.best_on_dev)
            self.add_callback(EvaluateAtStart(self))
        self.bank: torch.Tensor | None = None
        if args.contrastive_weight > 0 and args.contrastive_bank_positives > 0:
            self.add_callback(ContrastiveBank(self))
        tokenizer = processing_class
        self._mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
        self._special_ids = tokenizer.all_special_ids

    @staticmethod
    def _metrics_for(num_labels: int):
        def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
            logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
            return classification_metrics(prediction.label_ids, np.argmax(logits, axis=-1),
                                          num_labels or logits.shape[-1])
        return compute_metrics

    # ------------------------------------------------------------------------------------------------------- hub
    def push_to_hub(self, repo_id: str | None = None, commit_message: str | None = "End of training",
                    private: bool | None = None, revision: str | None = None, token: str | None = None,
                    **kwargs: Any) -> Any:
        """Upload the trained model as a complete gts-hf model (weights, config, tokenizer, the kNN datastore when
        attached, a training record and the gts-hf model card) in one commit, via :func:`gts_hf.hub.push_model`.

        ``repo_id`` defaults to ``args.hub_model_id``; extra keyword arguments (``license``, ``datasets``,
        ``data_dir``, ``include_code``, ``examples``) go to ``push_model``. Only the main process pushes (the others
        return ``None``). Returns the :class:`~huggingface_hub.CommitInfo`.
        """
        import json
        import tempfile
        from pathlib import Path

        from .hub import RECORD_FILE, push_model

        repo_id = repo_id or self.args.hub_model_id
        if not repo_id:
            raise ValueError("push_to_hub needs a repo_id (or GTSTrainingArguments.hub_model_id)")
        if not self.is_world_process_zero():
            return None
        model = self.accelerator.unwrap_model(self.model)
        if "examples" not in kwargs and "data_dir" not in kwargs:
            kwargs["examples"] = getattr(self.train_dataset, "examples", None)
        with tempfile.TemporaryDirectory(prefix="gts-hf-trainer-") as folder:
            model.save_pretrained(folder)
            self.processing_class.save_pretrained(folder)
            record_path = Path(folder) / RECORD_FILE
            if not record_path.is_file():
                record_path.write_text(json.dumps(self._training_record(model), indent=2, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
            return push_model(folder, repo_id, private=bool(private), revision=revision,
                              commit_message=commit_message, token=token if token is not None else self.args.hub_token,
                              **kwargs)

    def _training_record(self, model: Any) -> dict[str, Any]:
        """A minimal ``gts_training.json`` from what the trainer knows (read by the model card)."""
        config = model.config
        record: dict[str, Any] = {
            "mode": "trainer", "student": config.base_model, "labels": list(config.labels),
            "label_options": list(config.label_options), "task_type": config.task_type,
            "num_train": len(self.train_dataset) if self.train_dataset is not None else 0,
            "num_dev": len(self.eval_dataset) if self.eval_dataset is not None else 0,
            "seed": self.args.seed,
        }
        if self.best_on_dev is not None and self.best_on_dev.best is not None:
            record["best_dev_epoch"] = self.best_on_dev.best_epoch
            record["best_dev_accuracy"] = self.best_on_dev.best[0]
        if getattr(model, "knn", None) is not None:
            record["knn"] = {}
        return record

    # ----------------------------------------------------------------------------------------------------- optimiser
    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """AdamW with a higher learning rate for the option head than for the encoder."""
        if self.optimizer is None:
            model = self.model
            head_names = {"option_embeddings", "log_logit_scale", "pair_weight", "pair_bias"}
            head, decay, no_decay = [], [], []
            for name, param in model.named_parameters():
                if not param.requires_grad:
                    continue
                if name in head_names:
                    head.append(param)
                elif param.ndim < 2:
                    no_decay.append(param)
                else:
                    decay.append(param)
            groups = [
                {"params": decay, "weight_decay": self.args.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
                {"params": head, "weight_decay": 0.0, "lr": self.args.head_learning_rate},
            ]
            self.optimizer = torch.optim.AdamW([group for group in groups if group["params"]],
                                               lr=self.args.learning_rate)
        return self.optimizer

    # ------------------------------------------------------------------------------------------------------- train
    def refresh_bank(self) -> None:
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        chunks, ids = [], []
        with torch.no_grad():
            for batch in self.get_eval_dataloader(self.train_dataset):  # sharded when there are several processes
                inputs = {k: v for k, v in batch.items() if k not in ("labels", "example_ids")}
                embeddings, example_ids = self.accelerator.gather_for_metrics(
                    (model(**inputs).embeddings, batch["example_ids"]))
                chunks.append(embeddings)
                ids.append(example_ids)
        model.train(was_training)
        embeddings = torch.cat(chunks)
        self.bank = embeddings.new_zeros(len(self.train_dataset), embeddings.shape[-1])
        self.bank[torch.cat(ids).to(embeddings.device)] = embeddings  # every process holds the whole bank, in order
        self.bank_labels = torch.tensor(self.train_dataset.label_ids, device=self.bank.device)

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        labels = inputs.pop("labels")
        example_ids = inputs.pop("example_ids", None)
        targets = {key: inputs.pop(key) for key in ("targets", "gold") if key in inputs}
        if not model.training:
            outputs = model(**inputs)
            loss = F.cross_entropy(outputs.logits, labels)
            return (loss, outputs) if return_outputs else loss
        args = self.args
        inputs = self._augment(inputs)
        outputs = model(**inputs)
        loss = self.label_loss(outputs.logits, labels, **targets)
        if args.rdrop_alpha > 0:
            second = model(**inputs)
            loss = (loss + self.label_loss(second.logits, labels, **targets)) / 2
            loss = loss + args.rdrop_alpha * rdrop_loss(outputs.logits, second.logits)
        if "choice_input_ids" in inputs:  # per-example options: no label vectors to mix, no classes to contrast
            return (loss, outputs) if return_outputs else loss
        if args.mixup_alpha > 0 and args.mixup_weight > 0:
            loss = loss + args.mixup_weight * self._mixup_loss(model, outputs, labels)
        if args.contrastive_weight > 0:
            loss = loss + args.contrastive_weight * self._contrastive_loss(outputs.embeddings, labels, example_ids)
        return (loss, outputs) if return_outputs else loss

    def label_loss(self, logits: torch.Tensor, labels: torch.Tensor, **targets: torch.Tensor) -> torch.Tensor:
        """The supervised term: cross-entropy with the gold labels (:class:`DistillationTrainer` adds soft labels)."""
        return F.cross_entropy(logits, labels)

    def _augment(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rate = random.choice(self.args.mask_rates) if self.args.mask_rates else 0.0
        if rate <= 0:
            return inputs
        masked = dict(inputs)
        for key in [key for key in inputs if key.endswith("input_ids")]:
            mask_key = key.replace("input_ids", "attention_mask")
            masked[key] = mask_tokens(inputs[key], inputs[mask_key], rate, self._mask_id, self._special_ids)
        return masked

    def _mixup_loss(self, model: torch.nn.Module, outputs: Any, labels: torch.Tensor) -> torch.Tensor:
        head = self.accelerator.unwrap_model(model)
        targets = F.one_hot(labels, len(head.config.labels)).to(outputs.embeddings.dtype)
        features = outputs.embeddings
        if outputs.pair_similarity is not None:
            features = torch.cat([features, outputs.pair_similarity.unsqueeze(-1)], dim=-1)
        mixed, mixed_targets, _ = mixup(features, targets, self.args.mixup_alpha)
        if outputs.pair_similarity is not None:
            logits = head.score(F.normalize(mixed[:, :-1], dim=-1), mixed[:, -1])
        else:
            logits = head.score(F.normalize(mixed, dim=-1))
        return soft_cross_entropy(logits, mixed_targets)

    def _contrastive_loss(self, embeddings: torch.Tensor, labels: torch.Tensor,
                          example_ids: torch.Tensor | None) -> torch.Tensor:
        use_bank = self.bank is not None and self.args.contrastive_bank_positives > 0
        return supervised_contrastive_loss(
            embeddings, labels, self.args.contrastive_temperature,
            bank=self.bank if use_bank else None,
            bank_labels=self.bank_labels if use_bank else None,
            bank_positives=self.args.contrastive_bank_positives,
            bank_ids=example_ids if use_bank else None,
        )


class DistillationTrainer(GTSTrainer):
    """`GTSTrainer` on gold examples plus teacher-labelled ones: cross-entropy on the gold labels, plus
    ``distill_weight`` · T² · KL(teacher ‖ student) at temperature T on the others (Hinton et al.).

    Args (beyond `GTSTrainer`'s):
        distill_examples: the kept generated or unlabelled examples (their ``label`` is the teacher's argmax).
        teacher_probabilities: the teacher's distribution for each of them, ``(len(distill_examples), num_labels)``.
        temperature / distill_weight: of the KL term.
    """

    def __init__(self, model: Any = None, args: GTSTrainingArguments | None = None,
                 train_examples: Sequence[Example] = (), distill_examples: Sequence[Example] = (),
                 teacher_probabilities: np.ndarray | None = None, temperature: float = 2.0,
                 distill_weight: float = 1.0, **kwargs: Any):
        self.temperature, self.distill_weight = temperature, distill_weight
        gold_targets = np.eye(len(model.config.labels), dtype=np.float32)[
            [model.config.label2id[example.label] for example in train_examples]]
        soft = np.asarray(teacher_probabilities if teacher_probabilities is not None else
                          np.zeros((0, len(model.config.labels))), dtype=np.float32)
        if len(soft) != len(distill_examples):
            raise ValueError(f"{len(distill_examples)} distillation examples but {len(soft)} teacher distributions")
        examples = list(train_examples) + list(distill_examples)
        kwargs["train_dataset"] = ExampleDataset(
            examples, model.config.label2id, targets=np.concatenate([gold_targets, soft]),
            gold=[True] * len(train_examples) + [False] * len(distill_examples))
        super().__init__(model=model, args=args, **kwargs)

    def label_loss(self, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None,
                   gold: torch.Tensor | None = None) -> torch.Tensor:
        if targets is None or gold is None or bool(gold.all()):
            return F.cross_entropy(logits, labels)
        loss = F.cross_entropy(logits[gold], labels[gold]) if bool(gold.any()) else logits.sum() * 0.0
        return loss + self.distill_weight * distillation_loss(logits[~gold], targets[~gold], self.temperature)


# ------------------------------------------------------------------------------------------------ fast: head only
@torch.enable_grad()
def fit_head(model: Any, features: dict[str, torch.Tensor], labels: torch.Tensor,
             dev_features: dict[str, torch.Tensor] | None = None, dev_labels: torch.Tensor | None = None,
             steps: int = 300, learning_rate: float = 1e-2, anchor_weight: float = 1.0, mixup_alpha: float = 0.4,
             tie_options: bool = False, seed: int = 42,
             on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train only the option head on frozen features (``embeddings`` and, for pairs, ``pair_similarity``).

    The option vectors are pulled towards their starting point (the label texts' embeddings) by ``anchor_weight``,
    which keeps the zero-shot prior where 32 examples cannot overrule it. Full-batch AdamW; the step with the best dev
    accuracy (then loss) is kept, the start included. Without dev data the last step is kept. ``on_step(step)``, if
    given, is called after every optimiser step with the head in that step's state (to record a trajectory).

    ``tie_options`` (pairs): the option vectors start tied (equal, so their term cancels and the pair cosine's weight
    and bias per label decide) and are anchored there instead of at the label texts. The tied start predicts one label
    for everything, so it is not a candidate for the kept step."""
    device = model.option_embeddings.device  # the features come from numpy, on the CPU
    features, labels = _on_device(features, device), labels.to(device)
    if dev_features is not None and dev_labels is not None:
        dev_features, dev_labels = _on_device(dev_features, device), dev_labels.to(device)
    generator = torch.Generator().manual_seed(seed)
    has_pairs = features.get("pair_similarity") is not None
    if tie_options and not has_pairs:
        raise ValueError("tie_options needs pair features (a similarity or NLI task)")
    if tie_options:
        model.tie_label_options()
    params = [model.option_embeddings, model.log_logit_scale, model.pair_weight, model.pair_bias]
    anchor = F.normalize(model.option_embeddings.detach().clone(), dim=-1)
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    targets = F.one_hot(labels, len(model.config.labels)).float()
    if has_pairs:
        model.calibrate_pair_similarity(features["pair_similarity"])

    def logits_of(feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.score(feats["embeddings"], feats.get("pair_similarity"))

    def dev_score() -> tuple[float, float]:
        if dev_features is None:
            return (0.0, 0.0)
        with torch.no_grad():
            logits = logits_of(dev_features)
            return ((logits.argmax(-1) == dev_labels).float().mean().item(), -F.cross_entropy(logits, dev_labels).item())

    best, best_state, best_step = (-1.0, -math.inf) if tie_options else dev_score(), _head_state(params), 0
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        loss = F.cross_entropy(logits_of(features), labels)
        if mixup_alpha > 0:
            packed = torch.cat([features["embeddings"], features["pair_similarity"].unsqueeze(-1)], -1) \
                if has_pairs else features["embeddings"]
            mixed, mixed_targets, _ = mixup(packed, targets, mixup_alpha, generator)
            mixed_logits = model.score(F.normalize(mixed[:, :-1], dim=-1), mixed[:, -1]) if has_pairs \
                else model.score(F.normalize(mixed, dim=-1))
            loss = loss + 0.5 * soft_cross_entropy(mixed_logits, mixed_targets)
        drift = (F.normalize(model.option_embeddings, dim=-1) - anchor).pow(2).sum(-1).mean()
        (loss + anchor_weight * drift).backward()
        optimizer.step()
        if on_step is not None:
            on_step(step)
        if dev_features is None:
            continue
        score = dev_score()
        if score > best:
            best, best_state, best_step = score, _head_state(params), step
    if dev_features is None:
        return {"head_steps": steps, "head_best_step": steps, "head_dev_accuracy": None}
    _load_head_state(params, best_state)
    return {"head_steps": steps, "head_best_step": best_step, "head_dev_accuracy": best[0]}


def confident_per_label(probabilities: torch.Tensor, per_label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and predicted labels of the ``per_label`` texts predicted most confidently for each label (fewer where
    fewer texts are predicted as that label): pseudo-labels for self-training that keep every label represented."""
    confidence, predicted = probabilities.max(-1)
    rows = [chosen[confidence[chosen].argsort(descending=True, stable=True)[:per_label]]
            for label in range(probabilities.shape[1]) for chosen in [torch.nonzero(predicted == label).flatten()]]
    rows = torch.cat(rows)
    return rows, predicted[rows]


def _on_device(features: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device) for name, tensor in features.items()}


def _head_state(params: Sequence[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [copy.deepcopy(param.detach()) for param in params]


@torch.no_grad()
def _load_head_state(params: Sequence[torch.nn.Parameter], state: Sequence[torch.Tensor]) -> None:
    for param, value in zip(params, state):
        param.copy_(value)


# ------------------------------------------------------------------------------------- standard: contrastive body
@torch.enable_grad()
def train_body_contrastive(model: Any, tokenizer: Any, examples: Sequence[Example], steps: int = 40,
                           learning_rate: float = 2e-5, batch_size: int = 32, interpolation: float = 1.0,
                           gradient_checkpointing: bool | None = None, seed: int = 42,
                           label_texts: bool = True) -> dict[str, Any]:
    """Reshape the encoder's embedding space around the labels (SetFit's body stage, made cheaper).

    Each step draws a class-balanced batch (a few examples from each of several labels) plus those labels' option
    texts, embeds it once and applies :func:`~gts_hf.losses.pairwise_cosine_loss` to every pair in it: a batch of 32
    texts yields ~500 pairs for the price SetFit pays for 16. The option texts take part as members of their label, so
    they stay where their examples go and the label options, the anchored head and the label prior keep their
    meaning (``label_texts=False`` leaves them out: the batch's texts only). Every encoder weight but the word
    embeddings is trained (AdamW, linear warm-up and decay).

    ``interpolation`` < 1 averages the trained weights with the starting ones (WiSE-FT, Wortsman et al. 2022):
    ``start + interpolation · (trained − start)``, which keeps more of what the pretrained encoder knew.

    ``gradient_checkpointing`` (default: on a CPU, where memory is short, not on a GPU) recomputes each layer's
    activations in the backward pass instead of keeping them: the same result (dropout included), about a third of the
    peak memory and about 40% more time (measured on EPRSTMT, 32 reviews of up to 256 tokens: 9,236 → 3,065 MiB)."""
    check_unit_interval("interpolation", interpolation)
    by_label: dict[int, list[int]] = {}
    for index, example in enumerate(examples):
        by_label.setdefault(label_index(example, model.config.label2id), []).append(index)
    rng = random.Random(seed)
    saved_flags = {name: param.requires_grad for name, param in model.named_parameters()}
    model.requires_grad_(False)
    model.encoder.requires_grad_(True)
    freeze_encoder_parts(model.encoder, word_embeddings=True, train_top_layers=None)
    params = [param for param in model.encoder.parameters() if param.requires_grad]
    start = [param.detach().clone() for param in params] if interpolation < 1 else None
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, max(steps // 10, 1), steps)
    was_training = model.training
    model.train()
    checkpointing = _start_checkpointing(model.encoder, gradient_checkpointing)
    losses = []
    try:
        for _ in range(steps):
            batch, labels = class_balanced_batch(by_label, batch_size, rng)
            loss = _body_loss(model, tokenizer, [examples[index] for index in batch], labels, label_texts)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        if start is not None:
            with torch.no_grad():
                for param, initial in zip(params, start):
                    param.copy_(initial + interpolation * (param - initial))
    finally:
        if checkpointing:
            _stop_checkpointing(model.encoder)
        model.train(was_training)
        for name, param in model.named_parameters():
            param.requires_grad_(saved_flags[name])
    return {"body_steps": steps, "body_learning_rate": learning_rate, "body_batch_size": batch_size,
            "body_interpolation": interpolation, "body_label_texts": label_texts,
            "body_loss_first": round(float(np.mean(losses[:5])), 4) if losses else None,
            "body_loss_last": round(float(np.mean(losses[-5:])), 4) if losses else None}


def _start_checkpointing(encoder: Any, wanted: bool | None) -> bool:
    """Turn activation checkpointing on for the body stage (``None``: on a CPU); True if this call turned it on.
    transformers 5 renamed ``gradient_checkpointing_*`` to ``activation_checkpointing_*``; both are supported."""
    wanted = next(encoder.parameters()).device.type == "cpu" if wanted is None else wanted
    if not wanted or not getattr(encoder, "supports_gradient_checkpointing", False) or \
            any(getattr(module, "gradient_checkpointing", False) for module in encoder.modules()):
        return False
    if hasattr(encoder, "activation_checkpointing_enable"):
        encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return True


def _stop_checkpointing(encoder: Any) -> None:
    if hasattr(encoder, "activation_checkpointing_disable"):
        encoder.activation_checkpointing_disable()
    else:
        encoder.gradient_checkpointing_disable()


def class_balanced_batch(by_label: dict[int, list[int]], batch_size: int,
                         rng: random.Random) -> tuple[list[int], list[int]]:
    """Indices and labels of a batch of ``per_label`` examples from each of ``batch_size // per_label`` labels
    (``per_label`` = batch size over the number of labels, at least 2), so every batch holds same-label pairs."""
    per_label = max(2, batch_size // len(by_label))
    chosen = rng.sample(sorted(by_label), min(len(by_label), max(batch_size // per_label, 1)))
    batch: list[int] = []
    labels: list[int] = []
    for label in chosen:
        members = by_label[label]
        picked = rng.sample(members, min(per_label, len(members)))
        batch += picked
        labels += [label] * len(picked)
    return batch, labels


def _body_loss(model: Any, tokenizer: Any, examples: list[Example], labels: list[int],
               label_texts: bool = True) -> torch.Tensor:
    config = model.config
    pairs = [example.text_pair for example in examples] if config.is_pair_task else None
    device = model.device
    inputs = encode_examples(tokenizer, config, [example.text for example in examples], pairs)
    embeddings = [embed_by_length(model, inputs["input_ids"].to(device), inputs["attention_mask"].to(device))]
    targets = list(labels)
    if label_texts:
        option_labels = sorted(set(labels))
        options = tokenize_texts(tokenizer, config, [config.label_options[label] for label in option_labels])
        embeddings.append(model.embed(options["input_ids"].to(device), options["attention_mask"].to(device)))
        targets += option_labels
    return pairwise_cosine_loss(torch.cat(embeddings), torch.tensor(targets, device=device))


def embed_by_length(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    chunk_size: int = 8) -> torch.Tensor:
    """``model.embed`` over chunks of similar length, each cut to its own longest input, in the batch's order.

    A class-balanced batch pads every text to its longest one: on EPRSTMT split 4 (reviews of 32 tokens on average,
    170 at most) most of the encoder's work went to padding. Pooling ignores padding, so the embeddings are the same."""
    order = torch.argsort(attention_mask.sum(1))
    chunks = []
    for start in range(0, len(order), chunk_size):
        rows = order[start:start + chunk_size]
        mask = attention_mask[rows]
        width = int(mask.any(0).nonzero().max()) + 1  # up to the last column any of them uses
        chunks.append(model.embed(input_ids[rows, :width], mask[:, :width]))
    return torch.cat(chunks)[torch.argsort(order)]
