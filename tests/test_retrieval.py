"""The kNN datastore: prototypes, whitening, tuning on dev, safe files and consistency checks."""

import json

import faiss
import numpy as np
import pytest

from gts_hf import retrieval
from gts_hf.retrieval import RECALL_TARGET, KNNDatastore, KNNSettings, class_prototypes, fit_whitening


def clusters(seed: int, n_per_class: int = 10, dim: int = 4, num_labels: int = 3):
    rng = np.random.default_rng(seed)
    centres = np.eye(num_labels, dim) * 8
    labels = np.repeat(np.arange(num_labels), n_per_class)
    return (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def test_prototypes_are_class_means_and_leave_one_out_means():
    embeddings = np.array([[0.0, 0], [2, 0], [4, 0], [0, 6]], dtype=np.float32)
    keys, labels = class_prototypes(embeddings, np.array([0, 0, 0, 1]), 2)
    assert labels.tolist() == [0, 0, 0, 0, 1]
    np.testing.assert_allclose(keys[0], [2, 0])
    np.testing.assert_allclose(keys[1:4], [[3, 0], [2, 0], [1, 0]])
    np.testing.assert_allclose(keys[4], [0, 6])


def test_whitening_gives_identity_covariance_within_rank():
    keys = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32) @ np.diag([5, 1, 1, 1, 1, 1, 1, 0.1])
    mean, projection = fit_whitening(keys, max_dim=8)
    whitened = (keys - mean) @ projection
    np.testing.assert_allclose(np.cov(whitened.T), np.eye(8), atol=1e-3)
    _, small = fit_whitening(keys[:5], max_dim=64)
    assert small.shape[1] <= 4  # never more directions than the data has


def test_knn_votes_for_the_right_cluster_and_tuning_uses_it():
    train, train_labels = clusters(0)
    dev, dev_labels = clusters(0, n_per_class=5)
    store = KNNDatastore.build(train, train_labels, 3, settings=KNNSettings(whiten_dim=2))
    assert (store.knn_probs(dev, k=5).argmax(1) == dev_labels).mean() == 1.0
    uninformed = np.full((len(dev), 3), 1 / 3)
    choice = store.tune(dev, uninformed, dev_labels)
    assert choice["lambda"] > 0 and choice["dev_accuracy_knn"] == 1.0
    mixed = store.interpolate(uninformed, dev)
    np.testing.assert_allclose(mixed.sum(1), 1.0)


def test_save_and_load_give_the_same_predictions(tmp_path):
    train, labels = clusters(1)
    store = KNNDatastore.build(train, labels, 3)
    store.settings.lam, store.settings.k = 0.5, 4
    store.save(tmp_path / "knn")
    assert sorted(p.name for p in (tmp_path / "knn").iterdir()) == ["config.json", "datastore.safetensors",
                                                                     "index.faiss"]
    loaded = KNNDatastore.load(tmp_path / "knn", num_labels=3, hidden_size=4)
    probe = clusters(2, n_per_class=3)[0]
    np.testing.assert_allclose(loaded.knn_probs(probe), store.knn_probs(probe), atol=1e-6)
    assert loaded.settings == store.settings


def test_mismatched_datastore_is_refused(tmp_path):
    train, labels = clusters(1)
    KNNDatastore.build(train, labels, 3).save(tmp_path / "knn")
    with pytest.raises(ValueError, match="3 labels, but the model has 5"):
        KNNDatastore.load(tmp_path / "knn", num_labels=5)
    with pytest.raises(ValueError, match="dimension 4, but the model's embeddings have 384"):
        KNNDatastore.load(tmp_path / "knn", num_labels=3, hidden_size=384)
    config = json.loads((tmp_path / "knn" / "config.json").read_text())
    config["format_version"] = 99
    (tmp_path / "knn" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format version 99"):
        KNNDatastore.load(tmp_path / "knn")


def test_load_if_present_returns_none_for_a_model_without_datastore(tmp_path):
    assert KNNDatastore.load_if_present(tmp_path) is None


# ------------------------------------------------------------------------------------------ approximate index (IVF)
def blobs(seed: int, count: int, dim: int = 16, centres: int = 40):
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(size=(centres, dim)) * 3
    which = rng.integers(0, centres, count)
    return (means[which] + rng.normal(size=(count, dim))).astype(np.float32), which % 4


def test_above_the_threshold_the_index_is_approximate_with_high_recall():
    keys, labels = blobs(0, 6000)
    approximate = KNNDatastore.build(keys, labels, 4, with_prototypes=False, exact_max_keys=1000)
    exact = KNNDatastore(keys, labels, 4, mean=approximate.mean, projection=approximate.projection,
                         exact_max_keys=10_000)
    assert approximate.index_info["type"] == "ivf_flat" and exact.index_info == {"type": "flat"}
    assert approximate.index_info["recall"] >= RECALL_TARGET and approximate.index_info["recall_k"] == 32
    queries = blobs(1, 300)[0]
    _, found = approximate.index.search(approximate.whiten(queries), 10)
    _, truth = exact.index.search(exact.whiten(queries), 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
    assert recall >= 0.9
    agree = (approximate.knn_probs(queries, k=8).argmax(1) == exact.knn_probs(queries, k=8).argmax(1)).mean()
    assert agree >= 0.95


def test_the_threshold_defaults_to_the_module_setting(monkeypatch):
    monkeypatch.setattr(retrieval, "EXACT_MAX_KEYS", 500)
    keys, labels = blobs(2, 2000)
    assert KNNDatastore.build(keys, labels, 4).index_info["type"] == "ivf_flat"
    assert KNNDatastore.build(keys[:400], labels[:400], 4, with_prototypes=False).index_info == {"type": "flat"}


def test_approximate_index_saves_as_a_cpu_index_and_loads_identically(tmp_path):
    keys, labels = blobs(3, 3000)
    store = KNNDatastore.build(keys, labels, 4, with_prototypes=False, exact_max_keys=1000)
    store.settings.lam, store.settings.k = 0.5, 6
    store.save(tmp_path / "knn")
    saved = json.loads((tmp_path / "knn" / "config.json").read_text())
    assert saved["index"] == store.index_info
    assert isinstance(faiss.read_index(str(tmp_path / "knn" / "index.faiss")), faiss.IndexIVFFlat)
    loaded = KNNDatastore.load(tmp_path / "knn", num_labels=4, hidden_size=16)
    assert loaded.index_info == store.index_info and loaded.index.nprobe == store.index.nprobe
    probe = blobs(4, 50)[0]
    np.testing.assert_allclose(loaded.knn_probs(probe), store.knn_probs(probe), atol=1e-6)


def test_missing_neighbours_get_no_vote():
    probs = retrieval._vote(np.array([[0.1, np.inf, np.inf]]), np.array([[1, 0, 0]]), 2, 1.0)
    np.testing.assert_allclose(probs, [[0.0, 1.0]])


def test_keys_without_structure_fall_back_to_exact_search():
    keys = np.random.default_rng(5).normal(size=(4000, 64)).astype(np.float32)  # isotropic: no ANN gains here
    store = KNNDatastore.build(keys, np.arange(4000) % 4, 4, with_prototypes=False, exact_max_keys=1000)
    assert store.index_info == {"type": "flat"} and isinstance(store.index, faiss.IndexFlatL2)
