"""Teachers: larger models that label texts with calibrated probabilities (the "T" of Generator-Teacher-Student).

- :class:`CausalLMTeacher` wraps any causal language model (Qwen, Llama, ...). A prompt built from the task's label
  names or descriptions asks for the label; each option is scored by the log-probability of its text as the answer
  (the prompt is run once per text and its key/value cache shared by the options). Optionally fine-tuned on the
  gold examples with LoRA (:class:`TeacherTrainer`; only the adapter is saved).
- :class:`EncoderTeacher` is a GTS student of a bigger encoder, trained with :class:`~gts_hf.engine.GTSEngine`
  (chosen when the teacher id is not a causal LM).

Both are calibrated on dev only (:func:`fit_calibration`: a temperature and a per-label bias), so their probabilities
can be thresholded and mixed with the student's.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from transformers import Trainer, TrainingArguments

from .data import Example, FewShotTask

logger = logging.getLogger(__name__)

TEACHER_CONFIG = "gts_teacher.json"
PROMPTS = {
    "zh": {
        "classification": "请判断下面这段文字属于哪一类。\n文字：{text}\n可选类别：{options}\n只回答类别。",
        "similarity": "句子一：{text}\n句子二：{text_pair}\n可选答案：{options}\n这两个句子是什么关系？只回答其中一个答案。",
        "nli": "前提：{text}\n假设：{text_pair}\n可选答案：{options}\n根据前提，假设是什么情况？只回答其中一个答案。",
        "coreference": "文字：{text}\n尖括号<>中的代词指的是方括号[]中的词语吗？\n可选答案：{options}\n只回答其中一个答案。",
        "separator": "、",
    },
    "en": {
        "classification": "Which category does this text belong to?\nText: {text}\nCategories: {options}\n"
                          "Answer with the category only.",
        "similarity": "Sentence 1: {text}\nSentence 2: {text_pair}\nAnswers: {options}\n"
                      "How are the two sentences related? Answer with one of the answers only.",
        "nli": "Premise: {text}\nHypothesis: {text_pair}\nAnswers: {options}\n"
               "Given the premise, what about the hypothesis? Answer with one of the answers only.",
        "coreference": "Text: {text}\nDoes the pronoun in <> refer to the words in []?\nAnswers: {options}\n"
                       "Answer with one of the answers only.",
        "separator": ", ",
    },
}
MAX_TEXT_CHARS = 400  # long texts are cut in the prompt (a pair: half each): the cost grows with the length
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


# ------------------------------------------------------------------------------------------------------ calibration
@dataclass
class Calibration:
    """``softmax(scores / temperature + bias)``: fitted on dev so that probabilities can be compared to thresholds."""

    temperature: float = 1.0
    bias: list[float] = field(default_factory=list)

    def apply(self, scores: np.ndarray) -> np.ndarray:
        logits = torch.as_tensor(scores, dtype=torch.float64) / self.temperature
        if self.bias:
            logits = logits + torch.as_tensor(self.bias, dtype=torch.float64)
        return logits.softmax(-1).numpy()


def fit_calibration(scores: np.ndarray, labels: Sequence[int], bias_penalty: float = 0.1,
                    steps: int = 200) -> Calibration:
    """Temperature and per-label bias minimising dev log-loss, the bias L2-penalised (few dev examples)."""
    scores_t = torch.as_tensor(scores, dtype=torch.float64)
    gold = torch.as_tensor(list(labels))
    log_temperature = torch.zeros((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(scores_t.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature, bias], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def temperature() -> torch.Tensor:  # bounded: a dev set the teacher separates perfectly would drive T to 0
        return log_temperature.clamp(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)).exp()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = scores_t / temperature() + bias
        loss = F.cross_entropy(logits, gold) + bias_penalty * (bias - bias.mean()).pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    centred = (bias - bias.mean()).detach()
    return Calibration(temperature=float(temperature().detach()), bias=[round(float(b), 6) for b in centred])


def dev_report(probabilities: np.ndarray, labels: Sequence[int]) -> dict[str, float]:
    gold = np.asarray(labels)
    chosen = probabilities[np.arange(len(gold)), gold].clip(1e-12)
    return {"accuracy": round(float((probabilities.argmax(-1) == gold).mean()), 4),
            "log_loss": round(float(-np.log(chosen).mean()), 4)}


# ---------------------------------------------------------------------------------------------------------- prompts
@dataclass
class PromptBuilder:
    """Turns an example into a chat prompt whose answer is one of the option texts."""

    options: list[str]
    task_type: str = "classification"
    language: str = "zh"

    def __post_init__(self) -> None:
        if self.task_type not in PROMPTS["en"]:
            raise ValueError(f"a causal-LM teacher has no prompt for {self.task_type!r} tasks")

    def user_message(self, example: Example) -> str:
        prompts = PROMPTS["zh" if self.language == "zh" else "en"]
        limit = MAX_TEXT_CHARS // 2 if example.text_pair is not None else MAX_TEXT_CHARS
        return prompts[self.task_type].format(
            text=example.text[:limit], text_pair=(example.text_pair or "")[:limit],
            options=prompts["separator"].join(self.options))

    def prompt(self, tokenizer: Any, example: Example) -> str:
        message = self.user_message(example)
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                                 add_generation_prompt=True)
        return message + "\n"


def prompt_ids(tokenizer: Any, builder: PromptBuilder, example: Example) -> list[int]:
    return tokenizer(builder.prompt(tokenizer, example), add_special_tokens=False)["input_ids"]


def option_ids(tokenizer: Any, builder: PromptBuilder) -> list[list[int]]:
    """The token ids of each option text (the same for every example)."""
    options = [tokenizer(option, add_special_tokens=False)["input_ids"] for option in builder.options]
    empty = [option for option, ids in zip(builder.options, options) if not ids]
    if empty:
        raise ValueError(f"label options {empty} tokenise to nothing: give the labels descriptions")
    return options


def option_log_probs(model: Any, prompt_ids: Sequence[int], option_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """Sum of the log-probabilities of each option's tokens as the continuation of the prompt, ``(num_options,)``.

    The prompt runs once; its key/value cache is repeated for the options, which run together (right-padded)."""
    device = model.device
    prompt = torch.tensor([list(prompt_ids)], device=device)
    first = model(input_ids=prompt, use_cache=True, logits_to_keep=1)  # the option scores need the last one only
    first_log_probs = first.logits[0, -1].float().log_softmax(-1)
    scores = torch.stack([first_log_probs[ids[0]] for ids in option_ids])
    longest = max(len(ids) for ids in option_ids)
    if longest == 1:
        return scores
    count = len(option_ids)
    padded = torch.zeros(count, longest, dtype=torch.long, device=device)
    mask = torch.zeros(count, longest, dtype=torch.long, device=device)
    for row, ids in enumerate(option_ids):
        padded[row, :len(ids)] = torch.tensor(ids, device=device)
        mask[row, :len(ids)] = 1
    cache = getattr(first, "cache", None) or first.past_key_values
    cache.batch_repeat_interleave(count)
    attention = torch.cat([torch.ones(count, prompt.shape[1], dtype=torch.long, device=device), mask], dim=1)
    positions = torch.arange(prompt.shape[1], prompt.shape[1] + longest, device=device).expand(count, -1)
    rest = model(input_ids=padded, attention_mask=attention, position_ids=positions, **{_cache_argument(model): cache})
    log_probs = rest.logits[:, :-1].float().log_softmax(-1)  # position t predicts option token t + 1
    following = log_probs.gather(-1, padded[:, 1:].unsqueeze(-1)).squeeze(-1) * mask[:, 1:]
    return scores + following.sum(-1)


def _cache_argument(model: Any) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.2x); a peft wrapper forwards either."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_keyword(type(base))


@functools.cache
def _cache_keyword(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


# -------------------------------------------------------------------------------------------------------- teachers
class Teacher:
    """A labeller: :meth:`scores` (uncalibrated log-probabilities per label), calibrated on dev by :meth:`calibrate`."""

    labels: list[str]
    calibration: Calibration
    is_lora = False

    def scores(self, examples: Sequence[Example], show_progress: bool = False,
               deadline: float | None = None) -> np.ndarray:
        raise NotImplementedError

    def calibrate(self, dev: Sequence[Example], scores: np.ndarray | None = None) -> dict[str, Any]:
        """Fit the calibration on labelled dev examples; returns dev accuracy and log-loss before and after."""
        scores = self.scores(dev) if scores is None else scores
        gold = [self.labels.index(example.label) for example in dev]
        before = dev_report(Calibration().apply(scores), gold)
        self.calibration = fit_calibration(scores, gold)
        after = dev_report(self.calibration.apply(scores), gold)
        return {"raw": before, "calibrated": after, **asdict(self.calibration)}

    def predict_proba(self, examples: Sequence[Example], show_progress: bool = False,
                      deadline: float | None = None) -> np.ndarray:
        """Calibrated probabilities, ``(n, num_labels)``; rows not scored before ``deadline`` are NaN."""
        return self.calibration.apply(self.scores(examples, show_progress, deadline))


class CausalLMTeacher(Teacher):
    """A causal LM as a labeller: zero-shot (or LoRA-tuned) option scoring, calibrated on dev.

    >>> teacher = CausalLMTeacher.from_pretrained("Qwen/Qwen2.5-7B-Instruct", task)
    >>> teacher.calibrate(task.dev)
    >>> probabilities = teacher.predict_proba(task.unlabeled)
    """

    def __init__(self, model: Any, tokenizer: Any, labels: Sequence[str], builder: PromptBuilder,
                 name_or_path: str = "", calibration: Calibration | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.labels, self.builder, self.name_or_path = list(labels), builder, name_or_path
        self.calibration = calibration or Calibration()
        self.model.eval()

    @classmethod
    def from_pretrained(cls, model_id: str, task: FewShotTask, dtype: str | torch.dtype = "auto",
                        device: str | torch.device | None = None) -> "CausalLMTeacher":
        """Load ``model_id`` (a Hub id, a local folder, the packaged Qwen, or a folder saved by :meth:`save_pretrained`,
        whose adapter and calibration come back with it) as the teacher of ``task``."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .backbones import resolve_model_path

        path = Path(resolve_model_path(model_id))
        saved = _read_teacher_config(path)
        base = resolve_model_path(saved["base_model"]) if saved else str(path)
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=_dtype(dtype))
        if saved and saved.get("lora"):
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, path)
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        builder = PromptBuilder(options=task.option_texts(), task_type=task.task_type, language=task.language)
        if saved and saved["labels"] != task.labels:
            raise ValueError(f"{path}: this teacher was saved for the labels {saved['labels']}, not {task.labels}")
        calibration = Calibration(**saved["calibration"]) if saved else None
        return cls(model, tokenizer, task.labels, builder, name_or_path=saved["base_model"] if saved else model_id,
                   calibration=calibration)

    @torch.no_grad()
    def scores(self, examples: Sequence[Example], show_progress: bool = False,
               deadline: float | None = None) -> np.ndarray:
        """Uncalibrated option log-probabilities, ``(n, num_labels)``; rows past ``deadline`` (a
        ``time.monotonic()`` value) are NaN."""
        import time

        self.model.eval()
        rows = np.full((len(examples), len(self.labels)), np.nan, dtype=np.float32)
        options = option_ids(self.tokenizer, self.builder)
        for index, example in enumerate(tqdm(examples, desc="teacher", disable=not show_progress)):
            if deadline is not None and time.monotonic() > deadline:
                logger.warning("teacher time budget spent after %d of %d texts", index, len(examples))
                break
            rows[index] = option_log_probs(self.model, prompt_ids(self.tokenizer, self.builder, example),
                                           options).cpu().numpy()
        return rows

    # --------------------------------------------------------------------------------------------- save and load
    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "peft_config")

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """The LoRA adapter (when fine-tuned; never the base weights) and ``gts_teacher.json`` (base model, labels,
        prompt and calibration)."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        if self.is_lora:
            self.model.save_pretrained(folder)
        config = {"base_model": self.name_or_path, "labels": self.labels, "lora": self.is_lora,
                  "prompt": asdict(self.builder), "calibration": asdict(self.calibration)}
        (folder / TEACHER_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")


def _read_teacher_config(path: Path) -> dict[str, Any] | None:
    file = path / TEACHER_CONFIG
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32


class EncoderTeacher(Teacher):
    """A GTS model of a (bigger) encoder, trained on the gold examples with the ``standard`` recipe."""

    def __init__(self, model: Any, tokenizer: Any, labels: Sequence[str]):
        self.model, self.tokenizer, self.labels = model, tokenizer, list(labels)
        self.calibration = Calibration()
        self.name_or_path = model.config.base_model

    @classmethod
    def train(cls, encoder_id: str, task: FewShotTask, seed: int = 42) -> "EncoderTeacher":
        from .engine import GTSEngine

        trained = GTSEngine(mode="standard", student=encoder_id, seed=seed).train(task)
        return cls(trained.model, trained.tokenizer, task.labels)

    def scores(self, examples: Sequence[Example], show_progress: bool = False,
               deadline: float | None = None) -> np.ndarray:
        """Log-probabilities of the encoder's classifier (kNN included); fast enough to ignore the deadline."""
        from .inference import predict

        probabilities = predict(self.model, self.tokenizer, list(examples), show_progress=show_progress).probabilities
        return np.log(np.clip(probabilities, 1e-12, 1.0))


def is_causal_lm(model_id: str) -> bool:
    """Whether ``model_id`` (a Hub id, a folder, or a saved LoRA teacher) is a causal LM (else: an encoder)."""
    from transformers import AutoConfig

    from .backbones import resolve_model_path

    path = Path(resolve_model_path(model_id))
    if (path / TEACHER_CONFIG).is_file():
        return True
    architectures = AutoConfig.from_pretrained(path).architectures or []
    return any(name.endswith("ForCausalLM") for name in architectures)


# --------------------------------------------------------------------------------------------- LoRA fine-tuning
class TeacherDataset(Dataset):
    def __init__(self, teacher: CausalLMTeacher, examples: Sequence[Example]):
        options = option_ids(teacher.tokenizer, teacher.builder)
        self.items = [(prompt_ids(teacher.tokenizer, teacher.builder, example), options,
                       teacher.labels.index(example.label)) for example in examples]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        prompt, options, label = self.items[index]
        return {"prompt_ids": prompt, "option_ids": options, "label": label}


class TeacherTrainer(Trainer):
    """Fine-tunes a causal-LM teacher as an option scorer: cross-entropy over the options' log-probabilities."""

    def __init__(self, teacher: CausalLMTeacher, args: TrainingArguments, train_examples: Sequence[Example],
                 **kwargs: Any):
        self.teacher = teacher
        super().__init__(model=teacher.model, args=args, train_dataset=TeacherDataset(teacher, train_examples),
                         data_collator=lambda items: {"items": items}, **kwargs)

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        items = inputs["items"]
        scores = torch.stack([option_log_probs(model, item["prompt_ids"], item["option_ids"]) for item in items])
        labels = torch.tensor([item["label"] for item in items], device=scores.device)
        loss = F.cross_entropy(scores, labels)
        return (loss, scores) if return_outputs else loss


@dataclass
class LoRASettings:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    epochs: float = 2.0
    learning_rate: float = 2e-4
    batch_size: int = 4


def finetune_teacher_lora(teacher: CausalLMTeacher, train: Sequence[Example], settings: LoRASettings | None = None,
                          seed: int = 42) -> dict[str, Any]:
    """Wrap the teacher's model with a LoRA adapter (peft) and fine-tune it on the gold examples."""
    import tempfile

    from peft import LoraConfig, get_peft_model

    settings = settings or LoRASettings()
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), task_type="CAUSAL_LM")
    teacher.model = get_peft_model(teacher.model, config)
    with tempfile.TemporaryDirectory(prefix="gts-teacher-") as folder:
        args = TrainingArguments(output_dir=folder, num_train_epochs=settings.epochs, seed=seed,
                                 learning_rate=settings.learning_rate, per_device_train_batch_size=settings.batch_size,
                                 save_strategy="no", report_to="none", logging_strategy="epoch",
                                 remove_unused_columns=False, use_cpu=not torch.cuda.is_available())
        result = TeacherTrainer(teacher, args, train).train()
    teacher.model.eval()
    trainable = sum(param.numel() for param in teacher.model.parameters() if param.requires_grad)
    return {"lora": asdict(settings), "steps": result.global_step, "train_loss": round(result.training_loss, 4),
            "trainable_parameters": trainable}
