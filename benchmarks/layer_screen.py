"""Which encoder layers to pool: a frozen-feature screen (benchmarks/ABLATION.md §19).

The engine embeds a text as the normalised mean of e5's last hidden states, the layer e5 was trained to make
comparable. Linear probes often read more from a mix of upper layers. ``record`` saves, for each run, every layer's
normalised pooled states (the embedding layer and the 12 transformer layers) of the train, dev, capped test and
pool texts and of the label texts (the head's zero-shot start and its prior), the same texts
``self_training_screen.py record`` embeds. ``report`` builds each variant's features from them (one layer, a mean of
several, two layers concatenated), runs ``standard``'s head on them (:meth:`self_training_screen.Run.fit_as_standard`:
fitted, self-trained on the pool unless dev accuracy falls) over three random states, and prints the mean test
accuracy per task; test labels only ever score a variant.

    python benchmarks/layer_screen.py record english cr,sst5,emotion,amazon_counterfactual_en,ag_news 0-4
    python benchmarks/layer_screen.py report
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gts_hf.data import sample_examples
from gts_hf.engine import _label_tensor
from gts_hf.inference import tokenize_texts
from gts_hf.modeling import pool

from selection_screen import fresh_runs  # sibling scripts (benchmarks/ is on sys.path)
from self_training_screen import POOL, Run, _head_only_model, record_or_report, report_variants

LAYER_FEATURES = Path("/tmp/layer_screen")
PARTS = ("train", "dev", "test", "pool", "prior")


@torch.no_grad()
def layer_features(model: torch.nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """``(len(texts), layers + 1, hidden)``: each layer's normalised pooled states, read as the engine reads a text."""
    model.eval()
    chunks = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenize_texts(tokenizer, model.config, texts[start:start + batch_size])
        states = model.encoder(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                               output_hidden_states=True).hidden_states
        chunks.append(torch.stack([F.normalize(pool(layer, encoded["attention_mask"], model.config.pooling), dim=-1)
                                   for layer in states], dim=1))
    return torch.cat(chunks).half().numpy()


def record(suite: str, tasks: list[str], splits: list[int]) -> None:
    test_by_task: dict[str, np.ndarray] = {}
    for spec, out, task, engine, model, tokenizer in fresh_runs(suite, tasks, splits, LAYER_FEATURES):
        if any(example.text_pair is not None for example in task.train):
            raise SystemExit(f"{spec.task}: the screen covers single-text tasks only")
        texts = {"train": [example.text for example in task.train], "dev": [example.text for example in task.dev],
                 "pool": [example.text for example in sample_examples(task.unlabeled, POOL, seed=0)],
                 "prior": list(model.config.label_options)}
        saved = {name: layer_features(model, tokenizer, part) for name, part in texts.items()}
        if spec.task not in test_by_task:
            test_by_task = {spec.task: layer_features(model, tokenizer, [example.text for example in task.test])}
        np.savez_compressed(out, **saved, test=test_by_task[spec.task], tied=engine.head_options(task)["tie_options"],
                            **{f"y{name}": _label_tensor(task, getattr(task, name)).numpy()
                               for name in ("train", "dev", "test")})
        print(spec.task, spec.split, flush=True)


# ---------------------------------------------------------------------------------------------------------- report
def _mean_of(layers: Sequence[int]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda states: states[:, list(layers)].mean(1)


def _concatenated(*layers: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda states: states[:, list(layers)].reshape(len(states), -1)


VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "current": _mean_of([-1]),
    "layer before the last": _mean_of([-2]),
    "mean of the last 2 layers": _mean_of(range(-2, 0)),
    "mean of the last 4 layers": _mean_of(range(-4, 0)),
    "mean of the upper half (layers 7-12)": _mean_of(range(7, 13)),
    "mean of layers 1-12": _mean_of(range(1, 13)),
    "last and middle (layer 6) concatenated": _concatenated(-1, 6),
    "last and first (layer 1) concatenated": _concatenated(-1, 1),
}


def variant_run(stored: dict[str, np.ndarray], combine: Callable[[np.ndarray], np.ndarray]) -> Run:
    """A :class:`self_training_screen.Run` over the features ``combine`` makes of every stored layer (normalised)."""
    arrays = {(name if name == "prior" else f"{name}_embeddings"):
              F.normalize(torch.from_numpy(combine(stored[name].astype(np.float32))), dim=-1).numpy()
              for name in PARTS}
    arrays.update({key: stored[key] for key in ("ytrain", "ydev", "ytest")})
    tied = bool(stored["tied"])
    return Run(arrays, _head_only_model(*arrays["prior"].shape), tied)


def variants_of(path: Path) -> dict[str, Run]:
    with np.load(path) as stored:
        arrays = {key: stored[key] for key in stored.files}
    return {name: variant_run(arrays, combine) for name, combine in VARIANTS.items()}


if __name__ == "__main__":
    record_or_report(record, lambda: report_variants(sorted(LAYER_FEATURES.glob("*.npz")), variants_of))
