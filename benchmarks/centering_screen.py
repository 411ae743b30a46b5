"""Centred embeddings: a frozen-feature screen (benchmarks/ABLATION.md §19).

e5's embeddings are anisotropic: any two texts have a cosine of 0.7 or more, so the head's cosines to the label
vectors differ by little and the logit scale has to stretch them. Subtracting the mean text embedding (of the run's
train, dev and pool texts: no test text) before normalising removes that shared direction. ``report`` runs
``standard``'s head (:meth:`self_training_screen.Run.fit_as_standard`) over three random states on the features
``self_training_screen.py record`` saved, with the texts centred and the label vectors (the head's start and its
prior) centred on the texts' mean, on their own mean, or left as they are; test labels only ever score a variant.

    python benchmarks/self_training_screen.py record english cr,sst5,emotion,amazon_counterfactual_en,ag_news 0-4
    python benchmarks/centering_screen.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from self_training_screen import FEATURES, Run, _head_only_model, load_run, report_variants  # a sibling script

TEXT_PARTS = ("train", "dev", "test", "pool")
LABEL_VARIANTS = {"texts' mean": "centred on the texts' mean", "own mean": "centred on their own mean",
                  "as they are": "as they are"}


def _normalised(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True).clip(1e-12)


def centred_run(run: Run, labels: str) -> Run:
    """``run``'s features with the texts centred on their mean; ``labels``: "texts' mean", "own mean" or "as they are"."""
    arrays = dict(run.arrays)
    mean = np.concatenate([run.arrays[f"{name}_embeddings"] for name in ("train", "dev", "pool")]).mean(0)
    for name in TEXT_PARTS:
        arrays[f"{name}_embeddings"] = _normalised(run.arrays[f"{name}_embeddings"] - mean)
    prior = run.arrays["prior"]
    label_mean = {"texts' mean": mean, "own mean": prior.mean(0), "as they are": 0.0}[labels]
    arrays["prior"] = _normalised(prior - label_mean)
    return Run(arrays, _head_only_model(*prior.shape), run.tied)


def variants_of(path: Path) -> dict[str, Run]:
    run = load_run(path)
    return {"current": run} | {f"texts centred, label vectors {name}": centred_run(run, labels)
                               for labels, name in LABEL_VARIANTS.items()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1:]:
        sys.exit(__doc__)
    report_variants(sorted(FEATURES.glob("*.npz")), variants_of)
