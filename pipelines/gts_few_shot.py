"""The ``gts-few-shot`` pipeline: a trained GTS student (and its kNN datastore, if it has one) behind
``transformers.pipeline``.

>>> from transformers import pipeline
>>> import gts_hf  # registers the task
>>> classifier = pipeline("gts-few-shot", model="my_model")
>>> classifier("物流很快，质量很好")
[{'label': 'Positive', 'score': 0.97}]
>>> classifier([{"text": "今天天气怎么样", "text_pair": "今天天气如何"}], top_k=2)   # a pair model
>>> chooser({"text": "他说话总是＿＿，让人摸不着头脑", "choices": ["含糊其辞", "一清二楚"]})  # a multiple-choice model
>>> resolver("[张三]把书借给了李四，因为<他>很大方")  # a coreference model: does the <pronoun> refer to the [noun]?
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from transformers import Pipeline

from gts_hf.data import Example
from gts_hf.inference import check_inputs, encode_examples, predict


def to_example(item: Any) -> Example:
    """A string, a ``{"text", "text_pair"}`` or ``{"text", "choices"}`` dict, a ``(text, text_pair)`` tuple or an
    :class:`Example`."""
    if isinstance(item, Example):
        return item
    if isinstance(item, str):
        return Example(text=item)
    if isinstance(item, dict) and "text" in item:
        choices = item.get("choices")
        return Example(text=item["text"], text_pair=item.get("text_pair"),
                       choices=[str(choice) for choice in choices] if choices is not None else None)
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(part, str) for part in item):
        return Example(text=item[0], text_pair=item[1])
    raise ValueError(f"gts-few-shot takes a string, a {{'text': ..., 'text_pair': ...}} dict or a (text, text_pair) "
                     f"tuple, or a list of them; got {type(item).__name__}")


class GTSFewShotPipeline(Pipeline):
    """Text (or text-pair) classification with a GTS student (for coreference models, texts with the noun marked
    ``[like this]`` and the pronoun ``<like this>``).

    Call arguments: ``top_k`` (labels per input; default: the best label as a dict), ``use_knn`` (interpolate the kNN
    datastore's vote, default ``True``), ``batch_size`` (default 32), ``precision`` (``"auto"``: bf16 on GPUs;
    ``"bf16"`` also on CPUs). Inputs are sorted by length and batched.
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def _sanitize_parameters(self, top_k: int | None = None, use_knn: bool = True, **kwargs: Any):
        postprocess = {"top_k": top_k, "use_knn": use_knn}
        return {}, {}, postprocess

    def __call__(self, inputs: Any, top_k: int | None = None, use_knn: bool = True, batch_size: int | None = None,
                 precision: str = "auto", **kwargs: Any) -> Any:
        single = isinstance(inputs, (str, dict, Example)) or _is_pair_tuple(inputs)
        examples = [to_example(inputs)] if single else [to_example(item) for item in _as_list(inputs)]
        for example in examples:
            if not example.text.strip():
                raise ValueError("gts-few-shot got an empty text")
        predictions = predict(self.model, self.tokenizer, examples, batch_size=batch_size or self._batch_size or 32,
                              use_knn=use_knn, precision=precision)
        results = [self._format(row, top_k, example) for row, example in zip(predictions.probabilities, examples)]
        if single:
            return results[0] if top_k is not None else [results[0]]
        return results

    # The three-step API of `Pipeline`, used for one input at a time (e.g. by `pipeline(...)` over an iterator).
    def preprocess(self, inputs: Any) -> dict[str, Any]:
        example = to_example(inputs)
        config = self.model.config
        check_inputs([example], config)
        pair = [example.text_pair] if config.is_pair_task else None
        choices = [example.choices] if config.is_multiple_choice and example.choices else None
        return {**encode_examples(self.tokenizer, config, [example.text], pair, choices),
                "example": example}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        example = model_inputs.pop("example")
        output = self.model(**model_inputs)
        return {"logits": output.logits, "embeddings": output.embeddings, "example": example}

    def postprocess(self, model_outputs: dict[str, Any], top_k: int | None = None, use_knn: bool = True) -> Any:
        probs = model_outputs["logits"].float().softmax(-1).cpu().numpy()
        if use_knn and self.model.knn is not None:
            probs = self.model.knn.interpolate(probs, model_outputs["embeddings"].float().cpu().numpy())
        return self._format(probs[0], top_k, model_outputs["example"])

    def _format(self, probabilities: np.ndarray, top_k: int | None, example: Example) -> Any:
        labels = example.choices if self.model.config.is_multiple_choice else self.model.config.labels
        order = np.argsort(-probabilities[:len(labels)])[: top_k or 1]
        scored = [{"label": labels[i], "score": float(probabilities[i])} for i in order]
        return scored if top_k is not None else scored[0]


def _is_pair_tuple(inputs: Any) -> bool:
    return isinstance(inputs, tuple) and len(inputs) == 2 and all(isinstance(part, str) for part in inputs)


def _as_list(inputs: Iterable[Any]) -> list[Any]:
    try:
        return list(inputs)
    except TypeError:
        raise ValueError(f"gts-few-shot cannot read inputs of type {type(inputs).__name__}") from None
