"""Readers, task building and the errors bad input gets (file, line and field named)."""

import json

import pytest

from gts_hf.data import DataError, Example, build_task, load_task, read_examples, read_label_file

from .conftest import write_jsonl


def test_gts_engine_folder_loads(sentiment_dir):
    task = load_task(sentiment_dir)
    assert task.task_type == "classification"
    assert task.labels == ["negative", "positive"]
    assert task.option_texts() == ["负面", "正面"]
    assert len(task.train) == 10 and len(task.dev) == 6 and len(task.test) == 6
    assert task.language == "zh"


def test_pair_folder_detects_similarity_with_default_options(pair_dir):
    task = load_task(pair_dir)
    assert task.task_type == "similarity" and task.is_pair
    assert task.train[0].text_pair
    assert task.option_texts() == ["两句话意思不同", "两句话意思相同"]


def test_nli_labels_give_an_nli_task(tmp_path):
    path = write_jsonl(tmp_path / "nli.json", [
        {"sentence1": "他在跑步", "sentence2": "他在运动", "label": "entailment"},
        {"sentence1": "他在跑步", "sentence2": "他在睡觉", "label": "contradiction"},
        {"sentence1": "他在跑步", "sentence2": "他很开心", "label": "neutral"}])
    task = build_task(read_examples(path))
    assert task.task_type == "nli"
    assert set(task.option_texts()) == {"可以推断出", "不能推断出", "很难推断出"}


def test_fewclue_integer_labels_take_their_names(tmp_path):
    path = write_jsonl(tmp_path / "tnews.json", [
        {"label": 102, "label_desc": "news_entertainment", "sentence": "明星演唱会", "keywords": ""},
        {"label": 103, "label_desc": "news_sports", "sentence": "球赛结果", "keywords": ""}])
    assert [example.label for example in read_examples(path)] == ["news_entertainment", "news_sports"]


def test_fewclue_label_index_file_gives_descriptions(tmp_path):
    path = write_jsonl(tmp_path / "label_index2en2zh.json", [
        {"label": "100", "label_desc": "news_story", "label_zh": "故事"},
        {"label": "101", "label_desc": "news_culture", "label_zh": "文化"}])
    labels, descriptions = read_label_file(path)
    assert labels == ["news_story", "news_culture"] and descriptions["news_culture"] == "文化"


def test_csv_and_json_array(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\n好的,pos\n坏的,neg\n", encoding="utf-8")
    (tmp_path / "d.json").write_text(json.dumps([{"text": "好的", "label": "pos"}]), encoding="utf-8")
    assert [e.label for e in read_examples(tmp_path / "d.csv")] == ["pos", "neg"]
    assert read_examples(tmp_path / "d.json")[0].text == "好的"


def test_explicit_files_override_the_folder(sentiment_dir, tmp_path):
    other = write_jsonl(tmp_path / "other_dev.json", [{"content": "很好", "label": "positive"}])
    assert len(load_task(sentiment_dir, dev=other).dev) == 1


@pytest.mark.parametrize("content, message", [
    ("", "file is empty"),
    ('{"content": "好", "label": "a"}\n{"content": "坏", "label": \n', ":2: malformed JSON"),
    ('{"content": "", "label": "a"}\n', ":1: empty text (field 'content')"),
    ('{"content": "好"}\n', ":1: missing label (field 'label')"),
    ('{"title": "好", "label": "a"}\n', ":1: no text field"),
    ('["not", "an", "object"]\n', "item 1: expected a JSON object"),
])
def test_bad_files_name_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "train.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_examples(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="nope.json: file not found"):
        read_examples(tmp_path / "nope.json")


def test_unknown_dev_label_is_named(sentiment_dir):
    write_jsonl(sentiment_dir / "dev.json", [{"content": "还行", "label": "positive"},
                                             {"content": "一般般", "label": "neutral"}])
    with pytest.raises(DataError, match=r"dev.json:2: unknown label 'neutral'.*\(field 'label'\)"):
        load_task(sentiment_dir)


def test_empty_unlabelled_file_is_an_empty_pool_but_an_empty_train_file_is_refused(sentiment_dir):
    (sentiment_dir / "unlabeled.json").write_text("\n", encoding="utf-8")
    assert load_task(sentiment_dir).unlabeled == []
    (sentiment_dir / "train.json").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="train.json: file is empty"):
        load_task(sentiment_dir)


def test_label_file_that_disagrees_with_the_data(sentiment_dir):
    write_jsonl(sentiment_dir / "labels.json", [{"labels": ["negative", "happy"]}])
    with pytest.raises(DataError, match=r"train.json:\d+: label 'positive' is not in the label file"):
        load_task(sentiment_dir)


def test_fewer_than_two_classes():
    with pytest.raises(DataError, match="at least 2 classes"):
        build_task([Example("好", label="a"), Example("很好", label="a")])


def test_duplicate_labels_in_label_file(tmp_path):
    path = write_jsonl(tmp_path / "labels.json", [{"labels": ["a", "b", "a"]}])
    with pytest.raises(DataError, match="duplicate labels"):
        read_label_file(path)


def test_mixed_single_and_pair_examples_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "train.json", [{"sentence1": "a", "sentence2": "b", "label": "1"},
                                                 {"content": "c", "label": "0"}])
    with pytest.raises(DataError, match="train.json:2: a similarity task expects a sentence pair"):
        build_task(read_examples(path))


def test_unlabelled_file_needs_no_label(tmp_path):
    path = write_jsonl(tmp_path / "unlabeled.json", [{"content": "无标签"}])
    assert read_examples(path, require_label=False)[0].label is None


def test_csl_keywords_become_the_second_text(tmp_path):
    path = write_jsonl(tmp_path / "csl.json", [{"abst": "本文研究无线传感器网络", "keyword": ["传感器", "网络"],
                                               "label": "1"}])
    example = read_examples(path)[0]
    assert (example.text, example.text_pair, example.label) == ("本文研究无线传感器网络", "传感器，网络", "1")


def test_cluewsc_spans_are_marked(tmp_path):
    record = {"text": "树叶飘入了树林，他走到了家人中间。", "label": "false",
              "target": {"span1_text": "树叶", "span1_index": 0, "span2_text": "他", "span2_index": 8}}
    path = write_jsonl(tmp_path / "wsc.json", [record, {**record, "target": {**record["target"], "span2_index": 3}}])
    with pytest.raises(DataError, match=r"wsc.json:2: span2 \('他' at 3\) does not match the text"):
        read_examples(path)
    path = write_jsonl(tmp_path / "wsc.json", [record])
    assert read_examples(path)[0].text == "[树叶]飘入了树林，<他>走到了家人中间。"


def test_multiple_choice_records_become_examples_with_choices(tmp_path):
    path = write_jsonl(tmp_path / "chid.json", [
        {"content": "他说话#idiom#。", "candidates": ["含糊其辞", "一清二楚"], "answer": 1},
        {"content": "风景#idiom#", "candidates": ["美不胜收", "乱七八糟"], "label": "美不胜收"}])
    first, second = read_examples(path)
    assert first.text == "他说话＿＿。" and first.choices == ["含糊其辞", "一清二楚"] and first.label == "一清二楚"
    assert second.label == "美不胜收"
    task = build_task([first, second], [first])
    assert task.task_type == "multiple_choice" and task.labels == [] and task.label_ids([first, second]) == [1, 0]


@pytest.mark.parametrize("record, field", [
    ({"content": "x#idiom#", "candidates": ["一"], "answer": 0}, "candidates"),
    ({"content": "x#idiom#", "candidates": ["一", "二"], "answer": 5}, "answer"),
    ({"content": "x#idiom#", "candidates": ["一", 2], "answer": 0}, "candidates"),
])
def test_bad_multiple_choice_records_name_line_and_field(tmp_path, record, field):
    path = write_jsonl(tmp_path / "chid.json", [record])
    with pytest.raises(DataError, match=f"chid.json:1.*'{field}'"):
        read_examples(path)


def test_a_multiple_choice_task_needs_choices_everywhere(tmp_path):
    with_choices = Example(text="a＿＿", label="一", choices=["一", "二"], source="t:1")
    with pytest.raises(DataError, match="t:2.*candidate answers"):
        build_task([with_choices], [Example(text="b", label="一", source="t:2")])


def test_empty_texts_are_refused_or_skipped_on_request(tmp_path):
    path = write_jsonl(tmp_path / "train.json", [{"content": "好", "label": "a"}, {"content": " ", "label": "b"}])
    with pytest.raises(DataError, match="train.json:2: empty text"):
        read_examples(path)
    assert [example.text for example in read_examples(path, skip_empty=True)] == ["好"]
