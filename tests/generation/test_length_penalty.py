"""Length penalty formulas against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from vlpkit.generation import apply_length_penalty, length_penalty


@pytest.mark.parametrize("style,length,alpha,expected", [
    ("gnmt", 1, 0.9, 1.0),                   # (5 + 1) / 6 = 1
    ("gnmt", 7, 1.0, 2.0),                   # (5 + 7) / 6
    ("gnmt", 13, 0.5, 3.0 ** 0.5),           # (5 + 13) / 6 = 3
    ("power", 4, 0.5, 2.0),
    ("power", 10, 1.0, 10.0),
    ("power", 3, -1.0, 1 / 3),
    ("none", 17, 2.0, 1.0),
    ("gnmt", 9, 0.0, 1.0),
    ("power", 9, 0.0, 1.0),
])
def test_values(style, length, alpha, expected):
    assert length_penalty(length, alpha, style).item() == pytest.approx(expected)


def test_tensor_lengths_and_scores():
    lengths = torch.tensor([[1, 4], [7, 10]])
    assert length_penalty(lengths, 1.0, "power").tolist() == [[1.0, 4.0], [7.0, 10.0]]
    scores = apply_length_penalty(torch.tensor([-3.0, -3.0]), torch.tensor([1, 7]), 1.0, "gnmt")
    assert scores.tolist() == pytest.approx([-3.0, -1.5])


def test_positive_alpha_favours_longer_sequences():
    # the same summed log-probability ranks higher with more tokens; the two formulas disagree on how much
    lengths = torch.arange(1, 41)
    for style in ("gnmt", "power"):
        assert apply_length_penalty(torch.full((40,), -5.0), lengths, 0.9, style).diff().gt(0).all()
    assert length_penalty(40, 0.9, "power") > length_penalty(40, 0.9, "gnmt")


def test_unknown_style():
    with pytest.raises(ValueError, match="length_penalty_style='linear'; expected one of"):
        length_penalty(3, 1.0, "linear")
