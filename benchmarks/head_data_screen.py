"""The dev texts in the head: refitting on train + dev, two-fold cross-fitting (benchmarks/ABLATION.md §23).

``standard``'s head trains on the training texts and keeps the step with the best dev accuracy; the dev texts, as many
as the training ones in the English suite, are only ever scored. Two ways to learn from them too, screened on the
features the other screens recorded (the engine's encoder of each run: the untrained e5 with two labels, where the
body stage is skipped; both encoders side by side with more, as §22 adopted):

- *refit on train + dev*: after ``standard``'s head (its kept step, self-training kept or undone by dev), a fresh head
  is fitted on train + dev (and the pool texts self-training kept) for the kept number of steps (or 1.5×, or all
  300), with nothing left to select on;
- *two-fold cross-fitting*: a second ``standard`` head trained on dev and selected on train, its test probabilities
  averaged with the first one's (or its log-probabilities added).

Every variant is scored over three random states of the head fits; test labels only ever score a variant.

    python benchmarks/self_training_screen.py record english cr,sst5,emotion,amazon_counterfactual_en,ag_news 0-4
    python benchmarks/body_screen.py record english emotion,sst5,ag_news 0-4 "40 steps"
    python benchmarks/head_data_screen.py [TASK,...]
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from gts_hf.trainer import _load_head_state

from pretrained_encoder_screen import RESHAPED, side_by_side  # sibling scripts (benchmarks/ is on sys.path)
from selection_screen import print_rule_table
from self_training_screen import FEATURES, Run, load_run, over_random_states

REFIT_STEPS = {"refit on train + dev, the kept step": 1.0, "refit on train + dev, 1.5 × the kept step": 1.5,
               "refit on train + dev, 300 steps": None}


def engine_run(path: Path) -> Run:
    """The run's features as the engine's encoder gives them: pretrained alone (two labels), both side by side."""
    pretrained = load_run(FEATURES / path.name)
    return pretrained if len(pretrained.arrays["prior"]) == 2 else side_by_side(load_run(path), pretrained)


def swapped(run: Run) -> Run:
    """The run with its train and dev texts exchanged, its head back at the run's start (a :class:`Run` takes the
    head's state as it finds it for its start)."""
    _load_head_state(run.params, run.start)
    arrays = dict(run.arrays, ytrain=run.arrays["ydev"], ydev=run.arrays["ytrain"])
    for key in ("embeddings", "pair_similarity"):
        if f"train_{key}" in arrays:
            arrays[f"train_{key}"], arrays[f"dev_{key}"] = run.arrays[f"dev_{key}"], run.arrays[f"train_{key}"]
    other = Run(arrays, run.model, run.tied)
    other.seed = run.seed
    return other


def once(run: Run) -> dict[str, float]:
    kept_step, pool = run.fit_as_standard()
    first = run.probabilities("test")
    scores = {"current": run.accuracy("test", first)}
    for name, multiple in REFIT_STEPS.items():
        steps = 300 if multiple is None else int(kept_step * multiple)
        if steps:  # a kept step of 0 is the label-text start: nothing to refit
            run.fit(*(pool or (None, None)), with_dev=True, steps=steps)
        scores[name] = run.accuracy("test") if steps else scores["current"]
    other = swapped(run)
    other.fit_as_standard()
    second = other.probabilities("test")
    scores["trained on dev, selected on train (alone)"] = run.accuracy("test", second)
    scores["two-fold cross-fitting, probabilities averaged"] = run.accuracy("test", (first + second) / 2)
    scores["two-fold cross-fitting, log-probabilities added"] = run.accuracy(
        "test", np.log(first + 1e-12) + np.log(second + 1e-12))
    return scores


def report(tasks: list[str] | None = None) -> None:
    """Single-text runs only (OCNLI's pairs are left out, as §22 leaves them out of the encoder beside)."""
    by_task: dict[str, list[dict[str, float]]] = defaultdict(list)
    for path in sorted(RESHAPED.glob("*.npz")):
        task = path.stem.rsplit("_", 1)[0]
        if not (FEATURES / path.name).exists() or task == "ocnli" or (tasks and task not in tasks):
            continue
        scores = over_random_states(engine_run(path), once)
        by_task[task].append(scores)
        print(path.stem, {name: round(100 * value, 2) for name, value in scores.items()}, file=sys.stderr, flush=True)
    print_rule_table(by_task)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if len(sys.argv) > 2:
        sys.exit(__doc__)
    report(sys.argv[1].split(",") if len(sys.argv) == 2 else None)
