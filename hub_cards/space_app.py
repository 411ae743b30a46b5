"""A Gradio demo of a gts-hf few-shot classifier (written by ``gts-hf space``; its settings are in SETTINGS below).

Run it with ``python app.py``: it serves on http://127.0.0.1:7860 (``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``
change that; Hugging Face Spaces set them). With gts-hf installed the model loads as data only; without it, the
model repo's own ``gts_remote.py`` (uploaded by ``gts-hf push``) runs with ``trust_remote_code``.
"""

from __future__ import annotations

import os
from typing import Any

import gradio as gr
from transformers import pipeline

SETTINGS: dict[str, Any] = {}  # gts-hf space writes the settings here


def load_classifier(model_id: str) -> Any:
    """The gts-few-shot pipeline when gts-hf is installed, else the model repo's remote-code pipeline."""
    try:
        import gts_hf  # noqa: F401  (registers the gts-few-shot pipeline)
    except ImportError:
        return pipeline("text-classification", model=model_id, trust_remote_code=True)
    return pipeline("gts-few-shot", model=model_id)


def make_classify(classifier: Any, max_chars: int, pair: bool) -> Any:
    """The demo's function: text (and second text) in, ``{label: probability}`` for every label out."""
    num_labels = len(classifier.model.config.labels)

    def classify(text: str, text_pair: str | None = None) -> dict[str, float]:
        text, text_pair = (text or "").strip()[:max_chars], (text_pair or "").strip()[:max_chars]
        if not text or (pair and not text_pair):
            raise gr.Error("Type a text first." if not pair else "Type both sentences first.")
        inputs = {"text": text, "text_pair": text_pair} if pair else text
        return {item["label"]: item["score"] for item in classifier(inputs, top_k=num_labels)}

    return classify


def build_demo(settings: dict[str, Any]) -> gr.Interface:
    if not settings:
        raise SystemExit("app.py has no settings: generate it with `gts-hf space --model USER/NAME --output-dir DIR`")
    classifier = load_classifier(settings["model"])
    max_chars, pair = settings["max_chars"], settings["pair"]
    names = ("Sentence 1", "Sentence 2") if pair else ("Text",)
    inputs = [gr.Textbox(label=name, lines=3, max_length=max_chars, placeholder=f"at most {max_chars} characters")
              for name in names]
    return gr.Interface(
        fn=make_classify(classifier, max_chars, pair), inputs=inputs,
        outputs=gr.Label(label="Prediction", num_top_classes=min(len(classifier.model.config.labels), 10)),
        examples=settings["examples"] or None, cache_examples=False, title=settings["title"],
        description=settings["description"], flagging_mode="never", api_name="classify",
    )


if __name__ == "__main__":
    build_demo(SETTINGS).launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
