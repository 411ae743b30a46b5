"""The Generator: a chat language model writes new labelled examples (the "G" of Generator-Teacher-Student).

Two kinds of request, interleaved label by label so that a time budget still yields balanced classes:

- *new*: "here are a few texts of label X (its description); write N more" (single-text tasks);
- *paraphrase*: "say this training text differently" (the paraphrase keeps the label; for pair tasks the second
  sentence is paraphrased and the first kept).

Outputs are cleaned (numbering, quotes, length), deduplicated against each other and against every text of the task
(train, dev, test, unlabelled), and cached on disk request by request: a rerun, or a run resumed after an interrupt,
reads finished requests back instead of generating them again. The intended label is only a proposal: the teacher
verifies it (see :mod:`gts_hf.advanced`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from .data import Example, FewShotTask

logger = logging.getLogger(__name__)

PROMPTS = {
    "zh": {
        "new": "我在为一个文本分类器准备训练数据。类别“{label}”的例子：\n{examples}\n请再写{count}条新的、属于“{label}”的文字，"
               "内容多样，风格和长度与例子相似。每行一条，不要编号，不要解释。",
        "paraphrase": "请换一种说法改写下面这段文字，意思完全不变。写{count}个不同的改写，每行一个，不要编号，不要解释。\n文字：{text}",
    },
    "en": {
        "new": "I am preparing training data for a text classifier. Examples of the label \"{label}\":\n{examples}\n"
               "Write {count} new, varied texts of the label \"{label}\", similar in style and length to the examples. "
               "One per line, no numbering, no explanations.",
        "paraphrase": "Rewrite the following text in other words, keeping its meaning exactly. Write {count} different "
                      "rewrites, one per line, no numbering, no explanations.\nText: {text}",
    },
}
_LEADING_NOISE = re.compile(r"^\s*(?:[-*•]+|\(?\d+[.)、:：]|（\d+）|[a-zA-Z][.)])\s*")
_QUOTES = "\"'“”‘’「」『』"


@dataclass
class GenerationSettings:
    """How much to generate and how.

    Args:
        per_label: new texts wanted per label (single-text tasks).
        paraphrases_per_example: paraphrases wanted per training example (0: none).
        per_request: texts asked for in one request.
        examples_in_prompt: training examples of the label shown in a *new* request.
        max_seconds: stop starting requests after this much time (None: no limit).
    """

    per_label: int = 32
    paraphrases_per_example: int = 1
    per_request: int = 8
    examples_in_prompt: int = 4
    max_new_tokens: int = 320
    temperature: float = 0.9
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    max_seconds: float | None = 600.0
    seed: int = 42


@dataclass
class Request:
    key: str
    kind: str
    label: str
    message: str
    count: int
    anchor: Example | None = None  # the example a paraphrase rewrites


class Generator:
    """Any causal LM with a chat template, used to write task data.

    >>> generator = Generator.from_pretrained("Qwen/Qwen2.5-7B-Instruct")
    >>> new_examples = generator.generate(task, GenerationSettings(per_label=64))
    """

    def __init__(self, model: Any, tokenizer: Any, name_or_path: str = ""):
        self.model, self.tokenizer, self.name_or_path = model, tokenizer, name_or_path
        self.model.eval()
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{name_or_path or 'the generator'} has no chat template: use an instruction-tuned model")

    @classmethod
    def from_pretrained(cls, model_id: str, dtype: str | torch.dtype = "auto",
                        device: str | torch.device | None = None) -> "Generator":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .backbones import resolve_model_path
        from .teacher import _dtype

        path = resolve_model_path(model_id)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(dtype))
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return cls(model, tokenizer, name_or_path=model_id)

    @classmethod
    def share_model(cls, teacher: Any) -> "Generator":
        """A generator on the teacher's model (one copy in memory when both are the same LM)."""
        return cls(teacher.model, teacher.tokenizer, teacher.name_or_path)

    # ------------------------------------------------------------------------------------------------- generation
    def complete(self, message: str, settings: GenerationSettings, seed: int) -> str:
        prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                                    add_generation_prompt=True)
        encoded = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
            self.tokenizer.eos_token_id
        # a private random stream: whether a request came from the cache must not change the student's training
        with torch.random.fork_rng(devices=[self.model.device] if self.model.device.type == "cuda" else []), \
                torch.no_grad():
            torch.manual_seed(seed)
            output = self.model.generate(**encoded, do_sample=True, temperature=settings.temperature,
                                         top_p=settings.top_p, max_new_tokens=settings.max_new_tokens,
                                         repetition_penalty=settings.repetition_penalty, pad_token_id=pad_id)
        return self.tokenizer.decode(output[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)

    def generate(self, task: FewShotTask, settings: GenerationSettings | None = None,
                 cache_dir: str | Path | None = None, show_progress: bool = True) -> list[Example]:
        """New examples with their intended labels, cleaned and deduplicated (cached in ``cache_dir``)."""
        settings = settings or GenerationSettings()
        requests = plan_requests(task, settings)
        cache = GenerationCache(cache_dir, self._cache_key(task, settings))
        started = time.monotonic()
        outputs: dict[str, list[str]] = {}
        for index, request in enumerate(tqdm(requests, desc="generating", disable=not show_progress)):
            if request.key not in cache.done:
                if settings.max_seconds is not None and time.monotonic() - started > settings.max_seconds:
                    logger.warning("generation time budget (%ss) spent after %d of %d requests", settings.max_seconds,
                                   index, len(requests))
                    break
                cache.add(request.key, clean_lines(self.complete(request.message, settings, settings.seed + index)))
            outputs[request.key] = cache.done[request.key]
        return build_examples(task, requests, outputs)

    def _cache_key(self, task: FewShotTask, settings: GenerationSettings) -> str:
        # max_seconds bounds the work, not what a request produces: reruns with another budget reuse the cache
        identity = {"model": self.name_or_path, "labels": task.labels,
                    "settings": {key: value for key, value in asdict(settings).items() if key != "max_seconds"},
                    "options": task.option_texts(), "task_type": task.task_type,
                    "train": [example.to_dict() for example in task.train]}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------ planning
def plan_requests(task: FewShotTask, settings: GenerationSettings) -> list[Request]:
    """Every request, round-robin over labels (new texts, then paraphrases), deterministic for a seed."""
    rng = random.Random(settings.seed)
    prompts = PROMPTS["zh" if task.language == "zh" else "en"]
    by_label = {label: [example for example in task.train if example.label == label] for label in task.labels}
    per_label: dict[str, list[Request]] = {label: [] for label in task.labels}
    for label, examples in by_label.items():
        name = task.label_descriptions.get(label) or label
        if not task.is_pair and examples and settings.per_label > 0:
            for number in range(-(-settings.per_label // settings.per_request)):
                shown = rng.sample(examples, min(settings.examples_in_prompt, len(examples)))
                message = prompts["new"].format(label=name, count=settings.per_request,
                                                examples="\n".join(f"- {example.text}" for example in shown))
                per_label[label].append(Request(f"new/{label}/{number}", "new", label, message, settings.per_request))
        if settings.paraphrases_per_example > 0:
            for number, example in enumerate(examples):
                text = example.text_pair if task.is_pair else example.text
                message = prompts["paraphrase"].format(text=text, count=settings.paraphrases_per_example)
                per_label[label].append(Request(f"paraphrase/{label}/{number}", "paraphrase", label, message,
                                                settings.paraphrases_per_example, anchor=example))
    return _round_robin(list(per_label.values()))


def _round_robin(queues: list[list[Request]]) -> list[Request]:
    ordered = []
    for position in range(max((len(queue) for queue in queues), default=0)):
        ordered.extend(queue[position] for queue in queues if position < len(queue))
    return ordered


# ------------------------------------------------------------------------------------------------------ cleaning
def clean_lines(completion: str, min_chars: int = 4, max_chars: int = 400) -> list[str]:
    """One candidate text per line, without numbering, bullets or surrounding quotes."""
    lines = []
    for raw in completion.splitlines():
        line = _LEADING_NOISE.sub("", raw).strip().strip(_QUOTES).strip()
        if min_chars <= len(line) <= max_chars:
            lines.append(line)
    return lines


def normalise(text: str) -> str:
    """The deduplication key: NFKC, lower case, without whitespace and punctuation."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(char for char in text if not (char.isspace() or unicodedata.category(char).startswith("P")))


def task_texts(task: FewShotTask) -> set[str]:
    """Keys of every text the task holds (train, dev, test and unlabelled), which generated texts must not repeat."""
    keys = set()
    for example in [*task.train, *task.dev, *task.test, *task.unlabeled]:
        keys.add(normalise(example.text))
        if example.text_pair:
            keys.add(normalise(example.text_pair))
    return keys


def build_examples(task: FewShotTask, requests: Iterable[Request], outputs: dict[str, list[str]]) -> list[Example]:
    seen = task_texts(task)
    examples = []
    for request in requests:
        for number, line in enumerate(outputs.get(request.key, [])[:request.count]):
            key = normalise(line)
            if not key or key in seen:
                continue
            seen.add(key)
            source = f"generated:{request.key}:{number}"
            if request.kind == "paraphrase" and task.is_pair:
                examples.append(Example(request.anchor.text, line, request.label, source))
            else:
                examples.append(Example(line, None, request.label, source))
    return examples


# --------------------------------------------------------------------------------------------------------- cache
class GenerationCache:
    """Finished requests in ``<cache_dir>/generated-<key>.jsonl``, appended one line per request (so an interrupted
    run loses at most the request in flight). No cache_dir: in memory only."""

    def __init__(self, cache_dir: str | Path | None, key: str):
        self.path = Path(cache_dir) / f"generated-{key}.jsonl" if cache_dir is not None else None
        self.done: dict[str, list[str]] = {}
        self.torn = False  # the file ends inside a line (an interrupted write): the next record starts a new one
        if self.path is not None and self.path.is_file():
            text = self.path.read_text(encoding="utf-8")
            self.torn = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                    self.done[record["request"]] = list(record["outputs"])
                except (ValueError, KeyError, TypeError):
                    logger.warning("%s: ignoring a damaged line (an interrupted write)", self.path)

    def add(self, request: str, outputs: Sequence[str]) -> None:
        self.done[request] = list(outputs)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as file:
                if self.torn:
                    file.write("\n")
                    self.torn = False
                file.write(json.dumps({"request": request, "outputs": list(outputs)}, ensure_ascii=False) + "\n")
