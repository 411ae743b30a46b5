"""Few-shot tasks and the readers that build them.

A :class:`FewShotTask` holds everything the engine needs: the task type, the label names (with optional descriptions,
used as the options the model scores), and the train / dev / test / unlabelled examples. Multiple-choice tasks (CHID:
pick the idiom that fits the blank) have no global labels: each example carries its own ``choices`` and its label is
the right one. Coreference tasks (CLUEWSC: does the pronoun refer to the noun?) are single texts with the two spans
marked, ``[noun]`` and ``<pronoun>`` (:func:`find_spans`). Readers accept the GTS-Engine JSON-lines layout, the
FewCLUE task files, CSV and :class:`datasets.Dataset`; every error names the file, the line and the field.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

logger = logging.getLogger(__name__)

TASK_TYPES = ("classification", "similarity", "nli", "multiple_choice", "coreference")
NLI_LABELS = {"entailment", "neutral", "contradiction"}

# Field names, in order of preference, across GTS-Engine, FewCLUE and common CSV layouts.
TEXT_FIELDS = ("content", "sentence", "text", "abst")
PAIR_FIELDS = (("sentence1", "sentence2"), ("text", "text_pair"), ("premise", "hypothesis"))
CHOICE_FIELDS = ("candidates", "choices")
ANSWER_FIELDS = ("answer", "label")
BLANK_MARKERS = ("#idiom#",)  # CHID's slot; shown to the model as a visible blank
BLANK = "＿＿"
# Coreference: the noun phrase and the pronoun (span 1 and span 2) as they are marked in the text. Marker characters
# already in a record's text become their full-width forms, so the first marked pair is always the span.
SPAN_MARKERS = (("[", "]"), ("<", ">"))
ESCAPED_MARKERS = str.maketrans("[]<>", "［］＜＞")
# A label name that comes with an integer label id (FewCLUE's TNEWS and IFLYTEK).
LABEL_NAME_FIELDS = ("label_desc", "label_des")

DEFAULT_DESCRIPTIONS = {
    "zh": {
        "similarity": {"0": "两句话意思不同", "1": "两句话意思相同"},
        "nli": {"entailment": "可以推断出", "neutral": "很难推断出", "contradiction": "不能推断出"},
        "coreference": {"true": "代词指的是这个名词", "false": "代词指的不是这个名词"},
    },
    "en": {
        "similarity": {"0": "the two sentences mean different things", "1": "the two sentences mean the same"},
        "nli": {"entailment": "it follows", "neutral": "it may or may not follow", "contradiction": "it contradicts"},
        "coreference": {"true": "the pronoun refers to the noun", "false": "the pronoun refers to something else"},
    },
}

# Sentences a label text can be put in (``{}``) for the zero-shot start; the first, the bare text, wins ties. The
# engine's ``option_template="auto"`` (its default) picks one per run on dev (benchmarks/ABLATION.md §16, §24).
OPTION_TEMPLATES = {
    "zh": ("{}", "这是{}。", "答案是{}。", "这段文字是关于{}的。"),
    "en": ("{}", "It is {}.", "The answer is {}.", "This text is about {}."),
}


def fill_template(template: str, texts: Sequence[str]) -> list[str]:
    """Each text in the template's ``{}`` slot (other braces are kept as they are)."""
    if template.count("{}") != 1:
        raise ValueError(f"an option template needs exactly one '{{}}' slot for the label text, got {template!r}")
    return [template.replace("{}", text) for text in texts]


class DataError(ValueError):
    """Bad input data. The message names the file, line and field."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None, field: str | None = None):
        where = ":".join(str(part) for part in (path, line) if part is not None)
        prefix = f"{where}: " if where else ""
        suffix = f" (field '{field}')" if field else ""
        super().__init__(f"{prefix}{message}{suffix}")
        self.reason, self.path, self.line, self.field = message, path, line, field


@dataclass
class Example:
    """One input: a text, an optional second text (pair tasks) and an optional label name."""

    text: str
    text_pair: str | None = None
    label: str | None = None
    source: str | None = None  # "file:line", for error messages
    choices: list[str] | None = None  # multiple choice: this example's candidate answers (the label is one of them)

    def to_dict(self) -> dict[str, Any]:
        record = {"text": self.text, "label": self.label}
        if self.text_pair is not None:
            record["text_pair"] = self.text_pair
        if self.choices is not None:
            record["choices"] = list(self.choices)
        return record


@dataclass
class FewShotTask:
    """A few-shot task: label options plus the example splits."""

    labels: list[str]
    train: list[Example]
    dev: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    unlabeled: list[Example] = field(default_factory=list)
    task_type: str = "classification"
    label_descriptions: dict[str, str] = field(default_factory=dict)
    language: str = "zh"

    @property
    def is_pair(self) -> bool:
        return self.task_type in ("similarity", "nli")

    @property
    def is_multiple_choice(self) -> bool:
        return self.task_type == "multiple_choice"

    @property
    def is_coreference(self) -> bool:
        return self.task_type == "coreference"

    @property
    def label2id(self) -> dict[str, int]:
        return {label: index for index, label in enumerate(self.labels)}

    def option_texts(self) -> list[str]:
        """The text that stands for each label option: its description, else its name."""
        return [self.label_descriptions.get(label) or label for label in self.labels]

    def label_ids(self, examples: Sequence[Example]) -> list[int]:
        """Each example's label as an index: into the labels, or into its own choices (multiple choice)."""
        return [label_index(example, self.label2id) for example in examples]


def label_index(example: Example, label2id: dict[str, int]) -> int:
    if example.choices is not None:
        return example.choices.index(example.label)
    return label2id[example.label]


# ----------------------------------------------------------------------------------------------------------- reading
def read_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Read a JSON-lines, JSON-array or CSV file into ``(line_number, record)`` pairs."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    if path.suffix.lower() in (".csv", ".tsv"):
        return _read_csv(path)
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise DataError("file is empty", path)
    if text.lstrip().startswith("["):
        return _read_json_array(path, text)
    return _read_json_lines(path, text)


def _read_json_lines(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    records = []
    for line_number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): texts may hold U+2028
        record = parse_json_line(line, path, line_number)
        if record is not None:
            records.append((line_number, record))
    return records


def parse_json_line(line: str, path: str | Path, line_number: int) -> dict[str, Any] | None:
    """One JSON-lines record (``None`` for a blank line), with errors naming the file and line."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"malformed JSON ({error.msg} at column {error.colno})", path, line_number) from None
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}", path, line_number)
    return record


def _read_json_array(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"malformed JSON ({error.msg})", path, error.lineno) from None
    for index, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise DataError(f"item {index}: expected a JSON object", path)
    return list(enumerate(items, start=1))


def _read_csv(path: Path) -> list[tuple[int, dict[str, Any]]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if not reader.fieldnames:
            raise DataError("file is empty", path)
        records = [(reader.line_num, dict(row)) for row in reader]
    if not records:
        raise DataError("no rows after the header", path)
    return records


def parse_example(record: dict[str, Any], path: str | Path, line: int, require_label: bool) -> Example:
    """Turn one record into an :class:`Example`, whatever the layout's field names."""
    text, text_pair = _find_texts(record, path, line)
    choices = _find_choices(record, path, line)
    if choices is None:
        label = _find_label(record)
    else:
        for marker in BLANK_MARKERS:
            text = text.replace(marker, BLANK)
        label = _find_answer(record, choices, path, line)
    if require_label and label is None:
        raise DataError("missing label", path, line, "answer" if choices is not None else "label")
    return Example(text=text, text_pair=text_pair, label=label, source=f"{path}:{line}", choices=choices)


def _find_choices(record: dict[str, Any], path: str | Path, line: int) -> list[str] | None:
    for name in CHOICE_FIELDS:
        if name in record:
            values = record[name]
            if not isinstance(values, list) or len(values) < 2:
                raise DataError("expected a list of at least 2 candidate answers", path, line, name)
            return [_clean_text(value, path, line, name) for value in values]
    return None


def _find_answer(record: dict[str, Any], choices: list[str], path: str | Path, line: int) -> str | None:
    """The right choice, given as a choice text or as its index (CHID's ``answer``)."""
    for name in ANSWER_FIELDS:
        value = record.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, str) and value in choices:
            return value
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            if 0 <= int(value) < len(choices):
                return choices[int(value)]
        raise DataError(f"{value!r} is neither one of the {len(choices)} choices nor an index into them", path, line,
                        name)
    return None


def _find_texts(record: dict[str, Any], path: str | Path, line: int) -> tuple[str, str | None]:
    if isinstance(record.get("target"), dict) and "text" in record:
        return _mark_spans(record, path, line), None
    if isinstance(record.get("keyword"), list) and "abst" in record:
        keywords = [_clean_text(word, path, line, "keyword") for word in record["keyword"]]
        return _clean_text(record["abst"], path, line, "abst"), "，".join(keywords)
    for first, second in PAIR_FIELDS:
        if first in record and second in record:
            return _clean_text(record[first], path, line, first), _clean_text(record[second], path, line, second)
    for name in TEXT_FIELDS:
        if name in record:
            return _clean_text(record[name], path, line, name), None
    raise DataError(f"no text field; expected one of {', '.join(TEXT_FIELDS)} or a sentence1/sentence2 pair", path, line)


def _mark_spans(record: dict[str, Any], path: str | Path, line: int) -> str:
    """Coreference records (CLUEWSC): the text with its two spans marked, ``[noun]`` and ``<pronoun>``, so that
    "does span 2 refer to span 1" becomes a single text whose spans the model can find (:func:`find_spans`)."""
    text, target = _clean_text(record["text"], path, line, "text"), record["target"]
    spans = []
    for number, (left, right) in enumerate(SPAN_MARKERS, start=1):
        span, start = target.get(f"span{number}_text"), target.get(f"span{number}_index")
        if not (isinstance(span, str) and span and isinstance(start, int) and text[start:start + len(span)] == span):
            raise DataError(f"span{number} ({span!r} at {start!r}) does not match the text", path, line, "target")
        spans.append((start, len(span), left, right))
    text = text.translate(ESCAPED_MARKERS)
    for start, length, left, right in sorted(spans, reverse=True):
        text = text[:start] + left + text[start:start + length] + right + text[start + length:]
    return text


def find_spans(text: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The character ranges ``(start, end)`` of the marked noun and pronoun, the first ``[...]`` and ``<...>`` of
    ``text``; ``None`` unless both are there, hold more than whitespace and do not overlap."""
    spans = []
    for left, right in SPAN_MARKERS:
        start = text.find(left) + 1
        end = text.find(right, start) if start else -1
        if end <= start or not text[start:end].strip():
            return None
        spans.append((start, end))
    (noun_start, noun_end), (pronoun_start, pronoun_end) = spans
    if noun_start <= pronoun_end and pronoun_start <= noun_end:  # markers included: "[a<b]c>" is not two spans
        return None
    return spans[0], spans[1]


def is_marked_once(text: str) -> bool:
    """Whether ``text`` marks a noun and a pronoun and holds no other marker character, as CLUEWSC records read by
    :func:`parse_example` do (what auto-detection asks of every training text)."""
    return find_spans(text) is not None and all(text.count(char) == 1 for char in "[]<>")


def _clean_text(value: Any, path: str | Path, line: int, name: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__}", path, line, name)
    value = value.strip()
    if not value:
        raise DataError("empty text", path, line, name)
    return value


def _find_label(record: dict[str, Any]) -> str | None:
    for name in LABEL_NAME_FIELDS:
        if record.get(name) not in (None, ""):
            return str(record[name])
    label = record.get("label")
    if label is None or label == "":
        return None
    return str(label)


def read_examples(path: str | Path, require_label: bool = True, skip_empty: bool = False) -> list[Example]:
    """Read labelled (or, with ``require_label=False``, unlabelled) examples from a file; ``skip_empty`` leaves out
    records whose text is empty (with a warning) instead of refusing the file."""
    examples, skipped = [], []
    for line, record in read_records(path):
        try:
            examples.append(parse_example(record, path, line, require_label))
        except DataError as error:
            if not (skip_empty and error.reason == "empty text"):
                raise
            skipped.append(line)
    if skipped:
        logger.warning("%s: skipped %d records with an empty text (lines %s)", path, len(skipped),
                       ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else ""))
    if not examples:
        raise DataError("no examples", path)
    return examples


def read_label_file(path: str | Path) -> tuple[list[str], dict[str, str]]:
    """Read a label file: GTS-Engine's one-line ``{"labels": [...]}`` (optionally with ``"descriptions"``, a mapping or
    a list in label order), or one record per label (``{"label": ..., "label_desc"/"description": ...}``, as in
    FewCLUE's ``label_index2en2zh.json``)."""
    records = read_records(path)
    line, first = records[0]
    if "labels" in first:
        return _labels_from_gts_file(first, path, line)
    labels, descriptions = [], {}
    for line, record in records:
        name = record.get("label_desc") or record.get("label_des") or record.get("label")
        if name in (None, ""):
            raise DataError("missing label", path, line, "label")
        labels.append(str(name))
        description = record.get("label_zh") or record.get("description")
        if description:
            descriptions[str(name)] = str(description)
    return _check_label_list(labels, path), descriptions


def _labels_from_gts_file(record: dict[str, Any], path: str | Path, line: int) -> tuple[list[str], dict[str, str]]:
    labels = record["labels"]
    if not isinstance(labels, list) or not all(isinstance(label, (str, int)) for label in labels):
        raise DataError("expected a list of label names", path, line, "labels")
    labels = _check_label_list([str(label) for label in labels], path)
    descriptions = record.get("descriptions") or record.get("label_descriptions") or {}
    if isinstance(descriptions, list):
        if len(descriptions) != len(labels):
            raise DataError(f"{len(descriptions)} descriptions for {len(labels)} labels", path, line, "descriptions")
        descriptions = dict(zip(labels, descriptions))
    if not isinstance(descriptions, dict):
        raise DataError("expected a mapping from label to description", path, line, "descriptions")
    return labels, {str(key): str(value) for key, value in descriptions.items()}


def _check_label_list(labels: list[str], path: str | Path) -> list[str]:
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise DataError(f"duplicate labels {duplicates}", path, field="labels")
    return labels


# ----------------------------------------------------------------------------------------------------- building tasks
def detect_language(examples: Iterable[Example]) -> str:
    """'zh' when the texts are mostly CJK, else 'en' (used to pick default option texts)."""
    sample = "".join(example.text for _, example in zip(range(50), examples))
    cjk = len(re.findall(r"[\u4e00-\u9fff]", sample))
    return "zh" if cjk > 0.2 * max(len(sample), 1) else "en"


def detect_task_type(examples: Sequence[Example], labels: Sequence[str]) -> str:
    if any(example.choices is not None for example in examples):
        return "multiple_choice"
    if not any(example.text_pair is not None for example in examples):
        marked = len(labels) == 2 and all(is_marked_once(example.text) for example in examples)
        return "coreference" if marked else "classification"
    return "nli" if set(labels) <= NLI_LABELS else "similarity"


def build_task(
    train: Sequence[Example],
    dev: Sequence[Example] = (),
    test: Sequence[Example] = (),
    unlabeled: Sequence[Example] = (),
    labels: Sequence[str] | None = None,
    label_descriptions: dict[str, str] | None = None,
    task_type: str = "auto",
    labels_source: str | Path | None = None,
) -> FewShotTask:
    """Validate the splits against each other and the label list, and assemble a :class:`FewShotTask`."""
    if not train:
        raise DataError("the training set is empty")
    if task_type == "multiple_choice" or (task_type == "auto" and detect_task_type(train, ()) == "multiple_choice"):
        return _build_choice_task(train, dev, test, unlabeled)
    with_choices = next((example for example in train if example.choices is not None), None)
    if with_choices is not None:
        raise DataError(f"examples with candidate answers make a multiple-choice task, not a {task_type} one",
                        with_choices.source, field="candidates")
    if labels is None:
        labels = sorted({example.label for example in train})
    else:
        _check_train_labels(train, labels, labels_source)
    labels = list(labels)
    if len(labels) < 2:
        raise DataError(f"a classifier needs at least 2 classes, found {len(labels)}: {labels}", labels_source)
    for split in (dev, test):
        _check_known_labels(split, labels)
    if task_type == "auto":
        task_type = detect_task_type(train, labels)
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be 'auto' or one of {TASK_TYPES}, got {task_type!r}")
    _check_pairs(train, task_type)
    if task_type == "coreference":
        _check_spans([*train, *dev, *test, *unlabeled])
    language = detect_language(train)
    descriptions = dict(DEFAULT_DESCRIPTIONS[language].get(task_type, {}))
    descriptions.update(label_descriptions or {})
    return FewShotTask(
        labels=labels,
        train=list(train),
        dev=list(dev),
        test=list(test),
        unlabeled=list(unlabeled),
        task_type=task_type,
        label_descriptions={label: text for label, text in descriptions.items() if label in labels},
        language=language,
    )


def sample_examples(examples: Sequence[Example], size: int, seed: int) -> list[Example]:
    """A seeded sample of at most ``size`` examples, in their original order (an unlabelled pool, a capped test set)."""
    if len(examples) <= size:
        return list(examples)
    chosen = sorted(random.Random(seed).sample(range(len(examples)), size))
    return [examples[index] for index in chosen]


def _build_choice_task(train: Sequence[Example], dev: Sequence[Example], test: Sequence[Example],
                       unlabeled: Sequence[Example]) -> FewShotTask:
    """A multiple-choice task: every example has its choices, and every label is one of them."""
    for example in [*train, *dev, *test, *unlabeled]:
        if example.choices is None:
            raise DataError("a multiple-choice task expects candidate answers ('candidates') in every example",
                            example.source, field="candidates")
        if example.label is not None and example.label not in example.choices:
            raise DataError(f"label {example.label!r} is not one of the example's choices", example.source,
                            field="answer")
    return FewShotTask(labels=[], train=list(train), dev=list(dev), test=list(test), unlabeled=list(unlabeled),
                       task_type="multiple_choice", language=detect_language(train))


def _check_train_labels(train: Sequence[Example], labels: Sequence[str], labels_source: str | Path | None) -> None:
    known = set(labels)
    for example in train:
        if example.label not in known:
            raise DataError(
                f"label {example.label!r} is not in the label file {labels_source or ''} ({len(labels)} labels)",
                example.source, field="label")
    unused = known - {example.label for example in train}
    if unused:
        logger.warning("labels with no training example (scored from their text only): %s", sorted(unused))


def _check_known_labels(examples: Sequence[Example], labels: Sequence[str]) -> None:
    known = set(labels)
    for example in examples:
        if example.label is not None and example.label not in known:
            raise DataError(f"unknown label {example.label!r}; known labels: {list(labels)}", example.source,
                            field="label")


def _check_pairs(examples: Sequence[Example], task_type: str) -> None:
    wants_pairs = task_type in ("similarity", "nli")
    for example in examples:
        if (example.text_pair is not None) != wants_pairs:
            kind = "a sentence pair" if wants_pairs else "a single text"
            raise DataError(f"a {task_type} task expects {kind} in every example", example.source)


def _check_spans(examples: Sequence[Example]) -> None:
    for example in examples:
        if find_spans(example.text) is None:
            raise DataError(f"a coreference task expects the noun marked [like this] and the pronoun <like this> in "
                            f"every text, got {example.text[:40]!r}", example.source, field="text")


def load_task(
    data_dir: str | Path | None = None,
    train: str | Path | None = None,
    dev: str | Path | None = None,
    test: str | Path | None = None,
    labels: str | Path | None = None,
    unlabeled: str | Path | None = None,
    task_type: str = "auto",
) -> FewShotTask:
    """Load a task from a GTS-Engine folder (``train.json``, ``dev.json``, ``labels.json``, optional ``test.json`` and
    ``unlabeled.json``) and/or explicit files, which take precedence over the folder's."""
    paths = _task_paths(data_dir, train=train, dev=dev, test=test, labels=labels, unlabeled=unlabeled)
    if paths["train"] is None:
        raise DataError("no training file: give --data-dir with a train.json, or --train")
    label_names, descriptions = read_label_file(paths["labels"]) if paths["labels"] else (None, {})
    splits = {name: read_examples(paths[name]) if paths[name] else [] for name in ("train", "dev", "test")}
    pool = read_pool(paths["unlabeled"]) if paths["unlabeled"] else []
    return build_task(**splits, unlabeled=pool, labels=label_names, label_descriptions=descriptions,
                      task_type=task_type, labels_source=paths["labels"])


def read_pool(path: str | Path) -> list[Example]:
    """The optional unlabelled texts; an empty file is an empty pool (FewCLUE's CLUEWSC ships one), not an error."""
    try:
        return read_examples(path, require_label=False)
    except DataError as error:
        if error.reason != "file is empty":
            raise
        logger.warning("%s: the unlabelled file is empty: no unlabelled pool", path)
        return []


def _task_paths(data_dir: str | Path | None, **explicit: str | Path | None) -> dict[str, Path | None]:
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError("data directory not found", data_dir)
    paths = {}
    for name, given in explicit.items():
        default = Path(data_dir) / f"{name}.json" if data_dir is not None else None
        if given is not None:
            paths[name] = Path(given)
        elif default is not None and default.is_file():
            paths[name] = default
        else:
            paths[name] = None
    return paths


def examples_from_records(records: Iterable[dict[str, Any]], source: str = "<records>",
                          require_label: bool = True) -> list[Example]:
    """Build examples from in-memory dicts (a :class:`datasets.Dataset` iterates as such dicts)."""
    return [parse_example(dict(record), source, index, require_label) for index, record in enumerate(records, 1)]


def as_examples(data: Any, require_label: bool = True) -> list[Example]:
    """Accept a path, a list of strings/dicts/examples or a :class:`datasets.Dataset`."""
    if data is None:
        return []
    if isinstance(data, (str, Path)):
        return read_examples(data, require_label=require_label)
    items = list(data)
    if all(isinstance(item, Example) for item in items):
        return items
    if all(isinstance(item, str) for item in items):
        return [Example(text=item) for item in items]
    return examples_from_records(items, source=type(data).__name__, require_label=require_label)


def with_labels(examples: Sequence[Example], labels: Sequence[str]) -> list[Example]:
    """Copies of ``examples`` carrying the given labels (used for pseudo-labelling)."""
    return [replace(example, label=label) for example, label in zip(examples, labels)]
