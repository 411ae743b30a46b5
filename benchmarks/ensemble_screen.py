"""Several head fits instead of one: a frozen-feature screen (benchmarks/ABLATION.md §17).

One head fit keeps the step with the best dev accuracy, and with 16–48 dev texts that step is a lottery: fits that
differ only in mixup's random draws land on different steps. On the features that ``self_training_screen.py record``
saved, this screen fits five heads that differ only in their random state (mixup's weights and partners) and
combines them two ways:

- *probabilities averaged*: an ensemble, five heads kept at inference;
- *heads averaged*: one head whose label vectors are the mean of the members' normalised vectors (and whose scale
  and pair terms are the members' means); it costs nothing at inference and approximates the logits' mean.

Where the task has a pool, the combined model then labels it and five heads are refitted on gold plus the
``8 × shots`` surest texts per label, undone if dev accuracy falls (the engine's self-training rule). "current" is
``standard``'s single fit with the same self-training. Every variant is scored over three random states; test
labels only ever score a variant.

    python benchmarks/self_training_screen.py record ...   # once, see its docstring
    python benchmarks/ensemble_screen.py [TASK,...]
    python benchmarks/ensemble_screen.py TASK,... engine-encoder   # §23: on the engine's encoder since §22

``engine-encoder`` screens the features of the encoder the engine now trains (:func:`head_data_screen.engine_run`:
the untrained e5 with two labels, both encoders side by side with more; the body stage's features must be recorded
too, see ``pretrained_encoder_screen.py``), for single-text tasks.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from gts_hf.trainer import _head_state, _load_head_state, confident_per_label

from head_data_screen import engine_run  # sibling scripts (benchmarks/ is on sys.path)
from pretrained_encoder_screen import RESHAPED
from selection_screen import print_rule_table
from self_training_screen import FEATURES, Run, load_run, over_random_states

SIZE = 5
PARTS = ("dev", "test", "pool")
Combined = dict[str, np.ndarray]  # dev, test and pool probabilities


def member_states(run: Run, size: int, extra: tuple[torch.Tensor, torch.Tensor] | None) -> list[list[torch.Tensor]]:
    """``size`` head fits, each from its own random state (mixup's weights and partners)."""
    states, seed = [], run.seed
    for member in range(size):
        run.seed = 1000 * seed + member
        run.fit(*(extra or (None, None)), partner_seed=42 + member)
        states.append(_head_state(run.params))
    run.seed = seed
    return states


def averaged_probabilities(run: Run, states: list[list[torch.Tensor]]) -> Combined:
    total: Combined = {}
    for state in states:
        _load_head_state(run.params, state)
        for part in PARTS:
            total[part] = total.get(part, 0) + run.probabilities(part) / len(states)
    return total


def averaged_head(run: Run, states: list[list[torch.Tensor]]) -> Combined:
    """One head: the mean of the members' normalised label vectors, their mean scale and mean pair terms."""
    options = torch.stack([F.normalize(state[0], dim=-1) for state in states]).mean(0)
    scale = torch.stack([state[1].exp() for state in states]).mean(0).log()
    rest = [torch.stack([state[k] for state in states]).mean(0) for k in range(2, len(states[0]))]
    _load_head_state(run.params, [options, scale, *rest])
    return {part: run.probabilities(part) for part in PARTS}


COMBINERS: dict[str, Callable[[Run, list[list[torch.Tensor]]], Combined]] = {
    "probabilities averaged": averaged_probabilities, "heads averaged": averaged_head}


def variants_once(run: Run) -> dict[str, float]:
    run.fit_as_standard()
    scores = {"current": run.accuracy("test")}
    members = member_states(run, SIZE, None)  # shared by both ways of combining them
    for name, combine in COMBINERS.items():
        alone = combine(run, members)
        label = f"{SIZE} fits, {name}"
        scores[label] = run.accuracy("test", alone["test"])
        if not run.has_pool:
            continue
        extra = confident_per_label(torch.from_numpy(alone["pool"]), 8 * run.shots)
        self_trained = combine(run, member_states(run, SIZE, extra))
        kept = run.accuracy("dev", self_trained["dev"]) >= run.accuracy("dev", alone["dev"])
        scores[label + ", self-trained"] = run.accuracy("test", (self_trained if kept else alone)["test"])
    return scores


def report(tasks: list[str] | None, engine_encoder: bool = False) -> None:
    by_pool: dict[bool, dict[str, list[dict[str, float]]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted((RESHAPED if engine_encoder else FEATURES).glob("*.npz")):
        task = path.stem.rsplit("_", 1)[0]
        if (tasks and task not in tasks) or not (FEATURES / path.name).exists():
            continue
        run = engine_run(path) if engine_encoder else load_run(path)
        scores = over_random_states(run, variants_once)
        by_pool[run.has_pool][task].append(scores)
        print(path.stem, {name: round(100 * value, 2) for name, value in scores.items()}, file=sys.stderr, flush=True)
    for has_pool, by_task in sorted(by_pool.items(), reverse=True):  # the rows differ: no self-training without one
        print("\nwith an unlabelled pool\n" if has_pool else "\nwithout an unlabelled pool\n")
        print_rule_table(by_task)


if __name__ == "__main__":
    arguments = [argument for argument in sys.argv[1:] if argument != "engine-encoder"]
    if len(arguments) > 1:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    report(arguments[0].split(",") if arguments else None, engine_encoder="engine-encoder" in sys.argv[1:])
