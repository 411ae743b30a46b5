"""Test set-up: no traffic leaves the machine, tiny random-weight students, small fixture tasks.

The Hub environment is set before anything imports huggingface_hub (the loopback Hub plugin does it when present).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
# A dead proxy: any stray request for a remote host fails at once instead of leaving the machine.
os.environ.setdefault("HTTP_PROXY", "http://127.0.0.1:9")
os.environ.setdefault("HTTPS_PROXY", "http://127.0.0.1:9")
sys.path.insert(0, str(ROOT))

pytest_plugins = ["tests.conftest_hub"] if (ROOT / "tests" / "conftest_hub.py").is_file() else []

POSITIVE = ["这个手机很好用", "质量很好，非常满意", "物流很快，好评", "服务热情，很喜欢", "味道不错，还会再买",
            "非常好，推荐购买", "包装精美，很满意", "性价比很高，好用"]
NEGATIVE = ["质量太差了", "用了两天就坏了", "客服态度很差", "非常失望，不推荐", "物流太慢，差评",
            "东西是坏的，退货", "味道很难吃", "做工粗糙，很差"]
PAIRS_SAME = [("今天天气怎么样", "今天天气如何"), ("你叫什么名字", "你的名字是什么"), ("我喜欢吃苹果", "苹果是我爱吃的"),
              ("这本书很好看", "这本书不错"), ("明天去北京", "明天要去北京"), ("他在哪里工作", "他的工作地点在哪")]
PAIRS_DIFF = [("今天天气怎么样", "我想吃饭"), ("你叫什么名字", "北京很大"), ("我喜欢吃苹果", "明天下雨"),
              ("这本书很好看", "手机没电了"), ("明天去北京", "猫在睡觉"), ("他在哪里工作", "电影很好看")]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


def write_task_dir(folder: Path, records: Callable[[int, int], list[dict]]) -> Path:
    """A GTS-Engine folder whose train, dev and test files hold ``records(count, offset)``: 12, 6 and 6 of them."""
    folder.mkdir()
    for name, count, offset in (("train", 12, 0), ("dev", 6, 12), ("test", 6, 18)):
        write_jsonl(folder / f"{name}.json", records(count, offset))
    return folder


def build_tiny_student(folder: Path, texts: list[str]) -> Path:
    """A random-weight 2-layer BERT with a character-level tokenizer covering ``texts`` (seconds to train)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    characters = sorted({char for text in texts for char in text} | set("abcdefghijklmnopqrstuvwxyz0123456789:"))
    vocab = {token: index for index, token in enumerate(specials + characters)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def all_fixture_texts() -> list[str]:
    return POSITIVE + NEGATIVE + [text for pair in PAIRS_SAME + PAIRS_DIFF for text in pair] + \
        ["正面", "负面", "两句话意思相同", "两句话意思不同", "query"]


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_student(tmp_path_factory.mktemp("tiny_student"), all_fixture_texts())


def _sentiment_records(texts: list[str], label: str) -> list[dict]:
    return [{"content": text, "label": label} for text in texts]


@pytest.fixture()
def sentiment_dir(tmp_path: Path) -> Path:
    """A GTS-Engine folder: train/dev/test/labels for a 2-class sentiment task."""
    folder = tmp_path / "sentiment"
    folder.mkdir()
    train = _sentiment_records(POSITIVE[:5], "positive") + _sentiment_records(NEGATIVE[:5], "negative")
    held = _sentiment_records(POSITIVE[5:], "positive") + _sentiment_records(NEGATIVE[5:], "negative")
    write_jsonl(folder / "train.json", train)
    write_jsonl(folder / "dev.json", held)
    write_jsonl(folder / "test.json", held)
    write_jsonl(folder / "labels.json", [{"labels": ["negative", "positive"],
                                          "descriptions": {"negative": "负面", "positive": "正面"}}])
    return folder


@pytest.fixture()
def pair_dir(tmp_path: Path) -> Path:
    """A GTS-Engine similarity folder (sentence1/sentence2/label "0"|"1")."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    records = [{"sentence1": a, "sentence2": b, "label": "1"} for a, b in PAIRS_SAME] + \
              [{"sentence1": a, "sentence2": b, "label": "0"} for a, b in PAIRS_DIFF]
    write_jsonl(folder / "train.json", records[0:4] + records[6:10])
    write_jsonl(folder / "dev.json", records[4:6] + records[10:12])
    write_jsonl(folder / "labels.json", [{"labels": ["0", "1"]}])
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (it lives beside the repo, in ../shared/data)")
    return SHARED_DATA
