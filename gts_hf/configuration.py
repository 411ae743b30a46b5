"""`GTSConfig`: what a GTS student is — its encoder, its labels as options with meaning, and how it reads text."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig


class GTSConfig(PretrainedConfig):
    """Configuration of :class:`~gts_hf.modeling.GTSForFewShotClassification`.

    Args:
        encoder_config: the backbone's configuration (any encoder ``AutoModel`` can build), or its dict.
        labels: label names, in output order (also stored as ``id2label``/``label2id``).
        label_options: the text each label stands for (its description or name); the model scores these options.
        task_type: ``"classification"``, ``"similarity"``, ``"nli"``, ``"multiple_choice"`` (no global labels: each
            input comes with its own choices, scored like label options) or ``"coreference"`` (single texts with a
            ``[noun]`` and a ``<pronoun>`` marked; the cosine of the two spans' contextual embeddings is the pair term).
        query_prefix: prepended to every input and option (``"query: "`` for e5 models).
        max_seq_length: inputs longer than this many tokens are truncated.
        pooling: ``"mean"`` (masked mean of the last hidden states) or ``"cls"``.
        logit_scale: initial inverse temperature of the cosine option scores (also the label prior's, fixed).
        label_prior_weight: weight ``β`` of the label-text prior: the logits are ``(1 - β)·trained + β·zero-shot``,
            the zero-shot term scoring the label texts as embedded by the final encoder (a product of experts that
            keeps what the label names say where a few examples would overrule it). 0: off.
        base_model: the id the encoder came from (for model cards and reproducibility).
        span_layer: coreference only: which encoder layer's token states give the span cosine, as an index into the
            encoder's ``hidden_states`` (-1: the last layer). The default, the layer before the last, told CLUEWSC's
            dev examples apart better (ROC AUC 0.669 against 0.610; benchmarks/ABLATION.md §14).
        keep_pretrained_encoder: the model also holds the backbone's pretrained encoder, frozen (its word embeddings
            shared with the trained one), and scores each text by both embeddings side by side: the body stage's
            reshaped space and the space it started from (benchmarks/ABLATION.md §22). The head then scores vectors of
            twice the encoder's width (:attr:`hidden_size`), and each text costs two encoder passes.
    """

    model_type = "gts"
    sub_configs = {"encoder_config": AutoConfig}

    def __init__(
        self,
        encoder_config: PretrainedConfig | dict[str, Any] | None = None,
        labels: list[str] | None = None,
        label_options: list[str] | None = None,
        task_type: str = "classification",
        query_prefix: str = "",
        max_seq_length: int = 256,
        pooling: str = "mean",
        logit_scale: float = 20.0,
        label_prior_weight: float = 0.0,
        base_model: str | None = None,
        span_layer: int = -2,
        keep_pretrained_encoder: bool = False,
        **kwargs: Any,
    ):
        if isinstance(encoder_config, dict):
            encoder_config = dict(encoder_config)
            encoder_config = AutoConfig.for_model(encoder_config.pop("model_type", "bert"), **encoder_config)
        self.encoder_config = encoder_config
        labels = list(labels or [])
        if labels:
            kwargs["id2label"] = dict(enumerate(labels))
            kwargs["label2id"] = {label: index for index, label in enumerate(labels)}
        self.labels = labels
        self.label_options = list(label_options or labels)
        if len(self.label_options) != len(labels):
            raise ValueError(f"{len(self.label_options)} label options for {len(labels)} labels")
        self.task_type = task_type
        self.query_prefix = query_prefix
        self.max_seq_length = max_seq_length
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.pooling = pooling
        self.logit_scale = logit_scale
        self.label_prior_weight = check_unit_interval("label_prior_weight", label_prior_weight)
        self.base_model = base_model
        self.span_layer = span_layer
        self.keep_pretrained_encoder = keep_pretrained_encoder
        kwargs.setdefault("tie_word_embeddings", True)  # lets transformers tie the pretrained encoder's word embeddings
        super().__init__(**kwargs)

    @property
    def is_pair_task(self) -> bool:
        return self.task_type in ("similarity", "nli")

    @property
    def is_multiple_choice(self) -> bool:
        return self.task_type == "multiple_choice"

    @property
    def is_coreference(self) -> bool:
        return self.task_type == "coreference"

    @property
    def hidden_size(self) -> int:
        """The width of the embeddings the head scores (twice the encoder's with ``keep_pretrained_encoder``)."""
        return self.encoder_config.hidden_size * (2 if self.keep_pretrained_encoder else 1)


def check_unit_interval(name: str, value: float) -> float:
    """``value``, refused outside [0, 1] with an error naming the setting."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within [0, 1], got {value}")
    return value
