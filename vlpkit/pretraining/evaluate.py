"""Evaluation of a pretrained model on held-out images, each metric beside its trivial baseline:

| metric | official tool | baseline |
|---|---|---|
| detection AP, AP50 | pycocotools COCOeval | no detections (AP 0) |
| caption BLEU-4, CIDEr (beam search) | pycocoevalcap | the best constant caption among frequent training captions |
| ITM accuracy (one matched + one mismatched caption per image) | - | majority class (0.5) |
| ITM ranking (the image's own caption scores above another image's) | - | chance (0.5) |
| MLM accuracy (BERT masking of held-out captions) | - | always the most frequent training token |
| grounding probe (visual words: right image minus another image's grid; `vlpkit.pretraining.probe`) | - | 0 |
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from ..data.batch import collate_images, collate_texts
from ..data.masking import mask_tokens
from ..data.readers import CocoDetection
from ..metrics.captioning import best_constant_caption, compute_caption_metrics, tokenize_captions
from ..metrics.detection import evaluate_detections, to_coco_results
from ..ops.postprocess import postprocess_detections
from .probe import GroundingProbe, probe_batch


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def _captions_by_image(captions_json: str | Path) -> dict[int, list[str]]:
    data = json.loads(Path(captions_json).read_text())
    out: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        out.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    return out


@torch.no_grad()
def evaluate_pretrained(model, tokenizer, instances_json, captions_json, image_root, transforms,
                        train_captions: list[str], batch_size: int = 32, max_images: int | None = None,
                        num_beams: int = 4, max_length: int = 30, seed: int = 0,
                        category_ids: list[int] | None = None, visual_ids: torch.Tensor | None = None) -> dict:
    """Every pretraining metric on a held-out split, with baselines. Returns a dict with "metrics" (name ->
    (value, baseline)), "predictions" (per image: detections and caption) and "image_ids"."""
    model.eval()
    device = next(model.parameters()).device
    data = CocoDetection(instances_json, image_root, transforms=transforms)
    n = len(data) if max_images is None else min(max_images, len(data))
    captions = _captions_by_image(captions_json)
    max_text = model.config.max_text_length
    results, predictions, image_ids = [], {}, []
    itm_correct = itm_ranked = mlm_correct = mlm_total = base_correct = 0
    probe = GroundingProbe()
    token_counts = Counter(t for c in train_captions for t in tokenizer(c, add_special_tokens=False)["input_ids"])
    frequent_token = token_counts.most_common(1)[0][0]
    generator = torch.Generator().manual_seed(seed)
    category_ids = category_ids or sorted(data.coco.getCatIds())
    for chunk in _chunks(n, batch_size):
        samples = [data[i] for i in chunk]
        ids = [s["image_id"] for s in samples]
        pixel_values, pixel_mask = collate_images([s["image"] for s in samples])
        pixel_values, pixel_mask = pixel_values.to(device), pixel_mask.to(device)
        own = [captions[i][0] for i in ids]
        other = [captions[ids[(k + 1) % len(ids)]][0] if len(ids) > 1 else own[k] for k in range(len(ids))]
        image = model.embed_image(pixel_values, pixel_mask)
        # detection and ITM read the image with text (as in pretraining); generation reads the image alone
        pos_ids, pos_mask, pos_types = (t.to(device) for t in collate_texts(own, tokenizer, max_text))
        enc = model.encode(input_ids=pos_ids, attention_mask=pos_mask, token_type_ids=pos_types, image=image)
        dets = postprocess_detections(model.detect(enc).to_dict())
        sizes = [s["target"]["orig_size"].tolist() for s in samples]
        results += to_coco_results([d["boxes"].cpu() for d in dets], [d["scores"].cpu() for d in dets],
                                   [d["labels"].cpu() for d in dets], ids, sizes, category_ids)
        pos_logits = model.itm_logits(enc)
        neg_ids, neg_mask, neg_types = (t.to(device) for t in collate_texts(other, tokenizer, max_text))
        neg = model.encode(input_ids=neg_ids, attention_mask=neg_mask, token_type_ids=neg_types, image=image)
        neg_logits = model.itm_logits(neg)
        if len(ids) > 1:
            itm_correct += int((pos_logits.argmax(-1) == 1).sum()) + int((neg_logits.argmax(-1) == 0).sum())
            match = (pos_logits.log_softmax(-1)[:, 1] - neg_logits.log_softmax(-1)[:, 1])
            itm_ranked += int((match > 0).sum())
            if visual_ids is not None:
                probe = probe.add(probe_batch(model, image, own, tokenizer, visual_ids, max_text))
        masked, labels = mask_tokens(pos_ids.cpu(), pos_mask.cpu(), tokenizer, generator)
        mlm = model.encode(input_ids=masked.to(device), attention_mask=pos_mask, token_type_ids=pos_types,
                           image=image)
        pred = model.mlm_logits(mlm).argmax(-1).cpu()
        selected = labels != -100
        mlm_correct += int((pred[selected] == labels[selected]).sum())
        base_correct += int((labels[selected] == frequent_token).sum())
        mlm_total += int(selected.sum())
        gen = model.generate(encoding=model.encode(image=image), num_beams=num_beams, max_length=max_length)
        texts = tokenizer.batch_decode(gen.sequences.cpu(), skip_special_tokens=True)
        for k, image_id in enumerate(ids):
            predictions[image_id] = {"caption": texts[k], "caption_score": float(gen.scores[k]),
                                     **{key: (v.cpu() if torch.is_tensor(v) else v) for key, v in dets[k].items()}}
        image_ids += ids

    det = evaluate_detections(instances_json, results, img_ids=image_ids)
    # tokenise once (PTB through Java when present), then score the model and each constant candidate
    gts = tokenize_captions({i: captions[i] for i in image_ids})
    res = {i: c[0] for i, c in tokenize_captions({i: [predictions[i]["caption"]] for i in image_ids}).items()}
    cap = compute_caption_metrics(gts, res, ("Bleu", "CIDEr")).corpus
    best_constant, best_constant_scores = best_constant_caption({i: captions[i] for i in image_ids}, train_captions)
    pairs = 2 * len(image_ids) if len(image_ids) > 1 else 1
    metrics = {
        "detection AP": (det["AP"], 0.0),
        "detection AP50": (det["AP50"], 0.0),
        "caption BLEU-4": (cap["Bleu_4"], best_constant_scores["Bleu_4"]),
        "caption CIDEr": (cap["CIDEr"], best_constant_scores["CIDEr"]),
        "ITM accuracy": (itm_correct / pairs, 0.5),
        "ITM ranking": (itm_ranked / max(len(image_ids), 1), 0.5),
        "MLM accuracy": (mlm_correct / max(mlm_total, 1), base_correct / max(mlm_total, 1)),
    }
    if visual_ids is not None:
        metrics["grounding probe"] = (probe.gain, 0.0)
    return {"metrics": metrics, "predictions": predictions, "image_ids": image_ids,
            "constant_caption": best_constant, "probe": probe}


def format_table(metrics: dict) -> str:
    lines = ["| metric | model | trivial baseline |", "|---|---|---|"]
    lines += [f"| {name} | {value:.3f} | {base:.3f} |" for name, (value, base) in metrics.items()]
    return "\n".join(lines)
