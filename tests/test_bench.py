"""`gts-hf bench`: planning, sampling, label files, and an end-to-end run on a tiny FewCLUE-like task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from gts_hf import bench
from gts_hf.cli import main
from gts_hf.data import Example

from .conftest import NEGATIVE, POSITIVE, write_jsonl


def _eprstmt_records(start: int, stop: int) -> list[dict]:
    return [{"id": i, "sentence": text, "label": label} for label, texts in (("Positive", POSITIVE),
                                                                             ("Negative", NEGATIVE))
            for i, text in enumerate(texts[start:stop])]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tiny models gain nothing from threads, and spinning threads crawl on a busy machine."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the worker processes
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def fewclue_root(tmp_path: Path) -> Path:
    """``fewclue/eprstmt`` (FewCLUE fields, split 0) and ``fewclue/topics`` (int labels, TNEWS-style label file)."""
    root = tmp_path / "data" / "fewclue"
    eprstmt = root / "eprstmt"
    eprstmt.mkdir(parents=True)
    write_jsonl(eprstmt / "train_0.json", _eprstmt_records(0, 5))
    write_jsonl(eprstmt / "dev_0.json", _eprstmt_records(5, 8))
    write_jsonl(eprstmt / "test_public.json", _eprstmt_records(0, 8))
    topics = root / "topics"
    topics.mkdir()
    records = [{"label": 100 + (label == "Negative"), "label_desc": f"news_{label.lower()}", "sentence": r["sentence"]}
               for r in _eprstmt_records(0, 8) for label in [r["label"]]]
    for name in ("train_0.json", "dev_0.json", "test_public.json"):
        write_jsonl(topics / name, records)
    write_jsonl(topics / "label_index2en2zh.json", [
        {"label": "100", "label_desc": "news_positive", "label_zh": "正面"},
        {"label": "101", "label_desc": "news_negative", "label_zh": "负面"}])
    return root.parent


def test_parse_int_list() -> None:
    assert bench.parse_int_list("0-4") == [0, 1, 2, 3, 4]
    assert bench.parse_int_list("8,64") == [8, 64]
    assert bench.parse_int_list("0,2-3") == [0, 2, 3]
    with pytest.raises(ValueError):
        bench.parse_int_list("a-b")
    with pytest.raises(ValueError):
        bench.parse_names("gts-fast,nope", bench.METHODS)


def test_sample_per_class_is_seeded_balanced_and_disjoint() -> None:
    pool = [Example(text=f"t{i}", label="ab"[i % 2]) for i in range(40)]
    train, dev = bench.sample_per_class(pool, 4, seed=1)
    assert sorted(e.label for e in train) == ["a"] * 4 + ["b"] * 4
    assert sorted(e.label for e in dev) == ["a"] * 4 + ["b"] * 4
    assert not {e.text for e in train} & {e.text for e in dev}
    assert [e.text for e in train] == [e.text for e in bench.sample_per_class(pool, 4, seed=1)[0]]
    assert [e.text for e in train] != [e.text for e in bench.sample_per_class(pool, 4, seed=2)[0]]


def test_label_file_descriptions_become_options(fewclue_root: Path, tmp_path: Path) -> None:
    options = bench.RunOptions(methods=["zeroshot"], output_dir=tmp_path / "out", max_test=3)
    spec, = bench.fewclue_specs(options, fewclue_root, ["topics"], [0])
    assert spec.labels and spec.labels.endswith("label_index2en2zh.json")
    task = bench.load_spec_task(spec)
    assert task.labels == ["news_positive", "news_negative"]
    assert task.option_texts() == ["正面", "负面"]
    assert len(task.test) == 3


def _bench_argv(root: Path, student: Path, output: Path, methods: str) -> list[str]:
    return ["bench", "fewclue", "--tasks", "eprstmt", "--splits", "0", "--methods", methods, "--student", str(student),
            "--data-root", str(root), "--output-dir", str(output)]


def _check_record(path: Path, method: str) -> dict:
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["method"] == method and record["n_test"] == 16
    assert 0.0 <= record["accuracy"] <= 1.0 and 0.0 <= record["macro_f1"] <= 1.0 and -1.0 <= record["mcc"] <= 1.0
    assert record["train_seconds"] >= 0 and record["texts_per_second"] > 0 and record["peak_rss_mb"] > 0
    assert record["environment"]["versions"]["torch"] and record["settings"]
    return record


def test_bench_fewclue_end_to_end(fewclue_root: Path, tiny_student: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The command line: one JSON per run, RESULTS.md and the plot; a second invocation skips what is done."""
    output = tmp_path / "benchmarks"
    argv = _bench_argv(fewclue_root, tiny_student, output, "gts-fast,zeroshot") + ["--in-process"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("fewclue/eprstmt/split0") == 2 and "FAILED" not in printed, printed
    for method in ("gts-fast", "zeroshot"):
        _check_record(output / "results" / "fewclue" / "eprstmt" / "split0" / f"{method}.json", method)
    results = (output / "RESULTS.md").read_text(encoding="utf-8")
    assert "## fewclue" in results and "| eprstmt | gts-fast | 1 | 16 |" in results
    assert "| eprstmt | zeroshot |" in results
    assert (output / "results.png").stat().st_size > 0
    fast = json.loads((output / "results" / "fewclue" / "eprstmt" / "split0" / "gts-fast.json").read_text())
    without_prior = fast["details"]["ablation"]["without_label_prior"]
    assert 0 <= without_prior["accuracy"] <= 1 and "Label prior ablation" in results
    assert f"| eprstmt | gts-fast | 1 | {100 * fast['accuracy']:.2f} | {100 * without_prior['accuracy']:.2f} |" \
        in results
    assert "before the label prior" not in results
    older = {**fast, "settings": {key: value for key, value in fast["settings"].items() if key != "label_prior_weight"}}
    assert "before the label prior (an older recipe, not rerun): eprstmt gts-fast." in \
        bench.render_markdown([older], plot_name=None)
    assert "before the body stage" not in results  # gts-fast has no body stage, and this one records its setting
    standard = {**fast, "method": "gts-standard",
                "settings": {key: value for key, value in fast["settings"].items() if key != "body_steps"}}
    assert "before the body stage (an older recipe, not rerun): eprstmt gts-standard." in \
        bench.render_markdown([standard], plot_name=None)
    assert "before fine-tuning left standard" not in bench.render_markdown([standard], plot_name=None)
    standard["settings"] = {key: value for key, value in standard["settings"].items() if key != "finetune"}
    assert "before fine-tuning left standard (an older recipe, not rerun): eprstmt gts-standard." in \
        bench.render_markdown([standard], plot_name=None)
    assert "before the cosine pair head" not in bench.render_markdown([standard], plot_name=None)  # single texts
    standard["data"] = {**standard["data"], "task_type": "similarity"}
    assert "before the cosine pair head" not in bench.render_markdown([standard], plot_name=None)  # records it
    standard["settings"] = {key: value for key, value in standard["settings"].items() if key != "pair_head"}
    assert "before the cosine pair head (an older recipe, not rerun): eprstmt gts-standard." in \
        bench.render_markdown([standard], plot_name=None)
    standard["details"] = {key: value for key, value in standard["details"].items() if key != "knn"}
    assert "before similarity pairs left" not in bench.render_markdown([standard], plot_name=None)  # no kNN record
    standard["details"]["knn"] = {"k": 4, "lambda": 0.5}
    assert "before similarity pairs left the body stage and kNN (an older recipe, not rerun): eprstmt gts-standard." \
        in bench.render_markdown([standard], plot_name=None)
    standard["details"]["knn"] = {"skipped": "the cosine pair head"}
    assert "before similarity pairs left" not in bench.render_markdown([standard], plot_name=None)
    standard["data"]["task_type"] = "classification"  # a datastore in the record: made before kNN left the defaults
    assert "before kNN left" not in bench.render_markdown([standard], plot_name=None)
    standard["details"]["knn"] = {"k": 4, "lambda": 0.5}
    assert "before kNN left the defaults (an older recipe, not rerun): eprstmt gts-standard." in \
        bench.render_markdown([standard], plot_name=None)

    assert main(argv) == 0
    assert capsys.readouterr().out.count("skipped (result exists") == 2


def test_bench_runs_each_run_in_its_own_process(fewclue_root: Path, tiny_student: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The default: a fresh interpreter per run (own peak memory, isolated failures), its output in runs/."""
    output = tmp_path / "benchmarks"
    assert main(_bench_argv(fewclue_root, tiny_student, output, "zeroshot") + ["--max-test", "6"]) == 0
    assert "FAILED" not in capsys.readouterr().out
    record = json.loads((output / "results" / "fewclue" / "eprstmt" / "split0" / "zeroshot.json").read_text())
    assert record["isolated_process"] and record["n_test"] == 6 and record["identity"]["max_test"] == 6
    assert (output / "runs" / "fewclue" / "eprstmt" / "split0" / "zeroshot.log").is_file()


@pytest.mark.parametrize(("method", "label"), [("setfit", "setfit-2it"), ("finetune", "finetune")])
def test_baseline_methods_run(method: str, label: str, fewclue_root: Path, tiny_student: Path,
                              tmp_path: Path) -> None:
    """SetFit and plain fine-tuning, run in this process (the subprocess path is covered above). SetFit with other
    than the paper's 20 iterations is filed and reported under its own name, never as ``setfit``."""
    options = bench.RunOptions(methods=[method], output_dir=tmp_path, student=str(tiny_student), setfit_iterations=2)
    spec, = bench.fewclue_specs(options, fewclue_root / "fewclue", ["eprstmt"], [0])
    assert Path(spec.output).name == f"{label}.json"
    bench.run_one(spec)
    record = _check_record(Path(spec.output), label)
    assert bench.is_done(spec)
    assert record["settings"]["query_prefix"] == ""  # the tiny student is not an e5 model
    report = bench.render_markdown([record], plot_name=None)
    assert f"| eprstmt | {label} |" in report


def test_advanced_variant_uses_the_unlabelled_file_never_the_test(fewclue_root: Path, tiny_student: Path,
                                                                  tmp_path: Path) -> None:
    """gts-advanced-self (no LLM: the student self-trains) reads the task's unlabeled.json as its pool."""
    folder = fewclue_root / "fewclue" / "eprstmt"
    write_jsonl(folder / "unlabeled.json", [{"sentence": r["sentence"] + "！"} for r in _eprstmt_records(0, 8)])
    options = bench.RunOptions(methods=["gts-advanced-self"], output_dir=tmp_path, student=str(tiny_student))
    spec, = bench.fewclue_specs(options, fewclue_root / "fewclue", ["eprstmt"], [0])
    assert spec.unlabeled and spec.unlabeled.endswith("unlabeled.json")
    record = _check_record(Path(bench.run_one(spec) and spec.output), "gts-advanced-self")
    advanced = record["details"]["advanced"]
    assert advanced["pool"]["unlabeled"] == 16 and advanced["teacher"] is None and advanced["generator"] is None


@pytest.mark.parametrize("dev_accuracies", [(0.5, 0.75), (0.75, 0.5)])  # self-training kept, undone
def test_self_training_ablation_equals_the_model_with_the_other_head(tiny_student: Path, sentiment_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    dev_accuracies: tuple[float, float]) -> None:
    from gts_hf import GTSEngine, load_task, predict

    write_jsonl(sentiment_dir / "unlabeled.json", [{"text": text} for text in POSITIVE + NEGATIVE])
    task = load_task(sentiment_dir)
    answers = iter(dev_accuracies)
    monkeypatch.setattr(GTSEngine, "_dev_accuracy_with_prior", lambda *args: next(answers))
    trained = GTSEngine(mode="standard", student=str(tiny_student), head_steps=30, body_steps=0).train(task)
    assert trained.record["self_training"]["kept"] is (dev_accuracies[1] >= dev_accuracies[0])
    chosen = predict(trained.model, trained.tokenizer, task.test)
    ablation = bench.with_other_head(trained, "self_training", task, chosen)
    assert predict(trained.model, trained.tokenizer, task.test).label_ids.tolist() == chosen.label_ids.tolist()
    trained.model.load_state_dict(trained.other_heads["self_training"], strict=False)
    other = predict(trained.model, trained.tokenizer, task.test)
    assert ablation == bench.score(task.label_ids(task.test), other.label_ids, len(task.labels))
    assert bench.with_other_head(trained, "body", task, chosen) is None


def test_self_training_ablation_table() -> None:
    run = {"suite": "fewclue", "task": "eprstmt", "split": "split0", "method": "gts-standard", "accuracy": 0.8}
    kept = {**run, "details": {"self_training": {"kept": True},
                               "ablation": {"without_self_training": {"accuracy": 0.7}}}}
    undone = {**run, "split": "split1", "accuracy": 0.6,
              "details": {"self_training": {"kept": False}, "ablation": {"with_self_training": {"accuracy": 0.9}}}}
    lines = bench._self_training_ablation_lines("fewclue", [kept, undone, {**run, "details": {}}])
    assert lines[-1] == "| eprstmt | gts-standard | 2 | 85.00 | 65.00 | +20.00 | 1 |"
    assert bench._self_training_ablation_lines("english", [kept, undone]) == []


def test_time_ratios_fall_back_to_a_cheaper_setfit_proxy_only() -> None:
    """Splits without SetFit's default recipe are divided by a proxy with fewer iterations (a lower bound of its
    time), never by one with more; the table names the SetFit run used."""
    def run(task: str, split: str, method: str, seconds: float) -> dict:
        return {"suite": "fewclue", "task": task, "split": split, "method": method, "train_seconds": seconds}

    records = [run("tnews", "split0", "gts-standard", 10), run("tnews", "split0", "setfit", 100),
               run("tnews", "split0", "setfit-1it", 5),
               run("iflytek", "split0", "gts-standard", 30), run("iflytek", "split0", "setfit-1it", 60),
               run("iflytek", "split0", "setfit-2it", 120), run("iflytek", "split0", "setfit-40it", 1000),
               run("csldcp", "split0", "gts-standard", 30), run("csldcp", "split0", "setfit-40it", 1000)]
    ratios = bench.time_ratios(records)
    assert ratios[("fewclue", "tnews")] == {"gts-standard": (0.1, 1, "setfit")}
    assert ratios[("fewclue", "iflytek")] == {"gts-standard": (0.25, 1, "setfit-2it")}
    assert ("fewclue", "csldcp") not in ratios
    assert "| iflytek | setfit-2it | — | 0.25× (1) | — |" in bench._ratio_lines("fewclue", ratios)


@pytest.mark.parametrize("labels, train, body, older", [
    (6, 48, {"kept": False}, True), (6, 48, {"kept": True}, False),  # more than two labels: always kept now
    (2, 16, {"kept": False}, True), (2, 32, {"kept": True}, True),  # two labels, at most 16 per label: skipped now
    (2, 128, {"kept": False}, False), (2, 16, {"skipped": "two labels"}, False), (6, 48, None, False)])
def test_runs_made_before_the_body_rule_by_label_count_are_named(labels: int, train: int, body: dict | None,
                                                                 older: bool) -> None:
    record = {"task": "t", "method": "gts-standard", "settings": {"tuned_shots": 16}, "details": {"body": body},
              "data": {"task_type": "classification", "num_labels": labels, "num_train": train}}
    assert bench._predates_the_body_rule_by_label_count(record) is older
    named = "the body stage's rule by label count (an older recipe, not rerun): t gts-standard."
    assert (named in " ".join(bench._older_recipe_lines([record]))) is older


@pytest.mark.parametrize("labels, task_type, body, older", [
    (6, "classification", {"kept": True}, True), (6, "classification", {"pretrained_encoder_kept": False}, False),
    (6, "classification", {"pretrained_encoder_kept": True}, False), (2, "classification", {"kept": True}, False),
    (3, "nli", {"kept": True}, False), (6, "classification", None, False)])
def test_runs_made_before_the_pretrained_encoder_are_named(labels: int, task_type: str, body: dict | None,
                                                           older: bool) -> None:
    record = {"task": "t", "method": "gts-standard", "details": {"body": body},
              "data": {"task_type": task_type, "num_labels": labels}}
    named = "the pretrained encoder beside the reshaped one (an older recipe, not rerun): t gts-standard."
    assert (named in " ".join(bench._older_recipe_lines([record]))) is older


def test_label_prior_ablation_equals_a_model_without_the_prior(tiny_student: Path, sentiment_dir: Path) -> None:
    from gts_hf import GTSEngine, load_task, predict

    task = load_task(sentiment_dir)
    trained = GTSEngine(mode="fast", student=str(tiny_student), head_steps=30).train(task)
    ablation = bench.without_label_prior(trained, task, predict(trained.model, trained.tokenizer, task.test))
    trained.model.config.label_prior_weight = 0.0
    plain = predict(trained.model, trained.tokenizer, task.test)
    expected = bench.score(task.label_ids(task.test), plain.label_ids, len(task.labels))
    assert ablation == expected
    assert bench.without_label_prior(trained, task, plain) is None


@pytest.mark.parametrize("task_type, details, older", [
    ("classification", {}, True), ("classification", {"option_template": {"template": "{}"}}, False),
    ("similarity", {}, False)])
def test_runs_made_before_the_option_template_default_are_named(task_type: str, details: dict, older: bool) -> None:
    record = {"task": "t", "method": "gts-fast", "details": details, "data": {"task_type": task_type}}
    named = "the option template chosen on dev, which leaves a run unchanged"
    assert (named in " ".join(bench._older_recipe_lines([record]))) is older
