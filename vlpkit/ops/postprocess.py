"""DETR-style post-processing: set predictions -> scored detections per image."""

from __future__ import annotations

from collections.abc import Mapping

import torch


@torch.no_grad()
def postprocess_detections(outputs: Mapping[str, torch.Tensor], attribute_threshold: float = 0.5,
                           max_attributes: int = 3) -> list[dict[str, torch.Tensor | list]]:
    """Scores, labels and attributes of every query, as DETR's PostProcess (no thresholding, no NMS).

    Args:
        outputs: {"pred_logits": [B, Q, K+1], "pred_boxes": [B, Q, 4] normalised cxcywh, optional
            "pred_attributes": [B, Q, A]} (`DetectionOutput.to_dict()`).
        attribute_threshold / max_attributes: attributes reported per query are the (at most `max_attributes`)
            ids whose softmax probability is at least `attribute_threshold` times that of the most likely one.
    Returns:
        one dict per image: "scores" [Q] (max class probability without no-object), "labels" [Q] long,
        "boxes" [Q, 4] normalised cxcywh (float32), "attributes": Q lists of attribute ids (when predicted).
    """
    probs = outputs["pred_logits"].float().softmax(-1)[..., :-1]
    scores, labels = probs.max(-1)
    results = []
    attr = outputs.get("pred_attributes")
    attr_probs = attr.float().softmax(-1) if attr is not None else None
    for i in range(probs.shape[0]):
        item = {"scores": scores[i], "labels": labels[i], "boxes": outputs["pred_boxes"][i].float()}
        if attr_probs is not None:
            top_p, top_i = attr_probs[i].topk(min(max_attributes, attr_probs.shape[-1]), dim=-1)
            keep = top_p >= attribute_threshold * top_p[:, :1]
            item["attributes"] = [ids[k].tolist() for ids, k in zip(top_i, keep)]
        results.append(item)
    return results
