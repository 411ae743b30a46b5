"""Correcting for label shift with the unlabelled pool: a frozen-feature screen (benchmarks/ABLATION.md §16).

A few-shot training set has the same number of texts per label; the texts a model meets do not (80% of
amazon_counterfactual_en's test reviews are not counterfactual, 3% of emotion's texts are "surprise"). The EM
procedure of Saerens, Latinne & Decaestecker (2002) estimates the pool's label frequencies from the model's
probabilities, and the logits are then moved by ``log(estimated / training frequency)``. This screen scores it on the
features that ``self_training_screen.py record`` saved, on top of the adopted recipe's head (self-trained, 8×,
kept unless dev accuracy falls), with the shift as estimated, halved, estimated after a temperature fitted on dev,
and taken from the pool's predicted labels without EM. Test labels only ever score a variant.

    python benchmarks/self_training_screen.py record ...   # once, see its docstring
    python benchmarks/label_shift_screen.py [TASK,...]
"""

from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np
import torch
from sklearn.metrics import matthews_corrcoef

from selection_screen import print_rule_table  # sibling scripts (benchmarks/ is on sys.path)
from self_training_screen import FEATURES, Run, load_run, over_random_states

TEMPERATURES = np.exp(np.linspace(np.log(0.2), np.log(10.0), 60))


def em_label_frequencies(probabilities: np.ndarray, training: np.ndarray, steps: int = 100) -> np.ndarray:
    """Saerens et al.'s EM: reweigh the posteriors by estimated / training frequency until the estimate is stable."""
    estimate = training.copy()
    for _ in range(steps):
        reweighed = probabilities * (estimate / training)
        new = (reweighed / reweighed.sum(1, keepdims=True)).mean(0)
        if np.abs(new - estimate).max() < 1e-6:
            return new
        estimate = new
    return estimate


def with_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.clip(probabilities, 1e-12, 1)) / temperature
    return _normalised(np.exp(logits - logits.max(1, keepdims=True)))


def fitted_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature with the lowest dev log-loss (a grid: dev sets are 16 to 240 texts)."""
    losses = [-np.log(np.clip(with_temperature(probabilities, t)[np.arange(len(labels)), labels], 1e-12, 1)).mean()
              for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(losses))])


def _normalised(weights: np.ndarray) -> np.ndarray:
    return weights / weights.sum(1, keepdims=True)


def variants_once(run: Run) -> dict[str, tuple[float, float]]:
    """(accuracy, MCC) on test of the adopted head and of each shift applied to it."""
    run.fit_as_standard()
    labels = run.y["test"].numpy()
    training = np.bincount(run.y["train"].numpy(), minlength=run.arrays["prior"].shape[0]) / len(run.y["train"])
    test, pool, dev = (run.probabilities(name) for name in ("test", "pool", "dev"))
    temperature = fitted_temperature(dev, run.y["dev"].numpy())
    shift = np.log(em_label_frequencies(pool, training) / training)
    calibrated_shift = np.log(em_label_frequencies(with_temperature(pool, temperature), training) / training)
    predicted = np.bincount(pool.argmax(-1), minlength=len(training)) / len(pool)
    scored = {"current": test, "EM shift": _normalised(test * np.exp(shift)),
              "EM shift, halved": _normalised(test * np.exp(shift / 2)),
              "EM shift after a dev-fitted temperature":
                  _normalised(with_temperature(test, temperature) * np.exp(calibrated_shift)),
              "shift to the pool's predicted label frequencies":
                  _normalised(test * np.maximum(predicted, 1e-3) / training)}
    return {name: (float((probs.argmax(-1) == labels).mean()), matthews_corrcoef(labels, probs.argmax(-1)))
            for name, probs in scored.items()}


def report(tasks: list[str] | None = None) -> None:
    accuracy: dict[str, list[dict[str, float]]] = defaultdict(list)
    mcc: dict[str, list[dict[str, float]]] = defaultdict(list)
    for path in sorted(FEATURES.glob("*.npz")):
        task = path.stem.rsplit("_", 1)[0]
        if tasks and task not in tasks:
            continue
        run = load_run(path)
        if not run.has_pool or run.tied:  # no pool, or the cosine pair head
            continue
        scores = over_random_states(run, variants_once)
        accuracy[task].append({name: float(value[0]) for name, value in scores.items()})
        mcc[task].append({name: float(value[1]) for name, value in scores.items()})
        print(path.stem, {name: round(100 * value, 2) for name, value in accuracy[task][-1].items()},
              file=sys.stderr, flush=True)
    print("Test accuracy (%)\n")
    print_rule_table(accuracy)
    print("\nTest MCC (×100)\n")
    print_rule_table(mcc)


if __name__ == "__main__":
    if len(sys.argv) > 2:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    report(sys.argv[1].split(",") if len(sys.argv) == 2 else None)
