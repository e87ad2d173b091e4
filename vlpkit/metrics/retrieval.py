"""Image-text retrieval recall@K (Flickr30K / COCO 5k protocol) from an image-text score matrix.

``scores[i, t]`` is the similarity of image ``i`` and text ``t``; ``text_to_image[t]`` is the image that text
``t`` describes (each image has ~5 captions).

* Text retrieval (image query): image ``i`` is a hit at K when any of its captions is among the K best texts.
* Image retrieval (text query): text ``t`` is a hit at K when its image is among the K best images.

Ties are broken **against the query**: a correct item ties with an incorrect one are ranked below it. So the
rank of a query is the number of incorrect items scoring ``>=`` its best correct item, and a constant score
matrix gets recall 0 instead of an arbitrary sort-order-dependent value (argsort-based code such as
VSE++/ALBEF breaks ties by index). With distinct scores this equals the usual argsort ranking.

No torch/torchmetrics routine computes this multi-positive protocol, hence the few lines below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class RetrievalResult:
    """Recall@K in percent and the 0-based ranks they come from.

    Attributes:
        text_r: ``{K: recall}`` of text retrieval (image queries).
        image_r: ``{K: recall}`` of image retrieval (text queries).
        text_ranks: ``[num_images]`` rank of the best caption of each image.
        image_ranks: ``[num_texts]`` rank of the image of each text.
    """

    text_r: dict[int, float]
    image_r: dict[int, float]
    text_ranks: torch.Tensor
    image_ranks: torch.Tensor

    @property
    def r_mean(self) -> float:
        """Mean of all recalls (the "RSUM/6" figure reported by papers for K = 1, 5, 10)."""
        values = list(self.text_r.values()) + list(self.image_r.values())
        return sum(values) / len(values)


def retrieval_ranks(scores: torch.Tensor, text_to_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks (ties against the query) for text retrieval ``[num_images]`` and image retrieval ``[num_texts]``.

    Args:
        scores: ``[num_images, num_texts]`` float similarities.
        text_to_image: ``[num_texts]`` long, image index of each text; every image needs at least one text.
    """
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        raise ValueError(
            f"scores must be a 2-D tensor [num_images, num_texts], got {getattr(scores, 'shape', scores)}"
        )
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a float tensor, got {scores.dtype}")
    if torch.isnan(scores).any():
        raise ValueError(f"scores holds {int(torch.isnan(scores).sum())} NaN value(s)")
    num_images, num_texts = scores.shape
    if num_images == 0 or num_texts == 0:
        raise ValueError(f"scores is empty: shape {tuple(scores.shape)}")
    text_to_image = torch.as_tensor(text_to_image, device=scores.device)
    if text_to_image.shape != (num_texts,):
        raise ValueError(
            f"text_to_image must have shape [num_texts] = [{num_texts}], got {tuple(text_to_image.shape)}"
        )
    if text_to_image.dtype.is_floating_point or text_to_image.dtype == torch.bool:
        raise TypeError(f"text_to_image must hold integer image indices, got {text_to_image.dtype}")
    text_to_image = text_to_image.long()
    if text_to_image.min() < 0 or text_to_image.max() >= num_images:
        raise ValueError(
            f"text_to_image values must be in [0, {num_images}), got range "
            f"[{int(text_to_image.min())}, {int(text_to_image.max())}]"
        )
    counts = torch.bincount(text_to_image, minlength=num_images)
    if (counts == 0).any():
        lonely = torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise ValueError(f"{int((counts == 0).sum())} image(s) have no text (e.g. image indices {lonely})")

    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[text_to_image, torch.arange(num_texts, device=scores.device)] = True

    # Text retrieval: best correct caption per image, then count the wrong captions scoring >= it.
    best_pos = scores.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)  # [I, 1]
    text_ranks = ((scores >= best_pos) & ~positive).sum(dim=1)  # [I]
    # Image retrieval: each text has one correct image; count the other images scoring >= it.
    pos = scores.gather(0, text_to_image[None]).squeeze(0)  # [T]
    image_ranks = ((scores >= pos[None]) & ~positive).sum(dim=0)  # [T]
    return text_ranks, image_ranks


def retrieval_recall(
    scores: torch.Tensor, text_to_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> RetrievalResult:
    """Recall@K (percent) of text retrieval and image retrieval; see the module docstring for the protocol."""
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    text_ranks, image_ranks = retrieval_ranks(scores, text_to_image)
    return RetrievalResult(
        text_r={int(k): 100.0 * (text_ranks < k).double().mean().item() for k in ks},
        image_r={int(k): 100.0 * (image_ranks < k).double().mean().item() for k in ks},
        text_ranks=text_ranks,
        image_ranks=image_ranks,
    )
