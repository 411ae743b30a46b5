"""Two-process training through `accelerate launch` (DDP over gloo on CPUs): one complete output folder, written once.

`accelerate launch --cpu --num_processes 2` starts a single process unless it is given an MPI hostfile, so the test
launches with `--multi_gpu` (torchrun's spawner) and hides the GPUs; gts-hf then runs DDP over gloo on the CPUs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gts_hf import load_task, load_trained, predict
from gts_hf.cli import main as cli_main
from gts_hf.engine import EVAL_FILE, RECORD_FILE

pytestmark = pytest.mark.skipif(shutil.which("accelerate") is None and
                                not (Path(sys.executable).parent / "accelerate").exists(),
                                reason="accelerate's launcher is not installed")


def _accelerate() -> str:
    local = Path(sys.executable).parent / "accelerate"
    return str(local) if local.exists() else shutil.which("accelerate")


def _train_arguments(data_dir: Path, output_dir: Path, student: Path) -> list[str]:
    return ["train", "--data-dir", str(data_dir), "--output-dir", str(output_dir), "--mode", "standard",
            "--student", str(student), "--finetune", "on", "--epochs", "2", "--seed", "42", "--knn"]


def test_two_processes_write_one_complete_model(tiny_student, sentiment_dir, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    output = runs / "model"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(tmp_path / "hf_home"),  # no user accelerate config
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])}
    command = [_accelerate(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               "-m", "gts_hf.cli", *_train_arguments(sentiment_dir, output, tiny_student)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    assert [path.name for path in runs.iterdir()] == ["model"]  # no staging or retired folders left behind
    files = {path.relative_to(output).as_posix() for path in output.rglob("*")}
    assert {"config.json", "model.safetensors", "tokenizer.json", RECORD_FILE, EVAL_FILE,
            "knn/index.faiss", "knn/datastore.safetensors", "knn/config.json"} <= files
    record = json.loads((output / RECORD_FILE).read_text())
    assert record["distributed"] == {"num_processes": 2, "replicas_identical": True}
    assert record["finetune"]["steps"] >= 1 and record["finetune"]["data_parallel"] is True

    model, tokenizer = load_trained(output)
    examples = load_task(sentiment_dir).test
    predictions = predict(model, tokenizer, examples)
    assert predictions.probabilities.shape == (len(examples), 2)
    assert np.isfinite(predictions.probabilities).all()
    np.testing.assert_allclose(predictions.probabilities.sum(1), 1.0, atol=1e-5)

    single = tmp_path / "single"
    assert cli_main(_train_arguments(sentiment_dir, single, tiny_student)) == 0
    assert "distributed" not in json.loads((single / RECORD_FILE).read_text())
    accuracies = [json.loads((folder / EVAL_FILE).read_text())["accuracy"] for folder in (output, single)]
    assert abs(accuracies[0] - accuracies[1]) <= 0.34, accuracies
