"""Inference on raw images: `E2EVLPPredictor` bundles a model, its tokenizer, the evaluation transforms and the
label names, and offers one method per use:

    >>> predictor = E2EVLPPredictor.from_pretrained("runs/demo")
    >>> predictor.caption(images)                    # ["two red circles ...", ...]
    >>> predictor.detect(images, threshold=0.5)      # [{"boxes": [N, 4] xyxy pixels, "labels": [...], ...}, ...]
    >>> predictor.match(images, texts)               # [N_img, N_txt] probability that text j describes image i
    >>> predictor.answer(images, questions)          # needs a VQA fine-tuned folder

`images` is one image or a list of them: PIL images of any mode (converted to RGB), uint8 tensors [C, H, W]
(C = 3, 1 or 4) or float tensors in [0, 1], or a batch tensor [N, 3, H, W] (`vlpkit.data.raw_images`). Every
method returns one entry per image, in order.

A predictor folder is what `vlpkit pretrain` writes (a *run* folder) or a model folder; `vlpkit.model_folder`
describes the layout and holds its readers and writers (re-exported here).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torchvision.ops import box_convert

from .checkpoint import WEIGHTS_NAME, read_metadata
from .data.batch import collate_texts
from .data.raw_images import PreparedImages, as_image_list, prepare_images
from .data.tokenization import load_tokenizer, save_tokenizer
from .data.transforms import make_eval_transforms
from .model_folder import (  # noqa: F401  (the folder layout, public here too)
    LABELS_NAME,
    PREPROCESSING_NAME,
    TOKENIZER_DIR,
    LabelNames,
    PretrainedFiles,
    load_labels,
    locate_pretrained,
    save_labels,
    save_preprocessing,
)
from .models import E2EVLP
from .ops.postprocess import postprocess_detections
from .tasks.registry import task_of_model

logger = logging.getLogger(__name__)

__all__ = ["E2EVLPPredictor", "Predictor", "Captions", "LabelNames", "PretrainedFiles", "locate_pretrained",
           "save_labels", "load_labels", "save_preprocessing"]


def _image_sizes(files: PretrainedFiles) -> tuple[int, int] | None:
    """(shorter side, longer-side cap) of the evaluation transform recorded in the folder, if any."""
    if files.preprocessing is not None:
        data = json.loads(files.preprocessing.read_text())
        if "eval_size" not in data and "image_size" not in data:
            raise ValueError(f"{files.preprocessing}: expected keys 'eval_size' and 'max_size', got {sorted(data)}")
        # "image_size": the key's name before it took the tasks' and the recipes' name (read, never written)
        return int(data.get("eval_size", data.get("image_size"))), int(data["max_size"])
    if files.pretrain_config is not None:
        # the same defaults as vlpkit.pretraining.run.image_transforms
        image = json.loads(files.pretrain_config.read_text()).get("data", {}).get("image", {})
        scales = image.get("train_scales", range(480, 801, 32))
        return int(image.get("eval_size", max(scales))), int(image.get("max_size", 1333))
    return None


# ---- outputs -------------------------------------------------------------------------------------------------
class Captions(NamedTuple):
    """`caption(..., return_scores=True)`: texts [N] and scores [N] (length-penalised log-probabilities)."""

    texts: list[str]
    scores: torch.Tensor


# ---- the predictor -------------------------------------------------------------------------------------------
class E2EVLPPredictor:
    """An `E2EVLP` ready for raw images and strings.

    Args:
        model: the pretrained (or fine-tuned) `E2EVLP`.
        tokenizer: its `BertTokenizerFast`.
        object_names / attribute_names: names of the detection classes / attributes (None: detections are named
            by their index, with a warning).
        eval_size / max_size: the evaluation transform (shorter side, cap on the longer side); use the sizes
            the model was trained at.
        batch_size: images (or image-text pairs for `match`) per forward pass.
        vqa_model: a VQA task model (`vlpkit.tasks.vqa.VQAModel`) whose `e2evlp` is `model`; enables `answer`,
            which it serves (at the predictor's image sizes; its tokenizer, when it has none, is the predictor's).
        answer_names: the answers to record in `labels.json` (default and, with `vqa_model`, necessarily: its
            `answer_vocab`).
    """

    def __init__(self, model: E2EVLP, tokenizer, object_names: Sequence[str] | None = None,
                 attribute_names: Sequence[str] | None = None, eval_size: int = 800, max_size: int = 1333,
                 batch_size: int = 16, vqa_model: nn.Module | None = None,
                 answer_names: Sequence[str] | None = None) -> None:
        if not isinstance(model, E2EVLP):
            raise TypeError(f"model must be an E2EVLP, got {type(model).__name__} (a task model? pass its .e2evlp)")
        config = model.config
        if len(tokenizer) > config.vocab_size or tokenizer.cls_token_id != config.cls_token_id:
            raise ValueError(f"the tokenizer ({len(tokenizer)} tokens, [CLS]={tokenizer.cls_token_id}) does not fit "
                             f"the model (vocab_size={config.vocab_size}, cls_token_id={config.cls_token_id})")
        if object_names is not None and len(object_names) != config.num_classes:
            raise ValueError(f"{len(object_names)} object names for a model with num_classes={config.num_classes}")
        if attribute_names is not None and attribute_names and len(attribute_names) != config.num_attributes:
            raise ValueError(f"{len(attribute_names)} attribute names for a model with "
                             f"num_attributes={config.num_attributes}")
        if object_names is None:
            logger.warning("E2EVLPPredictor: no object names given; detections are labelled by class index")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if vqa_model is not None:
            from .tasks.vqa import VQAModel  # the task layer, imported only when a VQA model is given

            if not isinstance(vqa_model, VQAModel):
                raise TypeError(f"vqa_model must be a vlpkit.tasks.vqa.VQAModel, got {type(vqa_model).__name__}")
            if vqa_model.e2evlp is not model:
                raise ValueError("vqa_model.e2evlp must be the predictor's model (build the predictor with "
                                 "model=vqa_model.e2evlp)")
            if answer_names is not None and list(answer_names) != list(vqa_model.answer_vocab):
                raise ValueError(f"answer_names ({len(answer_names)}) differ from the VQA model's answer vocabulary "
                                 f"({len(vqa_model.answer_vocab)} answers); leave answer_names out")
            answer_names = vqa_model.answer_vocab
            vqa_model.set_image_size(eval_size, max_size)
            if vqa_model.tokenizer is None:
                vqa_model.tokenizer = tokenizer
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.object_names = list(object_names) if object_names is not None else None
        self.attribute_names = list(attribute_names) if attribute_names else None
        self.eval_size, self.max_size = int(eval_size), int(max_size)
        self.transforms = make_eval_transforms(self.eval_size, self.max_size)
        self.batch_size = batch_size
        self.vqa_model = vqa_model.eval() if vqa_model is not None else None
        self.answer_names = list(answer_names) if answer_names is not None else None
        self.task_model = vqa_model  # the task model the weights came from, if any (set by from_pretrained)

    # ---- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None,
                        eval_size: int | None = None, max_size: int | None = None,
                        batch_size: int = 16) -> E2EVLPPredictor:
        """Load a run folder or a model folder (see the module docstring).

        The weights may be a pretrained `E2EVLP` or any task model saved with `TaskModel.save_pretrained` (its
        `e2evlp` serves captioning, detection and matching; a VQA task model also serves `answer`). Image sizes
        default to those recorded in the folder (`preprocessing.json`, else the task model's `eval_size` /
        `max_size`, else `pretrain_config.json`), else 800/1333.
        """
        files = locate_pretrained(path)
        task = read_metadata(files.model_dir / WEIGHTS_NAME).get("task")
        task_model = None
        if task is None:
            model = E2EVLP.from_pretrained(files.model_dir)
        else:
            task_model = task_of_model(task).model_class.from_pretrained(files.model_dir)
            model = task_model.e2evlp
        if files.tokenizer_dir is None:
            raise FileNotFoundError(f"no {TOKENIZER_DIR}/ folder in {files.model_dir} or {files.root} "
                                    "(save it with vlpkit.data.save_tokenizer)")
        tokenizer = load_tokenizer(files.tokenizer_dir)
        labels = load_labels(files.labels) if files.labels is not None else None
        if labels is None:
            logger.warning("no %s in %s: detections will be labelled by class index", LABELS_NAME, files.root)
        recorded = _image_sizes(files)
        if files.preprocessing is None and all(hasattr(task_model, k) for k in ("eval_size", "max_size")):
            recorded = int(task_model.eval_size), int(task_model.max_size)  # e.g. VQAModel records its own
        if recorded is None and (eval_size is None or max_size is None):
            logger.warning("%s records no image size; using %s", files.root, (eval_size or 800, max_size or 1333))
        size, cap = recorded or (800, 1333)
        # an empty list in labels.json means "names unknown"
        predictor = cls(model, tokenizer, (labels.objects or None) if labels else None,
                        labels.attributes if labels else None, eval_size or size, max_size or cap, batch_size,
                        vqa_model=task_model if task == "VQAModel" else None,
                        answer_names=labels.answers if labels and task != "VQAModel" else None)
        predictor.task_model = task_model
        return predictor.to(device) if device is not None else predictor

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write a flat predictor folder: the model (or VQA task model) weights, tokenizer/, labels.json and
        preprocessing.json; `from_pretrained(directory)` reads it back."""
        directory = Path(directory)
        source = self.task_model if self.task_model is not None else self.model
        source.save_pretrained(directory)
        save_tokenizer(self.tokenizer, directory / TOKENIZER_DIR)
        save_labels(directory, self.object_names or [], self.attribute_names or [], self.answer_names)
        save_preprocessing(directory, self.eval_size, self.max_size)
        return directory

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> E2EVLPPredictor:
        (self.task_model if self.task_model is not None else self.model).to(device)
        return self

    # ---- inputs ------------------------------------------------------------------------------------------
    def preprocess(self, images: Any, first_index: int = 0) -> PreparedImages:
        """The evaluation transform and padding of `images` (`vlpkit.data.raw_images.prepare_images`; errors name
        the image by its index, counted from `first_index`), on the predictor's device."""
        return prepare_images(images, self.transforms, first_index).to(self.device)

    def _texts(self, texts: Any, count: int, what: str) -> list[str]:
        if isinstance(texts, str):
            return [texts] * count if count else [texts]
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"{what}: expected a string or a list of strings, got {type(texts).__name__}")
        if count and len(texts) != count:
            raise ValueError(f"{what}: got {len(texts)} texts for {count} images (give one per image, or one "
                             "string for all)")
        if not texts:
            raise ValueError(f"{what}: got an empty list")
        return list(texts)

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, mask, types = collate_texts(texts, self.tokenizer, self.model.config.max_text_length)
        return ids.to(self.device), mask.to(self.device), types.to(self.device)

    def _chunks(self, items: list) -> list[tuple[int, list]]:
        return [(start, items[start:start + self.batch_size]) for start in range(0, len(items), self.batch_size)]

    # ---- tasks -------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def caption(self, images: Any, num_beams: int = 4, max_length: int = 30, return_scores: bool = False,
                **generate_kwargs) -> list[str] | Captions:
        """Describe each image: beam search on the image-only encoding (`E2EVLP.generate`).

        Args:
            num_beams / max_length / generate_kwargs: see `vlpkit.generation.generate`.
            return_scores: also return each caption's score.
        Returns:
            one caption per image, or `Captions(texts, scores)` with `return_scores=True`.
        """
        texts, scores = [], []
        for start, chunk in self._chunks(as_image_list(images)):
            prepared = self.preprocess(chunk, start)
            out = self.model.generate(prepared.pixel_values, prepared.pixel_mask, num_beams=num_beams,
                                      max_length=max_length, **generate_kwargs)
            texts += self.tokenizer.batch_decode(out.sequences.cpu(), skip_special_tokens=True)
            scores.append(out.scores.float().cpu())
        return Captions(texts, torch.cat(scores)) if return_scores else texts

    @torch.inference_mode()
    def detect(self, images: Any, text: str | Sequence[str] | None = None, threshold: float = 0.5,
               max_detections: int | None = None, attribute_threshold: float = 0.5,
               max_attributes: int = 3) -> list[dict]:
        """Detect objects (and their attributes) in each image.

        Args:
            text: None encodes `[CLS] [SEP] grid` (the image alone); a string (for all images) or one string per
                image encodes `[CLS] text [SEP] grid`, as in pretraining and in detection with paired text.
            threshold: keep detections whose class probability is at least this.
            max_detections: keep at most this many per image (highest scores first); None keeps all.
            attribute_threshold / max_attributes: see `vlpkit.ops.postprocess_detections`.
        Returns:
            one dict per image, detections sorted by decreasing score: "boxes" float [N, 4] xyxy in pixels of
            the image as given (clamped to it), "scores" [N], "labels" N class names, "label_ids" long [N],
            "attributes" N lists of attribute names and "attribute_ids" N lists of ids (when the model has an
            attribute head).
        """
        items = as_image_list(images)
        texts = None if text is None else self._texts(text, len(items), "detect(text=...)")
        results = []
        for start, chunk in self._chunks(items):
            prepared = self.preprocess(chunk, start)
            if texts is None:
                ids = mask = types = None
            else:
                ids, mask, types = self._encode_texts(texts[start:start + len(chunk)])
            encoding = self.model.encode(prepared.pixel_values, prepared.pixel_mask, ids, mask, types)
            detections = postprocess_detections(self.model.detect(encoding).to_dict(), attribute_threshold,
                                                max_attributes)
            for det, size in zip(detections, prepared.orig_sizes.tolist()):
                results.append(self._format_detections(det, size, threshold, max_detections))
        return results

    def _format_detections(self, det: dict, size: list[int], threshold: float, max_detections: int | None) -> dict:
        height, width = size
        keep = (det["scores"] >= threshold).nonzero().flatten()
        keep = keep[det["scores"][keep].argsort(descending=True, stable=True)][:max_detections]
        # normalised boxes are fractions of the image as given: the eval transform only rescales it
        boxes = box_convert(det["boxes"][keep].float(), "cxcywh", "xyxy").cpu()
        boxes = boxes * torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        label_ids = det["labels"][keep].cpu()
        names = self.object_names
        out = {"boxes": boxes, "scores": det["scores"][keep].float().cpu(),
               "labels": [names[k] if names else str(k) for k in label_ids.tolist()], "label_ids": label_ids}
        if "attributes" in det:
            ids = [det["attributes"][k] for k in keep.tolist()]
            attr = self.attribute_names
            out["attribute_ids"] = ids
            out["attributes"] = [[attr[a] if attr else str(a) for a in row] for row in ids]
        return out

    @torch.inference_mode()
    def match(self, images: Any, texts: str | Sequence[str]) -> torch.Tensor:
        """Image-text matching: [N_img, N_txt] probability (softmax of `itm_logits`, index 1) that text j
        describes image i. Each image is embedded once and encoded with every text."""
        items = as_image_list(images)
        texts = self._texts(texts, 0, "match(texts=...)")
        ids, mask, types = self._encode_texts(texts)
        scores = torch.empty(len(items), len(texts))
        for start, chunk in self._chunks(items):
            prepared = self.preprocess(chunk, start)
            image = self.model.embed_image(prepared.pixel_values, prepared.pixel_mask)
            pairs = [(i, j) for i in range(len(chunk)) for j in range(len(texts))]
            for _, part in self._chunks(pairs):
                rows = torch.tensor([i for i, _ in part], device=self.device)
                cols = torch.tensor([j for _, j in part], device=self.device)
                encoding = self.model.encode(input_ids=ids[cols], attention_mask=mask[cols],
                                             token_type_ids=types[cols], image=image.select(rows))
                prob = self.model.itm_logits(encoding).float().softmax(-1)[:, 1].cpu()
                scores[rows.cpu() + start, cols.cpu()] = prob
        return scores

    @torch.inference_mode()
    def answer(self, images: Any, questions: str | Sequence[str], return_scores: bool = False):
        """Answer one question per image with the VQA model's best answer: `VQAModel.answer`, at the predictor's
        image sizes and batch size.

        Needs a VQA fine-tuned model: `E2EVLPPredictor.from_pretrained(<folder written by the VQA fine-tuning>)`,
        or `vqa_model=` in the constructor.
        Returns:
            one answer per image, or (answers, sigmoid scores [N]) with `return_scores=True`.
        """
        if self.vqa_model is None:
            raise RuntimeError("answer() needs a VQA fine-tuned model, and this predictor has none: load a VQA "
                               "task folder (vlpkit.tasks.vqa, e.g. `vlpkit finetune vqa` output) "
                               "with E2EVLPPredictor.from_pretrained, or pass vqa_model=VQAModel")
        items = as_image_list(images)
        questions = self._texts(questions, len(items), "answer(questions=...)")
        predictions = self.vqa_model.answer(items, questions, batch_size=self.batch_size)
        answers = [p.answer for p in predictions]
        return (answers, torch.tensor([p.score for p in predictions])) if return_scores else answers


#: Short alias.
Predictor = E2EVLPPredictor
