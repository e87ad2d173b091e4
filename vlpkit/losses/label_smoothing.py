"""Label-smoothed cross-entropy for caption (token) prediction.

Smoothing definition: PyTorch's (`torch.nn.functional.cross_entropy(label_smoothing=epsilon)`, Szegedy et al.
2016): the target distribution puts `1 - epsilon + epsilon / V` on the true token and `epsilon / V` on every
token, i.e. `loss = (1 - epsilon) * nll + epsilon * mean_v(-log p_v)`. fairseq's
`label_smoothed_nll_loss` spreads `epsilon / (V - 1)` over the other tokens instead; for a 30k vocabulary the
two differ by a factor (V - 1) / V on the smoothing term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1,
                                 ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against targets smoothed with `epsilon` (torch's eps / V definition, see the module doc).

    Args:
        logits: [..., V] unnormalised scores (e.g. `model.caption_logits(...)`, [B, T, V]).
        targets: [...] long token ids; positions equal to `ignore_index` (padding) add nothing to the loss
            or to the count. For captions padded with `pad_token_id`, pass `ignore_index=pad_token_id`.
        epsilon: smoothing mass in [0, 1); 0 gives the plain cross-entropy.
        reduction: "mean" (over non-ignored positions), "sum", or "none" (per position, 0 where ignored).
    Returns:
        a scalar, or a [...] tensor with reduction="none". "mean" with no real target is 0, not NaN, so that a
        batch without captions leaves the total loss finite.
    """
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon={epsilon}; expected 0 <= epsilon < 1")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction={reduction!r}; expected 'mean', 'sum' or 'none'")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {list(logits.shape)} must be targets {list(targets.shape)} plus a vocabulary "
                         "dimension")
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"targets must be integer token ids, got {targets.dtype}")
    vocab = logits.shape[-1]
    real = targets != ignore_index
    if real.any() and (targets[real].min() < 0 or targets[real].max() >= vocab):
        raise ValueError(f"targets contain ids outside [0, {vocab}) other than ignore_index={ignore_index}: "
                         f"min {int(targets[real].min())}, max {int(targets[real].max())}")
    per_token = F.cross_entropy(logits.reshape(-1, vocab).float(), targets.reshape(-1).long(),
                                ignore_index=ignore_index, label_smoothing=epsilon, reduction="none")
    per_token = per_token.view(targets.shape)
    if reduction == "none":
        return per_token
    if reduction == "sum":
        return per_token.sum()
    return per_token.sum() / real.sum().clamp(min=1)
