"""The command line: train, evaluate, predict, and clear errors with exit code 2."""

import json

import pytest

from gts_hf.cli import main
from gts_hf.hub import render_model_card

from .conftest import NEGATIVE, POSITIVE, write_jsonl


def run(*args):
    return main([str(arg) for arg in args])


@pytest.fixture()
def trained_dir(tiny_student, sentiment_dir, tmp_path):
    assert run("train", "--data-dir", sentiment_dir, "--output-dir", tmp_path / "out", "--mode", "fast",
               "--student", tiny_student, "--knn") == 0
    return tmp_path / "out"


def test_train_writes_model_and_eval_results(trained_dir, capsys):
    results = json.loads((trained_dir / "eval_results.json").read_text())
    assert 0 <= results["accuracy"] <= 1 and results["n"] == 6
    assert (trained_dir / "knn" / "index.faiss").is_file()


def test_train_with_explicit_files_and_standard_mode(tiny_student, sentiment_dir, tmp_path, capsys):
    code = run("train", "--train", sentiment_dir / "train.json", "--dev", sentiment_dir / "dev.json",
               "--labels", sentiment_dir / "labels.json", "--output-dir", tmp_path / "std", "--mode", "standard",
               "--student", tiny_student, "--finetune", "on", "--epochs", 2, "--seed", 3)
    assert code == 0
    record = json.loads((tmp_path / "std" / "gts_training.json").read_text())
    assert record["mode"] == "standard" and record["seed"] == 3 and record["finetune"]["epochs"] == 2
    assert "skipped" in record["knn"] and not (tmp_path / "std" / "knn").exists()  # kNN only with --knn
    output = capsys.readouterr().out
    assert "no kNN (off by default" in output and "no self-training (no unlabelled texts" in output


def test_train_self_trains_on_the_unlabelled_file(tiny_student, sentiment_dir, tmp_path, capsys):
    write_jsonl(tmp_path / "pool.json", [{"text": text} for text in POSITIVE + NEGATIVE])
    assert run("train", "--data-dir", sentiment_dir, "--unlabeled", tmp_path / "pool.json", "--output-dir",
               tmp_path / "model", "--student", tiny_student, "--body-steps", 0, "--self-training-pool", 6) == 0
    record = json.loads((tmp_path / "model" / "gts_training.json").read_text())
    assert record["self_training"]["pool"] == 6
    assert "self-trained on " in capsys.readouterr().out
    assert "| self-training | " in render_model_card(tmp_path / "model", "me/m").text


def test_option_template_flag_reaches_the_engine(tiny_student, sentiment_dir, tmp_path):
    assert run("train", "--data-dir", sentiment_dir, "--output-dir", tmp_path / "model", "--mode", "fast",
               "--student", tiny_student, "--option-template", "auto") == 0
    record = json.loads((tmp_path / "model" / "gts_training.json").read_text())
    assert record["option_template"]["template"] in record["option_template"]["dev_log_loss"]


@pytest.mark.parametrize("pair_head, prior_skipped", [("auto", True), ("joint", False)])  # the folder: similarity
def test_pair_head_flag_reaches_the_engine(tiny_student, pair_dir, tmp_path, capsys, pair_head, prior_skipped):
    assert run("train", "--data-dir", pair_dir, "--output-dir", tmp_path / "pair_model", "--mode", "fast",
               "--student", tiny_student, "--pair-head", pair_head, "--knn") == 0
    record = json.loads((tmp_path / "pair_model" / "gts_training.json").read_text())
    assert ("skipped" in record["label_prior"]) is prior_skipped
    printed = capsys.readouterr().out  # the cosine head has no kNN datastore, and says so
    assert ("no kNN (the cosine pair head" in printed) is prior_skipped and ("kNN k=" in printed) is not prior_skipped


def test_evaluate_json(trained_dir, sentiment_dir, capsys):
    capsys.readouterr()
    assert run("evaluate", "--model", trained_dir, "--data", sentiment_dir / "test.json", "--json") == 0
    metrics = json.loads(capsys.readouterr().out.strip())
    assert set(metrics) == {"accuracy", "macro_f1", "n", "texts_per_second"} and metrics["n"] == 6


def test_evaluate_text(trained_dir, sentiment_dir, capsys):
    assert run("evaluate", "--model", trained_dir, "--data", sentiment_dir / "test.json") == 0
    assert "accuracy" in capsys.readouterr().out


def test_predict_writes_gts_engine_format(trained_dir, tmp_path):
    source = write_jsonl(tmp_path / "in.json", [{"content": "很好"}, {"content": "很差"}])
    assert run("predict", "--model", trained_dir, "--input", source, "--output", tmp_path / "out.json") == 0
    output = json.loads((tmp_path / "out.json").read_text())
    assert len(output["predictions"]) == 2 and set(output["predictions"]) <= {"negative", "positive"}
    assert all(abs(sum(row) - 1) < 1e-4 and len(row) == 2 for row in output["probabilities"])


def test_bad_data_exits_2_with_file_and_line(tiny_student, sentiment_dir, tmp_path, capsys):
    (sentiment_dir / "train.json").write_text('{"content": "好", "label": "positive"}\n{"content": \n')
    assert run("train", "--data-dir", sentiment_dir, "--output-dir", tmp_path / "x", "--student", tiny_student) == 2
    error = capsys.readouterr().err
    assert "train.json:2: malformed JSON" in error and "Traceback" not in error
    assert not (tmp_path / "x").exists()


def test_missing_data_dir(tmp_path, capsys):
    assert run("train", "--data-dir", tmp_path / "nowhere", "--output-dir", tmp_path / "x") == 2
    assert "data directory not found" in capsys.readouterr().err


def test_evaluate_with_unknown_labels(trained_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "odd.json", [{"content": "很好", "label": "neutral"}])
    assert run("evaluate", "--model", trained_dir, "--data", data) == 2
    assert "odd.json:1: label 'neutral' is not one of the model's labels" in capsys.readouterr().err


def test_evaluate_in_bf16(trained_dir, sentiment_dir, capsys):
    capsys.readouterr()
    assert run("evaluate", "--model", trained_dir, "--data", sentiment_dir / "test.json", "--json",
               "--precision", "bf16") == 0
    assert json.loads(capsys.readouterr().out.strip())["n"] == 6
