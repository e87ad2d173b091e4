"""Circle loss (Sun et al., CVPR 2020, "Circle Loss: A Unified Perspective of Pair Similarity Optimization").

For one anchor with positive similarities `s_p^i` (i = 1..K) and negative similarities `s_n^j` (j = 1..L),
Eq. 6 of the paper with the margins of Eq. 8:

    L = log[1 + sum_j exp(gamma * alpha_n^j * (s_n^j - Delta_n)) * sum_i exp(-gamma * alpha_p^i * (s_p^i - Delta_p))]

    alpha_p = [O_p - s_p]_+,  alpha_n = [s_n - O_n]_+          (self-paced weights, Eq. 5)
    O_p = 1 + m,  O_n = -m,  Delta_p = 1 - m,  Delta_n = m       (one relaxation margin m, Eq. 8)

so the decision boundary is the circle (s_n - 0)^2 + (s_p - 1)^2 = 2 m^2: training pushes s_p towards 1 and s_n
towards 0. The formula holds for similarities in [0, 1] (e.g. a sigmoid) or [-1, 1] (cosine); scores outside
[-1, 1] are rejected, since passing raw logits by mistake would make the margins meaningless.

The weights alpha are treated as constants in the gradient (detached), as in the paper's derivation (the
gradient of Eq. 6 w.r.t. s_p is proportional to alpha_p) and in its reference implementations.

Hand-written: no maintained library installed here computes it on precomputed scores
(pytorch-metric-learning's CircleLoss takes embeddings and class labels, not cross-encoder pair scores).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def circle_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor, margin: float = 0.4, gamma: float = 80.0,
                pos_mask: torch.Tensor | None = None, neg_mask: torch.Tensor | None = None,
                reduction: str = "mean") -> torch.Tensor:
    """Circle loss of each anchor (row) from its positive and negative similarity scores.

    Args:
        pos_scores: [A, K] similarities of each anchor to its positives, in [0, 1] or [-1, 1].
        neg_scores: [A, L] similarities of each anchor to its negatives, in the same range.
        margin: the relaxation margin m (O_p = 1 + m, O_n = -m, Delta_p = 1 - m, Delta_n = m).
        gamma: the scale factor.
        pos_mask / neg_mask: [A, K] / [A, L] bool, True = a real entry, False = padding (anchors with fewer
            positives or negatives than the widest one); None: all real.
        reduction: "mean" over the anchors that have at least one positive and one negative, "sum" over them,
            or "none" ([A], 0 for anchors lacking a positive or a negative).
    Returns:
        a scalar, or [A] with reduction="none". With no usable anchor, "mean"/"sum" give a 0 that stays
        connected to the graph (so every process runs the same backward).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction={reduction!r}; expected 'mean', 'sum' or 'none'")
    if pos_scores.dim() != 2 or neg_scores.dim() != 2 or pos_scores.shape[0] != neg_scores.shape[0]:
        raise ValueError(f"pos_scores [A, K] and neg_scores [A, L] must be 2-D with the same number of anchors, "
                         f"got {list(pos_scores.shape)} and {list(neg_scores.shape)}")
    if not (pos_scores.is_floating_point() and neg_scores.is_floating_point()):
        raise TypeError(f"scores must be float tensors, got {pos_scores.dtype} and {neg_scores.dtype}")
    if not margin >= 0 or not gamma > 0:
        raise ValueError(f"need margin >= 0 and gamma > 0, got margin={margin}, gamma={gamma}")
    pos_mask = _mask(pos_mask, pos_scores, "pos_mask")
    neg_mask = _mask(neg_mask, neg_scores, "neg_mask")
    for name, scores, mask in (("pos_scores", pos_scores, pos_mask), ("neg_scores", neg_scores, neg_mask)):
        real = scores.detach()[mask]
        if real.numel() and (not torch.isfinite(real).all() or real.abs().max() > 1.0 + 1e-6):
            raise ValueError(f"{name} must be similarities in [0, 1] or [-1, 1] (e.g. sigmoid of a matching logit), "
                             f"got values in [{float(real.min()):.4g}, {float(real.max()):.4g}]")

    usable = pos_mask.any(1) & neg_mask.any(1)  # [A]
    dtype = torch.promote_types(torch.promote_types(pos_scores.dtype, neg_scores.dtype), torch.float32)
    per_anchor = pos_scores.new_zeros(pos_scores.shape[0], dtype=dtype)
    if usable.any():
        # Rows without a positive or a negative are left out *before* the log-sum-exp (an all -inf row would give a
        # NaN gradient even when multiplied by zero afterwards), and padding is zeroed (it may hold NaN).
        s_p = pos_scores[usable].to(dtype).masked_fill(~pos_mask[usable], 0)
        s_n = neg_scores[usable].to(dtype).masked_fill(~neg_mask[usable], 0)
        alpha_p = (1.0 + margin - s_p.detach()).clamp(min=0)
        alpha_n = (s_n.detach() + margin).clamp(min=0)
        logit_p = (-gamma * alpha_p * (s_p - (1.0 - margin))).masked_fill(~pos_mask[usable], float("-inf"))
        logit_n = (gamma * alpha_n * (s_n - margin)).masked_fill(~neg_mask[usable], float("-inf"))
        # log(1 + sum_j e^{n_j} * sum_i e^{p_i}) = softplus(logsumexp(n) + logsumexp(p)), without overflow
        loss = F.softplus(torch.logsumexp(logit_n, dim=1) + torch.logsumexp(logit_p, dim=1))
        per_anchor = per_anchor.masked_scatter(usable, loss)
    if reduction == "none":
        return per_anchor
    anchor = pos_scores.masked_fill(~pos_mask, 0).sum() + neg_scores.masked_fill(~neg_mask, 0).sum()
    total = per_anchor.sum() + 0.0 * anchor
    return total if reduction == "sum" else total / usable.sum().clamp(min=1)


def _mask(mask: torch.Tensor | None, scores: torch.Tensor, name: str) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(scores, dtype=torch.bool)
    if mask.shape != scores.shape:
        raise ValueError(f"{name} shape {list(mask.shape)} != scores shape {list(scores.shape)}")
    return mask.bool()
