"""Turning examples into model inputs, and batched prediction (shared by the trainer, the pipeline and the CLI)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .configuration import GTSConfig
from .data import Example, find_spans

logger = logging.getLogger(__name__)


def tokenize_texts(tokenizer: Any, config: GTSConfig, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                   **kwargs: Any) -> dict[str, torch.Tensor]:
    """Texts (or jointly encoded pairs) as the model reads them: query prefix, truncation to ``max_seq_length``,
    dynamic padding."""
    pairs = list(text_pairs) if text_pairs is not None else None
    return tokenizer([config.query_prefix + text for text in texts], pairs, padding=True, truncation=True,
                     max_length=config.max_seq_length, return_tensors="pt", **kwargs)


def encode_examples(tokenizer: Any, config: GTSConfig, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                    choices: Sequence[Sequence[str]] | None = None, num_choices: int | None = None
                    ) -> dict[str, torch.Tensor]:
    """Tokenise a batch of examples (:func:`tokenize_texts`); pair tasks also get each sentence on its own
    (``first_*`` / ``second_*``) for the pair-similarity term; multiple choice gets every example's choices
    (``choice_*``, padded to ``num_choices`` per example); coreference gets the token masks of its two marked spans
    (``first_span_mask`` / ``second_span_mask``)."""
    if choices is not None:
        width = num_choices or max(len(options) for options in choices)
        flat = [option for options in choices for option in list(options) + [""] * (width - len(options))]
        encoded, options = tokenize_texts(tokenizer, config, texts), tokenize_texts(tokenizer, config, flat)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                "choice_input_ids": options["input_ids"], "choice_attention_mask": options["attention_mask"],
                "choice_mask": torch.tensor([[index < len(options) for index in range(width)] for options in choices])}
    if config.is_coreference:
        return encode_spans(tokenizer, config, texts)
    if text_pairs is None:
        encoded = tokenize_texts(tokenizer, config, texts)
        return {key: encoded[key] for key in ("input_ids", "attention_mask")}
    joint = tokenize_texts(tokenizer, config, texts, text_pairs)
    first, second = tokenize_texts(tokenizer, config, texts), tokenize_texts(tokenizer, config, text_pairs)
    return {
        "input_ids": joint["input_ids"], "attention_mask": joint["attention_mask"],
        "first_input_ids": first["input_ids"], "first_attention_mask": first["attention_mask"],
        "second_input_ids": second["input_ids"], "second_attention_mask": second["attention_mask"],
    }


def encode_spans(tokenizer: Any, config: GTSConfig, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Marked texts and the masks of the tokens inside their ``[noun]`` and ``<pronoun>``. A span cut off by
    truncation gets an empty mask, which the model reads as "no evidence either way" (a warning says so)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("coreference models need a fast tokenizer (character offsets locate the marked spans)")
    prefix = config.query_prefix
    encoded = tokenize_texts(tokenizer, config, texts, return_offsets_mapping=True)
    masks = torch.zeros(2, *encoded["input_ids"].shape, dtype=torch.long)
    cut_off = 0
    for row, text in enumerate(texts):
        spans = find_spans(text)
        if spans is None:
            raise ValueError(f"mark the noun [like this] and the pronoun <like this>: {text[:60]!r}")
        starts, ends = encoded["offset_mapping"][row].unbind(-1)
        for number, (start, end) in enumerate(spans):
            inside = (ends > starts) & (starts < end + len(prefix)) & (ends > start + len(prefix))
            cut_off += not inside.any()
            masks[number, row] = inside.long()
    if cut_off:
        logger.warning("%d marked span(s) lie beyond max_seq_length=%d tokens: their texts' span cosine is left "
                       "neutral", cut_off, config.max_seq_length)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
            "first_span_mask": masks[0], "second_span_mask": masks[1]}


@dataclass
class Predictions:
    """Probabilities (kNN included when the model has a datastore), raw model probabilities and embeddings."""

    probabilities: np.ndarray
    model_probabilities: np.ndarray
    embeddings: np.ndarray
    pair_similarity: np.ndarray | None
    seconds: float

    @property
    def label_ids(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


def predicted_labels(config: GTSConfig, examples: Sequence[Example], label_ids: Sequence[int]) -> list[str]:
    """Label names of predicted ids: the model's labels, or each example's own choices (multiple choice)."""
    if config.is_multiple_choice:
        return [example.choices[index] for example, index in zip(examples, label_ids)]
    return [config.labels[index] for index in label_ids]


PRECISIONS = ("auto", "bf16", "fp32")


@torch.no_grad()
def predict(model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int = 64, use_knn: bool = True,
            show_progress: bool = False, precision: str = "auto") -> Predictions:
    """Batched, gradient-free prediction; inputs are sorted by length so batches pad little.

    ``precision``: ``"auto"`` (bf16 autocast on CUDA, full precision on CPU), ``"bf16"`` (bf16 autocast on any
    device: faster on CPUs with native bf16, e.g. AMX or AVX512-BF16) or ``"fp32"``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    start = time.perf_counter()
    model.eval()
    is_pair, is_choice = model.config.is_pair_task, model.config.is_multiple_choice
    width = max((len(example.choices or ()) for example in examples), default=0) if is_choice else None
    order = np.argsort([-len(example.text) - len(example.text_pair or "") for example in examples], kind="stable")
    logits, embeddings, similarity = [], [], []
    batches = range(0, len(examples), batch_size)
    for begin in tqdm(batches, desc="Predicting", disable=not show_progress, unit="batch"):
        batch = [examples[i] for i in order[begin:begin + batch_size]]
        check_inputs(batch, model.config)
        inputs = encode_examples(tokenizer, model.config, [e.text for e in batch],
                                 [e.text_pair for e in batch] if is_pair else None,
                                 [e.choices for e in batch] if is_choice else None, num_choices=width)
        with _autocast(model.device, precision):
            output = model(**{key: value.to(model.device) for key, value in inputs.items()})
        logits.append(output.logits.float().cpu())
        embeddings.append(output.embeddings.float().cpu())
        if output.pair_similarity is not None:
            similarity.append(output.pair_similarity.float().cpu())
    unsort = np.argsort(order)
    model_probs = torch.cat(logits).softmax(-1).numpy()[unsort] if examples else \
        np.zeros((0, width or len(model.config.labels)))
    vectors = torch.cat(embeddings).numpy()[unsort] if examples else np.zeros((0, model.config.hidden_size))
    probs = model.knn.interpolate(model_probs, vectors) if use_knn and model.knn is not None else model_probs
    pair = torch.cat(similarity).numpy()[unsort] if similarity else None
    return Predictions(probs, model_probs, vectors, pair, time.perf_counter() - start)


def check_inputs(batch: Sequence[Example], config: GTSConfig) -> None:
    """Refuse inputs of the wrong shape for the model: pairs, choices or marked spans where it needs them, or not."""
    is_pair, is_choice = config.is_pair_task, config.is_multiple_choice
    for example in batch:
        if config.is_coreference and find_spans(example.text) is None:
            where = f"{example.source}: " if example.source else ""
            raise ValueError(f"{where}this model resolves coreference: mark the noun [like this] and the pronoun "
                             f"<like this> in {example.text[:60]!r}")
        if is_choice != (example.choices is not None):
            raise ValueError("this model picks one of each input's choices: give {'text': ..., 'choices': [...]}"
                             if is_choice else "this model has fixed labels, but choices were given")
        if is_pair and example.text_pair is None:
            raise ValueError(f"this model classifies sentence pairs: give {{'text': ..., 'text_pair': ...}}, "
                             f"got a single text {example.text[:40]!r}")
        if not is_pair and example.text_pair is not None:
            raise ValueError("this model classifies single texts, but a text_pair was given")


def _autocast(device: torch.device, precision: str) -> Any:
    """bf16 autocast on CUDA by default; on CPU only when asked (without native bf16 it is slower, not faster)."""
    wanted = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=wanted)


def classification_metrics(label_ids: np.ndarray, predicted: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (over the classes present in the gold labels or the predictions)."""
    label_ids, predicted = np.asarray(label_ids), np.asarray(predicted)
    f1_scores = []
    for label in range(num_labels):
        true_pos = np.sum((predicted == label) & (label_ids == label))
        support, predicted_count = np.sum(label_ids == label), np.sum(predicted == label)
        if support == 0 and predicted_count == 0:
            continue
        f1_scores.append(2 * true_pos / (support + predicted_count))
    return {"accuracy": float(np.mean(label_ids == predicted)) if len(label_ids) else 0.0,
            "macro_f1": float(np.mean(f1_scores)) if f1_scores else 0.0}
