"""`vlpkit predict`: a saved model on the user's own image files.

Caption them, answer a question about them, detect objects in them, or score captions against them, from a
pretraining run (`vlpkit demo`, `vlpkit pretrain`) or a fine-tuned task folder (`vlpkit finetune TASK`), through
`E2EVLPPredictor`. `predict_files` returns one JSON-ready dict per image; `format_predictions` prints them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .inference import E2EVLPPredictor


class PredictError(ValueError):
    """A request `vlpkit predict` cannot serve: a missing or unreadable image, or a model that cannot do it."""


def open_images(paths: Sequence[str | Path]) -> list[Image.Image]:
    """The files as RGB images; a missing or unreadable one is a `PredictError` naming it."""
    images = []
    for path in map(Path, paths):
        if not path.is_file():
            raise PredictError(f"image not found: {path}")
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise PredictError(f"{path} is not a readable image ({err})") from None
    return images


def predict_files(model: str | Path, images: Sequence[str | Path], *, caption: bool = False,
                  question: str | None = None, detect: bool = False, text: str | None = None,
                  match: Sequence[str] = (), threshold: float = 0.5, num_beams: int = 4,
                  device: str | None = None) -> list[dict[str, Any]]:
    """Run the requested predictions on each image file.

    Args:
        model: a run folder or model folder (`E2EVLPPredictor.from_pretrained`).
        caption: beam-search caption (`num_beams`). question: answer it (needs a VQA fine-tuned folder).
        detect: objects with score >= `threshold`, the encoder reading `text` beside the image when given.
        match: captions to score against each image (image-text matching probability of the ITM head).
    Returns:
        per image: {"image": path, "caption"?: str, "caption_score"?: float, "answer"?: str,
        "answer_score"?: float, "detections"?: [{"label", "score", "box" (xyxy pixels), "attributes"}],
        "match"?: {text: probability}}.
    Raises:
        PredictError: nothing requested, a missing or unreadable image, or a model that cannot answer questions.
    """
    if not (caption or question or detect or match):
        raise PredictError("nothing to predict: ask for --caption, --question, --detect and/or --match")
    pictures = open_images(images)
    predictor = E2EVLPPredictor.from_pretrained(model, device=device)
    if question is not None and predictor.vqa_model is None:
        raise PredictError(f"{model} cannot answer questions: it has no VQA head (fine-tune one with "
                           f"`vlpkit finetune vqa --checkpoint {model} ...` and pass that folder)")
    results: list[dict[str, Any]] = [{"image": str(p)} for p in images]
    if caption:
        captions = predictor.caption(pictures, num_beams=num_beams, return_scores=True)
        for r, c, s in zip(results, captions.texts, captions.scores.tolist()):
            r.update(caption=c, caption_score=round(s, 4))
    if question is not None:
        answers, scores = predictor.answer(pictures, [question] * len(pictures), return_scores=True)
        for r, a, s in zip(results, answers, scores.tolist()):
            r.update(question=question, answer=a, answer_score=round(s, 4))
    if detect:
        for r, det in zip(results, predictor.detect(pictures, text=text, threshold=threshold)):
            attributes = det.get("attributes", [[] for _ in det["labels"]])
            r["detections"] = [{"label": label, "score": round(float(score), 4),
                                "box": [round(float(v), 1) for v in box], "attributes": attrs}
                               for label, score, box, attrs in zip(det["labels"], det["scores"], det["boxes"],
                                                                   attributes)]
    if match:
        scores = predictor.match(pictures, list(match))
        for r, row in zip(results, scores.tolist()):
            r["match"] = {t: round(p, 4) for t, p in zip(match, row)}
    return results


def format_predictions(results: list[dict[str, Any]]) -> str:
    """The results as indented text, one block per image."""
    lines = []
    for r in results:
        lines.append(r["image"])
        if "caption" in r:
            lines.append(f"  caption: {r['caption']}  (score {r['caption_score']:.3f})")
        if "answer" in r:
            lines.append(f"  {r['question']} -> {r['answer']}  ({r['answer_score']:.2f})")
        if "detections" in r:
            lines.append(f"  detections: {len(r['detections'])}")
            for d in r["detections"]:
                attrs = f" ({', '.join(d['attributes'])})" if d["attributes"] else ""
                box = ", ".join(f"{v:.0f}" for v in d["box"])
                lines.append(f"    {d['label']}{attrs} {d['score']:.2f} [{box}]")
        for text, p in r.get("match", {}).items():
            lines.append(f"  match {text!r}: {p:.3f}")
    return "\n".join(lines)
