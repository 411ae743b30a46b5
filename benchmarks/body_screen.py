"""How long the contrastive body stage should train, on what, and when to keep it: a screen (ABLATION.md §17).

``standard``'s body stage (:func:`gts_hf.trainer.train_body_contrastive`) runs 40 steps of ~500 pairs; on a
two-label task with 16 training texts every step sees every text, and the stage is undone in most English runs
because dev accuracy falls. ``record`` trains the body stage of each run for each variant of ``VARIANTS`` (a fresh
student each time, seed 42, the engine's defaults otherwise): 10 or 40 steps on the gold texts, 40 steps on the
gold texts plus the pool texts self-training would add (labelled by the head fitted on the untrained encoder), or 40
steps on the gold texts without the label texts in the batches. It
then re-embeds the label texts and saves the reshaped encoder's features of train, dev, test (capped at 1,000) and
the pool, in the format of ``self_training_screen.py``. ``report`` runs ``standard``'s head on them
(:meth:`Run.fit_as_standard`: fitted, self-trained unless dev accuracy falls) and scores each variant always kept and
kept by several rules that compare the head-only dev accuracy or log-loss (label prior included) with those on the
untrained encoder's features (which ``self_training_screen.py record`` saved). Every variant is scored over three
head fits that differ only in their random state; test labels only ever score a variant.

    python benchmarks/self_training_screen.py record english TASKS SEEDS   # the untrained encoder's features
    python benchmarks/body_screen.py record english TASKS SEEDS ["VARIANT;..."]
    python benchmarks/body_screen.py report ["VARIANT;..."]
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

from gts_hf.bench import parse_int_list
from gts_hf.data import Example, sample_examples
from gts_hf.trainer import confident_per_label, train_body_contrastive

from selection_screen import fresh_runs, print_rule_table  # sibling scripts (benchmarks/ is on sys.path)
from self_training_screen import FEATURES, POOL, Run, load_run, over_random_states, save_features

BODY_FEATURES = Path("/tmp/body_screen")
STEPS = (10, 40)
WITH_POOL = "40 steps on gold and pseudo-labelled pool texts"  # a variant trained on more (noisier) texts
WITHOUT_LABEL_TEXTS = "40 steps without the label texts"  # the batches' texts only (ABLATION §20)
#: variant: (steps, with pool texts, with the label texts)
VARIANTS = {**{f"{steps} steps": (steps, False, True) for steps in STEPS}, WITH_POOL: (40, True, True),
            WITHOUT_LABEL_TEXTS: (40, False, False)}


def record(suite: str, tasks: list[str], splits: list[int], variants: list[str]) -> None:
    for variant in variants:
        steps, with_pool, label_texts = VARIANTS[variant]
        for spec, out, task, engine, model, tokenizer in fresh_runs(suite, tasks, splits, folder_of(variant)):
            settings = engine.settings
            examples = task.train + (pseudo_labelled(task, FEATURES / out.name) if with_pool else [])
            summary = train_body_contrastive(model, tokenizer, examples, steps=steps,
                                             learning_rate=settings.body_learning_rate, seed=settings.seed,
                                             label_texts=label_texts)
            model.set_label_options(tokenizer)
            save_features(out, task, engine, model, tokenizer)
            print(spec.task, spec.split, variant, len(examples), summary["body_loss_first"], summary["body_loss_last"],
                  flush=True)


def folder_of(variant: str) -> Path:
    steps, with_pool, label_texts = VARIANTS[variant]
    return BODY_FEATURES / f"{steps}{'-pool' if with_pool else ''}{'' if label_texts else '-no-label-texts'}"


def pseudo_labelled(task, frozen_features: Path) -> list[Example]:
    """The pool texts self-training would add (8 × shots per label, labelled by the head fitted on the untrained
    encoder's features, label prior included), as training examples. The head fit reseeds torch, so this variant's
    body stage draws its dropout from another random stream than the gold-only variants (as ABLATION §17 ran it)."""
    run = load_run(frozen_features)
    run.fit()
    rows, labels = confident_per_label(torch.from_numpy(run.probabilities("pool")), 8 * run.shots)
    pool = sample_examples(task.unlabeled, POOL, seed=0)  # the texts ``save_features`` embedded, in that order
    return [replace(pool[row], label=task.labels[label]) for row, label in zip(rows.tolist(), labels.tolist())]


def variants_once(before: Run, after: dict[str, Run]) -> dict[str, float]:
    before.fit()
    accuracy_before, loss_before, dev_size = before.accuracy("dev"), before.dev_loss(), len(before.y["dev"])
    before.fit_as_standard()
    scores = {"current": before.accuracy("test")}  # without the body stage
    for variant, run in after.items():
        run.seed = before.seed
        run.fit()
        rise, loss_falls = run.accuracy("dev") - accuracy_before, run.dev_loss() < loss_before
        run.fit_as_standard()
        two_labels = len(run.arrays["prior"]) == 2
        kept_by = {"kept if dev accuracy rises (the engine's rule)": rise > 0,
                   "kept if dev accuracy rises by two texts or more": rise > 1.5 / dev_size,
                   "kept if dev log-loss falls": loss_falls,
                   "kept if dev accuracy rises and dev log-loss falls": rise > 0 and loss_falls,
                   "never with two labels, kept if dev accuracy rises with more": not two_labels and rise > 0,
                   "never with two labels, kept unless dev accuracy falls with more": not two_labels and rise >= 0,
                   "never with two labels, always with more": not two_labels}
        scores[f"{variant}, always kept"] = run.accuracy("test")
        for rule, kept in kept_by.items():
            scores[f"{variant}, {rule}"] = run.accuracy("test") if kept else scores["current"]
    return scores


def report(variants: list[str]) -> None:
    by_task: dict[str, list[dict[str, float]]] = defaultdict(list)
    for path in sorted(folder_of(variants[0]).glob("*.npz")):
        after = {variant: folder_of(variant) / path.name for variant in variants}
        if not all(file.exists() for file in after.values()) or not (FEATURES / path.name).exists():
            continue
        before, runs = load_run(FEATURES / path.name), {variant: load_run(file) for variant, file in after.items()}
        scores = over_random_states(before, lambda run: variants_once(run, runs))
        by_task[path.stem.rsplit("_", 1)[0]].append(scores)
        print(path.stem, {name: round(100 * value, 2) for name, value in scores.items()}, file=sys.stderr, flush=True)
    print_rule_table(by_task)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1:2] == ["record"] and len(sys.argv) in (5, 6):
        record(sys.argv[2], sys.argv[3].split(","), parse_int_list(sys.argv[4]),
               sys.argv[5].split(";") if len(sys.argv) == 6 else list(VARIANTS))
    elif sys.argv[1:2] == ["report"] and len(sys.argv) <= 3:
        report(sys.argv[2].split(";") if len(sys.argv) == 3 else list(VARIANTS))
    else:
        sys.exit(__doc__)
