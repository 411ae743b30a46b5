"""Coreference (CLUEWSC-style: does the marked pronoun refer to the marked noun?): reading, span masks, the span
cosine, and training through the engine, the pipeline and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, pipeline

from gts_hf.configuration import GTSConfig
from gts_hf.data import DataError, Example, build_task, find_spans, load_task, read_examples
from gts_hf.hub import render_model_card
from gts_hf.inference import encode_examples, predict
from gts_hf.pool import label_pool
from gts_hf.space import write_space

from .conftest import NEGATIVE, POSITIVE, write_jsonl, write_task_dir


def _record(text: str, noun: str, pronoun: str, label: str) -> dict:
    """A CLUEWSC record: ``noun`` and ``pronoun`` are located by their first occurrences in ``text``."""
    second = text.index(pronoun, text.index(noun) + len(noun))
    return {"text": text, "label": label,
            "target": {"span1_text": noun, "span1_index": text.index(noun), "span2_text": pronoun,
                       "span2_index": second}}


def _records(count: int, offset: int = 0) -> list[dict]:
    """True when the pronoun slot repeats the noun's words, false when it names something else."""
    records = []
    for index in range(offset, offset + count):
        first, other = POSITIVE[index % 8], NEGATIVE[index % 8]
        noun = first[:2]
        if index % 2 == 0:
            records.append(_record(f"{first}，{noun}{other}", noun, noun, "true"))
        else:
            records.append(_record(f"{first}，{other}", noun, other[:2], "false"))
    return records


@pytest.fixture()
def coreference_dir(tmp_path: Path) -> Path:
    return write_task_dir(tmp_path / "wsc", _records)


def test_marker_characters_in_the_text_cannot_be_taken_for_the_spans(tmp_path):
    record = _record("<注>树叶[1]飘入了树林，他走到了家人中间。", "树叶", "他", "false")
    example = read_examples(write_jsonl(tmp_path / "wsc.json", [record]))[0]
    assert example.text == "＜注＞[树叶]［1］飘入了树林，<他>走到了家人中间。"
    (noun_start, noun_end), (pronoun_start, pronoun_end) = find_spans(example.text)
    assert example.text[noun_start:noun_end] == "树叶" and example.text[pronoun_start:pronoun_end] == "他"


@pytest.mark.parametrize("text", ["没有标记", "[名词]但没有代词", "<他>和[]", "]反了[，<他>", "[ ]和<他>", "[a<b]c>"])
def test_find_spans_needs_both_spans(text):
    assert find_spans(text) is None


def test_marked_texts_make_a_coreference_task_and_every_split_must_be_marked(tmp_path, coreference_dir):
    task = load_task(coreference_dir)
    assert task.task_type == "coreference" and task.is_coreference and task.labels == ["false", "true"]
    write_jsonl(tmp_path / "test.json", [{"text": "没有标记的文字", "label": "true"}])
    with pytest.raises(DataError, match=r"test.json:1: a coreference task expects the noun marked"):
        load_task(coreference_dir, test=tmp_path / "test.json")
    single = read_examples(write_jsonl(tmp_path / "single.json", [{"text": "没有标记", "label": "a"},
                                                                   {"text": "也没有", "label": "b"}]))
    assert build_task(single).task_type == "classification"


@pytest.mark.parametrize("texts, labels", [
    (["Great phone [link] <br> love <b>it</b>", "Bad [x] <b>bold</b>"], ["good", "bad"]),  # more markers than spans
    (["[手机]很好用，<它>坏了", "[物流]很快，<它>很好", "[质量]很好，<它>不错"], ["a", "b", "c"]),  # three labels
])
def test_auto_detection_leaves_other_bracketed_texts_to_classification(texts, labels):
    examples = [Example(text=text, label=label) for text, label in zip(texts, labels)]
    assert build_task(examples).task_type == "classification"
    assert build_task(examples, task_type="coreference").task_type == "coreference"  # asked for: the spans suffice


def test_span_masks_cover_exactly_the_marked_tokens(tiny_student):
    tokenizer = AutoTokenizer.from_pretrained(tiny_student)
    config = GTSConfig(labels=["false", "true"], task_type="coreference", query_prefix="query: ")
    texts = ["[手机]很好用，<他>坏了", "质量[很好]，非常<满意>"]
    batch = encode_examples(tokenizer, config, texts)
    for row, (noun, pronoun) in enumerate([("手机", "他"), ("很好", "满意")]):
        for mask, span in ((batch["first_span_mask"], noun), (batch["second_span_mask"], pronoun)):
            assert tokenizer.decode(batch["input_ids"][row][mask[row].bool()]).replace(" ", "") == span
    with pytest.raises(ValueError, match="mark the noun"):
        encode_examples(tokenizer, config, ["没有标记"])


def test_a_span_cut_off_by_truncation_leaves_the_span_cosine_neutral(tiny_student, caplog):
    from gts_hf.modeling import GTSForFewShotClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_student)
    config = GTSConfig(labels=["false", "true"], task_type="coreference", max_seq_length=8)
    texts = ["[手机]很好用，质量很好，非常满意，<他>坏了", "[手]<他>"]
    batch = encode_examples(tokenizer, config, texts)
    assert batch["second_span_mask"][0].sum() == 0 and batch["first_span_mask"][0].sum() == 2
    assert "1 marked span(s) lie beyond max_seq_length=8" in caplog.text
    model = GTSForFewShotClassification.from_backbone(tiny_student, config).eval()
    model.calibrate_pair_similarity(torch.tensor([0.6, 0.8]))
    similarity = model(**batch).pair_similarity
    assert similarity[0].item() == pytest.approx(0.7) and similarity[1].item() != pytest.approx(0.7)


def test_the_pair_term_is_the_cosine_of_the_two_spans_at_the_span_layer(tiny_student):
    from gts_hf.modeling import GTSForFewShotClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_student)
    config = GTSConfig(labels=["false", "true"], task_type="coreference")
    model = GTSForFewShotClassification.from_backbone(tiny_student, config).eval()
    batch = encode_examples(tokenizer, model.config, ["[手机]很好用，<他>坏了"])
    output = model(**batch)
    hidden = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           output_hidden_states=True).hidden_states[model.config.span_layer][0]
    noun, pronoun = (hidden[batch[name][0].bool()].mean(0) for name in ("first_span_mask", "second_span_mask"))
    expected = torch.cosine_similarity(noun, pronoun, dim=0).item()
    assert output.pair_similarity.item() == pytest.approx(expected, abs=1e-5)
    assert output.pair_similarity.grad_fn is None  # a fixed feature, like the pair cosine of sentence pairs


def test_coreference_trains_saves_and_predicts(coreference_dir: Path, tiny_student: Path, tmp_path: Path) -> None:
    from gts_hf.cli import main
    from gts_hf.engine import NO_KNN_FOR_COSINE_PAIRS, GTSEngine, evaluate_examples, load_trained

    task = load_task(coreference_dir)
    assert task.option_texts() == ["代词指的不是这个名词", "代词指的是这个名词"]  # false, true: described by default
    trained = GTSEngine(mode="standard", student=str(tiny_student), head_steps=40) \
        .train(task, output_dir=tmp_path / "model")
    assert trained.record["task_type"] == "coreference" and trained.record["knn"] == NO_KNN_FOR_COSINE_PAIRS
    assert trained.model.pair_weight.abs().sum() > 0  # the head learned to use the span cosine
    model, tokenizer = load_trained(tmp_path / "model")
    assert model.config.is_coreference
    assert evaluate_examples(model, tokenizer, task.test)["accuracy"] == \
        pytest.approx(trained.test_metrics["accuracy"])

    resolver = pipeline("gts-few-shot", model=str(tmp_path / "model"))
    answer = resolver(task.test[0].text, top_k=2)
    assert {item["label"] for item in answer} == {"false", "true"}
    with pytest.raises(ValueError, match="mark the noun"):
        resolver("一段没有标记的文字")
    with pytest.raises(ValueError, match=r"pool.jsonl:2: this model resolves coreference"):
        predict(model, tokenizer, [task.test[0], Example(text="没有标记", source="pool.jsonl:2")])

    pool = write_jsonl(tmp_path / "pool.jsonl", [{"text": task.test[0].text}, {"text": "没有标记的文字"}])
    with pytest.raises(DataError, match=r"pool.jsonl:2: this model resolves coreference.*'text'"):
        label_pool(model, tokenizer, pool, tmp_path / "labelled", show_progress=False)
    assert not (tmp_path / "labelled").exists()
    output = tmp_path / "predictions.json"
    assert main(["predict", "--model", str(tmp_path / "model"), "--input", str(coreference_dir / "test.json"),
                 "--output", str(output)]) == 0
    assert len(json.loads(output.read_text(encoding="utf-8"))["predictions"]) == len(task.test)

    card = render_model_card(tmp_path / "model", "me/wsc", data_dir=coreference_dir)
    assert "coreference" in card.text and card.data.widget[0]["text"] in {example.text for example in task.train}
    assert 'classifier("The [trophy] did not fit in the suitcase because <it> was too big.")' in card.text
    space = write_space(tmp_path / "model", tmp_path / "space")
    assert "A few-shot coreference (does the `<pronoun>` refer" in (space / "README.md").read_text(encoding="utf-8")


def test_advanced_mode_asks_the_teacher_about_the_marked_spans_and_generates_nothing(coreference_dir: Path) -> None:
    from gts_hf.advanced import NO_GENERATION_FOR_COREFERENCE, AdvancedSettings, generate_examples
    from gts_hf.teacher import PromptBuilder

    task = load_task(coreference_dir)
    message = PromptBuilder(options=task.labels, task_type="coreference").user_message(task.train[0])
    assert task.train[0].text in message and "代词" in message
    record: dict = {}
    settings = AdvancedSettings(generator="/no/such/generator")  # never loaded: nothing is generated for coreference
    assert generate_examples(settings, task, None, record, started=0.0) == []
    assert record["generator"] == NO_GENERATION_FOR_COREFERENCE


def test_the_joint_head_runs_the_body_stage_and_fine_tuning_on_marked_texts(coreference_dir: Path,
                                                                             tiny_student: Path) -> None:
    """``pair_head="joint"`` brings the body stage back (the label texts it embeds beside the examples are not
    marked); fine-tuning feeds the span masks through the Trainer (token masking keeps them aligned)."""
    from gts_hf.engine import KNN_OFF, GTSEngine

    engine = GTSEngine(mode="standard", student=str(tiny_student), pair_head="joint", head_steps=10, body_steps=2,
                       tuned_shots=1, finetune="on", training_overrides={"num_train_epochs": 1})  # 1: two labels too
    trained = engine.train(load_task(coreference_dir))
    assert "kept" in trained.record["body"] and trained.record["knn"] == KNN_OFF
    assert trained.record["finetune"]["steps"] > 0
