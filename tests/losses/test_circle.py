"""Circle loss against a direct transcription of Sun et al. (2020), Eq. 6 with Eq. 5 and Eq. 8."""

from __future__ import annotations

from decimal import Decimal, localcontext

import pytest
import torch

from vlpkit.losses.circle import circle_loss


def _paper(s_p: list[float], s_n: list[float], m: float, gamma: float) -> float:
    """log[1 + sum_j exp(gamma a_n^j (s_n^j - D_n)) * sum_i exp(-gamma a_p^i (s_p^i - D_p))], written out in
    50-digit decimals (no overflow: gamma = 256 on cosine scores reaches exp(1000))."""
    o_p, o_n, d_p, d_n = 1 + m, -m, 1 - m, m
    with localcontext() as ctx:
        ctx.prec = 50
        neg = sum(Decimal(gamma * max(s - o_n, 0.0) * (s - d_n)).exp() for s in s_n)
        pos = sum(Decimal(-gamma * max(o_p - s, 0.0) * (s - d_p)).exp() for s in s_p)
        return float((1 + neg * pos).ln())


@pytest.mark.parametrize("low", [0.0, -1.0])  # sigmoid-like [0, 1] and cosine [-1, 1] similarities
@pytest.mark.parametrize(("m", "gamma"), [(0.25, 2.0), (0.4, 80.0), (0.25, 256.0)])
def test_matches_paper_formula(low, m, gamma):
    g = torch.Generator().manual_seed(1)
    pos = low + (1 - low) * torch.rand(6, 3, generator=g, dtype=torch.float64)
    neg = low + (1 - low) * torch.rand(6, 5, generator=g, dtype=torch.float64)
    got = circle_loss(pos, neg, margin=m, gamma=gamma, reduction="none")
    expected = [_paper(p.tolist(), n.tolist(), m, gamma) for p, n in zip(pos, neg)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(circle_loss(pos, neg, m, gamma), got.mean())
    torch.testing.assert_close(circle_loss(pos, neg, m, gamma, reduction="sum"), got.sum())


def test_gradient_has_constant_self_paced_weights():
    """dL/ds_p^i = -gamma a_p^i w_p^i sigma(u) and dL/ds_n^j = gamma a_n^j w_n^j sigma(u) (alphas held constant),
    with w the softmax of each side's exponents and u their two log-sum-exps added."""
    m, gamma = 0.25, 16.0
    g = torch.Generator().manual_seed(2)
    pos = torch.rand(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    neg = torch.rand(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    circle_loss(pos, neg, m, gamma, reduction="sum").backward()
    with torch.no_grad():
        a_p, a_n = (1 + m - pos).clamp(min=0), (neg + m).clamp(min=0)
        e_p, e_n = -gamma * a_p * (pos - (1 - m)), gamma * a_n * (neg - m)
        z = torch.sigmoid(e_p.logsumexp(1, keepdim=True) + e_n.logsumexp(1, keepdim=True))
        grad_p = -gamma * a_p * e_p.softmax(1) * z
        grad_n = gamma * a_n * e_n.softmax(1) * z
    torch.testing.assert_close(pos.grad, grad_p)
    torch.testing.assert_close(neg.grad, grad_n)


def test_falls_towards_the_circle_targets():
    """Raising a positive or lowering a negative always lowers the loss (optimum s_p -> 1, s_n -> 0)."""
    pos, neg = torch.tensor([[0.5]]), torch.tensor([[0.5, 0.3]])
    base = circle_loss(pos, neg)
    assert circle_loss(pos + 0.2, neg) < base
    assert circle_loss(pos, neg - torch.tensor([[0.2, 0.0]])) < base
    assert circle_loss(torch.tensor([[1.0]]), torch.tensor([[0.0, 0.0]])) < 1e-3


def test_padding_equals_dropping_and_stays_finite():
    g = torch.Generator().manual_seed(3)
    pos, neg = torch.rand(3, 2, generator=g), torch.rand(3, 4, generator=g)
    pos_mask = torch.tensor([[1, 1], [1, 0], [1, 0]], dtype=torch.bool)
    neg_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    padded_pos = pos.masked_fill(~pos_mask, float("nan")).requires_grad_()
    padded_neg = neg.masked_fill(~neg_mask, float("nan")).requires_grad_()
    got = circle_loss(padded_pos, padded_neg, pos_mask=pos_mask, neg_mask=neg_mask, reduction="none")
    for a in range(3):
        alone = circle_loss(pos[a][pos_mask[a]][None], neg[a][neg_mask[a]][None])
        torch.testing.assert_close(got[a], alone)
    got.sum().backward()
    assert torch.isfinite(padded_pos.grad).all() and torch.isfinite(padded_neg.grad).all()
    assert (padded_neg.grad[~neg_mask] == 0).all()


def test_anchor_without_negative_is_left_out():
    pos = torch.tensor([[0.7], [0.2]], requires_grad=True)
    neg = torch.tensor([[0.6], [0.1]])
    neg_mask = torch.tensor([[True], [False]])
    per = circle_loss(pos, neg, neg_mask=neg_mask, reduction="none")
    assert per[1] == 0
    torch.testing.assert_close(circle_loss(pos, neg, neg_mask=neg_mask), per[0])  # mean over usable anchors only
    empty = circle_loss(pos, neg, neg_mask=torch.zeros_like(neg_mask))
    empty.backward()  # connected to the graph, zero and finite
    assert empty == 0 and (pos.grad == 0).all()


def test_rejects_logits_and_bad_arguments():
    with pytest.raises(ValueError, match=r"similarities in \[0, 1\] or \[-1, 1\]"):
        circle_loss(torch.tensor([[3.0]]), torch.tensor([[0.1]]))
    with pytest.raises(ValueError, match="same number of anchors"):
        circle_loss(torch.rand(2, 1), torch.rand(3, 1))
    with pytest.raises(ValueError, match="neg_mask shape"):
        circle_loss(torch.rand(2, 1), torch.rand(2, 3), neg_mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="gamma"):
        circle_loss(torch.rand(2, 1), torch.rand(2, 3), gamma=0)
