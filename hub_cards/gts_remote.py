"""A gts-hf few-shot classifier for users without gts-hf: the module that ``trust_remote_code=True`` runs.

>>> from transformers import pipeline
>>> classifier = pipeline(model="USER/NAME", trust_remote_code=True)
>>> classifier("some text", top_k=2)
[{'label': ..., 'score': ...}, {'label': ..., 'score': ...}]

``gts-hf push`` uploads this file beside the model. It needs only transformers, torch and numpy; the kNN datastore
is searched with faiss when it is installed and exactly, with numpy, otherwise. It reads the files gts-hf writes
(``config.json``, ``model.safetensors``, ``knn/``) and predicts what ``gts_hf`` predicts: gts-hf's test suite checks
that. With gts-hf installed, ``import gts_hf`` and ``pipeline("gts-few-shot", model=...)`` run no code from the repo.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file
from torch import nn
from transformers import AutoConfig, AutoModel, Pipeline, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput, cached_file

try:  # optional: an exact numpy search is used without it
    import faiss
except ImportError:
    faiss = None

MODELS_WITH_POOLER = ("bert", "roberta", "xlm-roberta")
KNN_CONFIG, KNN_TENSORS, KNN_INDEX = "knn/config.json", "knn/datastore.safetensors", "knn/index.faiss"
HUB_OPTIONS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "subfolder")
SPAN_MARKERS = (("[", "]"), ("<", ">"))  # coreference: the [noun] and the <pronoun>, as gts_hf.data marks them


# ---------------------------------------------------------------------------------------------------------- config
class GTSConfig(PretrainedConfig):
    """The encoder's configuration, the labels and the text of each label's option, and how inputs are read."""

    model_type = "gts"
    sub_configs = {"encoder_config": AutoConfig}

    def __init__(self, encoder_config: Any = None, labels: list[str] | None = None,
                 label_options: list[str] | None = None, task_type: str = "classification", query_prefix: str = "",
                 max_seq_length: int = 256, pooling: str = "mean", logit_scale: float = 20.0,
                 label_prior_weight: float = 0.0, base_model: str | None = None, span_layer: int = -2,
                 keep_pretrained_encoder: bool = False, **kwargs: Any):
        if isinstance(encoder_config, dict):
            encoder_config = dict(encoder_config)
            encoder_config = AutoConfig.for_model(encoder_config.pop("model_type", "bert"), **encoder_config)
        self.encoder_config = encoder_config
        self.labels = list(labels or [])
        if self.labels:
            kwargs["id2label"] = dict(enumerate(self.labels))
            kwargs["label2id"] = {label: index for index, label in enumerate(self.labels)}
        self.label_options = list(label_options or self.labels)
        self.task_type = task_type
        self.query_prefix = query_prefix
        self.max_seq_length = max_seq_length
        self.pooling = pooling
        self.logit_scale = logit_scale
        self.label_prior_weight = label_prior_weight
        self.base_model = base_model
        self.span_layer = span_layer  # coreference: the layer whose token states give the span cosine
        self.keep_pretrained_encoder = keep_pretrained_encoder  # a frozen pretrained encoder beside the trained one
        kwargs.setdefault("tie_word_embeddings", True)  # the two encoders' word embeddings are stored once
        super().__init__(**kwargs)

    @property
    def is_pair_task(self) -> bool:
        return self.task_type in ("similarity", "nli")

    @property
    def hidden_size(self) -> int:
        return self.encoder_config.hidden_size * (2 if self.keep_pretrained_encoder else 1)


# ------------------------------------------------------------------------------------------------------------- kNN
class KNNDatastore:
    """The saved kNN datastore: whitened keys with label ids, searched for the ``k`` nearest (squared L2)."""

    def __init__(self, meta: dict[str, Any], tensors: dict[str, np.ndarray], index: Any = None):
        self.k, self.lam, self.temperature = int(meta["k"]), float(meta["lam"]), float(meta["temperature"])
        self.num_labels = int(meta["num_labels"])
        self.labels, self.mean, self.projection = tensors["labels"], tensors["mean"], tensors["projection"]
        self.keys, self.index = tensors.get("keys"), index

    @classmethod
    def load(cls, model_path: str, **hub_options: Any) -> "KNNDatastore | None":
        """The datastore saved beside a model (a folder or a Hub repo), or ``None`` when it has none."""
        config_file = _optional_file(model_path, KNN_CONFIG, hub_options)
        if config_file is None:
            return None
        with open(config_file, encoding="utf-8") as file:
            meta = json.load(file)
        tensors = load_file(cached_file(model_path, KNN_TENSORS, **hub_options))
        if faiss is not None:
            return cls(meta, tensors, faiss.read_index(cached_file(model_path, KNN_INDEX, **hub_options)))
        if "keys" not in tensors:
            raise ImportError("this kNN datastore was saved without its keys (by an older gts-hf): `pip install "
                              "faiss-cpu` to search its faiss index")
        return cls(meta, tensors)

    def whiten(self, vectors: np.ndarray) -> np.ndarray:
        projected = (np.asarray(vectors, dtype=np.float32) - self.mean) @ self.projection
        return projected / np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)

    def search(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared L2 distances and label ids of the ``k`` nearest keys."""
        k = min(k, len(self.labels))
        queries = np.ascontiguousarray(self.whiten(embeddings))
        if self.index is not None:
            distances, indices = self.index.search(queries, k)
            missing = indices < 0  # an approximate (IVF) index can return fewer than k neighbours: no vote for them
            distances, indices = np.where(missing, np.inf, distances), np.where(missing, 0, indices)
        else:  # exact search, also where gts-hf searches an approximate index (datastores of over 20,000 keys)
            all_distances = ((queries[:, None, :].astype(np.float64) - self.keys[None, :, :]) ** 2).sum(-1)
            indices = np.argsort(all_distances, axis=1, kind="stable")[:, :k]
            distances = np.take_along_axis(all_distances, indices, axis=1)
        return distances, self.labels[indices]

    def interpolate(self, model_probs: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """``(1 - λ)·p_model + λ·p_kNN``, the kNN vote weighted by ``softmax(-distance / T)``."""
        if self.lam == 0:
            return model_probs
        distances, neighbour_labels = self.search(embeddings, self.k)
        logits = -distances / self.temperature
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        knn_probs = np.zeros((len(distances), self.num_labels), dtype=np.float64)
        np.add.at(knn_probs, (np.arange(len(distances))[:, None], neighbour_labels), weights)
        return (1 - self.lam) * model_probs + self.lam * knn_probs


def _optional_file(model_path: str, filename: str, hub_options: dict[str, Any]) -> str | None:
    return cached_file(model_path, filename, _raise_exceptions_for_missing_entries=False, **hub_options)


# ----------------------------------------------------------------------------------------------------------- model
@dataclass
class GTSOutput(ModelOutput):
    """Option logits, the normalised embedding of the (joint) input and, for pairs, the two sentences' cosine."""

    logits: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    pair_similarity: torch.FloatTensor | None = None


class GTSForFewShotClassification(PreTrainedModel):
    """An encoder scoring ``logit_scale · cos(text, option)`` against each label's option (+ a pair-cosine term)."""

    config_class = GTSConfig
    base_model_prefix = "gts"
    main_input_name = "input_ids"

    def __init__(self, config: GTSConfig):
        super().__init__(config)
        encoder_config = config.encoder_config
        pooler = {"add_pooling_layer": False} if encoder_config.model_type in MODELS_WITH_POOLER else {}
        self.encoder = AutoModel.from_config(encoder_config, **pooler)
        self.pretrained_encoder = None
        if config.keep_pretrained_encoder:  # frozen, its word embeddings the trained encoder's
            self.pretrained_encoder = AutoModel.from_config(encoder_config, **pooler)
            embeddings = self.encoder.get_input_embeddings()
            self.pretrained_encoder.set_input_embeddings(embeddings)
            name = next(name for name, param in self.encoder.named_parameters() if param is embeddings.weight)
            self._tied_weights_keys = {f"pretrained_encoder.{name}": f"encoder.{name}"}
        num_labels, hidden = len(config.labels), config.hidden_size
        self.option_embeddings = nn.Parameter(torch.zeros(num_labels, hidden))
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale)))
        self.pair_weight = nn.Parameter(torch.zeros(num_labels))
        self.pair_bias = nn.Parameter(torch.zeros(num_labels))
        self.register_buffer("pair_center", torch.zeros(()))
        self.register_buffer("pair_spread", torch.ones(()))
        self.register_buffer("label_prior", torch.zeros(num_labels, hidden))  # the label texts' zero-shot vectors
        self.knn: KNNDatastore | None = None
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *args: Any, **kwargs: Any):
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if model.pretrained_encoder is not None:  # for inference only: nothing here is trained
            model.pretrained_encoder.requires_grad_(False)
        hub_options = {key: kwargs[key] for key in HUB_OPTIONS if kwargs.get(key) is not None}
        model.knn = KNNDatastore.load(str(pretrained_model_name_or_path), **hub_options)
        return model

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **encoder_kwargs: Any) -> torch.Tensor:
        """Pooled (mean or first token), L2-normalised embeddings."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **encoder_kwargs).last_hidden_state
        return self._with_pretrained_view(_pool(hidden, attention_mask, self.config.pooling), input_ids,
                                          attention_mask, **encoder_kwargs)

    def _with_pretrained_view(self, embeddings: torch.Tensor, input_ids: torch.Tensor,
                              attention_mask: torch.Tensor, **encoder_kwargs: Any) -> torch.Tensor:
        """With a pretrained encoder: both encoders' embeddings side by side, scaled back to unit length."""
        if self.pretrained_encoder is None:
            return embeddings
        hidden = self.pretrained_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                         **encoder_kwargs).last_hidden_state
        pretrained = _pool(hidden, attention_mask, self.config.pooling).to(embeddings.dtype)
        return torch.cat([embeddings, pretrained], dim=-1) / math.sqrt(2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                first_input_ids: torch.Tensor | None = None, first_attention_mask: torch.Tensor | None = None,
                second_input_ids: torch.Tensor | None = None, second_attention_mask: torch.Tensor | None = None,
                first_span_mask: torch.Tensor | None = None, second_span_mask: torch.Tensor | None = None,
                **kwargs: Any) -> GTSOutput:
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        output = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra,
                              output_hidden_states=first_span_mask is not None)
        embeddings = self._with_pretrained_view(_pool(output.last_hidden_state, attention_mask, self.config.pooling),
                                                input_ids, attention_mask, **extra)
        logits = self.log_logit_scale.exp() * embeddings @ F.normalize(self.option_embeddings, dim=-1).T
        pair_similarity = None
        if first_input_ids is not None and second_input_ids is not None:
            first = self.embed(first_input_ids, first_attention_mask)
            second = self.embed(second_input_ids, second_attention_mask)
            pair_similarity = (first * second).sum(-1)
        if first_span_mask is not None and second_span_mask is not None:  # the two marked spans' cosine
            states = output.hidden_states[self.config.span_layer]
            first, second = (_pool(states, mask, "mean") for mask in (first_span_mask, second_span_mask))
            present = (first_span_mask.sum(-1) > 0) & (second_span_mask.sum(-1) > 0)  # else cut off: neutral
            pair_similarity = torch.where(present, (first * second).sum(-1), self.pair_center.to(states.dtype))
        if pair_similarity is not None:
            standardised = (pair_similarity - self.pair_center) / self.pair_spread
            logits = logits + standardised.unsqueeze(-1) * self.pair_weight + self.pair_bias
        weight = self.config.label_prior_weight
        if weight > 0:  # a product of the trained and the zero-shot experts
            logits = (1 - weight) * logits + weight * self.config.logit_scale * embeddings @ self.label_prior.T
        return GTSOutput(logits=logits, embeddings=embeddings, pair_similarity=pair_similarity)


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-6)
    return F.normalize(pooled, dim=-1)


# -------------------------------------------------------------------------------------------------------- pipeline
class GTSFewShotPipeline(Pipeline):
    """Text (or text-pair) classification: a string, a ``{"text", "text_pair"}`` dict, a ``(text, text_pair)`` tuple,
    or a list of them. Call arguments: ``top_k`` (labels per input) and ``use_knn`` (default ``True``)."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        outputs = super().__call__(inputs, **kwargs)
        single = not isinstance(inputs, list)
        return [outputs] if single and kwargs.get("top_k") is None else outputs

    def _sanitize_parameters(self, top_k: int | None = None, use_knn: bool = True, **kwargs: Any):
        return {}, {}, {"top_k": top_k, "use_knn": use_knn}

    def preprocess(self, inputs: Any) -> dict[str, torch.Tensor]:
        text, text_pair = _text_and_pair(inputs)
        if not text.strip():
            raise ValueError("gts-few-shot got an empty text")
        config = self.model.config
        if config.task_type == "multiple_choice":
            raise ValueError("multiple-choice models need gts-hf: pip install gts-hf")
        if config.is_pair_task != (text_pair is not None):
            raise ValueError("this model classifies sentence pairs: give {'text': ..., 'text_pair': ...}"
                             if config.is_pair_task else
                             "this model classifies single texts, but a text_pair was given")
        if config.task_type == "coreference":
            return self._span_features(text)
        joint = self._tokenize(text, text_pair)
        features = {"input_ids": joint["input_ids"], "attention_mask": joint["attention_mask"]}
        if text_pair is not None:
            for name, sentence in (("first", text), ("second", text_pair)):
                alone = self._tokenize(sentence)
                features.update({f"{name}_input_ids": alone["input_ids"],
                                 f"{name}_attention_mask": alone["attention_mask"]})
        return features

    def _span_features(self, text: str) -> dict[str, torch.Tensor]:
        """A marked text and the masks of the tokens inside its first ``[...]`` and first ``<...>``; a span cut off by
        truncation gets an empty mask (the model leaves the span cosine neutral)."""
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError("coreference models need a fast tokenizer (character offsets locate the marked spans)")
        spans = _find_spans(text)
        if spans is None:
            raise ValueError(f"mark the noun [like this] and the pronoun <like this>: {text[:60]!r}")
        encoded = self._tokenize(text, return_offsets_mapping=True)
        starts, ends = encoded["offset_mapping"][0].unbind(-1)
        shift = len(self.model.config.query_prefix)
        features = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        for name, (start, end) in zip(("first", "second"), spans):
            inside = (ends > starts) & (starts < end + shift) & (ends > start + shift)
            features[f"{name}_span_mask"] = inside.long()[None]
        return features

    def _tokenize(self, text: str, text_pair: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        config = self.model.config
        return self.tokenizer([config.query_prefix + text], [text_pair] if text_pair is not None else None,
                              padding=True, truncation=True, max_length=config.max_seq_length, return_tensors="pt",
                              **kwargs)

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        output = self.model(**model_inputs)
        return {"logits": output.logits, "embeddings": output.embeddings}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], top_k: int | None = None,
                    use_knn: bool = True) -> Any:
        probs = model_outputs["logits"].float().softmax(-1).cpu().numpy()
        if use_knn and self.model.knn is not None:
            probs = self.model.knn.interpolate(probs, model_outputs["embeddings"].float().cpu().numpy())
        labels = self.model.config.labels
        scored = [{"label": labels[i], "score": float(probs[0][i])} for i in np.argsort(-probs[0])[: top_k or 1]]
        return scored if top_k is not None else scored[0]


def _find_spans(text: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """``gts_hf.data.find_spans``: the first ``[...]`` and ``<...>``, non-blank and not overlapping."""
    spans = []
    for left, right in SPAN_MARKERS:
        start = text.find(left) + 1
        end = text.find(right, start) if start else -1
        if end <= start or not text[start:end].strip():
            return None
        spans.append((start, end))
    (noun_start, noun_end), (pronoun_start, pronoun_end) = spans
    if noun_start <= pronoun_end and pronoun_start <= noun_end:
        return None
    return spans[0], spans[1]


def _text_and_pair(item: Any) -> tuple[str, str | None]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict) and "text" in item:
        return item["text"], item.get("text_pair")
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(part, str) for part in item):
        return item[0], item[1]
    raise ValueError(f"gts-few-shot takes a string, a {{'text': ..., 'text_pair': ...}} dict or a (text, text_pair) "
                     f"tuple, or a list of them; got {type(item).__name__}")
