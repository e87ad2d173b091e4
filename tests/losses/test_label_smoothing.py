"""label_smoothed_cross_entropy against the smoothing formula it names (torch's eps / V), written out here."""

from __future__ import annotations

import inspect

import pytest
import torch

from vlpkit.losses.label_smoothing import label_smoothed_cross_entropy

PAD = 0


def reference(logits, targets, eps, pad):
    """Per-position loss with target distribution (1 - eps) * onehot + eps / V, averaged over non-pad positions."""
    logp = logits.double().log_softmax(-1)
    vocab = logits.shape[-1]
    total, count = 0.0, 0
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            y = int(targets[b, t])
            if y == pad:
                continue
            total += -(1 - eps) * float(logp[b, t, y]) - eps / vocab * float(logp[b, t].sum())
            count += 1
    return total / count


def fairseq_reference(logits, targets, eps, pad):
    """fairseq's label_smoothed_nll_loss: eps / (V - 1) on every other token."""
    logp = logits.double().log_softmax(-1)
    vocab = logits.shape[-1]
    real = targets != pad
    nll = -logp.gather(-1, targets[..., None])[..., 0][real]
    smooth = -logp.sum(-1)[real]
    eps_i = eps / (vocab - 1)
    return float(((1 - eps - eps_i) * nll + eps_i * smooth).mean())


@pytest.fixture
def batch():
    logits = torch.randn(3, 5, 11) * 3
    targets = torch.randint(1, 11, (3, 5))
    targets[0, 3:] = PAD
    targets[2, 1:] = PAD
    return logits, targets


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_matches_torch_definition(batch, eps):
    logits, targets = batch
    loss = label_smoothed_cross_entropy(logits, targets, epsilon=eps, ignore_index=PAD)
    assert loss.item() == pytest.approx(reference(logits, targets, eps, PAD), abs=1e-5)
    if eps > 0:  # the fairseq definition gives a different number: the test tells the two apart
        assert abs(loss.item() - fairseq_reference(logits, targets, eps, PAD)) > 1e-4


def test_default_epsilon_is_0_1(batch):
    assert inspect.signature(label_smoothed_cross_entropy).parameters["epsilon"].default == 0.1
    logits, targets = batch
    assert label_smoothed_cross_entropy(logits, targets, ignore_index=PAD).item() == pytest.approx(
        reference(logits, targets, 0.1, PAD), abs=1e-5)


def test_padding_is_ignored(batch):
    logits, targets = batch
    logits = logits.clone().requires_grad_(True)
    loss = label_smoothed_cross_entropy(logits, targets, ignore_index=PAD)
    loss.backward()
    pad = targets == PAD
    assert logits.grad[pad].abs().max() == 0 and logits.grad[~pad].abs().max() > 0
    changed = logits.detach().clone()
    changed[pad] = torch.randn_like(changed[pad]) * 10
    assert label_smoothed_cross_entropy(changed, targets, ignore_index=PAD).item() == pytest.approx(loss.item())
    per_token = label_smoothed_cross_entropy(logits, targets, ignore_index=PAD, reduction="none")
    assert per_token.shape == targets.shape and per_token[pad].eq(0).all()
    assert per_token.sum().item() == pytest.approx(
        label_smoothed_cross_entropy(logits, targets, ignore_index=PAD, reduction="sum").item())
    all_pad = torch.full_like(targets, PAD)
    assert label_smoothed_cross_entropy(logits, all_pad, ignore_index=PAD).item() == 0.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(epsilon=1.0), "epsilon"), (dict(reduction="avg"), "reduction"),
])
def test_bad_arguments(batch, kwargs, match):
    with pytest.raises(ValueError, match=match):
        label_smoothed_cross_entropy(*batch, **kwargs)


def test_bad_targets_are_named(batch):
    logits, targets = batch
    with pytest.raises(ValueError, match=r"logits \[3, 5, 11\] must be targets \[3, 4\]"):
        label_smoothed_cross_entropy(logits, targets[:, :4])
    bad = targets.clone()
    bad[1, 1] = 11
    with pytest.raises(ValueError, match="outside"):
        label_smoothed_cross_entropy(logits, bad, ignore_index=PAD)
