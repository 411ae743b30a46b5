"""Label texts in a sentence (``option_template``): a frozen-feature screen (benchmarks/ABLATION.md §16).

On the features that ``self_training_screen.py record`` saved, each run's head is fitted and self-trained as
``standard`` does (self-training where the task has a pool, kept unless dev accuracy falls), starting from label
vectors that are the e5 embeddings of the label texts put in each template of
:data:`gts_hf.data.OPTION_TEMPLATES`, and from the template the engine's ``option_template="auto"`` picks for the run
(:meth:`GTSEngine._template_by_dev_loss`, the lowest zero-shot dev log-loss), and from each label's vector averaged over
the templates (a prompt ensemble, ABLATION §17). Zero-shot test accuracy is shown too.
Test labels only ever score a template. Each variant is scored over three head fits that differ only in their random
state.

    python benchmarks/self_training_screen.py record ...   # once, see its docstring
    python benchmarks/template_screen.py TASK,... [SPLITS]  # e.g. cr-n8,emotion-n8,tnews 0-4
    python benchmarks/template_screen.py choices             # the template auto takes in each bench run (§24)

``choices`` needs no recorded features: for every single-text classification run of the bench (English N = 8, seeds
0-4, and N = 64, seed 0; EPRSTMT, TNEWS, IFLYTEK and CSLDCP splits 0-4) it prints the template ``auto`` (the engine's
default since §24) takes, its zero-shot dev log-losses, and whether the committed result file was made with it. A
run whose dev keeps the bare label texts trains exactly as it did before §24.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gts_hf.bench import RunOptions, english_specs, fewclue_specs, load_spec_task, parse_int_list
from gts_hf.data import OPTION_TEMPLATES, fill_template
from gts_hf.engine import GTSEngine

from selection_screen import DATA, MAX_TEST, print_rule_table  # sibling scripts (benchmarks/ is on sys.path)
from self_training_screen import FEATURES, Run, _head_only_model, over_random_states


def zero_shot_accuracy(arrays: dict[str, np.ndarray], options: torch.Tensor) -> float:
    embeddings = torch.from_numpy(arrays["test_embeddings"]).float()
    return float(((embeddings @ options.T).argmax(-1).numpy() == arrays["ytest"]).mean())


def task_of(task_name: str, split: int):
    """The run's task (train, dev and the label texts) as the bench builds it."""
    options = RunOptions(methods=["gts-fast"], output_dir=Path("/tmp/template_screen"), max_test=MAX_TEST)
    if task_name.endswith("-n8"):
        specs = english_specs(options, DATA, [task_name.removesuffix("-n8")], [8], [split])
    else:
        specs = fewclue_specs(options, DATA, [task_name], [split])
    return load_spec_task(next(iter(specs)))


def variants(arrays: dict[str, np.ndarray], task, engine: GTSEngine, model, tokenizer) -> dict[str, float]:
    chosen, _ = engine._template_by_dev_loss(model, tokenizer, task)
    scores, by_template = {}, {}
    for template in OPTION_TEMPLATES[task.language]:
        by_template[template] = model.encode_texts(tokenizer, fill_template(template, task.option_texts()))
        name = "current" if template == "{}" else f"template {template!r}"
        scores[name + ", zero-shot"], scores[name] = trained_accuracy(arrays, by_template[template])
        if template == chosen:
            scores["auto, zero-shot"], scores["auto"] = scores[name + ", zero-shot"], scores[name]
    averaged = F.normalize(torch.stack([F.normalize(options, dim=-1) for options in by_template.values()]).mean(0),
                           dim=-1)  # a prompt ensemble: each label's vector averaged over the templates
    scores["templates averaged, zero-shot"], scores["templates averaged"] = trained_accuracy(arrays, averaged)
    last = ("auto", "templates averaged")
    return {name: scores[name] for name in sorted(scores, key=lambda name: (name.startswith(last), name))}


def trained_accuracy(arrays: dict[str, np.ndarray], options: torch.Tensor) -> tuple[float, float]:
    """Zero-shot test accuracy of the label vectors ``options``, and test accuracy once a head starting (and
    anchored) there is fitted and self-trained as ``standard`` does, over ``RNG_SEEDS`` random states."""
    run = Run({**arrays, "prior": options.numpy()}, _head_only_model(*options.shape), False)
    return zero_shot_accuracy(arrays, options), over_random_states(run, standard_test_accuracy)["test"]


def standard_test_accuracy(run: Run) -> dict[str, float]:
    run.fit_as_standard()
    return {"test": run.accuracy("test")}


def report(tasks: list[str], splits: list[int]) -> None:
    by_language: dict[str, dict[str, list[dict[str, float]]]] = defaultdict(lambda: defaultdict(list))
    engine, model, tokenizer = GTSEngine(mode="fast"), None, None
    for task_name in tasks:
        for split in splits:
            path = FEATURES / f"{task_name}_{'seed' if task_name.endswith('-n8') else 'split'}{split}.npz"
            with np.load(path) as stored:
                arrays = {key: stored[key] for key in stored.files}
            task = task_of(task_name, split)
            if model is None:
                model, tokenizer = engine.build_student(task)
            scores = variants(arrays, task, engine, model, tokenizer)
            by_language[task.language][task_name].append(scores)
            print(path.stem, {name: round(100 * value, 2) for name, value in scores.items()}, file=sys.stderr,
                  flush=True)
    for language, by_task in by_language.items():  # one table per language: each has its own templates
        print(f"\n{language}\n")
        print_rule_table(by_task)


def bench_specs() -> list:
    options = RunOptions(methods=["gts-standard"], output_dir=Path(__file__).parent)
    english = ["ag_news", "amazon_counterfactual_en", "cr", "emotion", "sst5"]
    return (english_specs(options, DATA, english, [8], range(5)) + english_specs(options, DATA, english, [64], [0])
            + fewclue_specs(options, DATA, ["eprstmt", "tnews", "iflytek", "csldcp"], range(5)))


def print_choices() -> None:
    engine, model, tokenizer = GTSEngine(), None, None
    for spec in bench_specs():
        task = load_spec_task(spec)
        if model is None:
            model, tokenizer = engine.build_student(task)
        chosen, record = engine._template_by_dev_loss(model, tokenizer, task)
        result = Path(spec.output)
        made_with = json.loads(result.read_text())["details"].get("option_template", {}).get("template") \
            if result.exists() else "no result file"
        print(f"{spec.task} {spec.split}: auto takes {chosen!r}; result file made with {made_with!r}; "
              f"dev log-loss {record['dev_log_loss']}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1:] == ["choices"]:
        print_choices()
    elif len(sys.argv) == 3:
        report(sys.argv[1].split(","), parse_int_list(sys.argv[2]))
    else:
        sys.exit(__doc__)
