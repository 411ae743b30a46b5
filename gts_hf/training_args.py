"""`GTSTrainingArguments`: `transformers.TrainingArguments` plus the switches of GTS's standard recipe."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments


@dataclass
class GTSTrainingArguments(TrainingArguments):
    """Training arguments for :class:`~gts_hf.trainer.GTSTrainer`.

    Every technique of the recipe can be switched off on its own (set its weight or rate to 0), which is how the
    ablations in ``benchmarks/`` are run. Defaults differ from ``TrainingArguments`` where few-shot training needs it:
    evaluation every epoch with the best dev epoch kept in memory, no checkpoints, no reporting integrations.
    """

    output_dir: str | None = field(default=None, metadata={"help": "Checkpoint folder (only used when saving)."})
    num_train_epochs: float = field(default=8.0)
    learning_rate: float = field(default=5e-5)
    weight_decay: float = field(default=0.1)
    warmup_ratio: float = field(default=0.1)
    per_device_train_batch_size: int = field(default=16)
    per_device_eval_batch_size: int = field(default=64)
    eval_strategy: str = field(default="epoch")
    save_strategy: str = field(default="no")
    logging_strategy: str = field(default="epoch")
    report_to: str | list[str] = field(default="none")
    remove_unused_columns: bool = field(default=False)
    dataloader_pin_memory: bool = field(default_factory=torch.cuda.is_available)

    head_learning_rate: float = field(
        default=2e-3, metadata={"help": "Learning rate of the option vectors and the pair-similarity term."})
    freeze_word_embeddings: bool = field(
        default=True, metadata={"help": "Freeze the word-embedding matrix (most of a multilingual encoder's "
                                        "parameters): same accuracy, much faster steps."})
    train_top_layers: int | None = field(
        default=4, metadata={"help": "Fine-tune only the top N transformer layers (the rest stay frozen): far "
                                        "cheaper steps on CPUs; None trains them all."})
    rdrop_alpha: float = field(default=1.0, metadata={"help": "Weight of R-Drop's symmetric KL (0: off)."})
    mixup_alpha: float = field(default=0.4, metadata={"help": "Beta(α, α) of embedding mixup (0: off)."})
    mixup_weight: float = field(default=0.5, metadata={"help": "Weight of the mixup loss."})
    mask_rates: list[float] = field(
        default_factory=lambda: [0.0, 0.1, 0.2, 0.3],
        metadata={"help": "Token-masking augmentation: each batch masks at a rate drawn from these ([] or [0]: off)."})
    contrastive_weight: float = field(default=0.2, metadata={"help": "Weight of the supervised contrastive loss."})
    contrastive_temperature: float = field(default=0.1)
    contrastive_bank_positives: int = field(
        default=0, metadata={"help": "kNN-expanded contrastive learning: contrast each anchor against the whole "
                                     "training set and use its N nearest same-label entries as extra positives (0: "
                                     "in-batch only)."})
    select_on_dev: bool = field(
        default=True, metadata={"help": "Keep the weights of the best dev epoch (the untrained start included)."})
