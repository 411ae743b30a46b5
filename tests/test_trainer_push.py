"""`GTSTrainer.push_to_hub`: a complete gts-hf model in one commit, against the loopback Hub."""

from __future__ import annotations

import json

import numpy as np
from huggingface_hub import ModelCard

from gts_hf import GTSEngine, load_task, load_trained, predict
from gts_hf.data import Example
from gts_hf.trainer import GTSTrainer
from gts_hf.training_args import GTSTrainingArguments
from tests.conftest import NEGATIVE, POSITIVE
from tests.conftest_hub import xet_modes

PROBE_TEXTS = POSITIVE[5:] + NEGATIVE[5:] + ["物流很快", "质量太差"]


@xet_modes
def test_trainer_push_to_hub_uploads_a_complete_model(use_xet, loopback_hub, hub_repo_id, tiny_student, sentiment_dir,
                                                      tmp_path):
    task = load_task(sentiment_dir)
    model, tokenizer = GTSEngine(student=str(tiny_student)).build_student(task)
    args = GTSTrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=1, disable_tqdm=True,
                                report_to=[], save_strategy="no")
    trainer = GTSTrainer(model=model, args=args, train_examples=task.train, eval_examples=task.dev,
                         processing_class=tokenizer)
    trainer.train()

    info = trainer.push_to_hub(hub_repo_id, commit_message="Trained with GTSTrainer")

    files = set(loopback_hub.list_files(hub_repo_id))
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "gts_training.json"} <= files
    commits = loopback_hub.commits(hub_repo_id)
    assert commits[0].message == "Trained with GTSTrainer" and info.oid == commits[0].oid
    assert len(commits) == 2  # the repo's creation, then one commit with everything
    card_text = loopback_hub.file_bytes(hub_repo_id, "README.md").decode()
    assert "library_name: gts-hf" in card_text
    assert ModelCard(card_text).data.widget  # the training texts feed the widget
    record = json.loads(loopback_hub.file_bytes(hub_repo_id, "gts_training.json"))
    assert record["mode"] == "trainer" and record["num_train"] == len(task.train)
    assert record["num_dev"] == len(task.dev) and record["labels"] == ["negative", "positive"]

    probes = [Example(text=text) for text in PROBE_TEXTS]
    local = predict(trainer.model.eval(), tokenizer, probes).probabilities
    hub_model, hub_tokenizer = load_trained(hub_repo_id)
    np.testing.assert_allclose(predict(hub_model, hub_tokenizer, probes).probabilities, local, atol=1e-6, rtol=0)


def test_trainer_push_to_hub_needs_a_repo_id(tiny_student, sentiment_dir, tmp_path):
    task = load_task(sentiment_dir)
    model, tokenizer = GTSEngine(student=str(tiny_student)).build_student(task)
    trainer = GTSTrainer(model=model, args=GTSTrainingArguments(output_dir=str(tmp_path / "out"), report_to=[]),
                         train_examples=task.train, eval_examples=task.dev, processing_class=tokenizer)
    try:
        trainer.push_to_hub()
    except ValueError as error:
        assert "repo_id" in str(error)
    else:
        raise AssertionError("push_to_hub without a repo id must fail")
