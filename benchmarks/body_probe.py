"""The body stage at N = 64: a probe of one English run (benchmarks/ABLATION.md §19).

At 64 texts per label SetFit's fine-tuned body beats ``standard`` by 27 points on amazon_counterfactual_en, where
``standard`` undid its body stage on dev. This probe trains the body stage on a fresh student in several variants
(steps; with or without the label texts as members of their label), then scores the reshaped encoder's features with
a logistic regression (C = 1) and with the engine's head (three random states, label prior included, no
self-training); test labels only score a variant.

    python benchmarks/body_probe.py amazon_counterfactual_en [SHOTS] [SEED]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import matthews_corrcoef
from transformers import set_seed

from gts_hf.bench import RunOptions, english_specs, load_spec_task
from gts_hf.engine import GTSEngine, _label_tensor, features_of
from gts_hf.inference import predict
from gts_hf.trainer import train_body_contrastive

from selection_screen import DATA, MAX_TEST  # sibling scripts (benchmarks/ is on sys.path)
from self_training_screen import Run, _head_only_model

VARIANTS = [("no body stage", 0, True), ("40 steps (current)", 40, True), ("40 steps, no label texts", 40, False),
            ("160 steps", 160, True), ("160 steps, no label texts", 160, False)]


def evaluate(name: str, model, tokenizer, task, seconds: float) -> None:
    model.set_label_options(tokenizer)
    features = {part: features_of(predict(model, tokenizer, getattr(task, part), use_knn=False))["embeddings"].numpy()
                for part in ("train", "dev", "test")}
    labels = {part: _label_tensor(task, getattr(task, part)).numpy() for part in features}
    regression = LogisticRegression(C=1.0, max_iter=3000).fit(features["train"], labels["train"])
    predicted = regression.predict(features["test"])
    arrays = {f"{part}_embeddings": value for part, value in features.items()} | \
        {f"y{part}": value for part, value in labels.items()} | \
        {"prior": model.option_embeddings.detach().numpy(),
         "pool_embeddings": np.zeros((0, features["test"].shape[1]), np.float32)}
    run = Run(arrays, _head_only_model(*arrays["prior"].shape), False)
    head = []
    for seed in (0, 1, 2):
        run.seed = seed
        run.fit()
        head.append((run.accuracy("test"), run.accuracy("dev")))
    head_test, head_dev = 100 * np.mean(head, 0)
    print(f"{name}: {seconds:.0f}s | LR test {100 * (predicted == labels['test']).mean():.2f} "
          f"MCC {matthews_corrcoef(labels['test'], predicted):.3f} "
          f"dev {100 * (regression.predict(features['dev']) == labels['dev']).mean():.2f} | "
          f"head test {head_test:.2f} dev {head_dev:.2f}", flush=True)


def main(task_name: str, shots: int, seed: int) -> None:
    options = RunOptions(methods=["gts-fast"], output_dir=Path("/tmp/body_probe"), max_test=MAX_TEST)
    spec = english_specs(options, DATA, [task_name], [shots], [seed])[0]
    for name, steps, label_texts in VARIANTS:
        set_seed(42)
        task = load_spec_task(spec)
        model, tokenizer = GTSEngine(mode="fast").build_student(task)
        start = time.time()
        if steps:
            train_body_contrastive(model, tokenizer, task.train, steps=steps, label_texts=label_texts)
        evaluate(name, model, tokenizer, task, time.time() - start)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if not 2 <= len(sys.argv) <= 4:
        sys.exit(__doc__)
    main(sys.argv[1], int((sys.argv[2:3] or [64])[0]), int((sys.argv[3:4] or [0])[0]))
