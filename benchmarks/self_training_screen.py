"""Self-training the head on the unlabelled pool: a frozen-feature screen (benchmarks/ABLATION.md §15).

``record`` embeds, with the untrained e5 student, each run's train and dev sets, the task's test set (capped at 1,000
texts, seed 0) and a seeded sample of the run's unlabelled pool (``unlabeled.json`` for FewCLUE, the rest of
``train.json`` for the English suite; never the test file), and saves them (one ``.npz`` per run). ``report`` then
fits ``fast``'s head (:func:`gts_hf.trainer.fit_head`, unchanged) on those features, pseudo-labels the pool with the
finished model (label prior included) and refits the head on the gold examples plus the most confident pool texts of
each label (:func:`gts_hf.trainer.confident_per_label`, as the engine does), for several rules; test labels only ever
score a rule. Each rule is scored over three head fits that differ only in their random state. Session 12 added
multiples of 16 and 32, a second round, a dev-loss tie-break and averages of five head fits (ABLATION §16).

    python benchmarks/self_training_screen.py record fewclue eprstmt,tnews,ocnli,csldcp 0-4
    python benchmarks/self_training_screen.py record english cr,sst5,emotion,amazon_counterfactual_en,ag_news 0-4
    python benchmarks/self_training_screen.py report [TASK,...]
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gts_hf.bench import parse_int_list
from gts_hf.data import sample_examples
from gts_hf.engine import _label_tensor, features_of
from gts_hf.inference import predict
from gts_hf.trainer import _head_state, _load_head_state, confident_per_label, fit_head

from selection_screen import fresh_runs, print_rule_table  # a sibling script (benchmarks/ is on sys.path)

FEATURES = Path("/tmp/self_training_screen")
POOL = 1000
PRIOR_WEIGHT = 0.5
RNG_SEEDS = (0, 1, 2)
MULTIPLES = (2, 4, 8, 16, 32)
ENSEMBLE = 5  # head fits averaged by the ensemble rules


# ---------------------------------------------------------------------------------------------------------- record
def record(suite: str, tasks: list[str], splits: list[int]) -> None:
    shared: dict[str, dict[str, dict[str, np.ndarray]]] = {}  # per task: test (and FewCLUE's pool), the same per run
    for spec, out, task, engine, model, tokenizer in fresh_runs(suite, tasks, splits, FEATURES):
        parts = ("test", "pool") if suite == "fewclue" else ("test",)
        save_features(out, task, engine, model, tokenizer, shared.setdefault(spec.task, {}), parts)
        print(spec.task, spec.split, flush=True)


def save_features(out: Path, task, engine, model: torch.nn.Module, tokenizer,
                  shared: dict[str, dict[str, np.ndarray]] | None = None, shared_parts: tuple[str, ...] = ()) -> None:
    """Embed the run's train, dev, test and pool texts with ``model`` and save them with the labels and the label
    texts' embeddings. The ``shared_parts`` are taken from, or stored in, ``shared`` (the same texts in every run of
    one task and one encoder)."""
    pool = sample_examples(task.unlabeled, POOL, seed=0)
    saved: dict[str, np.ndarray] = {}
    for name, examples in (("train", task.train), ("dev", task.dev), ("test", task.test), ("pool", pool)):
        if shared is not None and name in shared_parts and name in shared:
            saved.update(shared[name])
            continue
        features = features_of(predict(model, tokenizer, examples, use_knn=False))
        arrays = {f"{name}_{k}": v.numpy() for k, v in features.items()}
        if shared is not None and name in shared_parts:
            shared[name] = arrays
        saved.update(arrays)
    np.savez_compressed(out, **saved, prior=model.option_embeddings.detach().numpy(),
                        ytrain=_label_tensor(task, task.train).numpy(), ydev=_label_tensor(task, task.dev).numpy(),
                        ytest=_label_tensor(task, task.test).numpy(), tied=engine.head_options(task)["tie_options"])

# ---------------------------------------------------------------------------------------------------------- report
class Run:
    """One run's features and a head to fit on them (the engine's student, reset to its label-text start)."""

    def __init__(self, arrays: dict[str, np.ndarray], model: torch.nn.Module, tied: bool):
        self.arrays, self.model, self.tied, self.seed = arrays, model, tied, 0
        with torch.no_grad():
            model.option_embeddings.copy_(torch.from_numpy(arrays["prior"]))
        self.params = [model.option_embeddings, model.log_logit_scale, model.pair_weight, model.pair_bias]
        self.start = _head_state(self.params)
        self.y = {name: torch.from_numpy(arrays[f"y{name}"]).long() for name in ("train", "dev", "test")}

    def features(self, name: str, rows: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        out = {}
        for key in ("embeddings", "pair_similarity"):
            if f"{name}_{key}" in self.arrays:
                value = torch.from_numpy(self.arrays[f"{name}_{key}"]).float()
                out[key] = value if rows is None else value[rows]
        return out

    def fit(self, extra_rows: torch.Tensor | None = None, extra_labels: torch.Tensor | None = None,
            partner_seed: int = 42, with_dev: bool = False, steps: int = 300) -> int:
        """The engine's head fit on the gold training set plus, optionally, pool texts with pseudo-labels. Every fit
        starts from the same random state (mixup's weights come from torch's global generator), so rules differ only
        by their data; ``partner_seed`` seeds mixup's choice of partners (the engine's seed). ``with_dev`` trains on
        the dev texts too, and then nothing is selected: the last of ``steps`` is kept. Returns the kept step."""
        _load_head_state(self.params, self.start)
        torch.manual_seed(self.seed)
        parts = [(self.features("train"), self.y["train"])]
        if with_dev:
            parts.append((self.features("dev"), self.y["dev"]))
        if extra_rows is not None and len(extra_rows):
            parts.append((self.features("pool", extra_rows), extra_labels))
        train = {key: torch.cat([features[key] for features, _ in parts]) for key in parts[0][0]}
        labels = torch.cat([part_labels for _, part_labels in parts])
        dev = (None, None) if with_dev else (self.features("dev"), self.y["dev"])
        info = fit_head(self.model, train, labels, *dev, steps=steps, learning_rate=1e-2,
                        anchor_weight=100.0 if self.tied else 1.0, tie_options=self.tied, seed=partner_seed)
        return info["head_best_step"]

    @torch.no_grad()
    def probabilities(self, name: str, prior_weight: float = PRIOR_WEIGHT) -> np.ndarray:
        features = self.features(name)
        logits = self.model.score(features["embeddings"], features.get("pair_similarity"))
        if prior_weight > 0 and not self.tied:
            prior = torch.nn.functional.normalize(torch.from_numpy(self.arrays["prior"]), dim=-1)
            logits = (1 - prior_weight) * logits + prior_weight * self.model.config.logit_scale * \
                features["embeddings"] @ prior.T
        return logits.softmax(-1).numpy()

    def dev_loss(self) -> float:
        probabilities = torch.from_numpy(self.probabilities("dev")).clamp_min(1e-12)
        return float(torch.nn.functional.nll_loss(probabilities.log(), self.y["dev"]))

    def ensemble_probabilities(self, seeds: list[int], extra: tuple[torch.Tensor, torch.Tensor] | None = None,
                               ) -> dict[str, np.ndarray]:
        """Dev, test and pool probabilities averaged over head fits from the random states ``seeds``."""
        total: dict[str, np.ndarray] = {}
        for seed in seeds:
            self.seed = seed
            self.fit(*(extra or (None, None)))
            for name in ("dev", "test", "pool"):
                total[name] = total.get(name, 0) + self.probabilities(name) / len(seeds)
        return total

    @property
    def shots(self) -> int:
        """Gold examples per label (the most of any label)."""
        return int(np.bincount(self.y["train"].numpy()).max())

    @property
    def has_pool(self) -> bool:
        return len(self.arrays["pool_embeddings"]) > 0

    def fit_as_standard(self) -> tuple[int, tuple[torch.Tensor, torch.Tensor] | None]:
        """The head as ``standard`` leaves it: fitted, then self-trained on the pool (8 × shots per label, the engine's
        default) unless dev accuracy falls; without a pool, just fitted. Returns the kept step and the pool texts
        (rows, pseudo-labels) the head was trained on, if any."""
        kept_step = self.fit()
        if not self.has_pool:
            return kept_step, None
        dev_before = self.accuracy("dev")
        pool = confident_per_label(torch.from_numpy(self.probabilities("pool")), 8 * self.shots)
        self_trained_step = self.fit(*pool)
        if self.accuracy("dev") >= dev_before:
            return self_trained_step, pool
        return self.fit(), None  # undone: every fit from the same random state is the same fit

    def accuracy(self, name: str, probabilities: np.ndarray | None = None) -> float:
        """Accuracy on ``name`` of the current head, or of the given ``probabilities`` of its texts."""
        probabilities = self.probabilities(name) if probabilities is None else probabilities
        return float((probabilities.argmax(-1) == self.y[name].numpy()).mean())


def load_run(path: Path) -> Run:
    """A screened run, from the features :func:`save_features` wrote."""
    with np.load(path) as stored:
        arrays = {key: stored[key] for key in stored.files}
    return Run(arrays, _head_only_model(*arrays["prior"].shape), bool(arrays["tied"]))


def over_random_states(run: Run, once: Callable[[Run], dict[str, Any]]) -> dict[str, Any]:
    """``once(run)``'s scores (numbers, or tuples of them) averaged over ``RNG_SEEDS`` head fits: one fit's kept
    step is a lottery."""
    per_seed = []
    for seed in RNG_SEEDS:
        run.seed = seed
        per_seed.append(once(run))
    return {name: np.mean([scores[name] for scores in per_seed], axis=0).tolist() for name in per_seed[0]}


def standard_accuracy(run: Run) -> dict[str, float]:
    """Test accuracy of ``standard``'s head on the run's features (see :meth:`Run.fit_as_standard`)."""
    run.fit_as_standard()
    return {"test": run.accuracy("test")}


def report_variants(paths: list[Path], variants_of: Callable[[Path], dict[str, Run]]) -> None:
    """For each stored run, ``standard``'s test accuracy on each variant of its features (three random states), then
    a table of the means per task; the variants must include "current"."""
    by_task: dict[str, list[dict[str, float]]] = defaultdict(list)
    for path in paths:
        scores = {name: over_random_states(run, standard_accuracy)["test"] for name, run in variants_of(path).items()}
        by_task[path.stem.rsplit("_", 1)[0]].append(scores)
        print(path.stem, {name: round(100 * value, 2) for name, value in scores.items()}, file=sys.stderr, flush=True)
    print_rule_table(by_task)


def record_or_report(record: Callable[[str, list[str], list[int]], None], report: Callable[[], None]) -> None:
    """The command line of a screen: ``record SUITE TASKS SPLITS`` or ``report``."""
    torch.set_num_threads(1)
    if sys.argv[1:2] == ["record"] and len(sys.argv) == 5:
        record(sys.argv[2], sys.argv[3].split(","), parse_int_list(sys.argv[4]))
    elif sys.argv[1:] == ["report"]:
        report()
    else:
        sys.exit(sys.modules["__main__"].__doc__)


def rules_once(run: Run) -> dict[str, float]:
    run.fit()
    scores = {"current": run.accuracy("test")}
    dev_before, dev_loss_before = run.accuracy("dev"), run.dev_loss()
    pool_probs = torch.from_numpy(run.probabilities("pool"))
    shots = run.shots
    for multiple in MULTIPLES:
        for selection, choose in SELECTIONS.items():
            name = f"self-training, {multiple}× shots per label, {selection}"
            run.fit(*choose(pool_probs, multiple * shots))
            scores[name] = run.accuracy("test")
            kept = run.accuracy("dev") >= dev_before
            scores[name + ", kept if dev ≥ before"] = scores[name] if kept else scores["current"]
            if multiple == 8 and selection == "balanced":
                scores.update(_session_12_variants(run, name, scores, dev_before, dev_loss_before, shots))
    scores.update(_ensembles(run, shots))
    return scores


def _session_12_variants(run: Run, name: str, scores: dict[str, float], dev_before: float, dev_loss_before: float,
                         shots: int) -> dict[str, float]:
    """Two variants of the adopted rule (8×, balanced), screened in session 12 (ABLATION §16); ``run`` holds its
    self-trained head. Ties broken by dev log-loss; a second round that relabels the pool with the self-trained head."""
    dev_after, dev_loss_after = run.accuracy("dev"), run.dev_loss()
    kept = dev_after > dev_before or (dev_after == dev_before and dev_loss_after <= dev_loss_before)
    out = {name + ", kept if dev rises, or ties with no higher dev loss": scores[name] if kept else scores["current"]}
    run.fit(*confident_per_label(torch.from_numpy(run.probabilities("pool")), 8 * shots))
    second = run.accuracy("test")
    out[name + ", two rounds"] = second
    out[name + ", two rounds, kept if dev ≥ before"] = second if run.accuracy("dev") >= dev_before \
        else scores["current"]
    return out


def _ensembles(run: Run, shots: int) -> dict[str, float]:
    """Averaging the probabilities of ``ENSEMBLE`` head fits (different random states), without and with
    self-training (8×, balanced, pool labelled by the ensemble)."""
    seed, members = run.seed, [100 * run.seed + k for k in range(ENSEMBLE)]
    alone = run.ensemble_probabilities(members)
    self_trained = run.ensemble_probabilities(members, confident_per_label(torch.from_numpy(alone["pool"]),
                                                                           8 * shots))
    run.seed = seed
    accuracy = {name: {part: float((probs[part].argmax(-1) == run.y[part].numpy()).mean()) for part in ("dev", "test")}
                for name, probs in (("alone", alone), ("self", self_trained))}
    kept = accuracy["self"]["dev"] >= accuracy["alone"]["dev"]
    return {f"{ENSEMBLE} head fits averaged": accuracy["alone"]["test"],
            f"{ENSEMBLE} head fits averaged, self-training 8×, kept if dev ≥ before":
                accuracy["self" if kept else "alone"]["test"]}


def proportional(probabilities: torch.Tensor, per_label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_label`` × labels texts in all, each label's share as in the pool's predictions, surest first."""
    predicted = probabilities.argmax(-1)
    total = per_label * probabilities.shape[1]
    shares = torch.bincount(predicted, minlength=probabilities.shape[1]).float() / len(predicted)
    rows, labels = [], []
    for label, share in enumerate(shares.tolist()):
        quota = round(total * share)
        candidates = torch.nonzero(predicted == label).flatten()
        confidence = probabilities[candidates, label]
        keep = candidates[confidence.argsort(descending=True, stable=True)[:quota]]
        rows.append(keep)
        labels.append(torch.full((len(keep),), label, dtype=torch.long))
    return torch.cat(rows), torch.cat(labels)


SELECTIONS = {"balanced": confident_per_label, "proportional to the pool's predictions": proportional}


def report(tasks: list[str] | None = None) -> None:
    by_task: dict[str, list[dict[str, float]]] = defaultdict(list)
    for path in sorted(FEATURES.glob("*.npz")):
        if tasks and path.stem.rsplit("_", 1)[0] not in tasks:
            continue
        run = load_run(path)
        if not run.has_pool:  # no unlabelled texts (CSLDCP, OCNLI, CLUEWSC): nothing to screen
            continue
        scores = over_random_states(run, rules_once)
        by_task[path.stem.rsplit("_", 1)[0]].append(scores)
        print(path.stem, {rule: round(100 * value, 2) for rule, value in scores.items()}, file=sys.stderr, flush=True)
    print_rule_table(by_task)

def _head_only_model(num_labels: int, hidden_size: int) -> torch.nn.Module:
    """A student whose head has the run's shape; its (tiny, random) encoder is never used: the features are stored."""
    from transformers import BertConfig

    from gts_hf.configuration import GTSConfig
    from gts_hf.modeling import GTSForFewShotClassification

    encoder = BertConfig(vocab_size=8, hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=8)
    labels = [str(label) for label in range(num_labels)]
    return GTSForFewShotClassification(GTSConfig(encoder_config=encoder.to_dict(), labels=labels,
                                                 label_options=labels))


if __name__ == "__main__":
    if sys.argv[1:2] == ["record"] and len(sys.argv) == 5:
        torch.set_num_threads(1)
        record(sys.argv[2], sys.argv[3].split(","), parse_int_list(sys.argv[4]))
    elif sys.argv[1:2] == ["report"] and len(sys.argv) <= 3:
        report(sys.argv[2].split(",") if len(sys.argv) == 3 else None)
    else:
        sys.exit(__doc__)
