"""Matplotlib drawings shared by the demo and the notebooks: images with boxes, labels, attributes, captions."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import torch
from torchvision.ops import box_convert


def draw_detections(ax, image, boxes: torch.Tensor, labels: Sequence[str], scores: torch.Tensor | None = None,
                    title: str | None = None) -> None:
    """Draw `image` (PIL or [3, H, W] uint8/float in [0, 1]) and its boxes (normalised cxcywh [N, 4])."""
    import matplotlib.patches as patches

    if torch.is_tensor(image):
        image = image.permute(1, 2, 0).clamp(0, 1).numpy() if image.is_floating_point() else image.permute(1, 2, 0)
        height, width = image.shape[:2]
    else:
        width, height = image.size
    ax.imshow(image)
    xyxy = box_convert(boxes.float(), "cxcywh", "xyxy") * torch.tensor([width, height, width, height])
    for k, (x0, y0, x1, y1) in enumerate(xyxy.tolist()):
        ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", linewidth=1.5))
        text = labels[k] + (f" {float(scores[k]):.2f}" if scores is not None else "")
        ax.text(x0, y0, text, fontsize=6, color="black", backgroundcolor="lime", va="bottom")
    if title:
        ax.set_title(wrap_title(title), fontsize=7)
    ax.axis("off")


def wrap_title(text: str, width: int = 44, max_lines: int = 3) -> str:
    """`text` in lines of at most `width` characters, cut to `max_lines` with an ellipsis (matplotlib's own
    `wrap=True` wraps at the figure's edge, so titles of neighbouring axes overlap)."""
    lines = textwrap.wrap(text, width)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 3].rstrip() + "..."
    return "\n".join(lines)


def prediction_grid(images, predictions: Sequence[dict], class_names: Sequence[str],
                    attribute_names: Sequence[str] | None = None, score_threshold: float = 0.5, columns: int = 4,
                    title: str | None = None):
    """A figure of images with their kept detections (score >= threshold) and generated captions, and an optional
    `title` above them (the demo puts its metrics there)."""
    import matplotlib.pyplot as plt

    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, pred in zip(axes.flat, images, predictions):
        keep = (pred["scores"] >= score_threshold).nonzero().flatten().tolist()
        names = []
        for k in keep:
            name = class_names[int(pred["labels"][k])]
            if attribute_names is not None and pred.get("attributes"):
                name = " ".join([attribute_names[a] for a in pred["attributes"][k]] + [name])
            names.append(name)
        draw_detections(ax, image, pred["boxes"][keep], names, pred["scores"][keep], pred.get("caption"))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
