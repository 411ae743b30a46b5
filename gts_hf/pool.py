"""Big unlabelled pools: stream a JSON-lines file through a trained model, shard by shard, resumably.

:func:`label_pool` reads the pool one line at a time (the whole file is never in memory), labels ``shard_size`` texts
at a time and writes each finished shard atomically as ``shard-00000.safetensors`` (``probabilities`` float32
``[n, num_labels]``, ``label_ids`` int64, ``line_numbers`` int64: the source line of each text), then updates
``manifest.json``. Nothing accumulates across shards, so memory stays flat however large the pool.

Rerunning with the same source, model and shard size skips the finished shards (the manifest records each shard's
byte offset in the source, so labelling resumes by seeking, not by re-reading); a changed source or model is refused
with a clear error. :func:`iter_pool_results`, :func:`select_confident` and :func:`iter_confident_examples` read the
results back for self-training or teacher use. Only safetensors and JSON are written.

    >>> model, tokenizer = load_trained("my_model")
    >>> label_pool(model, tokenizer, "pool.jsonl", "pool_labels")           # resumable; safe to interrupt
    >>> confident = select_confident("pool_labels", threshold=0.9)           # line numbers + labels
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch
from safetensors.numpy import load_file, save
from tqdm.auto import tqdm

from .data import DataError, Example, find_spans, parse_example, parse_json_line
from .inference import predict

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "gts-hf-pool/1"
SHARD_PATTERN = "shard-{index:05d}.safetensors"
# predict() is called on chunks of this many batches, so the progress bar moves within a shard.
CHUNK_BATCHES = 32


class PoolMismatchError(ValueError):
    """The output folder holds shards of a different source, model or shard size."""


@dataclass
class PoolResult:
    """What :func:`label_pool` returns (totals cover every finished shard, earlier runs' included)."""

    output_dir: Path
    num_texts: int
    num_shards: int
    computed_shards: list[int]  # shards labelled by this call
    reused_shards: int  # finished shards found from an earlier run
    label_counts: dict[str, int]
    seconds: float  # this call, wall clock
    texts_per_second: float  # texts labelled by this call / this call's seconds
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)


class PoolShard(NamedTuple):
    line_numbers: np.ndarray  # int64 [n]: source line of each text
    probabilities: np.ndarray  # float32 [n, num_labels]
    label_ids: np.ndarray  # int64 [n]


@dataclass
class ConfidentLabels:
    """Pool texts whose top probability reached a threshold (see :func:`select_confident`)."""

    line_numbers: np.ndarray  # int64: source line numbers, ascending
    label_ids: np.ndarray  # int64
    confidences: np.ndarray  # float32: the top probability
    label_names: list[str]  # the model's labels (index with label_ids)

    @property
    def labels(self) -> list[str]:
        return [self.label_names[index] for index in self.label_ids]

    def __len__(self) -> int:
        return len(self.line_numbers)


# ------------------------------------------------------------------------------------------------------- labelling
def label_pool(model: Any, tokenizer: Any, source: str | os.PathLike, output_dir: str | os.PathLike,
               shard_size: int = 10_000, batch_size: int = 64, use_knn: bool = True, show_progress: bool = True,
               overwrite: bool = False, validate: bool = True) -> PoolResult:
    """Label an unlabelled JSON-lines pool (any record layout :mod:`gts_hf.data` reads; labels are ignored).

    Args:
        source: the pool, one JSON object per line.
        output_dir: shards and ``manifest.json`` go here. Rerunning into it resumes after the last finished shard.
        shard_size: texts per shard file (and per unit of resumption).
        use_knn: interpolate with the model's kNN datastore when it has one.
        overwrite: discard this folder's earlier shards instead of resuming (needed when the source or model changed).
        validate: read the rest of the pool once before labelling, so that a malformed line fails at once (not hours
            in) and the progress bar knows its total. Costs one parse of each line, no model work.
    """
    started = time.perf_counter()
    source, output_dir = Path(source), Path(output_dir)
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be positive, got {shard_size} and {batch_size}")
    _check_source(source)
    use_knn = bool(use_knn and getattr(model, "knn", None) is not None)
    identity = {"source": source_identity(source), "model": model_identity(model, tokenizer, use_knn),
                "shard_size": shard_size}
    manifest = _open_manifest(output_dir, identity, overwrite)
    finished = manifest["shards"]
    reused = len(finished)
    if manifest["complete"]:
        return _result(output_dir, manifest, [], reused, started, 0)

    offset, line = (finished[-1]["end_offset"], finished[-1]["last_line"]) if finished else (0, 0)
    done = manifest["totals"]["texts"]
    remaining = sum(1 for _ in _stream(source, offset, line, model.config)) if validate else None
    if validate and done + remaining == 0:
        raise DataError("no texts in the pool", source)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not finished:
        _write_manifest(output_dir, manifest)  # marks the folder as this pool's before the first shard

    labels = list(model.config.labels)
    computed: list[int] = []
    labelled = 0
    bar = tqdm(total=None if remaining is None else done + remaining, initial=done, unit="text",
               desc="Labelling pool", disable=not show_progress, dynamic_ncols=True)
    with bar, closing(_stream(source, offset, line, model.config)) as stream:
        while True:
            items = list(islice(stream, shard_size))
            if not items:
                break
            index = len(finished)
            line_numbers = np.fromiter((item[0] for item in items), dtype=np.int64, count=len(items))
            examples = [item[1] for item in items]
            end_offset = items[-1][2]
            del items
            bar.set_postfix(shard=index)
            probabilities = _label(model, tokenizer, examples, batch_size, use_knn, bar)
            label_ids = probabilities.argmax(axis=1).astype(np.int64)
            _write_shard(output_dir / SHARD_PATTERN.format(index=index),
                         {"probabilities": probabilities, "label_ids": label_ids, "line_numbers": line_numbers},
                         {"index": str(index), "labels": json.dumps(labels, ensure_ascii=False)})
            counts = np.bincount(label_ids, minlength=len(labels))
            finished.append({"index": index, "file": SHARD_PATTERN.format(index=index), "count": len(examples),
                             "first_line": int(line_numbers[0]), "last_line": int(line_numbers[-1]),
                             "end_offset": end_offset, "label_counts": counts.tolist()})
            _update_totals(manifest, labels)
            _write_manifest(output_dir, manifest)
            computed.append(index)
            labelled += len(examples)
            del examples, probabilities, label_ids, line_numbers
    if not finished:
        raise DataError("no texts in the pool", source)
    manifest["complete"] = True
    _update_totals(manifest, labels)
    _write_manifest(output_dir, manifest)
    return _result(output_dir, manifest, computed, reused, started, labelled)


def _label(model: Any, tokenizer: Any, examples: list[Example], batch_size: int, use_knn: bool,
           bar: Any) -> np.ndarray:
    """One shard's probabilities, by chunks of ``CHUNK_BATCHES`` batches (each sorted by length inside predict)."""
    chunk = batch_size * CHUNK_BATCHES
    parts = []
    for begin in range(0, len(examples), chunk):
        part = examples[begin:begin + chunk]
        parts.append(predict(model, tokenizer, part, batch_size=batch_size, use_knn=use_knn)
                     .probabilities.astype(np.float32, copy=False))
        bar.update(len(part))
    return np.ascontiguousarray(np.concatenate(parts))


def _result(output_dir: Path, manifest: dict[str, Any], computed: list[int], reused: int, started: float,
            labelled: int) -> PoolResult:
    seconds = time.perf_counter() - started
    totals = manifest["totals"]
    return PoolResult(output_dir=output_dir, num_texts=totals["texts"], num_shards=totals["shards"],
                      computed_shards=computed, reused_shards=reused, label_counts=dict(totals["label_counts"]),
                      seconds=round(seconds, 3), texts_per_second=round(labelled / max(seconds, 1e-9), 2),
                      manifest=manifest)


# ---------------------------------------------------------------------------------------------------------- reading
def stream_examples(source: str | os.PathLike) -> Iterator[Example]:
    """The pool's examples, one line at a time (labels ignored); errors name the file, line and field."""
    with closing(_stream(Path(source))) as stream:
        for _, example, _ in stream:
            yield example


def _stream(path: Path, offset: int = 0, line: int = 0,
            config: Any = None) -> Iterator[tuple[int, Example, int]]:
    """``(line_number, example, byte offset after the line)`` from ``offset`` on (``line`` lines lie before it).
    Blank lines are skipped; lines are split on ``\\n`` only (texts may hold U+2028), as :mod:`gts_hf.data` does.
    With a model's ``config``, every record is checked to be the input that model reads."""
    with path.open("rb") as handle:
        handle.seek(offset)
        for raw in handle:
            first = offset == 0
            line += 1
            offset += len(raw)
            if first and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"not UTF-8 text ({error.reason} at byte {error.start})", path, line) from None
            record = parse_json_line(text, path, line)
            if record is None:
                continue
            example = parse_example(record, path, line, require_label=False)
            if config is not None:
                _check_input(example, config, path, line)
            yield line, example, offset


def _check_input(example: Example, config: Any, path: Path, line: int) -> None:
    if (example.text_pair is not None) != config.is_pair_task:
        raise DataError("this model classifies sentence pairs: the record needs two texts (e.g. sentence1 and "
                        "sentence2)" if config.is_pair_task else "this model classifies single texts, but the record "
                        "holds a sentence pair", path, line)
    if config.is_coreference and find_spans(example.text) is None:
        raise DataError("this model resolves coreference: mark the noun [like this] and the pronoun <like this> (or "
                        "give CLUEWSC's target spans)", path, line, "text")


def _check_source(path: Path) -> None:
    if not path.is_file():
        raise DataError("file not found", path)
    if path.suffix.lower() in (".csv", ".tsv"):
        raise DataError("pools are streamed from JSON lines (one object per line); convert the CSV first", path)
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip(codecs.BOM_UTF8).lstrip()
    if not head:
        raise DataError("file is empty", path)
    if head.startswith(b"["):
        raise DataError("a JSON array cannot be streamed; write the pool as JSON lines (one object per line)", path)


# ----------------------------------------------------------------------------------------------------- identities
def source_identity(path: str | os.PathLike) -> dict[str, Any]:
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def model_identity(model: Any, tokenizer: Any, use_knn: bool) -> dict[str, Any]:
    """Name, labels and a fingerprint of everything that decides the probabilities: weights, reading settings,
    tokenizer size and, when used, the kNN datastore."""
    config = model.config
    digest = hashlib.sha256()
    settings = {"labels": list(config.labels), "label_options": list(config.label_options),
                "task_type": config.task_type, "query_prefix": config.query_prefix,
                "max_seq_length": config.max_seq_length, "pooling": config.pooling, "vocab": len(tokenizer)}
    if config.is_coreference:  # only there: the fingerprints of other models stay what they were
        settings["span_layer"] = config.span_layer
    digest.update(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode())
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy())
    if use_knn:
        knn = model.knn
        digest.update(json.dumps(asdict(knn.settings), sort_keys=True).encode())
        for array in (knn.keys, knn.labels, knn.mean, knn.projection):
            digest.update(np.ascontiguousarray(array))
    return {"name": str(getattr(model, "name_or_path", "") or ""), "labels": list(config.labels),
            "use_knn": use_knn, "fingerprint": digest.hexdigest()}


# ------------------------------------------------------------------------------------------------------- manifest
def read_manifest(output_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(output_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{output_dir}: no {MANIFEST_FILE}; not a labelled pool (gts-hf label-pool)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: not a gts-hf pool manifest (format {manifest.get('format')!r})")
    return manifest


def _open_manifest(output_dir: Path, identity: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """The folder's manifest when it matches ``identity`` (its missing shards trimmed), else a fresh one."""
    if output_dir.is_file():
        raise FileExistsError(f"{output_dir}: the output directory is a file")
    if (output_dir / MANIFEST_FILE).is_file() and not overwrite:
        manifest = read_manifest(output_dir)
        _check_identity(output_dir, manifest, identity)
        _trim_missing(output_dir, manifest)
        return manifest
    if output_dir.is_dir():  # starting over: drop earlier shards so none can be mistaken for this run's
        for stale in output_dir.glob("shard-*.safetensors"):
            stale.unlink()
        (output_dir / MANIFEST_FILE).unlink(missing_ok=True)
    now = _now()
    return {"format": MANIFEST_FORMAT, **identity, "created": now, "updated": now, "complete": False,
            "shards": [], "totals": {"texts": 0, "shards": 0, "label_counts": {}}}


def _check_identity(output_dir: Path, manifest: dict[str, Any], identity: dict[str, Any]) -> None:
    advice = f"; use a new output directory, or overwrite=True (--overwrite) to discard the shards in {output_dir}"
    old, new = manifest["source"], identity["source"]
    if old != new:
        raise PoolMismatchError(
            f"{output_dir} holds labels of a different source: {old['path']} ({old['size']} bytes, modified "
            f"{_when(old['mtime_ns'])}), now {new['path']} ({new['size']} bytes, modified {_when(new['mtime_ns'])})"
            + advice)
    old, new = manifest["model"], identity["model"]
    if old["labels"] != new["labels"]:
        raise PoolMismatchError(f"{output_dir} was labelled by a model with labels {old['labels']} "
                                f"({old['name']}), not {new['labels']} ({new['name']})" + advice)
    if old["use_knn"] != new["use_knn"]:
        def knn(used: bool) -> str:
            return "with the kNN datastore" if used else "without the kNN datastore"

        raise PoolMismatchError(f"{output_dir} was labelled {knn(old['use_knn'])}; this run is {knn(new['use_knn'])}"
                                + advice)
    if old["fingerprint"] != new["fingerprint"]:
        raise PoolMismatchError(f"{output_dir} was labelled by a different model ({old['name']}; now {new['name']}: "
                                "the weights, settings or kNN datastore differ)" + advice)
    if manifest["shard_size"] != identity["shard_size"]:
        raise PoolMismatchError(f"{output_dir} was labelled with shard_size {manifest['shard_size']}, not "
                                f"{identity['shard_size']}; rerun with --shard-size {manifest['shard_size']} to "
                                "resume" + advice)


def _trim_missing(output_dir: Path, manifest: dict[str, Any]) -> None:
    """Keep the finished shards up to the first whose file is gone (shards are a prefix of the pool)."""
    shards = manifest["shards"]
    for position, shard in enumerate(shards):
        if not (output_dir / shard["file"]).is_file():
            logger.warning("%s: %s is missing; labelling again from shard %d", output_dir, shard["file"], position)
            del shards[position:]
            manifest["complete"] = False
            _update_totals(manifest, manifest["model"]["labels"])
            return


def _update_totals(manifest: dict[str, Any], labels: list[str]) -> None:
    counts = np.zeros(len(labels), dtype=np.int64)
    for shard in manifest["shards"]:
        counts += np.asarray(shard["label_counts"], dtype=np.int64)
    manifest["totals"] = {"texts": sum(shard["count"] for shard in manifest["shards"]),
                          "shards": len(manifest["shards"]),
                          "label_counts": {label: int(count) for label, count in zip(labels, counts)}}
    manifest["updated"] = _now()


def _write_manifest(output_dir: Path, manifest: dict[str, Any]) -> None:
    _write_atomic(output_dir / MANIFEST_FILE,
                  (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def _write_shard(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    _write_atomic(path, save(tensors, metadata=metadata))


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, flush it to disk, then rename over ``path``: readers see old or new, never half."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _when(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9, timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------------- results
def iter_pool_results(output_dir: str | os.PathLike) -> Iterator[PoolShard]:
    """``(line_numbers, probabilities, label_ids)`` for each finished shard, in pool order, one shard in memory."""
    output_dir = Path(output_dir)
    manifest = read_manifest(output_dir)
    if not manifest["complete"]:
        logger.warning("%s: the pool is not fully labelled yet (%d texts in %d shards so far)", output_dir,
                       manifest["totals"]["texts"], manifest["totals"]["shards"])
    num_labels = len(manifest["model"]["labels"])
    for shard in manifest["shards"]:
        tensors = load_file(str(output_dir / shard["file"]))
        result = PoolShard(tensors["line_numbers"], tensors["probabilities"], tensors["label_ids"])
        if result.probabilities.shape != (shard["count"], num_labels) or len(result.line_numbers) != shard["count"] \
                or len(result.label_ids) != shard["count"]:
            raise ValueError(f"{output_dir / shard['file']}: shapes do not match the manifest ({shard['count']} texts, "
                             f"{num_labels} labels); label the pool again with overwrite=True")
        yield result


def select_confident(output_dir: str | os.PathLike, threshold: float) -> ConfidentLabels:
    """The texts whose top probability is at least ``threshold``: line numbers, label ids and confidences."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    lines, ids, confidences = [], [], []
    for shard in iter_pool_results(output_dir):
        top = shard.probabilities[np.arange(len(shard.label_ids)), shard.label_ids]
        keep = top >= threshold
        lines.append(shard.line_numbers[keep])
        ids.append(shard.label_ids[keep])
        confidences.append(top[keep])
    manifest = read_manifest(output_dir)

    def joined(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)

    return ConfidentLabels(joined(lines, np.int64), joined(ids, np.int64), joined(confidences, np.float32),
                           list(manifest["model"]["labels"]))


def iter_confident_examples(output_dir: str | os.PathLike, threshold: float) -> Iterator[Example]:
    """The confident texts of :func:`select_confident` read back from the source (streamed), pseudo-labelled."""
    manifest = read_manifest(output_dir)
    source = Path(manifest["source"]["path"])
    if not source.is_file() or source_identity(source) != manifest["source"]:
        raise PoolMismatchError(f"{source} changed (or is gone) since {output_dir} was labelled; its line numbers no "
                                "longer point at the labelled texts")
    confident = select_confident(output_dir, threshold)
    wanted = dict(zip(confident.line_numbers.tolist(), confident.labels))
    if not wanted:
        return
    last = max(wanted)
    with closing(_stream(source)) as stream:
        for line, example, _ in stream:
            if line in wanted:
                example.label = wanted[line]
                yield example
            if line >= last:
                break
