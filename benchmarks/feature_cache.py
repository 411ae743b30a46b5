"""What the engine's feature cache (``engine.EncodedExamples``) saves (not a test): training wall time and texts
embedded, with the cache and without it, alternated in one process so both sides share the machine's load.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/feature_cache.py TASK SPLIT MODE [REPEATS]
    # e.g. tnews 0 standard 1; writes benchmarks/feature_cache.json (one entry per task, split and mode)

The test set is not scored (the cache plays no part there). "Without" replaces the cache by a fresh prediction on
every call (the embedding work the engine did before it); the two trainings must end with identical records and
weights.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

import gts_hf.engine as engine_module
from gts_hf import GTSEngine
from gts_hf.bench import RunOptions, fewclue_specs, load_spec_task
from gts_hf.inference import predict

OUTPUT = Path(__file__).resolve().parent / "feature_cache.json"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CACHED = engine_module.EncodedExamples.__call__


def uncached(self, model, tokenizer, examples):
    return engine_module.features_of(engine_module.predict(model, tokenizer, examples, use_knn=False))


def counting_predict(counter: list[int]):
    def counted(model, tokenizer, examples, *args, **kwargs):
        counter.append(len(examples))
        return predict(model, tokenizer, examples, *args, **kwargs)
    return counted


def train_once(task, mode: str, cache: bool) -> dict:
    engine_module.EncodedExamples.__call__ = CACHED if cache else uncached
    embedded: list[int] = []
    engine_module.predict = counting_predict(embedded)
    try:
        started = time.perf_counter()
        trained = GTSEngine(mode=mode).train(task)
        seconds = time.perf_counter() - started
    finally:
        engine_module.EncodedExamples.__call__, engine_module.predict = CACHED, predict
    record = {key: value for key, value in trained.record.items() if key != "train_seconds"}
    return {"seconds": round(seconds, 1), "texts_embedded": sum(embedded), "record": record,
            "weights": trained.model.state_dict()}


def main(task_name: str, split: int, mode: str, repeats: int = 1) -> None:
    spec, = fewclue_specs(RunOptions(methods=["gts-" + mode], output_dir=Path("/tmp")), DATA, [task_name], [split])
    task = dataclasses.replace(load_spec_task(spec), test=[])
    runs = {"with": [], "without": []}
    for _ in range(repeats):
        for side in ("without", "with"):
            runs[side].append(train_once(task, mode, cache=side == "with"))
            print(side, runs[side][-1]["seconds"], "s,", runs[side][-1]["texts_embedded"], "texts", flush=True)
    reference = runs["without"][0]
    identical = all(run["record"] == reference["record"] and
                    all(torch.equal(tensor, reference["weights"][name]) for name, tensor in run["weights"].items())
                    for run in runs["with"] + runs["without"])
    entry = {side: {"seconds": [run["seconds"] for run in side_runs],
                    "texts_embedded": side_runs[0]["texts_embedded"]} for side, side_runs in runs.items()}
    entry["time_ratio_with_over_without"] = round(
        sum(run["seconds"] for run in runs["with"]) / sum(run["seconds"] for run in runs["without"]), 3)
    entry["identical_records_and_weights"] = identical
    entry["sizes"] = {"train": len(task.train), "dev": len(task.dev), "unlabeled": len(task.unlabeled)}
    results = json.loads(OUTPUT.read_text()) if OUTPUT.is_file() else {}
    results[f"{task_name} split{split} {mode}"] = entry
    OUTPUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], *(int(value) for value in sys.argv[4:5]))
