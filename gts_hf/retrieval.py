"""Retrieval augmentation: a kNN datastore of training embeddings and class prototypes, searched with faiss.

GTS's recipe: keys are the training set's sentence embeddings, each class mean and every leave-one-out class mean;
keys are whitened (SVD) to at most 64 dimensions and L2-normalised; neighbour weights are ``softmax(-distance / T)``;
the final distribution is ``(1 - λ)·p_model + λ·p_kNN``, with ``k``, ``λ`` (and ``T``) chosen on dev. Stored as
faiss's own index format plus safetensors and JSON: no pickle.

Up to ``EXACT_MAX_KEYS`` keys the index is exact (``IndexFlatL2``); above, it is an inverted-file index
(``IndexIVFFlat``, √n lists trained on the keys) whose ``nprobe`` is raised until recall@32 against exact search, measured
on a sample of the keys, reaches ``RECALL_TARGET``. faiss-gpu is used when present; the saved index is always a CPU
index, so it loads on machines without a GPU.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from safetensors.numpy import load_file, save_file

logger = logging.getLogger(__name__)

KNN_DIRNAME = "knn"
INDEX_FILE, TENSORS_FILE, CONFIG_FILE = "index.faiss", "datastore.safetensors", "config.json"
KNN_FILES = tuple(f"{KNN_DIRNAME}/{name}" for name in (INDEX_FILE, TENSORS_FILE, CONFIG_FILE))
FORMAT_VERSION = 1
LAMBDA_GRID = tuple(round(step * 0.05, 2) for step in range(21))
TEMPERATURE_GRID = (1.0, 0.1, 0.05)
EXACT_MAX_KEYS = 20_000  # above this many keys, an approximate (IVF) index
RECALL_TARGET = 0.95  # recall@RECALL_K of the approximate index against exact search, measured when it is built
RECALL_K = 32  # the largest k that `tune` tries
CALIBRATION_QUERIES = 256


@dataclass
class KNNSettings:
    """The datastore's search settings (chosen on dev by :meth:`KNNDatastore.tune`)."""

    k: int = 8
    lam: float = 0.0
    temperature: float = 1.0
    whiten_dim: int = 64


class KNNDatastore:
    """Whitened, normalised keys with integer labels, searchable with faiss.

    Args:
        keys: raw (un-whitened) embeddings, ``(n, d)``.
        labels: label ids, ``(n,)``.
        num_labels: number of classes.
        settings: ``k``, ``λ``, temperature and whitening size.
        mean, projection: a fitted whitening (``None`` fits one on ``keys``).
        exact_max_keys: exact search up to this many keys, approximate above (default ``EXACT_MAX_KEYS``).
    """

    def __init__(self, keys: np.ndarray, labels: np.ndarray, num_labels: int, settings: KNNSettings | None = None,
                 mean: np.ndarray | None = None, projection: np.ndarray | None = None,
                 exact_max_keys: int | None = None):
        self.settings = settings or KNNSettings()
        self.num_labels = num_labels
        self.labels = np.asarray(labels, dtype=np.int64)
        if mean is None or projection is None:
            mean, projection = fit_whitening(np.asarray(keys, dtype=np.float32), self.settings.whiten_dim)
        # C order matters: safetensors writes the raw buffer, and a transposed view would come back scrambled.
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.projection = np.ascontiguousarray(projection, dtype=np.float32)
        self.keys = self.whiten(keys)
        self.index, self.index_info = build_index(self.keys, exact_max_keys)

    # -------------------------------------------------------------------------------------------------- building
    @classmethod
    def build(cls, embeddings: np.ndarray, labels: np.ndarray, num_labels: int, with_prototypes: bool = True,
              settings: KNNSettings | None = None, exact_max_keys: int | None = None) -> "KNNDatastore":
        """A datastore of ``embeddings`` plus class means and leave-one-out class means."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        if with_prototypes:
            proto_keys, proto_labels = class_prototypes(embeddings, labels, num_labels)
            embeddings = np.concatenate([embeddings, proto_keys])
            labels = np.concatenate([labels, proto_labels])
        return cls(embeddings, labels, num_labels, settings, exact_max_keys=exact_max_keys)

    def whiten(self, vectors: np.ndarray) -> np.ndarray:
        projected = (np.asarray(vectors, dtype=np.float32) - self.mean) @ self.projection
        return projected / np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)

    # ---------------------------------------------------------------------------------------------------- search
    def search(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared L2 distances and label ids of the ``k`` nearest keys."""
        k = min(k, len(self.labels))
        distances, indices = self.index.search(np.ascontiguousarray(self.whiten(embeddings)), k)
        missing = indices < 0  # an approximate index can return fewer than k neighbours: they get no vote
        if missing.any():
            distances, indices = np.where(missing, np.inf, distances), np.where(missing, 0, indices)
        return distances, self.labels[indices]

    def knn_probs(self, embeddings: np.ndarray, k: int | None = None, temperature: float | None = None) -> np.ndarray:
        k = k or self.settings.k
        distances, neighbour_labels = self.search(embeddings, k)
        return _vote(distances, neighbour_labels, self.num_labels, temperature or self.settings.temperature)

    def interpolate(self, model_probs: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """``(1 - λ)·p_model + λ·p_kNN`` with the stored settings."""
        lam = self.settings.lam
        if lam == 0:
            return model_probs
        return (1 - lam) * model_probs + lam * self.knn_probs(embeddings)

    # ------------------------------------------------------------------------------------------------------ tune
    def tune(self, embeddings: np.ndarray, model_probs: np.ndarray, labels: np.ndarray,
             max_k: int = 32) -> dict[str, Any]:
        """Grid-search ``k`` (1..max_k), ``λ`` and the temperature on dev; keep the best (accuracy, then log-likelihood).
        Returns the chosen settings with the dev accuracy without and with kNN."""
        labels = np.asarray(labels)
        max_k = min(max_k, len(self.labels))
        distances, neighbour_labels = self.search(embeddings, max_k)
        best = (_accuracy(model_probs, labels), _log_likelihood(model_probs, labels), 1, 0.0, 1.0)
        for temperature in TEMPERATURE_GRID:
            for k in range(1, max_k + 1):
                knn = _vote(distances[:, :k], neighbour_labels[:, :k], self.num_labels, temperature)
                for lam in LAMBDA_GRID[1:]:
                    mixed = (1 - lam) * model_probs + lam * knn
                    candidate = (_accuracy(mixed, labels), _log_likelihood(mixed, labels), k, lam, temperature)
                    if candidate[:2] > best[:2]:
                        best = candidate
        _, _, k, lam, temperature = best
        self.settings = KNNSettings(k=k, lam=lam, temperature=temperature, whiten_dim=self.settings.whiten_dim)
        return {"k": k, "lambda": lam, "temperature": temperature,
                "dev_accuracy_model": _accuracy(model_probs, labels), "dev_accuracy_knn": best[0]}

    # ------------------------------------------------------------------------------------------------- save/load
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(faiss.index_gpu_to_cpu(self.index) if _on_gpu(self.index) else self.index,
                          str(directory / INDEX_FILE))
        # The whitened keys too: they let a reader without faiss search exactly (the Hub's remote-code module).
        save_file({"labels": self.labels, "mean": self.mean, "projection": self.projection,
                   "keys": np.ascontiguousarray(self.keys, dtype=np.float32)}, str(directory / TENSORS_FILE))
        meta = {"format_version": FORMAT_VERSION, "num_labels": self.num_labels, "size": len(self.labels),
                "raw_dim": int(self.projection.shape[0]), "dim": int(self.projection.shape[1]), **asdict(self.settings),
                "index": self.index_info}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, num_labels: int | None = None, hidden_size: int | None = None) -> "KNNDatastore":
        """Load a saved datastore, checking it against the model it belongs to."""
        directory = Path(directory)
        meta = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(directory / TENSORS_FILE))
        index = faiss.read_index(str(directory / INDEX_FILE))
        _check_consistent(directory, meta, tensors, index, num_labels, hidden_size)
        store = cls.__new__(cls)
        store.settings = KNNSettings(**{key: meta[key] for key in ("k", "lam", "temperature", "whiten_dim")})
        store.num_labels = meta["num_labels"]
        store.labels, store.mean, store.projection = tensors["labels"], tensors["mean"], tensors["projection"]
        # Files written before the keys were stored: the flat index holds them.
        store.keys = tensors["keys"] if "keys" in tensors else index.reconstruct_n(0, index.ntotal)
        store.index_info = meta.get("index", {"type": "flat"})
        store.index = _maybe_to_gpu(index)
        return store

    @classmethod
    def load_if_present(cls, model_path: str | Path, num_labels: int | None = None, hidden_size: int | None = None,
                        **hub_options: Any) -> "KNNDatastore | None":
        """The datastore saved beside a model (a local folder or a Hub repo), or ``None`` when it has none."""
        directory = Path(model_path) / KNN_DIRNAME
        if Path(model_path).is_dir():
            return cls.load(directory, num_labels, hidden_size) if (directory / CONFIG_FILE).is_file() else None
        from .hub import download_knn_files  # Hub access only when the model came from the Hub

        local = download_knn_files(str(model_path), **hub_options)
        return cls.load(local, num_labels, hidden_size) if local is not None else None


# -------------------------------------------------------------------------------------------------------- helpers
def fit_whitening(keys: np.ndarray, max_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """BERT-whitening: ``x ↦ (x - μ) U Σ^-1/2`` keeping the top directions (at most the data's rank)."""
    mean = keys.mean(axis=0)
    centred = keys - mean
    if len(keys) > EXACT_MAX_KEYS:  # many keys: the covariance's eigenvectors, without an SVD of the whole matrix
        covariance = centred.T.astype(np.float64) @ centred.astype(np.float64)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        order = np.argsort(eigenvalues)[::-1]
        singular, vt = np.sqrt(np.maximum(eigenvalues[order], 0.0)), eigenvectors[:, order].T.astype(np.float32)
    else:
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    variance = singular ** 2 / max(len(keys) - 1, 1)
    keep = int(min(max_dim, np.sum(variance > 1e-6 * variance.max()))) if variance.max() > 0 else 1
    keep = max(keep, 1)
    projection = vt[:keep].T / np.sqrt(np.maximum(variance[:keep], 1e-12))
    return mean, projection


def class_prototypes(embeddings: np.ndarray, labels: np.ndarray, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Each class mean and every leave-one-out class mean (for classes with 2+ examples)."""
    keys, key_labels = [], []
    for label in range(num_labels):
        members = embeddings[labels == label]
        if len(members) == 0:
            continue
        total = members.sum(axis=0)
        keys.append(total / len(members))
        key_labels.append(label)
        if len(members) > 1:
            keys.extend((total - members) / (len(members) - 1))
            key_labels.extend([label] * len(members))
    return np.stack(keys).astype(np.float32), np.asarray(key_labels, dtype=np.int64)


def _vote(distances: np.ndarray, neighbour_labels: np.ndarray, num_labels: int, temperature: float) -> np.ndarray:
    logits = -distances / temperature
    top = logits.max(axis=1, keepdims=True)
    weights = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-300)
    probs = np.zeros((len(distances), num_labels), dtype=np.float64)
    np.add.at(probs, (np.arange(len(distances))[:, None], neighbour_labels), weights)
    return probs


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


def _log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def build_index(keys: np.ndarray, exact_max_keys: int | None = None, recall_target: float = RECALL_TARGET,
                recall_k: int = RECALL_K, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A faiss index over ``keys`` and a description of it: exact up to ``exact_max_keys`` keys, else IVF-Flat with
    ``nprobe`` calibrated to ``recall_target`` (recall@``recall_k`` against exact search on a sample of the keys)."""
    keys = np.ascontiguousarray(keys, dtype=np.float32)
    limit = EXACT_MAX_KEYS if exact_max_keys is None else exact_max_keys
    if len(keys) > max(limit, 2 * 39):  # IVF needs enough points to train its lists
        index, info = _ivf_index(keys, recall_target, recall_k, seed)
        if info["recall"] >= recall_target:
            return _maybe_to_gpu(index), info
        # Keys without cluster structure: the target recall needs most lists, so exact search is as fast.
        logger.info("approximate search would need over half of its %d lists for recall %.2f: using exact search",
                    info["nlist"], recall_target)
    index = faiss.IndexFlatL2(keys.shape[1])
    index.add(keys)
    return _maybe_to_gpu(index), {"type": "flat"}


def _ivf_index(keys: np.ndarray, recall_target: float, recall_k: int, seed: int) -> tuple[Any, dict[str, Any]]:
    count, dim = keys.shape
    nlist = int(max(min(round(math.sqrt(count)), count // 39), 2))  # faiss wants ≥ 39 training points per list
    rng = np.random.default_rng(seed)
    train = keys[np.sort(rng.choice(count, 64 * nlist, replace=False))] if count > 64 * nlist else keys
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
    index.cp.seed = seed
    index.train(train)
    index.add(keys)
    # Calibrate nprobe: sampled keys as queries, each one's own entry left out of both neighbour lists.
    sample = np.sort(rng.choice(count, min(CALIBRATION_QUERIES, count), replace=False))
    k = min(recall_k, count - 1)
    _, exact = faiss.knn(keys[sample], keys, k + 1)
    nprobe = 1
    while True:  # up to half the lists: beyond that, exact search costs no more
        index.nprobe = nprobe
        _, approximate = index.search(keys[sample], k + 1)
        recall = _recall(approximate, exact, sample, k)
        if recall >= recall_target or 2 * nprobe > nlist // 2:
            break
        nprobe *= 2
    return index, {"type": "ivf_flat", "nlist": nlist, "nprobe": nprobe, "recall": round(recall, 4), "recall_k": k,
                   "calibration_queries": len(sample)}


def _recall(approximate: np.ndarray, exact: np.ndarray, queries: np.ndarray, k: int) -> float:
    hits = []
    for own, found, truth in zip(queries, approximate, exact):
        truth = [i for i in truth if i != own][:k]
        hits.append(len(set(truth) & (set(found.tolist()) - {own})) / max(len(truth), 1))
    return float(np.mean(hits))


def _maybe_to_gpu(index: Any) -> Any:
    """Use faiss-gpu automatically when it is installed and a GPU is visible."""
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index


def _on_gpu(index: Any) -> bool:
    return hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex)


def _check_consistent(directory: Path, meta: dict[str, Any], tensors: dict[str, np.ndarray], index: Any,
                      num_labels: int | None, hidden_size: int | None) -> None:
    problems = []
    if meta.get("format_version") != FORMAT_VERSION:
        problems.append(f"format version {meta.get('format_version')} (expected {FORMAT_VERSION})")
    if num_labels is not None and meta["num_labels"] != num_labels:
        problems.append(f"{meta['num_labels']} labels, but the model has {num_labels}")
    if hidden_size is not None and tensors["projection"].shape[0] != hidden_size:
        problems.append(f"keys of dimension {tensors['projection'].shape[0]}, but the model's embeddings have {hidden_size}")
    if index.d != tensors["projection"].shape[1] or index.ntotal != len(tensors["labels"]):
        problems.append(f"an index of {index.ntotal}×{index.d} for {len(tensors['labels'])} labels of dimension "
                        f"{tensors['projection'].shape[1]}")
    if "keys" in tensors and tensors["keys"].shape != (index.ntotal, index.d):
        problems.append(f"keys of shape {tensors['keys'].shape} for an index of {index.ntotal}×{index.d}")
    if len(tensors["labels"]) and (tensors["labels"].min() < 0 or tensors["labels"].max() >= meta["num_labels"]):
        problems.append("label ids outside the label range")
    if problems:
        raise ValueError(f"the kNN datastore in {directory} does not match its model: " + "; ".join(problems))
