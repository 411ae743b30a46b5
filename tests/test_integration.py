"""Integration with the real packaged e5 student on FewCLUE data (skipped when ../shared is absent)."""

import json

import pytest

from gts_hf import GTSEngine, load_task, load_trained
from gts_hf.cli import main
from gts_hf.engine import evaluate_examples


@pytest.fixture(scope="module")
def eprstmt(shared_data):
    return shared_data / "fewclue" / "eprstmt"


def test_fast_mode_on_eprstmt_beats_chance_and_reloads(eprstmt, tmp_path):
    task = load_task(train=eprstmt / "train_0.json", dev=eprstmt / "dev_0.json")
    trained = GTSEngine(mode="fast").train(task, output_dir=tmp_path / "model")
    test = load_task(train=eprstmt / "test_public.json").train[:120]
    metrics = evaluate_examples(trained.model, trained.tokenizer, test)
    assert metrics["accuracy"] > 0.65, metrics
    model, tokenizer = load_trained(tmp_path / "model")
    reloaded = evaluate_examples(model, tokenizer, test)
    assert (reloaded["accuracy"], reloaded["macro_f1"]) == pytest.approx((metrics["accuracy"], metrics["macro_f1"]))


def test_cli_on_fewclue_pair_files(shared_data, tmp_path, capsys):
    bustm = shared_data / "fewclue" / "bustm"
    subset = tmp_path / "test.json"
    subset.write_text("".join((bustm / "test_public.json").read_text(encoding="utf-8").splitlines(True)[:60]),
                      encoding="utf-8")
    assert main(["train", "--train", str(bustm / "train_0.json"), "--dev", str(bustm / "dev_0.json"),
                 "--test", str(subset), "--output-dir", str(tmp_path / "bustm"), "--mode", "fast"]) == 0
    results = json.loads((tmp_path / "bustm" / "eval_results.json").read_text())
    assert results["n"] == 60 and 0 <= results["accuracy"] <= 1
