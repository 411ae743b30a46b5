"""How the head's step and the kNN datastore are chosen on dev: a frozen-feature screen (benchmarks/ABLATION.md §13).

``record`` runs ``fast``'s head fit (:func:`gts_hf.trainer.fit_head`, unchanged) on frozen e5 features of each run's
train/dev data and a capped test set, and saves, for every step, the head's dev and test logits, the label-text
prior's logits and the embeddings (one ``.npz`` per run). ``report`` then scores selection rules offline: which step
is kept, how the prior is weighed, whether and how kNN is adopted. Test labels are only ever used to score a rule.

    python benchmarks/selection_screen.py record fewclue eprstmt,tnews,ocnli,csldcp 0-4
    python benchmarks/selection_screen.py record english cr,sst5,emotion,amazon_counterfactual_en,ag_news 0-4
    python benchmarks/selection_screen.py report
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from gts_hf.backbones import DEFAULT_STUDENT
from gts_hf.bench import RunOptions, english_specs, fewclue_specs, load_spec_task, parse_int_list
from gts_hf.engine import GTSEngine, _label_tensor, features_of
from gts_hf.inference import predict
from gts_hf.retrieval import LAMBDA_GRID, TEMPERATURE_GRID, KNNDatastore, _accuracy, _log_likelihood, _vote
from gts_hf.trainer import fit_head

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TRAJECTORIES = Path("/tmp/selection_screen")
MAX_TEST = 1000
PRIOR_WEIGHT = 0.5


# ---------------------------------------------------------------------------------------------------------- record
def fresh_runs(suite: str, tasks: list[str], splits: list[int], folder: Path,
               student: str = DEFAULT_STUDENT) -> Iterator[tuple]:
    """The runs of a frozen-feature screen (FewCLUE splits, or English N = 8 seeds; test capped at ``MAX_TEST``) that
    ``folder`` does not hold yet: ``(spec, output file, task, engine, untrained student, tokenizer)``."""
    from transformers import set_seed

    folder.mkdir(parents=True, exist_ok=True)
    options = RunOptions(methods=["gts-fast"], output_dir=folder, max_test=MAX_TEST)
    specs = fewclue_specs(options, DATA, tasks, splits) if suite == "fewclue" else \
        english_specs(options, DATA, tasks, [8], splits)
    for spec in specs:
        out = folder / f"{spec.task}_{spec.split}.npz"
        if out.exists():
            continue
        set_seed(42)
        task = load_spec_task(spec)
        engine = GTSEngine(mode="fast", student=student)
        yield (spec, out, task, engine, *engine.build_student(task))


def record(suite: str, tasks: list[str], splits: list[int]) -> None:
    test_features: dict[str, dict[str, torch.Tensor]] = {}  # one test set per task, whatever the split
    for spec, out, task, engine, model, tokenizer in fresh_runs(suite, tasks, splits, TRAJECTORIES):
        train, dev = (features_of(predict(model, tokenizer, examples, use_knn=False))
                      for examples in (task.train, task.dev))
        if spec.task not in test_features:
            test_features = {spec.task: features_of(predict(model, tokenizer, task.test, use_knn=False))}
        test = test_features[spec.task]
        prior = model.option_embeddings.detach().clone()  # the label texts' embeddings, before the fit moves them
        steps = {"dev": [], "test": []}

        @torch.no_grad()
        def keep_logits(step: int) -> None:
            for name, features in (("dev", dev), ("test", test)):
                steps[name].append(model.score(features["embeddings"], features.get("pair_similarity")).numpy())

        keep_logits(0)
        labels = {name: _label_tensor(task, getattr(task, name)) for name in ("train", "dev", "test")}
        head_options = engine.head_options(task)
        fit_head(model, train, labels["train"], dev, labels["dev"], **head_options, on_step=keep_logits)
        scale = model.config.logit_scale
        np.savez_compressed(
            out, dev=np.stack(steps["dev"]).astype(np.float16), test=np.stack(steps["test"]).astype(np.float16),
            pdev=(scale * dev["embeddings"] @ prior.T).numpy(), ptest=(scale * test["embeddings"] @ prior.T).numpy(),
            ytrain=labels["train"].numpy(), ydev=labels["dev"].numpy(), ytest=labels["test"].numpy(),
            tied=head_options["tie_options"], etrain=train["embeddings"].numpy(),
            edev=dev["embeddings"].numpy(), etest=test["embeddings"].numpy().astype(np.float16))
        print(spec.task, spec.split, flush=True)


# ---------------------------------------------------------------------------------------------------------- report
def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def blend(head: np.ndarray, prior: np.ndarray, weight: float = PRIOR_WEIGHT) -> np.ndarray:
    return (1 - weight) * head + weight * prior  # GTSForFewShotClassification.score's product of experts


def step_rules(run: dict[str, np.ndarray]) -> dict[str, float]:
    """Test accuracy of the head step each rule keeps (the label prior blended in at the end unless stated)."""
    dev, test, pdev, ptest, ydev, ytest = (run[key] for key in ("dev", "test", "pdev", "ptest", "ydev", "ytest"))
    candidates = range(1 if run["tied"] else 0, len(dev))  # the tied start is a constant classifier
    dev_accuracy = np.array([_accuracy(logits, ydev) for logits in dev])
    dev_ll = np.array([_log_likelihood(softmax(logits), ydev) for logits in dev])

    def kept(key) -> int:
        return max(candidates, key=key)

    def scored(step: int, weight: float = PRIOR_WEIGHT) -> float:
        return _accuracy(blend(test[step], ptest, weight), ytest)

    current = kept(lambda s: (dev_accuracy[s], dev_ll[s]))
    smoothed = np.convolve(dev_accuracy, np.ones(31) / 31, mode="same")
    with_prior = [_accuracy(blend(logits, pdev), ydev) for logits in dev]
    within_one = [s for s in candidates if dev_accuracy[s] >= dev_accuracy[list(candidates)].max() - 1 / len(ydev)]
    return {
        "zero-shot": _accuracy(ptest, ytest),
        "current": scored(current), "current, no prior": scored(current, 0.0),
        "current, prior 0.25": scored(current, 0.25), "current, prior 0.75": scored(current, 0.75),
        "dev log-likelihood": scored(kept(lambda s: dev_ll[s])),
        "dev accuracy with the prior": scored(kept(lambda s: (with_prior[s], dev_ll[s]))),
        "smoothed dev accuracy (31 steps)": scored(kept(lambda s: (round(smoothed[s], 6), dev_ll[s]))),
        "step 30": scored(30), "step 100": scored(100), "step 300": scored(300),
        "mean of steps within 1 dev example": _accuracy(
            np.mean([softmax(blend(test[s], ptest)) for s in within_one], 0), ytest),
        "best step (oracle)": max(scored(s) for s in candidates),
        **knn_rules(run, current),
    }


def knn_rules(run: dict[str, np.ndarray], step: int) -> dict[str, float]:
    """Test accuracy of the kept head with kNN adopted by each rule over KNNDatastore.tune's grid."""
    model_dev, model_test = (softmax(blend(run[name][step], run[f"p{name}"])) for name in ("dev", "test"))
    ydev, ytest = run["ydev"], run["ytest"]
    num_labels = model_dev.shape[1]
    store = KNNDatastore.build(run["etrain"], run["ytrain"], num_labels)
    max_k = min(32, len(store.labels))
    dev_neighbours = store.search(run["edev"].astype(np.float32), max_k)
    test_neighbours = store.search(run["etest"].astype(np.float32), max_k)

    def mixed(probs, neighbours, k, lam, temperature):
        distances, labels = neighbours
        return (1 - lam) * probs + lam * _vote(distances[:, :k], labels[:, :k], num_labels, temperature)

    grid = [(k, lam, temperature) for temperature in TEMPERATURE_GRID for k in range(1, max_k + 1)
            for lam in LAMBDA_GRID[1:]]
    scores = [(_accuracy(m, ydev), _log_likelihood(m, ydev), choice)
              for choice in grid for m in [mixed(model_dev, dev_neighbours, *choice)]]
    base = (_accuracy(model_dev, ydev), _log_likelihood(model_dev, ydev))

    def scored(choice) -> float:
        return _accuracy(mixed(model_test, test_neighbours, *choice) if choice else model_test, ytest)

    best = max(scores, key=lambda s: s[:2])
    capped = max((s for s in scores if s[2][1] <= 0.5), key=lambda s: s[:2])
    small = max((s for s in scores if s[2][0] == 8 and s[2][2] == 1.0 and s[2][1] in (0.25, 0.5)), key=lambda s: s[:2])
    return {"kNN: none": scored(None),
            "kNN: current (dev accuracy, then log-likelihood)": scored(best[2] if best[:2] > base else None),
            "kNN: only on one more correct dev example": scored(best[2] if best[0] > base[0] + 1e-9 else None),
            "kNN: only on two more": scored(best[2] if best[0] >= base[0] + 2 / len(ydev) - 1e-9 else None),
            "kNN: current, λ ≤ 0.5": scored(capped[2] if capped[:2] > base else None),
            "kNN: k = 8, temperature 1, λ 0.25 or 0.5, on one more correct dev example":
                scored(small[2] if small[0] > base[0] + 1e-9 else None)}


def report() -> None:
    by_task: dict[str, list[dict[str, float]]] = defaultdict(list)
    for path in sorted(TRAJECTORIES.glob("*.npz")):
        with np.load(path) as run:
            by_task[path.stem.rsplit("_", 1)[0]].append(step_rules({key: run[key] for key in run.files}))
    print_rule_table(by_task)


def print_rule_table(by_task: dict[str, list[dict[str, float]]]) -> None:
    """A Markdown table of each rule's mean test accuracy per task, the mean over tasks and its gain over "current"."""
    rules = list(next(iter(by_task.values()))[0])
    means = {task: {rule: 100 * np.mean([run[rule] for run in runs]) for rule in rules}
             for task, runs in by_task.items()}
    print("| rule | " + " | ".join(f"{task} ({len(by_task[task])})" for task in means) +
          " | mean of tasks | vs current |")
    print("|---" * (len(means) + 3) + "|")
    current = np.mean([means[task]["current"] for task in means])
    for rule in rules:
        overall = np.mean([means[task][rule] for task in means])
        print(f"| {rule} | " + " | ".join(f"{means[task][rule]:.2f}" for task in means) +
              f" | {overall:.2f} | {overall - current:+.2f} |")

if __name__ == "__main__":
    if sys.argv[1:2] == ["record"] and len(sys.argv) == 5:
        torch.set_num_threads(1)
        record(sys.argv[2], sys.argv[3].split(","), parse_int_list(sys.argv[4]))
    elif sys.argv[1:] == ["report"]:
        report()
    else:
        sys.exit(__doc__)
