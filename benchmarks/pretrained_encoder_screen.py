"""The pretrained encoder beside the reshaped one: a frozen-feature screen (benchmarks/ABLATION.md §22).

With more than two labels the body stage is always kept (§21): the head then sees only the reshaped encoder's space,
which separates the training labels but has moved away from what the pretrained encoder knew. This screen gives one
head both embeddings side by side (each normalised, the pair scaled back to unit length: a cosine with such a vector
is the mean of the two encoders' cosines), as ``GTSConfig.keep_pretrained_encoder`` does, and compares it with the
reshaped encoder alone (the engine before §22) and the untrained encoder alone. It reads the features the two other
screens recorded, so it needs no encoder: the untrained e5's (``self_training_screen.py record``) and those of the
40-step body stage (``body_screen.py record ... "40 steps"``), for the same texts in the same order. Every variant
gets ``standard``'s head (fitted, self-trained on the pool unless dev accuracy falls), over three random states;
test labels only ever score a variant. Runs with two labels are screened apart (``two-labels``; the engine skips
their body stage, so the pretrained encoder alone is what the variants are compared with there).

    python benchmarks/self_training_screen.py record english emotion,sst5,ag_news 0-4
    python benchmarks/body_screen.py record english emotion,sst5,ag_news 0-4 "40 steps"
    python benchmarks/pretrained_encoder_screen.py
    python benchmarks/pretrained_encoder_screen.py two-labels   # CR and amazon_cf, with the body stage always kept
    python benchmarks/pretrained_encoder_screen.py speed [TASK] [TEXTS]   # its inference cost, side by side

``speed`` times :func:`gts_hf.inference.predict` on the first ``TEXTS`` (500) test texts of an English task (emotion)
with the packaged e5 student, alone and with a copy of its encoder held as the pretrained one, alternately, three
times each, in one process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from body_screen import folder_of  # sibling scripts (benchmarks/ is on sys.path)
from self_training_screen import FEATURES, Run, _head_only_model, load_run, report_variants

RESHAPED = folder_of("40 steps")
EMBEDDINGS = ("train_embeddings", "dev_embeddings", "test_embeddings", "pool_embeddings", "prior")


def side_by_side(reshaped: Run, pretrained: Run) -> Run:
    """A run whose every embedding (and label-text prior) is the reshaped and the pretrained one side by side."""
    arrays = dict(reshaped.arrays)
    for key in EMBEDDINGS:
        arrays[key] = (np.concatenate([reshaped.arrays[key], pretrained.arrays[key]], axis=1) /
                       np.sqrt(2)).astype(np.float32)
    return Run(arrays, _head_only_model(*arrays["prior"].shape), reshaped.tied)


def variants_of(path: Path) -> dict[str, Run]:
    reshaped, pretrained = load_run(path), load_run(FEATURES / path.name)
    return {"current": reshaped, "the untrained encoder alone": pretrained,
            "both encoders' embeddings, one head (adopted)": side_by_side(reshaped, pretrained)}


def paths(two_labels: bool = False) -> list[Path]:
    """The runs both screens recorded, with more than two labels (or with two)."""
    return [path for path in sorted(RESHAPED.glob("*.npz"))
            if (FEATURES / path.name).exists() and (len(np.load(path)["prior"]) == 2) == two_labels]


def speed(task_name: str = "emotion", count: int = 500) -> None:
    from gts_hf import GTSEngine, predict
    from gts_hf.bench import RunOptions, english_specs, load_spec_task
    from gts_hf.engine import _encoder_copy
    from selection_screen import DATA

    options = RunOptions(methods=["gts-standard"], output_dir=Path("/tmp"))
    task = load_spec_task(english_specs(options, DATA, [task_name], [8], [0])[0])
    alone, tokenizer = GTSEngine().build_student(task)
    model, _ = GTSEngine().build_student(task)
    model.add_pretrained_encoder(_encoder_copy(model))
    model.set_label_options(tokenizer)
    texts = task.test[:count]
    seconds: dict[str, list[float]] = {"reshaped encoder alone": [], "beside the pretrained one": []}
    for _ in range(3):
        for name, student in zip(seconds, (alone, model)):
            started = time.perf_counter()
            predict(student, tokenizer, texts, use_knn=False)
            seconds[name].append(time.perf_counter() - started)
    for name, times in seconds.items():
        print(f"{name}: {count / min(times):.1f} texts/s (best of 3)")
    print(f"ratio: {min(seconds['beside the pretrained one']) / min(seconds['reshaped encoder alone']):.2f}x the time")


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1:2] == ["speed"] and len(sys.argv) <= 4:
        speed(*sys.argv[2:3], *(int(value) for value in sys.argv[3:4]))
    elif len(sys.argv) == 1 or sys.argv[1:] == ["two-labels"]:
        report_variants(paths(two_labels=len(sys.argv) == 2), variants_of)
    else:
        sys.exit(__doc__)
