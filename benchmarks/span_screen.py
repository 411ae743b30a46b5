"""Does the pronoun's state in context resemble the noun it refers to? A frozen screen of the span cosine behind
coreference's head (benchmarks/ABLATION.md §14).

For every layer of the untrained student, the cosine of the mean token states of the marked noun and pronoun
(the spans :func:`gts_hf.inference.encode_spans` finds) is scored as a ranking of "refers" against "does not", as ROC
AUC: 0.5 is no signal. No training: train, dev and test only differ in which records are ranked.

    python benchmarks/span_screen.py            # FewCLUE CLUEWSC: all train and dev splits, and the public test set
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gts_hf.data import FewShotTask, read_examples
from gts_hf.engine import GTSEngine
from gts_hf.inference import encode_spans
from gts_hf.modeling import pool

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fewclue" / "cluewsc"


@torch.no_grad()
def span_cosines(model, tokenizer, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """``(layers + 1, len(texts))``: the span cosine at the embeddings and after every layer."""
    columns = []
    for start in range(0, len(texts), batch_size):
        batch = encode_spans(tokenizer, model.config, texts[start:start + batch_size])
        states = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               output_hidden_states=True).hidden_states
        masks = [batch[name] for name in ("first_span_mask", "second_span_mask")]
        columns.append(torch.stack([torch.cosine_similarity(*(pool(layer, mask, "mean") for mask in masks))
                                    for layer in states]).numpy())
    return np.concatenate(columns, axis=1)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The probability that a positive outranks a negative (ties count half)."""
    ranks = scores.argsort().argsort() + 1.0
    for value in np.unique(scores):  # average ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    count = positive.sum()
    return float((ranks[positive].sum() - count * (count + 1) / 2) / (count * (len(scores) - count)))


def main() -> None:
    splits = {"train 0-4": [example for k in range(5) for example in read_examples(DATA / f"train_{k}.json")],
              "dev 0-4": [example for k in range(5) for example in read_examples(DATA / f"dev_{k}.json")],
              "test": read_examples(DATA / "test_public.json")}
    task = FewShotTask(labels=["false", "true"], train=splits["train 0-4"], task_type="coreference")
    model, tokenizer = GTSEngine(mode="fast").build_student(task)
    model.eval()
    table = {name: span_cosines(model, tokenizer, [example.text for example in examples])
             for name, examples in splits.items()}
    print("| layer | " + " | ".join(f"AUC {name} ({len(examples)})" for name, examples in splits.items()) + " |")
    print("|---|" + "---|" * len(splits))
    for layer in range(len(next(iter(table.values())))):
        cells = [roc_auc(table[name][layer], np.array([example.label == "true" for example in examples]))
                 for name, examples in splits.items()]
        print(f"| {layer} | " + " | ".join(f"{cell:.3f}" for cell in cells) + " |")


if __name__ == "__main__":
    main()
