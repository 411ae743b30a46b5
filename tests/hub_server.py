"""A loopback Hugging Face Hub for tests.

`LoopbackHub` serves, on 127.0.0.1 and from a background thread, the subset of the Hub HTTP API that the
real `huggingface_hub` client (2.x) uses to create repos, push commits (regular files, Git LFS *and* Xet
uploads), list trees/refs/commits and download files.  Repos live in memory; file contents are stored
content-addressed in a temporary directory.  Server-side inspection helpers (`list_files`, `file_bytes`,
`commits`, `storage_of`, `upload_stats`, ...) let tests assert on what actually reached the server.

Only the standard library is needed, except for the Xet path: uploads then go through `hf_xet` with a
`local://<dir>` CAS URL (hf_xet writes xorbs and shards into that directory itself), and the server uses
`hf_xet` to read the committed files back (mapping sha256 -> Xet hash by parsing the shard files).

Downloads of LFS/Xet files answer `/resolve` with a 302 to a second listener (the "CDN", a different
origin on 127.0.0.1) carrying `X-Linked-Etag`/`X-Linked-Size`, and, for Xet files, `X-Xet-Hash` and a
`Link: <...xet-read-token...>; rel="xet-auth"` header, like huggingface.co does.
"""

from __future__ import annotations

import base64
import codecs
import fnmatch
import hashlib
import hmac
import itertools
import json
import re
import secrets
import shutil
import struct
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_USER = "loopback-user"
DEFAULT_TOKEN = "hf_loopbackTestTokenDoNotUseAnywhereElse"
DEFAULT_BRANCH = "main"

# URL segment ("models") -> repo type ("model") and repo type -> resolve/git URL prefix.
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}

REGULAR, LFS, XET = "regular", "lfs", "xet"  # how a file's content reached the server
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # files above this size must go through LFS/Xet
XET_TOKEN_TTL_S = 3600

_LFS_EXTENSIONS = (
    "7z arrow bin bz2 ckpt ftz gz h5 joblib lfs.* mlmodel model msgpack npy npz onnx ot parquet pb pickle pkl pt pth"
    " rar safetensors tar.* tar tflite tgz wasm xz zip zst"
).split()
DEFAULT_GITATTRIBUTES = "".join(
    f"*.{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in _LFS_EXTENSIONS
) + "saved_model/**/* filter=lfs diff=lfs merge=lfs -text\n*tfevents* filter=lfs diff=lfs merge=lfs -text\n"

RepoKey = tuple[str, str]  # (repo_type, repo_id)


# --------------------------------------------------------------------------------------------- helpers


class HubError(Exception):
    """An HTTP error answered as JSON, with the `X-Error-Code` header the client maps to its exceptions."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: Mapping[str, str] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers)


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob holding `data`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git LFS pointer file committed in place of a large file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def utc_now_iso() -> str:
    """Current time in the Hub's `2024-01-01T00:00:00.000Z` format."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def looks_binary(sample: bytes) -> bool:
    """Whether a file sample is binary (NUL byte or invalid UTF-8), as the Hub decides for preupload."""
    if b"\0" in sample:
        return True
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)  # a cut multi-byte char is fine
    except UnicodeDecodeError:
        return True
    return False


def lfs_patterns(gitattributes: str) -> list[str]:
    """The path patterns a `.gitattributes` file routes through `filter=lfs`."""
    return [line.split()[0] for line in gitattributes.splitlines() if "filter=lfs" in line.split()[1:]]


def matches_any(path: str, patterns: list[str]) -> bool:
    """Gitattributes-like matching: patterns without a slash match the basename."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path if "/" in p else name, p) for p in patterns)


def parse_byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Parse a single `Range: bytes=a-b` header into a half-open (start, end) range; None means whole file."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size
    else:
        start, end = int(first), size if last == "" else min(int(last) + 1, size)
    if start >= end:
        raise HubError(416, f"Range not satisfiable for size {size}", headers={"Content-Range": f"bytes */{size}"})
    return start, end


# --------------------------------------------------------------------------------------------- storage


class BlobStore:
    """Content-addressed (sha256) file storage in a directory."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.path(sha256)
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(data)
            tmp.replace(path)
        return sha256

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()


@dataclass(frozen=True)
class FileEntry:
    """A file in a commit's tree."""

    path: str
    size: int
    sha256: str
    git_oid: str  # git blob id (of the LFS pointer for large files)
    storage: str  # REGULAR, LFS or XET: how the content was uploaded
    xet_hash: str | None = None

    @property
    def is_large(self) -> bool:
        """Stored out of git (LFS or Xet)."""
        return self.storage != REGULAR

    @property
    def etag(self) -> str:
        return self.sha256 if self.is_large else self.git_oid

    def lfs_json(self) -> dict[str, Any] | None:
        if not self.is_large:
            return None
        return {"oid": self.sha256, "size": self.size, "pointerSize": len(lfs_pointer(self.sha256, self.size))}

    def tree_json(self) -> dict[str, Any]:
        info: dict[str, Any] = {"type": "file", "oid": self.git_oid, "size": self.size, "path": self.path}
        if self.is_large:
            info["lfs"] = self.lfs_json()
        if self.xet_hash is not None:
            info["xetHash"] = self.xet_hash
        return info


def directory_json(path: str) -> dict[str, Any]:
    """Tree-listing entry of a directory (its oid is a stable fake)."""
    return {"type": "directory", "oid": hashlib.sha1(f"tree {path}".encode()).hexdigest(), "size": 0, "path": path}


@dataclass(frozen=True)
class Commit:
    """A commit: full tree snapshot plus the paths it added / modified / deleted relative to its parent."""

    oid: str
    parent: str | None
    summary: str
    description: str
    date: str
    tree: Mapping[str, FileEntry]
    changes: Mapping[str, str]

    @property
    def message(self) -> str:
        return f"{self.summary}\n\n{self.description}" if self.description else self.summary

    def to_json(self, author: str) -> dict[str, Any]:
        return {
            "id": self.oid,
            "title": self.summary,
            "message": self.description,
            "authors": [{"user": author}],
            "date": self.date,
        }


@dataclass
class UploadStats:
    """What a repo received: content bytes per path and HTTP requests per route."""

    regular_bytes: int = 0  # decoded content of regular files in commits
    lfs_bytes: int = 0  # bodies of LFS PUTs
    xet_bytes: int = 0  # new xorb (chunk data) files written to the repo's Xet CAS
    xet_shard_bytes: int = 0  # new Xet shard (metadata) files
    requests: Counter[str] = field(default_factory=Counter)  # route name -> count

    @property
    def uploaded_bytes(self) -> int:
        """File content that had to be transferred (regular + LFS + Xet chunk data, no Xet metadata)."""
        return self.regular_bytes + self.lfs_bytes + self.xet_bytes

    def copy(self) -> "UploadStats":
        return replace(self, requests=Counter(self.requests))


@dataclass
class Repo:
    """A repository: commits, refs and the large objects uploaded to it."""

    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    large_objects: dict[str, str] = field(default_factory=dict)  # sha256 -> LFS | XET
    stats: UploadStats = field(default_factory=UploadStats)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. space sdk

    @property
    def url_path(self) -> str:
        return URL_PREFIXES[self.repo_type] + self.repo_id

    def resolve_oid(self, revision: str) -> str:
        """Branch, tag or full commit sha -> commit sha."""
        for prefix, refs in (("refs/heads/", self.branches), ("refs/tags/", self.tags)):
            if revision.startswith(prefix) and revision[len(prefix) :] in refs:
                return refs[revision[len(prefix) :]]
        oid = self.branches.get(revision) or self.tags.get(revision)
        if oid is None and revision in self.commits:
            oid = revision
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return oid

    def resolve(self, revision: str) -> Commit:
        return self.commits[self.resolve_oid(revision)]

    def history(self, revision: str) -> Iterator[Commit]:
        """Commits reachable from `revision`, newest first."""
        oid: str | None = self.resolve_oid(revision)
        while oid is not None:
            commit = self.commits[oid]
            yield commit
            oid = commit.parent


# --------------------------------------------------------------------------------------------- Xet


_SHARD_HEADER = struct.Struct("<32sQQ")  # tag, version, footer size
_SHARD_FOOTER_START = struct.Struct("<QQ")  # version, file-info section offset
_FILE_HEADER = struct.Struct("<32sII8x")  # file hash, flags, number of segments
_SEGMENT = struct.Struct("<32sIIII")  # xorb hash, flags, unpacked bytes, chunk start, chunk end
_SHARD_ENTRY_SIZE = 48
_FLAG_VERIFICATION = 1 << 31
_FLAG_METADATA_EXT = 1 << 30
_BOOKEND = b"\xff" * 32


@dataclass(frozen=True)
class XetFile:
    xet_hash: str
    sha256: str | None
    size: int


def merkle_hex(raw: bytes) -> str:
    """Hex form of a Xet hash as stored in shards (four little-endian u64 words)."""
    return "".join(f"{word:016x}" for word in struct.unpack("<4Q", raw))


def parse_shard(data: bytes) -> Iterator[XetFile]:
    """The files described in the file-info section of a Xet MDB shard (format of hf_xet 1.x)."""
    _tag, _version, footer_size = _SHARD_HEADER.unpack_from(data, 0)
    _footer_version, pos = _SHARD_FOOTER_START.unpack_from(data, len(data) - footer_size)
    while True:
        raw_hash, flags, n_segments = _FILE_HEADER.unpack_from(data, pos)
        if raw_hash == _BOOKEND:
            return
        pos += _SHARD_ENTRY_SIZE
        size = sum(_SEGMENT.unpack_from(data, pos + i * _SHARD_ENTRY_SIZE)[2] for i in range(n_segments))
        pos += n_segments * _SHARD_ENTRY_SIZE
        if flags & _FLAG_VERIFICATION:
            pos += n_segments * _SHARD_ENTRY_SIZE
        sha256 = None
        if flags & _FLAG_METADATA_EXT:
            sha256 = merkle_hex(data[pos : pos + 32])
            pos += _SHARD_ENTRY_SIZE
        yield XetFile(merkle_hex(raw_hash), sha256, size)


class XetCas:
    """One repo's Xet content store: a directory hf_xet writes to through a `local://` CAS URL."""

    _session: Any = None
    _session_lock = threading.Lock()

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, XetFile] = {}  # sha256 -> file
        self._seen: set[Path] = set()  # xorbs and shards already scanned
        self._unreported: Counter[str] = Counter()  # bytes of scanned objects not yet reported, by kind

    @property
    def url(self) -> str:
        return "local://" + self.root.resolve().as_posix()

    def _storage_files(self, kind: str) -> list[Path]:
        """Xorb ("xorbs") or shard ("shards") files of the CAS storage, not of hf_xet's client caches."""
        return sorted(p for p in self.root.rglob("*") if p.is_file() and p.parent.name == kind and _is_cas_object(p))

    def scan(self) -> None:
        """Index the shards and measure the xorbs that hf_xet wrote since the last scan."""
        for kind in ("xorbs", "shards"):
            for path in self._storage_files(kind):
                if path not in self._seen:
                    self._seen.add(path)
                    self._unreported[kind] += path.stat().st_size
                    if kind == "shards":
                        self._index_shard(path)

    def take_new_bytes(self) -> tuple[int, int]:
        """Bytes of xorbs and of shards written since the previous call."""
        self.scan()
        new_bytes = self._unreported["xorbs"], self._unreported["shards"]
        self._unreported.clear()
        return new_bytes

    def _index_shard(self, path: Path) -> None:
        for xet_file in parse_shard(path.read_bytes()):
            if xet_file.sha256 is not None:
                self._files[xet_file.sha256] = xet_file

    def find(self, sha256: str) -> XetFile | None:
        """The Xet file whose content has this sha256, if some upload registered it."""
        self.scan()
        return self._files.get(sha256)

    def read(self, xet_file: XetFile) -> bytes:
        """Reconstruct a file's bytes from the CAS with hf_xet."""
        import hf_xet

        with tempfile.TemporaryDirectory(prefix="loopback-xet-read-") as tmp:
            dest = Path(tmp) / "file"
            with self._xet_session().new_file_download_group(
                endpoint=self.url, token="loopback", token_expiry_unix_secs=int(time.time()) + XET_TOKEN_TTL_S
            ) as group:
                group.start_download_file(hf_xet.XetFileInfo(xet_file.xet_hash, xet_file.size), str(dest))
            return dest.read_bytes()

    @classmethod
    def _xet_session(cls) -> Any:
        with cls._session_lock:
            if cls._session is None:
                import hf_xet

                cls._session = hf_xet.XetSession()
            return cls._session


def _is_cas_object(path: Path) -> bool:
    """Xorb (`[prefix.]<64 hex>`) or shard (`<64 hex>.mdb`) file name."""
    return re.fullmatch(r"(?:[\w-]+\.)?[0-9a-f]{64}(?:\.mdb)?", path.name) is not None


# --------------------------------------------------------------------------------------------- HTTP plumbing


@dataclass
class Request:
    method: str
    path: str  # raw (still URL-quoted) path
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes

    @property
    def token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode(), keep_blank_values=True)

    def flag(self, name: str) -> bool:
        return (self.query.get(name) or ["false"])[0].lower() in ("1", "true")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: Any, status: int = 200, headers: Mapping[str, str] = ()) -> "Response":
        return cls(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **dict(headers)})

    @classmethod
    def error(cls, err: HubError) -> "Response":
        headers = {"X-Error-Message": err.message.splitlines()[0][:200], **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        return cls.json({"error": err.message}, err.status, headers)


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    status: int
    route: str | None


_REPO = r"(?P<ns>[\w.-]+)/(?P<name>[\w.-]+?)"
_API_REPO = r"/api/(?P<t>models|datasets|spaces)/" + _REPO
_GIT_REPO = r"/(?:(?P<git_t>datasets|spaces)/)?" + _REPO
_REV = r"(?P<rev>[^/]+)"

# (methods, path regex, handler name); the first match wins.
ROUTES: list[tuple[frozenset[str], re.Pattern[str], str]] = [
    (frozenset(methods.split()), re.compile(f"^{pattern}$"), handler)
    for methods, pattern, handler in [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", r"/api/(?P<t>models|datasets|spaces)", "list_repos"),
        ("GET", _API_REPO + f"(?:/revision/{_REV})?", "repo_info"),
        ("PUT", _API_REPO + r"/settings", "repo_settings"),
        ("GET", _API_REPO + f"/tree/{_REV}(?:/(?P<path>.*))?", "tree"),
        ("POST", _API_REPO + f"/paths-info/{_REV}", "paths_info"),
        ("GET", _API_REPO + r"/refs", "refs"),
        ("GET", _API_REPO + f"/commits/{_REV}", "list_commits"),
        ("POST", _API_REPO + r"/branch/(?P<branch>[^/]+)", "create_branch"),
        ("DELETE", _API_REPO + r"/branch/(?P<branch>[^/]+)", "delete_branch"),
        ("POST", _API_REPO + f"/tag/{_REV}", "create_tag"),
        ("DELETE", _API_REPO + r"/tag/(?P<tag>[^/]+)", "delete_tag"),
        ("POST", _API_REPO + f"/preupload/{_REV}", "preupload"),
        ("POST", _API_REPO + f"/commit/{_REV}", "commit"),
        ("GET", _API_REPO + f"/xet-(?P<access>read|write)-token/{_REV}", "xet_token"),
        ("POST", _GIT_REPO + r"\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/_lfs/(?P<t>models|datasets|spaces)/" + _REPO + r"/(?P<oid>[0-9a-f]{64})", "lfs_put"),
        ("POST", r"/_lfs/(?P<t>models|datasets|spaces)/" + _REPO + r"/(?P<oid>[0-9a-f]{64})/verify", "lfs_verify"),
        ("GET HEAD", _GIT_REPO + f"/resolve/{_REV}/(?P<path>.+)", "resolve"),
        ("GET HEAD", r"/_cdn/(?P<sha256>[0-9a-f]{64})", "cdn"),
    ]
]


# --------------------------------------------------------------------------------------------- the Hub


class HubApp:
    """The Hub logic: request -> response, independent of the HTTP server.  All requests are serialized."""

    def __init__(self, root: Path, *, user: str, token: str):
        self.root = root
        self.user = user
        self.token = token
        self.endpoint = ""  # set by LoopbackHub once the ports are known
        self.cdn_endpoint = ""
        self.blobs = BlobStore(root / "blobs")
        self.repos: dict[RepoKey, Repo] = {}
        self.request_log: list[RequestRecord] = []
        self._xet: dict[RepoKey, XetCas] = {}
        self._lock = threading.RLock()
        self._secret = secrets.token_bytes(16)
        self._commit_counter = itertools.count()

    # ---------------------------------------------------------------- dispatch

    def dispatch(self, request: Request) -> Response:
        with self._lock:
            route, groups = self._match(request)
            try:
                if route is None:
                    raise HubError(404, f"No route for {request.method} {request.path}")
                self._count(route, groups)
                response = getattr(self, f"_h_{route}")(request, **groups)
            except HubError as err:
                response = Response.error(err)
            except Exception:  # noqa: BLE001 - reported to the client as a 500, like a real server
                response = Response.json({"error": traceback.format_exc()}, 500)
            self.request_log.append(RequestRecord(request.method, request.path, response.status, route))
            return response

    @staticmethod
    def _match(request: Request) -> tuple[str | None, dict[str, str]]:
        for methods, pattern, route in ROUTES:
            match = pattern.match(request.path)
            if match and request.method in methods:
                return route, {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
        return None, {}

    def _count(self, route: str, groups: Mapping[str, str]) -> None:
        if "ns" in groups:
            repo = self.repos.get(self._key_from(groups))
            if repo is not None:
                repo.stats.requests[route] += 1

    @staticmethod
    def _key_from(groups: Mapping[str, str]) -> RepoKey:
        """Repo key from route groups: `t` (API segment) or `git_t` (URL prefix), plus namespace and name."""
        api_type = groups.get("t") or groups.get("git_t") or "models"
        return API_TYPES[api_type], f"{groups['ns']}/{groups['name']}"

    # ---------------------------------------------------------------- access control

    def _authenticated(self, request: Request) -> bool:
        return request.token is not None and hmac.compare_digest(request.token, self.token)

    def _require_auth(self, request: Request) -> None:
        if request.token is None:
            raise HubError(401, "Authorization header is required")
        if not self._authenticated(request):
            raise HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, request: Request, groups: Mapping[str, str], *, write: bool = False) -> Repo:
        """The repo named by the route groups, checking read (private repos) or write access."""
        return self._repo_by_key(request, self._key_from(groups), write=write)

    def _repo_by_key(self, request: Request, key: RepoKey, *, write: bool = False) -> Repo:
        if write:
            self._require_auth(request)
        repo = self.repos.get(key)
        if repo is None or (repo.private and not self._authenticated(request)):
            status = 404 if self._authenticated(request) else 401
            raise HubError(status, f"Repository Not Found for {key[0]} '{key[1]}'", "RepoNotFound")
        return repo

    # ---------------------------------------------------------------- account & repos

    def _h_whoami(self, request: Request) -> Response:
        self._require_auth(request)
        return Response.json(
            {
                "type": "user",
                "id": hashlib.sha1(self.user.encode()).hexdigest()[:24],
                "name": self.user,
                "fullname": self.user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "loopback", "role": "write"}},
            }
        )

    def _h_create_repo(self, request: Request) -> Response:
        self._require_auth(request)
        payload = request.json()
        repo_type = payload.get("type") or "model"
        name = payload.get("name") or ""
        namespace = payload.get("organization") or self.user
        if repo_type not in URL_PREFIXES or not re.fullmatch(r"[\w.-]+", name):
            raise HubError(400, f"Invalid repo type or name: {repo_type!r} {name!r}")
        key = (repo_type, f"{namespace}/{name}")
        url = f"{self.endpoint}/{URL_PREFIXES[repo_type]}{key[1]}"
        if key in self.repos:
            return Response.json({"error": "You already created this repo", "url": url}, 409)
        private = payload.get("visibility", "private" if payload.get("private") else "public") != "public"
        repo = Repo(repo_type, key[1], private, utc_now_iso(), extra={"sdk": payload.get("sdk")})
        initial = {".gitattributes": self._regular_entry(".gitattributes", DEFAULT_GITATTRIBUTES.encode())}
        self._add_commit(repo, DEFAULT_BRANCH, None, initial, "initial commit", "")
        self.repos[key] = repo
        return Response.json({"url": url, "name": key[1], "id": key[1]})

    def _h_delete_repo(self, request: Request) -> Response:
        payload = request.json()
        namespace = payload.get("organization") or self.user
        key = (payload.get("type") or "model", f"{namespace}/{payload.get('name', '')}")
        self._repo_by_key(request, key, write=True)
        del self.repos[key]
        if key in self._xet:  # the CAS stays (content-addressed, like the Hub's): only settle its accounting
            self._xet[key].take_new_bytes()
        return Response()

    def _h_repo_settings(self, request: Request, **groups: str) -> Response:
        repo = self._repo(request, groups, write=True)
        payload = request.json()
        if "visibility" in payload:
            repo.private = payload["visibility"] != "public"
        elif "private" in payload:
            repo.private = bool(payload["private"])
        return Response.json({})

    def _h_validate_yaml(self, request: Request) -> Response:
        content = str(request.json().get("content", ""))
        errors = []
        if content.startswith("---") and "\n---" not in content[3:]:
            errors.append({"message": "YAML front matter is not closed by '---'"})
        return Response.json({"errors": errors, "warnings": []}, 400 if errors else 200)

    def _h_list_repos(self, request: Request, t: str) -> Response:
        author = (request.query.get("author") or [None])[0]
        search = (request.query.get("search") or [""])[0]
        visible = [
            repo
            for (repo_type, repo_id), repo in sorted(self.repos.items())
            if repo_type == API_TYPES[t]
            and (not repo.private or self._authenticated(request))
            and (author is None or repo_id.split("/")[0] == author)
            and search in repo_id
        ]
        return Response.json([self._repo_summary(repo) for repo in visible])

    def _repo_summary(self, repo: Repo, commit: Commit | None = None) -> dict[str, Any]:
        commit = commit or repo.resolve(DEFAULT_BRANCH)
        return {
            "id": repo.repo_id,
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "downloads": 0,
            "likes": 0,
            "tags": [],
        }

    def _h_repo_info(self, request: Request, rev: str = DEFAULT_BRANCH, **groups: str) -> Response:
        repo = self._repo(request, groups)
        commit = repo.resolve(rev)
        with_blobs = request.flag("blobs")
        info = self._repo_summary(repo, commit)
        info["siblings"] = [self._sibling_json(entry, with_blobs) for entry in self._sorted(commit.tree)]
        info["usedStorage"] = sum(entry.size for entry in commit.tree.values())
        if repo.repo_type == "space":
            info.update(sdk=repo.extra.get("sdk"), runtime=None)
        return Response.json(info)

    @staticmethod
    def _sibling_json(entry: FileEntry, with_blobs: bool) -> dict[str, Any]:
        sibling: dict[str, Any] = {"rfilename": entry.path}
        if with_blobs:
            sibling.update(size=entry.size, blobId=entry.git_oid)
            if entry.is_large:
                lfs = entry.lfs_json() or {}
                sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": lfs["pointerSize"]}
        return sibling

    @staticmethod
    def _sorted(tree: Mapping[str, FileEntry]) -> list[FileEntry]:
        return [tree[path] for path in sorted(tree)]

    # ---------------------------------------------------------------- trees, refs, commits

    def _h_tree(self, request: Request, rev: str, path: str = "", **groups: str) -> Response:
        commit = self._repo(request, groups).resolve(rev)
        path = path.strip("/")
        if path and path in commit.tree:
            raise HubError(400, f"'{path}' is a file, not a directory")
        entries = self._list_tree(commit.tree, path, recursive=request.flag("recursive"))
        if path and not entries:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        return Response.json(entries)

    @staticmethod
    def _list_tree(tree: Mapping[str, FileEntry], prefix: str, *, recursive: bool) -> list[dict[str, Any]]:
        """Files and directories below `prefix` (direct children only unless `recursive`)."""
        base = f"{prefix}/" if prefix else ""
        files: list[dict[str, Any]] = []
        directories: set[str] = set()
        for path in sorted(p for p in tree if p.startswith(base)):
            parts = path[len(base) :].split("/")
            for depth in range(1, len(parts)):
                directories.add(base + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                files.append(tree[path].tree_json())
        if not recursive:
            directories = {d for d in directories if "/" not in d[len(base) :]}
        return [directory_json(d) for d in sorted(directories)] + files

    def _h_paths_info(self, request: Request, rev: str, **groups: str) -> Response:
        commit = self._repo(request, groups).resolve(rev)
        infos = []
        for path in (p.strip("/") for p in request.form().get("paths", [])):
            if path in commit.tree:
                infos.append(commit.tree[path].tree_json())
            elif any(p.startswith(f"{path}/") for p in commit.tree):
                infos.append(directory_json(path))
        return Response.json(infos)

    def _h_refs(self, request: Request, **groups: str) -> Response:
        repo = self._repo(request, groups)

        def refs(kind: str, names: Mapping[str, str]) -> list[dict[str, str]]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": oid} for n, oid in sorted(names.items())]

        branches, tags = refs("heads", repo.branches), refs("tags", repo.tags)
        return Response.json({"branches": branches, "tags": tags, "converts": [], "pullRequests": []})

    def _h_list_commits(self, request: Request, rev: str, **groups: str) -> Response:
        repo = self._repo(request, groups)
        return Response.json([commit.to_json(self.user) for commit in repo.history(rev)])

    def _h_create_branch(self, request: Request, branch: str, **groups: str) -> Response:
        repo = self._repo(request, groups, write=True)
        if branch in repo.branches:
            raise HubError(409, f"Branch '{branch}' already exists")
        repo.branches[branch] = repo.resolve_oid(request.json().get("startingPoint") or DEFAULT_BRANCH)
        return Response.json({})

    def _h_delete_branch(self, request: Request, branch: str, **groups: str) -> Response:
        repo = self._repo(request, groups, write=True)
        if repo.branches.pop(branch, None) is None:
            raise HubError(404, f"Branch '{branch}' not found", "RevisionNotFound")
        return Response.json({})

    def _h_create_tag(self, request: Request, rev: str, **groups: str) -> Response:
        repo = self._repo(request, groups, write=True)
        tag = str(request.json().get("tag") or "")
        if not tag or tag in repo.tags:
            raise HubError(409, f"Tag '{tag}' already exists or is empty")
        repo.tags[tag] = repo.resolve_oid(rev)
        return Response.json({})

    def _h_delete_tag(self, request: Request, tag: str, **groups: str) -> Response:
        repo = self._repo(request, groups, write=True)
        if repo.tags.pop(tag, None) is None:
            raise HubError(404, f"Tag '{tag}' not found", "RevisionNotFound")
        return Response.json({})

    # ---------------------------------------------------------------- uploads

    def _h_preupload(self, request: Request, rev: str, **groups: str) -> Response:
        repo = self._repo(request, groups, write=True)
        self._reject_pull_requests(request)
        tree = repo.resolve(rev).tree
        patterns = lfs_patterns(self._text_at(tree, ".gitattributes"))
        answers = []
        for item in request.json().get("files", []):
            path, size = item["path"], int(item.get("size", 0))
            sample = base64.b64decode(item.get("sample", ""))
            large = size > LFS_SIZE_THRESHOLD or matches_any(path, patterns) or looks_binary(sample)
            existing = tree.get(path)
            answer: dict[str, Any] = {"path": path, "uploadMode": LFS if large else REGULAR, "shouldIgnore": False}
            if existing is not None:
                answer["oid"] = existing.sha256 if existing.is_large else existing.git_oid
            answers.append(answer)
        return Response.json({"files": answers})

    def _text_at(self, tree: Mapping[str, FileEntry], path: str) -> str:
        entry = tree.get(path)
        return self.blobs.get(entry.sha256).decode(errors="replace") if entry else ""

    def _h_lfs_batch(self, request: Request, **groups: str) -> Response:
        repo = self._repo(request, groups, write=True)
        payload = request.json()
        if payload.get("operation") != "upload":
            raise HubError(400, "The loopback hub only implements LFS uploads (downloads go through /resolve)")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in repo.large_objects:
                href = f"{self.endpoint}/_lfs/{repo.repo_type}s/{repo.repo_id}/{oid}"
                signed = f"{href}?sig={self._sign(f'{repo.repo_type}/{repo.repo_id}/{oid}')}"
                entry["actions"] = {"upload": {"href": signed}, "verify": {"href": f"{href}/verify"}}
            objects.append(entry)
        body = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
        return Response.json(body, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _h_lfs_put(self, request: Request, oid: str, **groups: str) -> Response:
        key = self._key_from(groups)
        self._check_signature(request, f"{key[0]}/{key[1]}/{oid}")  # pre-signed URL: no Authorization header
        repo = self.repos.get(key)
        if repo is None:
            raise HubError(404, f"Repository Not Found for {key[0]} '{key[1]}'", "RepoNotFound")
        if hashlib.sha256(request.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match oid {oid}")
        self.blobs.put(request.body)
        repo.large_objects.setdefault(oid, LFS)
        repo.stats.lfs_bytes += len(request.body)
        return Response()

    def _h_lfs_verify(self, request: Request, oid: str, **groups: str) -> Response:
        repo = self._repo(request, groups)
        size = int(request.json().get("size", -1))
        if oid not in repo.large_objects or self.blobs.path(oid).stat().st_size != size:
            raise HubError(404, f"LFS object {oid} of size {size} not found")
        return Response.json({})

    def _h_xet_token(self, request: Request, access: str, rev: str, **groups: str) -> Response:
        repo = self._repo(request, groups, write=access == "write")
        if access == "read":
            repo.resolve_oid(rev)
        cas_url, token, expiry = self._xet_cas(repo).url, secrets.token_hex(8), int(time.time()) + XET_TOKEN_TTL_S
        headers = {"X-Xet-Cas-Url": cas_url, "X-Xet-Access-Token": token, "X-Xet-Token-Expiration": str(expiry)}
        return Response.json({"accessToken": token, "exp": expiry, "casUrl": cas_url}, headers=headers)

    def _xet_cas(self, repo: Repo) -> XetCas:
        key = (repo.repo_type, repo.repo_id)
        if key not in self._xet:
            self._xet[key] = XetCas(self.root / "xet" / repo.repo_type / repo.repo_id)
        return self._xet[key]

    def sync_xet_usage(self, repo: Repo) -> None:
        """Account xorbs/shards written to the repo's CAS by hf_xet since the last sync."""
        key = (repo.repo_type, repo.repo_id)
        if key in self._xet:
            xorb_bytes, shard_bytes = self._xet[key].take_new_bytes()
            repo.stats.xet_bytes += xorb_bytes
            repo.stats.xet_shard_bytes += shard_bytes

    def _h_commit(self, request: Request, rev: str, **groups: str) -> Response:
        repo = self._repo(request, groups, write=True)
        self._reject_pull_requests(request)
        if rev not in repo.branches:
            raise HubError(404, f"Can only commit to an existing branch, not '{rev}'", "RevisionNotFound")
        header, operations = self._parse_ndjson(request.body)
        head = repo.branches[rev]
        if header.get("parentCommit") not in (None, head):
            raise HubError(412, f"A commit has happened since {header['parentCommit']}; head is {head}")
        tree = dict(repo.commits[head].tree)
        for key, value in operations:
            self._apply_operation(repo, tree, key, value)
        self.sync_xet_usage(repo)
        commit = self._add_commit(repo, rev, head, tree, header.get("summary") or "", header.get("description") or "")
        url = f"{self.endpoint}/{repo.url_path}/commit/{commit.oid}"
        return Response.json({"commitUrl": url, "commitOid": commit.oid, "pullRequestUrl": None, "success": True})

    @staticmethod
    def _reject_pull_requests(request: Request) -> None:
        if request.flag("create_pr"):
            raise HubError(400, "The loopback hub does not implement pull requests (create_pr=True)")

    @staticmethod
    def _parse_ndjson(body: bytes) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "Commit payload must start with a header line")
        return lines[0]["value"], [(line["key"], line["value"]) for line in lines[1:]]

    def _apply_operation(self, repo: Repo, tree: dict[str, FileEntry], key: str, value: dict[str, Any]) -> None:
        path = str(value.get("path", "")).strip("/")
        if key == "file":
            tree[path] = self._regular_entry(path, base64.b64decode(value["content"]))
            repo.stats.regular_bytes += tree[path].size
        elif key == "lfsFile":
            tree[path] = self._large_entry(repo, path, value["oid"], int(value["size"]))
        elif key == "deletedFile":
            if tree.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            doomed = [p for p in tree if p.startswith(f"{path}/")]
            if not doomed:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in doomed:
                del tree[p]
        else:
            raise HubError(400, f"Unsupported commit operation: {key}")

    def _regular_entry(self, path: str, content: bytes) -> FileEntry:
        sha256 = self.blobs.put(content)
        return FileEntry(path, len(content), sha256, git_blob_sha1(content), REGULAR)

    def _large_entry(self, repo: Repo, path: str, sha256: str, size: int) -> FileEntry:
        """Entry of an LFS pointer; its content must have been uploaded through LFS or Xet beforehand."""
        if sha256 not in repo.large_objects:
            self._import_from_xet(repo, sha256)
        if self.blobs.path(sha256).stat().st_size != size:
            raise HubError(422, f"Size mismatch for LFS object {sha256} ({path})")
        storage = repo.large_objects[sha256]
        xet_file = self._xet_cas(repo).find(sha256) if storage == XET else None
        xet_hash = xet_file.xet_hash if xet_file is not None else None
        return FileEntry(path, size, sha256, git_blob_sha1(lfs_pointer(sha256, size)), storage, xet_hash)

    def _import_from_xet(self, repo: Repo, sha256: str) -> None:
        """Copy a file uploaded through Xet into the blob store (verifying its sha256)."""
        xet_file = self._xet_cas(repo).find(sha256)
        if xet_file is None:
            raise HubError(422, f"Your push was rejected: LFS object {sha256} was never uploaded (LFS or Xet)")
        data = self._xet_cas(repo).read(xet_file)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise HubError(422, f"Xet file {xet_file.xet_hash} does not hash to {sha256}")
        self.blobs.put(data)
        repo.large_objects[sha256] = XET

    def _add_commit(
        self, repo: Repo, branch: str, parent: str | None, tree: dict[str, FileEntry], summary: str, description: str
    ) -> Commit:
        old_tree = repo.commits[parent].tree if parent else {}
        changes = {p: "added" for p in tree.keys() - old_tree.keys()}
        changes.update({p: "deleted" for p in old_tree.keys() - tree.keys()})
        changes.update({p: "modified" for p in tree.keys() & old_tree.keys() if tree[p] != old_tree[p]})
        tree_ids = sorted((path, entry.git_oid) for path, entry in tree.items())
        seed = json.dumps([parent, tree_ids, summary, next(self._commit_counter)])
        commit = Commit(
            oid=hashlib.sha1(seed.encode()).hexdigest(),
            parent=parent,
            summary=summary,
            description=description,
            date=utc_now_iso(),
            tree=tree,
            changes=dict(sorted(changes.items())),
        )
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    # ---------------------------------------------------------------- downloads

    def _h_resolve(self, request: Request, rev: str, path: str, **groups: str) -> Response:
        repo = self._repo(request, groups)
        commit = repo.resolve(rev)
        entry = commit.tree.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.etag}"', "Accept-Ranges": "bytes"}
        if not entry.is_large:
            return self._file_response(request, entry.sha256, headers)
        headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        headers["Location"] = f"{self.cdn_endpoint}/_cdn/{entry.sha256}?sig={self._sign(entry.sha256)}"
        if entry.xet_hash is not None:
            read_token_url = f"{self.endpoint}/api/{repo.repo_type}s/{repo.repo_id}/xet-read-token/{commit.oid}"
            headers.update({"X-Xet-Hash": entry.xet_hash, "Link": f'<{read_token_url}>; rel="xet-auth"'})
        return Response(302, b"", headers)

    def _h_cdn(self, request: Request, sha256: str) -> Response:
        self._check_signature(request, sha256)
        return self._file_response(request, sha256, {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"})

    def _sign(self, payload: str) -> str:
        """Signature of a pre-signed URL (LFS upload, CDN download), which carries no Authorization header."""
        return hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()[:32]

    def _check_signature(self, request: Request, payload: str) -> None:
        if not hmac.compare_digest((request.query.get("sig") or [""])[0], self._sign(payload)):
            raise HubError(403, "Invalid or missing URL signature")

    def _file_response(self, request: Request, sha256: str, headers: dict[str, str]) -> Response:
        data = self.blobs.get(sha256)
        byte_range = parse_byte_range(request.headers.get("Range"), len(data))
        if byte_range is None:
            return Response(200, data, headers)
        start, end = byte_range
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        return Response(206, data[start:end], headers)


# --------------------------------------------------------------------------------------------- HTTP server


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, hands it to the `HubApp`, writes the response."""

    protocol_version = "HTTP/1.1"
    server: "_Server"

    def _serve(self) -> None:
        target = urlsplit(self.path)
        request = Request(self.command, target.path, parse_qs(target.query), self.headers, self._read_body())
        response = self.server.app.dispatch(request)
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _read_chunked(self) -> bytes:
        chunks = []
        while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # CRLF after each chunk
        while self.rfile.readline().strip():  # trailers up to the empty line
            pass
        return b"".join(chunks)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature from the base class
        if self.server.verbose:
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: HubApp, verbose: bool):
        super().__init__(address, _Handler)
        self.app = app
        self.verbose = verbose


class LoopbackHub:
    """A Hub-compatible server on 127.0.0.1 (API port + "CDN" port), run in background threads.

    Usage::

        with LoopbackHub() as hub:
            api = HfApi(endpoint=hub.endpoint, token=hub.token)
            ...
            assert hub.list_files("loopback-user/my-model") == [...]

    Repo-addressing helpers take `repo_id` ("namespace/name"), `revision` (branch, tag or commit sha,
    default "main") and `repo_type` ("model", "dataset" or "space").
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        user: str = DEFAULT_USER,
        token: str = DEFAULT_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
        verbose: bool = False,
    ):
        self._owns_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="loopback-hub-"))
        self.app = HubApp(self.root, user=user, token=token)
        self._address = (host, port)
        self._verbose = verbose
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> "LoopbackHub":
        """Bind the API and CDN listeners and serve them from daemon threads (idempotent)."""
        if self._servers:
            return self
        host, port = self._address
        self._servers = [_Server((host, port), self.app, self._verbose), _Server((host, 0), self.app, self._verbose)]
        self.app.endpoint, self.app.cdn_endpoint = (f"http://{host}:{s.server_address[1]}" for s in self._servers)
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, name=f"loopback-hub-{server.server_address[1]}")
            thread.daemon = True
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving; removes the storage directory if the hub created it."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers, self._threads = [], []
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LoopbackHub":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """Base URL to use as HF_ENDPOINT (available once started)."""
        if not self.app.endpoint:
            raise RuntimeError("LoopbackHub is not started")
        return self.app.endpoint

    @property
    def cdn_endpoint(self) -> str:
        """Base URL of the second listener that serves LFS/Xet file bytes (the `Location` of `/resolve`)."""
        return self.app.cdn_endpoint

    @property
    def token(self) -> str:
        return self.app.token

    @property
    def user(self) -> str:
        return self.app.user

    # ---------------------------------------------------------------- inspection

    def _inspect(self, repo_id: str, repo_type: str, read: Callable[[Repo], Any]) -> Any:
        with self.app._lock:
            repo = self.app.repos.get((repo_type, repo_id))
            if repo is None:
                raise KeyError(f"No {repo_type} repo '{repo_id}' on the loopback hub")
            return read(repo)

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        return (repo_type, repo_id) in self.app.repos

    def is_private(self, repo_id: str, repo_type: str = "model") -> bool:
        return self._inspect(repo_id, repo_type, lambda repo: repo.private)

    def head(self, repo_id: str, revision: str = DEFAULT_BRANCH, repo_type: str = "model") -> str:
        """Commit sha a revision points to."""
        return self._inspect(repo_id, repo_type, lambda repo: repo.resolve_oid(revision))

    def list_files(self, repo_id: str, revision: str = DEFAULT_BRANCH, repo_type: str = "model") -> list[str]:
        """Sorted paths of the files at a revision (including `.gitattributes`)."""
        return self._inspect(repo_id, repo_type, lambda repo: sorted(repo.resolve(revision).tree))

    def file_entry(
        self, repo_id: str, path: str, revision: str = DEFAULT_BRANCH, repo_type: str = "model"
    ) -> FileEntry:
        """Metadata of one file (size, sha256, git oid, storage, Xet hash)."""
        return self._inspect(repo_id, repo_type, lambda repo: repo.resolve(revision).tree[path])

    def file_bytes(self, repo_id: str, path: str, revision: str = DEFAULT_BRANCH, repo_type: str = "model") -> bytes:
        return self.app.blobs.get(self.file_entry(repo_id, path, revision, repo_type).sha256)

    def storage_of(self, repo_id: str, path: str, revision: str = DEFAULT_BRANCH, repo_type: str = "model") -> str:
        """How the file's content was uploaded: "regular", "lfs" or "xet"."""
        return self.file_entry(repo_id, path, revision, repo_type).storage

    def files_by_storage(
        self, repo_id: str, storage: str, revision: str = DEFAULT_BRANCH, repo_type: str = "model"
    ) -> list[str]:
        """Sorted paths at a revision whose content went through `storage` ("regular", "lfs" or "xet")."""
        tree = self._inspect(repo_id, repo_type, lambda repo: repo.resolve(revision).tree)
        return sorted(path for path, entry in tree.items() if entry.storage == storage)

    def lfs_files(self, repo_id: str, revision: str = DEFAULT_BRANCH, repo_type: str = "model") -> list[str]:
        return self.files_by_storage(repo_id, LFS, revision, repo_type)

    def xet_files(self, repo_id: str, revision: str = DEFAULT_BRANCH, repo_type: str = "model") -> list[str]:
        return self.files_by_storage(repo_id, XET, revision, repo_type)

    def commits(self, repo_id: str, revision: str = DEFAULT_BRANCH, repo_type: str = "model") -> list[Commit]:
        """Commits reachable from a revision, newest first (each with `.message` and `.changes`)."""
        return self._inspect(repo_id, repo_type, lambda repo: list(repo.history(revision)))

    def upload_stats(self, repo_id: str, repo_type: str = "model") -> UploadStats:
        """A snapshot of the repo's upload counters (bytes by protocol, requests by route)."""

        def snapshot(repo: Repo) -> UploadStats:
            self.app.sync_xet_usage(repo)
            return repo.stats.copy()

        return self._inspect(repo_id, repo_type, snapshot)

    @property
    def request_log(self) -> list[RequestRecord]:
        """Every request served so far (method, raw path, status, route name)."""
        with self.app._lock:
            return list(self.app.request_log)
