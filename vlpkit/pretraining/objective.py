"""The joint pretraining objective of E2E-VLP: L = w_mlm L_mlm + w_itm L_itm + w_v L_v + w_dec L_dec.

One backbone pass per step serves two encodings of each image:
- `[CLS] text [SEP] grid`, where the text is the (masked) caption or, for ITM negatives, another image's caption:
  the MLM, ITM and detection (+ attribute) heads read it;
- `[CLS] [SEP] grid` (the image alone): the decoder generates the caption from it, so it never sees the caption
  it predicts (tests/models/test_caption_leak.py);
- with `data.itm_extra_negatives` > 0 (not in the paper), the extra ITM rows of `batch.itm_pairs`, on the same
  image features; their cross-entropy joins the ITM term, which stays a mean over all ITM rows;
- with the "itc" task (not in the paper; ALBEF's image-text contrastive loss before fusion), the [CLS] state of
  each text encoded alone (`E2EVLP.encode_text`) against the [CLS] state of each image encoded alone (the
  encoding that generation reads): a symmetric InfoNCE over the batch on cosine similarities.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config_io import DictConfig
from ..data.batch import Batch
from ..losses import SetCriterion, label_smoothed_cross_entropy
from ..ops import HungarianMatcher
from ..ops.distributed import reduce_counts
from ..schema import check_fields

TASKS = ("mlm", "itm", "detection", "attributes", "caption", "itc")
PAPER_TASKS = TASKS[:5]


@dataclass
class ObjectiveConfig(DictConfig):
    """Which pretraining tasks run, and their weights.

    tasks: the enabled subset of ("mlm", "itm", "detection", "attributes", "caption", "itc"); "attributes" needs
        "detection" (attributes are predicted on matched object queries). "itc" (an image-text contrastive term
        before fusion, as in ALBEF) is not in the paper and off by default.
    weights: the weight of each term in the total (all 1, as in the paper).
    itc_temperature: the temperature of the contrastive term's softmax over cosine similarities.
    encoder_grad_scale: per decoder task ("detection", "caption"), a factor on the gradient that its loss sends
        back into the shared encoder (and below), leaving the decoder's own gradient whole; 1 (the paper) when
        absent. Not in the paper: on the shapes world the detection term's gradient on the encoder is about ten
        times that of MLM or ITM, and Adam's per-parameter normalisation then leaves ITM almost no step
        (docs/pretraining.md measures it).
    """

    config_label = "objective"  # (not a field: no annotation)

    tasks: tuple[str, ...] = PAPER_TASKS
    weights: dict[str, float] = field(default_factory=lambda: {"mlm": 1.0, "itm": 1.0, "detection": 1.0,
                                                               "caption": 1.0})
    label_smoothing: float = 0.1
    itc_temperature: float = 0.1
    encoder_grad_scale: dict[str, float] = field(default_factory=dict)
    eos_coef: float = 0.1
    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    set_weights: dict[str, float] = field(default_factory=lambda: {"loss_ce": 1.0, "loss_bbox": 5.0,
                                                                   "loss_giou": 2.0, "loss_attr": 1.0})

    def __post_init__(self) -> None:
        check_fields(self, "objective.")
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown pretraining task(s) {unknown}; valid tasks: {TASKS}")
        if "attributes" in self.tasks and "detection" not in self.tasks:
            raise ValueError("the 'attributes' task needs 'detection' (attributes are read from matched queries)")
        if not self.tasks:
            raise ValueError(f"no pretraining task enabled; choose from {TASKS}")
        bad = {k: v for k, v in self.encoder_grad_scale.items()
               if k not in ("detection", "caption") or not isinstance(v, (int, float)) or not 0 <= v <= 1}
        if bad:
            raise ValueError(f"encoder_grad_scale {bad}: keys 'detection' / 'caption', values in [0, 1]")
        if not self.itc_temperature > 0:
            raise ValueError(f"itc_temperature={self.itc_temperature}; expected > 0")

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["tasks"] = list(self.tasks)
        return out


class PretrainingObjective(nn.Module):
    """`objective(model, batch) -> dict`: "loss" (the weighted total) and each term ("mlm", "itm", "detection",
    "caption", and the set criterion's parts as "det/loss_ce" etc.), all scalar tensors.

    Batch fields used: pixel_values, pixel_mask, input_ids (masked text, possibly mismatched), attention_mask,
    token_type_ids, mlm_labels [B, L] (-100 = no target; negatives carry none), itm_labels [B] (1 = matched),
    targets (per image: "boxes" cxcywh, "labels", optional "attributes", and "has_boxes" False to leave an image
    out of detection), caption_ids [B, T] (`[BOS] caption [EOS] [PAD]...` of the true caption).

    Normalisers (masked tokens, ITM pairs, caption tokens, boxes) are averaged across processes, like DETR's
    num_boxes, so DDP gradients equal those of one large batch.
    """

    def __init__(self, config: ObjectiveConfig, num_classes: int, num_attributes: int, pad_token_id: int) -> None:
        super().__init__()
        self.config = config
        self.pad_token_id = pad_token_id
        losses = ("labels", "boxes") + (("attributes",) if "attributes" in config.tasks else ())
        self.criterion = SetCriterion(
            num_classes, HungarianMatcher(config.cost_class, config.cost_bbox, config.cost_giou),
            weight_dict=config.set_weights, eos_coef=config.eos_coef, losses=losses,
            num_attributes=num_attributes if "attributes" in config.tasks and num_attributes > 0 else None)

    def enabled(self, task: str) -> bool:
        return task in self.config.tasks

    def forward(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        device = batch.pixel_values.device
        image = model.embed_image(batch.pixel_values, batch.pixel_mask)
        needs_text = any(self.enabled(t) for t in ("mlm", "itm", "detection"))
        if needs_text:
            enc = model.encode(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               token_type_ids=batch.token_type_ids, image=image)
        mlm_count = int((batch.mlm_labels != -100).sum()) if self.enabled("mlm") else 0
        pairs = batch.itm_pairs if self.enabled("itm") else None
        itm_count = int((batch.itm_labels != -100).sum()) if self.enabled("itm") else 0
        itm_count += len(pairs["labels"]) if pairs is not None else 0
        itc_count = 0
        if self.enabled("itc") and batch.itc_texts is not None:
            itc_count = len(batch.itc_texts["index"])
        cap_count = 0
        if self.enabled("caption"):
            cap_count = int((batch.caption_ids[:, 1:] != self.pad_token_id).sum())
        n_mlm, n_itm, n_cap, n_itc = reduce_counts([mlm_count, itm_count, cap_count, itc_count], device)

        if self.enabled("mlm"):
            logits = model.mlm_logits(enc).float()
            out["mlm"] = F.cross_entropy(logits.flatten(0, 1), batch.mlm_labels.flatten(), ignore_index=-100,
                                         reduction="sum") / n_mlm
        if self.enabled("itm"):
            itm_sum = F.cross_entropy(model.itm_logits(enc).float(), batch.itm_labels, ignore_index=-100,
                                      reduction="sum")
            if pairs is not None:  # extra rows on the same image features (PretrainingCollator)
                pair_enc = model.encode(input_ids=pairs["input_ids"], attention_mask=pairs["attention_mask"],
                                        token_type_ids=pairs["token_type_ids"],
                                        image=image.select(pairs["image_index"]))
                itm_sum = itm_sum + F.cross_entropy(model.itm_logits(pair_enc).float(), pairs["labels"],
                                                    reduction="sum")
            out["itm"] = itm_sum / n_itm
        if self.enabled("detection"):
            out.update(self._detection(model, enc, batch))
        image_alone = model.encode(image=image) if self.enabled("caption") or itc_count else None
        if self.enabled("itc"):
            out["itc"] = self._contrastive(model, image_alone, batch.itc_texts, n_itc, image)
        if self.enabled("caption"):
            caption_enc = self._scaled(image_alone, "caption")
            logits = model.caption_logits(caption_enc, batch.caption_ids[:, :-1]).float()
            out["caption"] = label_smoothed_cross_entropy(
                logits, batch.caption_ids[:, 1:], epsilon=self.config.label_smoothing,
                ignore_index=self.pad_token_id, reduction="sum") / n_cap
        total = sum(self.config.weights.get(k, 1.0) * out[k] for k in ("mlm", "itm", "detection", "caption", "itc")
                    if k in out)
        out["loss"] = total
        return out

    def _contrastive(self, model, image_alone, texts: dict | None, count: torch.Tensor, image) -> torch.Tensor:
        """Symmetric InfoNCE between each ITC row's text and its image ([CLS] states, cosine / temperature);
        rows that share an image or a text are masked out of each other's negatives. Summed over rows and
        divided by the rows of all processes. A batch without two ITC rows adds a zero that keeps the graph."""
        if texts is None:
            return image.features.sum() * 0.0
        index = texts["index"]
        text = F.normalize(model.encode_text(texts["input_ids"], texts["attention_mask"],
                                             texts["token_type_ids"]).cls_state.float(), dim=-1)
        pixels = F.normalize(image_alone.cls_state.index_select(0, index).float(), dim=-1)
        logits = text @ pixels.T / self.config.itc_temperature
        eye = torch.eye(len(index), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(texts["same"] & ~eye, float("-inf"))
        target = torch.arange(len(index), device=logits.device)
        loss = F.cross_entropy(logits, target, reduction="sum") + F.cross_entropy(logits.T, target, reduction="sum")
        return loss / (2 * count)

    def _scaled(self, enc, task: str):
        scale = float(self.config.encoder_grad_scale.get(task, 1.0))
        return enc if scale == 1.0 else dataclasses.replace(enc, memory=scale_grad(enc.memory, scale))

    def _detection(self, model, enc, batch: Batch) -> dict[str, torch.Tensor]:
        detection = model.detect(self._scaled(enc, "detection")).to_dict()
        keep = [i for i, t in enumerate(batch.targets) if t.get("has_boxes", True)]
        if len(keep) < len(batch.targets):  # images from sources without box annotations
            index = torch.tensor(keep, device=batch.pixel_values.device)
            detection = _select(detection, index)
        targets = [{k: v for k, v in batch.targets[i].items() if k in ("boxes", "labels", "attributes")}
                   for i in keep]
        if not keep:  # keep the graph connected so every process runs the same backward
            zero = detection["pred_logits"].sum() * 0.0
            return {"detection": zero}
        parts = self.criterion(detection, targets)
        out = {f"det/{k}": v for k, v in parts.items()}
        out["detection"] = self.criterion.weighted_loss(parts)
        return out


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by `scale` on its way back (no torch op does this)."""
    return _ScaleGrad.apply(x, scale)


def _select(outputs: dict, index: torch.Tensor) -> dict:
    selected = {k: v.index_select(0, index) for k, v in outputs.items() if isinstance(v, torch.Tensor)}
    if "aux_outputs" in outputs:
        selected["aux_outputs"] = [_select(a, index) for a in outputs["aux_outputs"]]
    return selected
