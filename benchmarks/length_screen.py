"""How much of a long text to read: a frozen-feature screen (benchmarks/ABLATION.md §25).

The engine truncates every text at ``max_seq_length`` = 256 tokens; a third of IFLYTEK's test texts and an eighth of
CSLDCP's are longer, and e5 reads 512. ``record`` embeds each run's texts with the untrained e5 as
``self_training_screen.py record`` does (test capped at 1,000 texts, FewCLUE's pool sampled), once at 256 tokens and
then again at each longer length for the texts that length changes (a text within 256 tokens embeds the same).
``report`` runs ``standard``'s head on each length's features (three random states) and prints the mean test accuracy
per task; test labels only ever score a length.

    python benchmarks/length_screen.py record fewclue iflytek,csldcp 0-1
    python benchmarks/length_screen.py report
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gts_hf.data import sample_examples
from gts_hf.engine import EngineSettings, features_of
from gts_hf.inference import predict

from selection_screen import fresh_runs  # sibling scripts (benchmarks/ is on sys.path)
from self_training_screen import POOL, load_run, record_or_report, report_variants, save_features

FOLDER = Path("/tmp/length_screen")
CURRENT = EngineSettings().max_seq_length  # 256
LONGER = (512,)


def record(suite: str, tasks: list[str], splits: list[int]) -> None:
    shared: dict[str, dict] = {}  # per task: the test (and pool) features at the current length
    current = FOLDER / str(CURRENT)
    for task_name in tasks:
        for split in splits:  # one split at a time, so each lands at every length before the next starts
            for spec, out, task, engine, model, tokenizer in fresh_runs(suite, [task_name], [split], current):
                parts = ("test", "pool") if suite == "fewclue" else ("test",)
                save_features(out, task, engine, model, tokenizer, shared.setdefault(task_name, {}), parts)
                for length in LONGER:
                    save_longer(out, FOLDER / str(length) / out.name, task, model, tokenizer, length)
                print(spec.task, spec.split, flush=True)


def save_longer(current: Path, out: Path, task, model, tokenizer, length: int) -> None:
    """The features at ``current``, with every text that is longer than the engine's limit embedded again at
    ``length`` tokens."""
    with np.load(current) as stored:
        arrays = {key: stored[key] for key in stored.files}
    parts = {"train": task.train, "dev": task.dev, "test": task.test, "pool": sample_examples(task.unlabeled, POOL, 0)}
    model.config.max_seq_length = length
    for name, examples in parts.items():
        long_rows = [row for row, example in enumerate(examples) if token_count(tokenizer, model, example) > CURRENT]
        if long_rows:
            features = features_of(predict(model, tokenizer, [examples[row] for row in long_rows], use_knn=False))
            for key, value in features.items():
                arrays[f"{name}_{key}"][long_rows] = value.numpy()
    model.config.max_seq_length = CURRENT
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)


def token_count(tokenizer, model, example) -> int:
    """Tokens of the example as :func:`gts_hf.inference.tokenize_texts` reads it, before truncation."""
    return len(tokenizer(model.config.query_prefix + example.text, example.text_pair)["input_ids"])


def report() -> None:
    paths = sorted((FOLDER / str(CURRENT)).glob("*.npz"))
    report_variants(paths, lambda path: {
        "current": load_run(path),
        **{f"{length} tokens": load_run(FOLDER / str(length) / path.name) for length in LONGER}})


if __name__ == "__main__":
    record_or_report(record, report)
