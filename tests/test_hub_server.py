"""Round trips of the real huggingface_hub client against the loopback Hub (tests/hub_server.py).

Run: `python -m pytest tests/test_hub_server.py -q -p tests.conftest_hub`.
"""

from tests.conftest_hub import install_loopback_hub, xet_modes  # isort: skip - must precede huggingface_hub

install_loopback_hub()
pytest_plugins = ["tests.conftest_hub"]

import hashlib  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import pytest  # noqa: E402
from huggingface_hub import (  # noqa: E402
    CommitOperationAdd,
    HfApi,
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hub_server import LoopbackHub  # noqa: E402

LARGE_FILES = ("knn/index.faiss", "model.safetensors")
REGULAR_FILES = ("README.md", "config.json")
README = b"---\nlicense: mit\nlibrary_name: gts-hf\ntags:\n- loopback\n---\n\n# Loopback test model\n"


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for rel_path, data in files.items():
        path = root / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.fixture
def model_files() -> dict[str, bytes]:
    """A small model folder: JSON config, ~2 MB safetensors, ~1 MB faiss index, model card."""
    return {
        "config.json": json.dumps({"hidden_size": 8, "labels": ["a", "b"]}, indent=2).encode(),
        "model.safetensors": os.urandom(2 * 1024 * 1024),
        "knn/index.faiss": os.urandom(1024 * 1024),
        "README.md": README,
    }


@pytest.fixture
def model_dir(tmp_path: Path, model_files: dict[str, bytes]) -> Path:
    folder = tmp_path / "model"
    write_files(folder, model_files)
    return folder


@pytest.fixture
def pushed_repo(hub_api: HfApi, hub_repo_id: str, model_dir: Path) -> str:
    """A repo holding `model_files` in one commit "Add model" (pushed through Xet unless `use_xet` is False)."""
    hub_api.create_repo(hub_repo_id)
    hub_api.upload_folder(repo_id=hub_repo_id, folder_path=model_dir, commit_message="Add model")
    return hub_repo_id


def raw_request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, body: Iterator[bytes] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A bare HTTP request (no client library, no proxy) -> (status, headers, body)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        target = f"{parts.path}?{parts.query}" if parts.query else parts.path
        connection.request(method, target, body=body, headers=headers or {}, encode_chunked=body is not None)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def read_tree(root: Path | str, paths: list[str]) -> dict[str, bytes]:
    return {path: (Path(root) / path).read_bytes() for path in paths}


def test_whoami_create_and_delete_repo(hub_api: HfApi, hub_repo_id: str, loopback_hub: LoopbackHub) -> None:
    assert hub_api.whoami()["name"] == loopback_hub.user
    url = hub_api.create_repo(hub_repo_id)
    assert url.repo_id == hub_repo_id
    with pytest.raises(HfHubHTTPError) as conflict:
        hub_api.create_repo(hub_repo_id)
    assert conflict.value.response.status_code == 409
    assert hub_api.create_repo(hub_repo_id, exist_ok=True).repo_id == hub_repo_id

    info = hub_api.model_info(hub_repo_id)
    assert info.sha == loopback_hub.head(hub_repo_id) and len(info.sha) == 40
    assert [s.rfilename for s in info.siblings] == [".gitattributes"] and info.private is False
    assert [b.name for b in hub_api.list_repo_refs(hub_repo_id).branches] == ["main"]

    hub_api.delete_repo(hub_repo_id)
    assert not loopback_hub.repo_exists(hub_repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hub_api.model_info(hub_repo_id)


@xet_modes
def test_upload_folder_round_trip(
    use_xet: bool, pushed_repo: str, model_files: dict[str, bytes], loopback_hub: LoopbackHub, tmp_path: Path
) -> None:
    large_storage = "xet" if use_xet else "lfs"
    assert loopback_hub.list_files(pushed_repo) == sorted([*model_files, ".gitattributes"])
    assert loopback_hub.files_by_storage(pushed_repo, large_storage) == sorted(LARGE_FILES)
    assert loopback_hub.files_by_storage(pushed_repo, "regular") == sorted([*REGULAR_FILES, ".gitattributes"])
    for path, data in model_files.items():
        assert loopback_hub.file_bytes(pushed_repo, path) == data
    last = loopback_hub.commits(pushed_repo)[0]
    assert last.message == "Add model"
    assert last.changes == {path: "added" for path in sorted(model_files)}

    snapshot = snapshot_download(pushed_repo, cache_dir=tmp_path / "cache")
    assert read_tree(snapshot, list(model_files)) == model_files


@xet_modes
def test_repo_metadata_listing(use_xet: bool, pushed_repo: str, hub_api: HfApi, model_files: dict[str, bytes]) -> None:
    assert sorted(hub_api.list_repo_files(pushed_repo)) == sorted([*model_files, ".gitattributes"])
    tree = {entry.path: entry for entry in hub_api.list_repo_tree(pushed_repo, recursive=True)}
    assert "knn" in tree and tree["knn/index.faiss"].size == len(model_files["knn/index.faiss"])
    assert tree["model.safetensors"].lfs is not None and tree["config.json"].lfs is None
    assert (tree["model.safetensors"].xet_hash is not None) == use_xet
    info = hub_api.model_info(pushed_repo, files_metadata=True)
    sizes = {sibling.rfilename: sibling.size for sibling in info.siblings}
    assert sizes["model.safetensors"] == len(model_files["model.safetensors"])
    [paths_info] = hub_api.get_paths_info(pushed_repo, ["config.json"])
    assert paths_info.size == len(model_files["config.json"])


@pytest.mark.parametrize("use_xet", [True], ids=["xet"], indirect=True)
def test_xet_upload_downloads_without_xet(
    use_xet: bool,
    pushed_repo: str,
    model_files: dict[str, bytes],
    loopback_hub: LoopbackHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Files pushed through Xet are also served over plain HTTP (302 to the CDN listener)."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    path = hf_hub_download(pushed_repo, "model.safetensors", cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == model_files["model.safetensors"]
    assert any(record.route == "cdn" for record in loopback_hub.request_log)


@xet_modes
def test_revision_pinning(
    use_xet: bool,
    pushed_repo: str,
    hub_api: HfApi,
    model_dir: Path,
    model_files: dict[str, bytes],
    loopback_hub: LoopbackHub,
    tmp_path: Path,
) -> None:
    first = loopback_hub.head(pushed_repo)
    updated = {"config.json": b'{"hidden_size": 16}', "model.safetensors": os.urandom(2 * 1024 * 1024)}
    write_files(model_dir, updated)
    second = hub_api.upload_folder(repo_id=pushed_repo, folder_path=model_dir, commit_message="Update").oid
    assert second != first and loopback_hub.head(pushed_repo) == second
    assert loopback_hub.commits(pushed_repo)[0].changes == {path: "modified" for path in sorted(updated)}
    assert [c.title for c in hub_api.list_repo_commits(pushed_repo)] == ["Update", "Add model", "initial commit"]

    hub_api.create_tag(pushed_repo, tag="v1", revision=first)
    for revision in (first, "v1"):
        old = snapshot_download(pushed_repo, revision=revision, cache_dir=tmp_path / "cache")
        assert read_tree(old, list(model_files)) == model_files
    new = hf_hub_download(pushed_repo, "model.safetensors", cache_dir=tmp_path / "cache")
    assert Path(new).read_bytes() == updated["model.safetensors"]


def test_branch_commit_and_delete(hub_api: HfApi, pushed_repo: str, loopback_hub: LoopbackHub) -> None:
    hub_api.create_branch(pushed_repo, branch="dev")
    hub_api.upload_file(path_or_fileobj=b"extra", path_in_repo="notes.txt", repo_id=pushed_repo, revision="dev")
    hub_api.delete_folder("knn", repo_id=pushed_repo, revision="dev")
    assert "notes.txt" in loopback_hub.list_files(pushed_repo, revision="dev")
    assert "knn/index.faiss" not in loopback_hub.list_files(pushed_repo, revision="dev")
    assert "notes.txt" not in loopback_hub.list_files(pushed_repo)
    refs = hub_api.list_repo_refs(pushed_repo)
    assert {b.name: b.target_commit for b in refs.branches}["dev"] == loopback_hub.head(pushed_repo, "dev")


def test_private_repo_requires_token(
    hub_api: HfApi, hub_repo_id: str, loopback_hub: LoopbackHub, tmp_path: Path
) -> None:
    hub_api.create_repo(hub_repo_id, private=True)
    hub_api.upload_file(path_or_fileobj=b"secret", path_in_repo="secret.txt", repo_id=hub_repo_id)
    assert loopback_hub.is_private(hub_repo_id)
    assert hub_api.model_info(hub_repo_id).private is True

    anonymous = HfApi(endpoint=loopback_hub.endpoint, token=False)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info(hub_repo_id)
    for token in (False, "hf_wrong_token"):
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download(hub_repo_id, "secret.txt", token=token, cache_dir=tmp_path / "anonymous")
    path = hf_hub_download(hub_repo_id, "secret.txt", cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == b"secret"


@xet_modes
def test_unchanged_reupload_uploads_nothing(
    use_xet: bool, pushed_repo: str, hub_api: HfApi, model_dir: Path, loopback_hub: LoopbackHub
) -> None:
    before = loopback_hub.upload_stats(pushed_repo)
    head = loopback_hub.head(pushed_repo)
    assert before.uploaded_bytes >= 3 * 1024 * 1024  # both large files went up the first time

    again = hub_api.upload_folder(repo_id=pushed_repo, folder_path=model_dir, commit_message="Again")

    after = loopback_hub.upload_stats(pushed_repo)
    assert again.oid == head == loopback_hub.head(pushed_repo)
    assert after.uploaded_bytes == before.uploaded_bytes
    assert after.requests["commit"] == before.requests["commit"]
    assert after.requests["lfs_put"] == before.requests["lfs_put"]
    if not use_xet:
        assert after.requests["lfs_batch"] == before.requests["lfs_batch"] + 1  # asked, told "already there"


def test_client_errors_map_to_hub_exceptions(
    hub_api: HfApi, pushed_repo: str, loopback_hub: LoopbackHub, tmp_path: Path
) -> None:
    with pytest.raises(RepositoryNotFoundError):
        hub_api.model_info(f"{loopback_hub.user}/does-not-exist")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(pushed_repo, "config.json", revision="no-such-branch", cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(pushed_repo, "missing.json", cache_dir=tmp_path)
    stale_parent = loopback_hub.commits(pushed_repo)[-1].oid
    with pytest.raises(HfHubHTTPError) as stale:
        hub_api.create_commit(
            pushed_repo,
            [CommitOperationAdd("late.txt", b"late")],
            commit_message="stale",
            parent_commit=stale_parent,
        )
    assert stale.value.response.status_code == 412


@pytest.mark.parametrize("repo_type", ["dataset", "space"])
def test_dataset_and_space_repos(
    repo_type: str, hub_api: HfApi, hub_repo_id: str, loopback_hub: LoopbackHub, tmp_path: Path
) -> None:
    hub_api.create_repo(hub_repo_id, repo_type=repo_type, space_sdk="static" if repo_type == "space" else None)
    csv = b"a,b\n1,2\n"
    hub_api.upload_file(path_or_fileobj=csv, path_in_repo="data.csv", repo_id=hub_repo_id, repo_type=repo_type)
    assert loopback_hub.list_files(hub_repo_id, repo_type=repo_type) == [".gitattributes", "data.csv"]
    path = hf_hub_download(hub_repo_id, "data.csv", repo_type=repo_type, cache_dir=tmp_path)
    assert Path(path).read_bytes() == csv


@xet_modes
def test_resolve_headers_redirect_and_ranges(
    use_xet: bool, pushed_repo: str, model_files: dict[str, bytes], loopback_hub: LoopbackHub
) -> None:
    head = loopback_hub.head(pushed_repo)
    data = model_files["model.safetensors"]
    large = get_hf_file_metadata(hf_hub_url(pushed_repo, "model.safetensors"))
    assert (large.etag, large.size, large.commit_hash) == (hashlib.sha256(data).hexdigest(), len(data), head)
    assert large.location.startswith(f"{loopback_hub.cdn_endpoint}/_cdn/")  # 302 to another origin
    assert (large.xet_file_data is not None) == use_xet

    regular = get_hf_file_metadata(hf_hub_url(pushed_repo, "config.json"))
    assert regular.etag == loopback_hub.file_entry(pushed_repo, "config.json").git_oid

    status, headers, body = raw_request(large.location, headers={"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (206, data[10:20], f"bytes 10-19/{len(data)}")
    assert raw_request(large.location.split("?")[0])[0] == 403  # unsigned CDN URL


def test_chunked_request_body(loopback_hub: LoopbackHub) -> None:
    body = iter([b'{"content": "---\\nlicense: mit\\n', b'---\\n", "repoType": "model"}'])
    status, _, answer = raw_request(f"{loopback_hub.endpoint}/api/validate-yaml", "POST", body=body)
    assert (status, json.loads(answer)) == (200, {"errors": [], "warnings": []})
