"""The GTS student: any encoder backbone plus an option scorer over label options (UniMC's idea for bi-encoders).

Each label is an *option with meaning*: its text (name or description) is encoded by the same backbone and the
model scores ``logit_scale * cos(text, option)``. Before training this is a zero-shot classifier; training moves the
encoder and the option vectors together. Pair tasks (similarity, NLI) encode the pair jointly (a cross-encoder) and
add a learned term on the cosine of the two sentences encoded apart, which carries most of the signal with few labels.
Once trained, the scores can be blended with the label texts' zero-shot scores (``label_prior_weight``), so the
label names keep their say where a few dozen examples would overrule them.
Multiple-choice tasks (CHID) bring their options with each input: the choices are encoded by the same backbone and
scored the same way, ``logit_scale * cos(text, choice)`` (UniMC's paradigm with per-example options).
A trained model may also hold the backbone's pretrained encoder, frozen, and score each text by its embeddings from
both encoders side by side (``GTSConfig.keep_pretrained_encoder``).
A :class:`~gts_hf.retrieval.KNNDatastore`, when present, is saved and loaded with the model.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration import GTSConfig, check_unit_interval
from .inference import tokenize_texts
from .retrieval import KNN_DIRNAME, KNNDatastore

MODELS_WITH_POOLER = ("bert", "roberta", "xlm-roberta")


@dataclass
class GTSOutput(ModelOutput):
    """Output of :class:`GTSForFewShotClassification`.

    Args:
        loss: cross-entropy over the label options, when labels are given.
        logits: option scores, ``(batch, num_labels)``.
        embeddings: L2-normalised pooled embeddings of the (joint) input, ``(batch, hidden)`` (with a pretrained
            encoder, both encoders' embeddings side by side: ``config.hidden_size`` wide); the kNN key.
        pair_similarity: for pair tasks, cosine of the two sentences encoded apart, ``(batch,)``; for coreference, of
            the two marked spans.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    pair_similarity: torch.FloatTensor | None = None


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden_states[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1e-6)


class GTSPreTrainedModel(PreTrainedModel):
    config_class = GTSConfig
    config: GTSConfig
    base_model_prefix = "gts"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, GTSForFewShotClassification):
            init.normal_(module.option_embeddings, std=self.config.encoder_config.initializer_range)
            init.constant_(module.log_logit_scale, math.log(self.config.logit_scale))
            init.zeros_(module.pair_weight)
            init.zeros_(module.pair_bias)
            init.zeros_(module.pair_center)
            init.ones_(module.pair_spread)
            init.zeros_(module.label_prior)


class GTSForFewShotClassification(GTSPreTrainedModel):
    """Encoder + option scorer (+ pair-similarity term), with an optional kNN datastore attached as ``self.knn``."""

    def __init__(self, config: GTSConfig):
        super().__init__(config)
        self.encoder = build_encoder(config.encoder_config)
        self.pretrained_encoder: nn.Module | None = None
        if config.keep_pretrained_encoder:
            self._hold_pretrained_encoder(build_encoder(config.encoder_config))
        num_labels, hidden = len(config.labels), config.hidden_size
        self.option_embeddings = nn.Parameter(torch.empty(num_labels, hidden))
        self.log_logit_scale = nn.Parameter(torch.empty(()))
        self.pair_weight = nn.Parameter(torch.empty(num_labels))
        self.pair_bias = nn.Parameter(torch.empty(num_labels))
        # The pair cosine is standardised with statistics of the training pairs: raw cosines of one encoder sit in a
        # narrow band (e.g. 0.75-0.95), which a unit-scale weight could never separate.
        self.register_buffer("pair_center", torch.zeros(()))
        self.register_buffer("pair_spread", torch.ones(()))
        self.register_buffer("label_prior", torch.zeros(num_labels, hidden))  # see GTSConfig.label_prior_weight
        self.knn: KNNDatastore | None = None
        self.post_init()

    # ------------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(cls, backbone: str | os.PathLike, config: GTSConfig, **load_kwargs: Any) -> "GTSForFewShotClassification":
        """A fresh GTS model whose encoder carries the pretrained weights found at ``backbone`` (a local folder)."""
        if config.keep_pretrained_encoder:
            raise ValueError("a fresh model has no trained encoder to keep the pretrained one beside: build it "
                             "without keep_pretrained_encoder and call add_pretrained_encoder after training")
        encoder_config = AutoConfig.from_pretrained(backbone)
        encoder = AutoModel.from_pretrained(backbone, **_without_pooler(encoder_config), **load_kwargs)
        config.encoder_config = encoder.config
        model = cls(config)
        model.encoder = encoder
        return model

    @torch.no_grad()
    def add_pretrained_encoder(self, encoder: nn.Module) -> None:
        """Hold ``encoder`` (the backbone as it was before training) beside the trained one, frozen, and score texts
        by both embeddings side by side (``GTSConfig.keep_pretrained_encoder``). Its word embeddings are replaced by
        the trained encoder's (the body stage and, by default, fine-tuning leave them as they were; while a
        pretrained encoder is held, :class:`~gts_hf.trainer.GTSTrainer` never trains them). The head's option
        vectors and label prior widen to match and start at zero: call :meth:`set_label_options` and fit the head
        afterwards; a kNN datastore, built on the old embeddings, is refused."""
        if self.pretrained_encoder is not None:
            raise ValueError("the model already holds a pretrained encoder")
        if self.knn is not None:
            raise ValueError("add the pretrained encoder before building the kNN datastore: its keys are embeddings "
                             "of the trained encoder alone")
        if encoder.config.hidden_size != self.config.encoder_config.hidden_size:
            raise ValueError(f"the pretrained encoder's width ({encoder.config.hidden_size}) differs from the "
                             f"trained one's ({self.config.encoder_config.hidden_size})")
        self.config.keep_pretrained_encoder = True
        self._hold_pretrained_encoder(encoder.to(device=self.device, dtype=self.dtype))
        shape, like = (len(self.config.labels), self.config.hidden_size), self.option_embeddings
        self.option_embeddings = nn.Parameter(torch.zeros(shape, dtype=like.dtype, device=like.device))
        self.label_prior = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.all_tied_weights_keys = self.get_expanded_tied_weights_keys(all_submodels=True)

    def _hold_pretrained_encoder(self, encoder: nn.Module) -> None:
        """Share the trained encoder's word embeddings with ``encoder``, declared as tied so the saved model stores
        them once, and freeze the rest of it."""
        embeddings = self.encoder.get_input_embeddings()
        encoder.set_input_embeddings(embeddings)
        name = next(name for name, param in self.encoder.named_parameters() if param is embeddings.weight)
        self._tied_weights_keys = {f"pretrained_encoder.{name}": f"encoder.{name}"}
        self.pretrained_encoder = encoder.eval()
        self._freeze_pretrained_encoder()

    def _freeze_pretrained_encoder(self) -> None:
        """No gradient for the pretrained encoder's own weights (loading a model makes every weight trainable again);
        the shared word embeddings keep whatever the trained encoder says."""
        shared = self.encoder.get_input_embeddings().weight
        for param in self.pretrained_encoder.parameters():
            if param is not shared:
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> "GTSForFewShotClassification":
        """As ``nn.Module.train``, but the pretrained encoder stays in eval mode: it is frozen, dropout included."""
        super().train(mode)
        if self.pretrained_encoder is not None:
            self.pretrained_encoder.eval()  # frozen: no dropout either
        return self

    # ----------------------------------------------------------------------------------------------------- forward
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **encoder_kwargs: Any) -> torch.Tensor:
        """Pooled, L2-normalised embeddings (with a pretrained encoder: both encoders' side by side, see
        :meth:`_with_pretrained_view`)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **encoder_kwargs).last_hidden_state
        return self._with_pretrained_view(pool(hidden, attention_mask, self.config.pooling), input_ids, attention_mask,
                                          **encoder_kwargs)

    def _with_pretrained_view(self, pooled: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              **encoder_kwargs: Any) -> torch.Tensor:
        """``pooled`` L2-normalised; with a pretrained encoder, followed by that encoder's normalised embedding and
        scaled back to unit length, so a cosine with such a vector is the mean of the two encoders' cosines."""
        trained = F.normalize(pooled, dim=-1)
        if self.pretrained_encoder is None:
            return trained
        with torch.no_grad():
            hidden = self.pretrained_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                             **encoder_kwargs).last_hidden_state
            pretrained = F.normalize(pool(hidden, attention_mask, self.config.pooling), dim=-1).to(trained.dtype)
        return torch.cat([trained, pretrained], dim=-1) / math.sqrt(2)

    def embed_with_spans(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, first_span_mask: torch.Tensor,
                         second_span_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of marked texts, and the cosine of their two spans' mean contextual token states at
        ``config.span_layer`` (coreference: a pronoun's state in context resembles the noun it refers to). Like the
        sentences-apart cosine of pairs, the span cosine is a fixed feature: no gradient flows back through it. A span
        with no tokens (cut off by truncation) leaves the cosine at ``pair_center``, where its term is neutral."""
        output = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        embeddings = self._with_pretrained_view(pool(output.last_hidden_state, attention_mask, self.config.pooling),
                                                input_ids, attention_mask)
        states = output.hidden_states[self.config.span_layer].detach()
        first, second = (F.normalize(pool(states, mask, "mean"), dim=-1)
                         for mask in (first_span_mask, second_span_mask))
        present = (first_span_mask.sum(-1) > 0) & (second_span_mask.sum(-1) > 0)
        return embeddings, torch.where(present, (first * second).sum(-1), self.pair_center.to(states.dtype))

    def score(self, embeddings: torch.Tensor, pair_similarity: torch.Tensor | None = None) -> torch.Tensor:
        """Option logits from normalised embeddings (and, for pairs, the sentences' cosine)."""
        options = F.normalize(self.option_embeddings, dim=-1)
        logits = self.log_logit_scale.exp() * embeddings @ options.T
        if pair_similarity is not None:
            standardised = (pair_similarity - self.pair_center) / self.pair_spread
            logits = logits + standardised.unsqueeze(-1) * self.pair_weight + self.pair_bias
        weight = self.config.label_prior_weight
        if weight > 0:
            logits = (1 - weight) * logits + weight * self.config.logit_scale * embeddings @ self.label_prior.T
        return logits

    def score_choices(self, embeddings: torch.Tensor, choices: torch.Tensor, choice_mask: torch.Tensor) -> torch.Tensor:
        """Per-example option logits: ``(batch, hidden)`` texts against ``(batch * num_choices, hidden)`` choices."""
        choices = choices.view(len(embeddings), -1, embeddings.shape[-1])
        logits = self.log_logit_scale.exp() * torch.einsum("bh,bch->bc", embeddings, choices)
        return logits.masked_fill(~choice_mask.bool(), -1e4)

    @torch.no_grad()
    def calibrate_pair_similarity(self, similarities: torch.Tensor) -> None:
        """Set the standardisation of the pair cosine from the training pairs' cosines."""
        self.pair_center.fill_(similarities.mean().item())
        self.pair_spread.fill_(max(similarities.std().item(), 1e-3) if len(similarities) > 1 else 1.0)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        first_input_ids: torch.Tensor | None = None,
        first_attention_mask: torch.Tensor | None = None,
        second_input_ids: torch.Tensor | None = None,
        second_attention_mask: torch.Tensor | None = None,
        choice_input_ids: torch.Tensor | None = None,
        choice_attention_mask: torch.Tensor | None = None,
        choice_mask: torch.Tensor | None = None,
        first_span_mask: torch.Tensor | None = None,
        second_span_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> GTSOutput:
        """``choice_*``: multiple choice, the ``(batch * num_choices, length)`` tokenised choices and the
        ``(batch, num_choices)`` mask of real (not padding) choices; the logits are then one per choice.
        ``*_span_mask``: coreference, the ``(batch, length)`` masks of the marked noun and pronoun tokens, whose cosine
        is the pair term."""
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        pair_similarity = None
        if first_span_mask is not None and second_span_mask is not None:
            embeddings, pair_similarity = self.embed_with_spans(input_ids, attention_mask, first_span_mask,
                                                                second_span_mask)
        else:
            embeddings = self.embed(input_ids, attention_mask, **extra)
        if first_input_ids is not None and second_input_ids is not None:
            # The sentences-apart cosine is a fixed feature (no gradient into the encoder): training learns its weight,
            # while the encoder learns through the joint encoding; this keeps a pair step about as cheap as a single.
            with torch.no_grad():
                first = self.embed(first_input_ids, first_attention_mask)
                second = self.embed(second_input_ids, second_attention_mask)
            pair_similarity = (first * second).sum(-1)
        if choice_input_ids is not None:
            logits = self.score_choices(embeddings, self.embed(choice_input_ids, choice_attention_mask), choice_mask)
        else:
            logits = self.score(embeddings, pair_similarity)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return GTSOutput(loss=loss, logits=logits, embeddings=embeddings, pair_similarity=pair_similarity)

    # --------------------------------------------------------------------------------------------------- options
    @torch.no_grad()
    def encode_texts(self, tokenizer: Any, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Normalised embeddings of ``texts`` (the query prefix is added here)."""
        was_training = self.training
        self.eval()
        chunks = []
        for start in range(0, len(texts), batch_size):
            encoded = tokenize_texts(tokenizer, self.config, texts[start:start + batch_size]).to(self.device)
            chunks.append(self.embed(encoded["input_ids"], encoded["attention_mask"]))
        self.train(was_training)
        return torch.cat(chunks) if chunks else torch.zeros(0, self.config.hidden_size, device=self.device)

    @torch.no_grad()
    def set_label_options(self, tokenizer: Any, options: Sequence[str] | None = None) -> None:
        """Point each label's option vector at the embedding of its text, with the initial logit scale and no pair
        term: a zero-shot classifier over the current encoder."""
        options = list(options or self.config.label_options)
        if len(options) != len(self.config.labels):
            raise ValueError(f"{len(options)} options for {len(self.config.labels)} labels")
        self.config.label_options = options
        self.option_embeddings.copy_(self.encode_texts(tokenizer, options))
        self.log_logit_scale.fill_(math.log(self.config.logit_scale))
        self.pair_weight.zero_()
        self.pair_bias.zero_()

    @torch.no_grad()
    def tie_label_options(self) -> None:
        """Give every label the same option vector (their mean): the option term then adds the same score to every
        label and cancels, so a pair task is scored by its pair-cosine term until the vectors move apart."""
        self.option_embeddings.copy_(self.option_embeddings.mean(0, keepdim=True).expand_as(self.option_embeddings))

    @torch.no_grad()
    def set_label_prior(self, tokenizer: Any, weight: float) -> None:
        """Blend the label-text prior into the scores with weight ``weight`` (see ``GTSConfig.label_prior_weight``):
        the label options are embedded by the current encoder, so call it once training has finished."""
        check_unit_interval("label_prior_weight", weight)
        self.label_prior.copy_(self.encode_texts(tokenizer, self.config.label_options))
        self.config.label_prior_weight = weight

    @torch.no_grad()
    def score_options(self, tokenizer: Any, texts: Sequence[str], options: Sequence[str]) -> torch.Tensor:
        """Zero-shot probabilities of arbitrary option texts for single texts, ``(len(texts), len(options))``."""
        scale = self.log_logit_scale.exp()
        logits = scale * self.encode_texts(tokenizer, texts) @ self.encode_texts(tokenizer, options).T
        return logits.softmax(-1)

    # ------------------------------------------------------------------------------------------------- save/load
    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.knn is not None:
            self.knn.save(Path(save_directory) / KNN_DIRNAME)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if model.pretrained_encoder is not None:
            model._freeze_pretrained_encoder()
        hub_options = {key: kwargs[key] for key in ("revision", "token", "cache_dir", "local_files_only")
                       if kwargs.get(key) is not None}
        model.knn = KNNDatastore.load_if_present(pretrained_model_name_or_path, num_labels=len(model.config.labels),
                                                 hidden_size=model.config.hidden_size, **hub_options)
        return model


def _without_pooler(encoder_config: Any) -> dict[str, Any]:
    """GTS pools the hidden states itself: a BERT-style pooler would only waste time and parameters."""
    return {"add_pooling_layer": False} if encoder_config.model_type in MODELS_WITH_POOLER else {}


def build_encoder(encoder_config: Any) -> nn.Module:
    return AutoModel.from_config(encoder_config, **_without_pooler(encoder_config))
