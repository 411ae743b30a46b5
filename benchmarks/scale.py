"""Scale measurements (not a test): kNN retrieval at 10k and 1M keys, and inference throughput side by side.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/scale.py            # writes benchmarks/scale_results.json

(a) Retrieval: synthetic 64-d unit vectors (a mixture of Gaussians, like whitened sentence embeddings of labelled
    classes; plus an isotropic worst case at the smallest size). For each size: exact ``IndexFlatL2`` against the
    approximate index gts-hf builds above ``EXACT_MAX_KEYS`` keys (forced at every size here), and HNSW for
    comparison up to ``--hnsw-max-size``: build time, search time per query and recall@10 against exact search.
(b) Inference: the same FewCLUE eprstmt ``test_public`` texts through ``pipeline("gts-few-shot")`` (a model trained
    with ``GTSEngine(mode="fast")`` on train_0/dev_0 with the packaged e5 student), the raw forward of that model on
    the same length-sorted batches, SetFit's ``predict`` (e5 body, logistic-regression head fitted on 32
    embeddings) and ``pipeline("text-classification")`` on ``AutoModelForSequenceClassification`` built from the
    same e5 folder (random head). Texts/second, each method's best of ``--repeats`` interleaved rounds after a
    16-text warm-up.

The load average is recorded before and after each part: on a shared machine, timings are only comparable within
one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import faiss  # noqa: E402

from gts_hf.retrieval import EXACT_MAX_KEYS, build_index  # noqa: E402

DIM = 64
K = 10
BATCH_SIZE = 64


# --------------------------------------------------------------------------------------------------- (a) retrieval
def synthetic(count: int, queries: int, distribution: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` keys and ``queries`` fresh queries, unit-normalised, from one distribution."""
    rng = np.random.default_rng(seed)
    total = count + queries
    vectors = rng.standard_normal((total, DIM), dtype=np.float32)
    if distribution == "clustered":  # ~500 points per centre, centres well apart, as classes of whitened embeddings
        centres = rng.standard_normal((max(count // 500, 20), DIM), dtype=np.float32) * 1.5
        vectors += centres[rng.integers(0, len(centres), total)]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors[:count], vectors[count:]


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / truth.shape[1] for a, b in zip(found, truth)]))


def retrieval_rows(size: int, queries: int, distribution: str, hnsw_max_size: int) -> list[dict[str, Any]]:
    keys, probes = synthetic(size, queries, distribution)
    rows = []

    def flat() -> Any:
        index = faiss.IndexFlatL2(DIM)
        index.add(keys)
        return index

    exact, build_seconds = timed(flat)
    (_, truth), search_seconds = timed(lambda: exact.search(probes, K))
    rows.append({"size": size, "distribution": distribution, "index": "flat (exact)", "build_s": build_seconds,
                 "search_ms_per_query": 1000 * search_seconds / queries, "recall_at_10": 1.0})
    del exact
    (approximate, info), build_seconds = timed(lambda: build_index(keys, exact_max_keys=0))
    (_, found), search_seconds = timed(lambda: approximate.search(probes, K))
    name = "gts-hf build_index: IVF-Flat" if info["type"] == "ivf_flat" else "gts-hf build_index: fell back to flat"
    rows.append({"size": size, "distribution": distribution, "index": name,
                 "build_s": build_seconds, "search_ms_per_query": 1000 * search_seconds / queries,
                 "recall_at_10": recall_at(found, truth), "settings": info,
                 "used_by_default": size > EXACT_MAX_KEYS})
    del approximate
    if size <= hnsw_max_size:
        def hnsw() -> Any:
            index = faiss.IndexHNSWFlat(DIM, 32)
            index.hnsw.efConstruction = 40
            index.add(keys)
            index.hnsw.efSearch = 128
            return index

        graph, build_seconds = timed(hnsw)
        (_, found), search_seconds = timed(lambda: graph.search(probes, K))
        rows.append({"size": size, "distribution": distribution, "index": "HNSW (M=32, efSearch=128)",
                     "build_s": build_seconds, "search_ms_per_query": 1000 * search_seconds / queries,
                     "recall_at_10": recall_at(found, truth)})
    return rows


# -------------------------------------------------------------------------------------------------- (b) inference
def read_texts(path: Path, count: int) -> list[str]:
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            texts.append(json.loads(line)["sentence"])
    return texts[:count]


def interleaved_rates(methods: dict[str, tuple[Callable[[list[str]], Any], list[str]]],
                      repeats: int) -> dict[str, dict[str, float]]:
    """Texts/second of each method: a 16-text warm-up each, then ``repeats`` rounds that time every method once in
    turn (so a busy spell on a shared machine hits all of them), keeping each method's fastest pass."""
    for function, texts in methods.values():
        function(texts[:16])
    best = {name: float("inf") for name in methods}
    for _ in range(repeats):
        for name, (function, texts) in methods.items():
            best[name] = min(best[name], timed(lambda: function(texts))[1])
    return {name: {"texts_per_second": round(len(methods[name][1]) / seconds, 2), "seconds": round(seconds, 3)}
            for name, seconds in best.items()}


PIPELINE, RAW = "gts-hf pipeline('gts-few-shot')", "raw forward of the same model (same sorted batches)"


def inference_rows(data_dir: Path, count: int, repeats: int) -> dict[str, Any]:
    import torch
    from setfit import SetFitModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    import gts_hf  # noqa: F401  (registers the gts-few-shot pipeline)
    from gts_hf import GTSEngine, load_task
    from gts_hf.backbones import DEFAULT_STUDENT, backbone_info, resolve_model_path

    texts = read_texts(data_dir / "test_public.json", count)
    task = load_task(train=data_dir / "train_0.json", dev=data_dir / "dev_0.json")
    results: dict[str, Any] = {"texts": len(texts), "batch_size": BATCH_SIZE, "repeats": repeats,
                               "data": str(data_dir / "test_public.json"),
                               "mean_chars": round(float(np.mean([len(text) for text in texts])), 1)}
    with tempfile.TemporaryDirectory() as folder:
        trained, train_seconds = timed(lambda: GTSEngine(mode="fast").train(task, output_dir=Path(folder) / "model"))
        results["gts_fast_train_s"] = round(train_seconds, 2)
        classifier = pipeline("gts-few-shot", model=str(Path(folder) / "model"))
    model, tokenizer, config = classifier.model, classifier.tokenizer, classifier.model.config

    @torch.no_grad()
    def raw_forward(some: list[str]) -> None:
        order = np.argsort([-len(text) for text in some], kind="stable")  # the order `predict` batches in
        model.eval()
        for begin in range(0, len(some), BATCH_SIZE):
            batch = [config.query_prefix + some[i] for i in order[begin:begin + BATCH_SIZE]]
            inputs = tokenizer(batch, padding=True, truncation=True, max_length=config.max_seq_length,
                               return_tensors="pt")
            model(**inputs)

    path = resolve_model_path(DEFAULT_STUDENT)
    prefix = backbone_info(DEFAULT_STUDENT)["query_prefix"]
    prefixed = [prefix + text for text in texts]  # the texts as e5 expects them (gts-hf adds the prefix itself)
    setfit = SetFitModel.from_pretrained(path)
    setfit.model_body.max_seq_length = config.max_seq_length
    setfit.model_head.fit(setfit.model_body.encode([prefix + example.text for example in task.train],
                                                   show_progress_bar=False), task.label_ids(task.train))
    sequence = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(task.labels))
    text_classifier = pipeline("text-classification", model=sequence, tokenizer=AutoTokenizer.from_pretrained(path),
                               device=-1)
    methods = {
        PIPELINE: (lambda some: classifier(some, batch_size=BATCH_SIZE), texts),
        RAW: (raw_forward, texts),
        "SetFit predict (e5 body + LR head)": (
            lambda some: setfit.predict(some, batch_size=BATCH_SIZE, show_progress_bar=False), prefixed),
        "transformers pipeline('text-classification') (random head)": (
            lambda some: text_classifier(some, batch_size=BATCH_SIZE, truncation=True,
                                         max_length=config.max_seq_length), prefixed),
    }
    results["rows"] = interleaved_rates(methods, repeats)
    results["pipeline_over_raw"] = round(results["rows"][PIPELINE]["texts_per_second"] /
                                         results["rows"][RAW]["texts_per_second"], 3)
    results["knn"] = {key: trained.record["knn"].get(key) for key in ("size", "k", "lambda")}
    if model.knn is not None:  # the kNN step's own cost for all texts (the pipeline skips it when λ = 0)
        vectors = np.random.default_rng(0).standard_normal((len(texts), config.hidden_size)).astype(np.float32)
        results["knn"]["vote_seconds_all_texts"] = round(timed(lambda: model.knn.knn_probs(vectors, k=8))[1], 4)
    return results


# --------------------------------------------------------------------------------------------------------- main
def environment() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "faiss_threads": faiss.omp_get_max_threads(), "faiss": faiss.__version__, "torch": torch.__version__,
            "exact_max_keys": EXACT_MAX_KEYS}


def load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def print_tables(results: dict[str, Any]) -> None:
    if results.get("retrieval"):
        print(f"\n{'size':>9} {'data':<10} {'index':<38} {'build s':>8} {'ms/query':>9} {'recall@10':>9}  settings")
        for row in results["retrieval"]:
            settings = row.get("settings", {})
            extra = f"nlist={settings['nlist']} nprobe={settings['nprobe']}" if "nlist" in settings else ""
            print(f"{row['size']:>9} {row['distribution']:<10} {row['index']:<38} {row['build_s']:>8.2f} "
                  f"{row['search_ms_per_query']:>9.3f} {row['recall_at_10']:>9.3f}  {extra}")
    if results.get("inference"):
        inference = results["inference"]
        print(f"\n{inference['texts']} eprstmt texts, batch size {inference['batch_size']}")
        for name, row in inference["rows"].items():
            print(f"  {name:<62} {row['texts_per_second']:>8.1f} texts/s")
        print(f"  pipeline / raw forward: {inference['pipeline_over_raw']:.3f} (goal ≥ 0.8)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,1000000", help="datastore sizes (comma-separated)")
    parser.add_argument("--queries", type=int, default=1000, help="queries per size")
    parser.add_argument("--hnsw-max-size", type=int, default=100_000, help="measure HNSW up to this size")
    parser.add_argument("--texts", type=int, default=512, help="texts for the inference comparison")
    parser.add_argument("--repeats", type=int, default=2,
                        help="interleaved timed rounds over the inference methods (each method's best kept)")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "fewclue" / "eprstmt"))
    parser.add_argument("--skip-retrieval", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "scale_results.json"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    command = " ".join(["python benchmarks/scale.py", *(sys.argv[1:] if argv is None else argv)])
    results: dict[str, Any] = {"command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} {command}",
                               "environment": environment(), "load_average": {"start": load()}}
    if not args.skip_retrieval:
        rows = []
        sizes = [int(size) for size in args.sizes.split(",")]
        for size in sizes:
            rows += retrieval_rows(size, args.queries, "clustered", args.hnsw_max_size)
            print(f"retrieval: {size} keys done ({time.perf_counter() - started:.0f}s)", flush=True)
        rows += retrieval_rows(min(sizes), args.queries, "isotropic", args.hnsw_max_size)
        results["retrieval"] = [{key: (round(value, 4) if isinstance(value, float) else value)
                                 for key, value in row.items()} for row in rows]
        results["load_average"]["after_retrieval"] = load()
    if not args.skip_inference:
        results["inference"] = inference_rows(Path(args.data_dir), args.texts, args.repeats)
        results["load_average"]["after_inference"] = load()
    results["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.output).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print_tables(results)
    print(f"\nwrote {args.output} in {results['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
