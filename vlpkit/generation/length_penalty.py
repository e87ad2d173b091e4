"""Length penalties for beam search: a hypothesis's score is its summed token log-probability divided by
`length_penalty(length)`.

"length" is the number of generated tokens *including* EOS and excluding BOS (fairseq's convention).

| style   | divisor                  | reference                                   |
|---------|--------------------------|---------------------------------------------|
| "gnmt"  | ((5 + length) / 6) ** a  | Wu et al. 2016 (GNMT), eq. 14               |
| "power" | length ** a              | fairseq / Hugging Face `length_penalty`     |
| "none"  | 1                        | raw summed log-probability                  |

With log-probabilities <= 0, a larger `a` favours longer sequences; `a = 0` disables either style.
"""

from __future__ import annotations

import torch

LENGTH_PENALTY_STYLES = ("gnmt", "power", "none")


def check_length_penalty_style(style: str) -> None:
    if style not in LENGTH_PENALTY_STYLES:
        raise ValueError(f"length_penalty_style={style!r}; expected one of {LENGTH_PENALTY_STYLES}")


def length_penalty(length: torch.Tensor | int | float, alpha: float, style: str = "gnmt") -> torch.Tensor:
    """The divisor applied to a summed log-probability.

    Args:
        length: number of generated tokens including EOS (tensor of any shape, or a number).
        alpha: exponent.
        style: "gnmt", "power" or "none".
    Returns:
        float tensor of the shape of `length`.
    """
    check_length_penalty_style(style)
    length = torch.as_tensor(length, dtype=torch.float32)
    if style == "none":
        return torch.ones_like(length)
    if style == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    return length**alpha


def apply_length_penalty(sum_logprobs: torch.Tensor, length: torch.Tensor | int, alpha: float,
                         style: str = "gnmt") -> torch.Tensor:
    """`sum_logprobs / length_penalty(length)`: the score that ranks finished hypotheses."""
    return sum_logprobs / length_penalty(length, alpha, style).to(sum_logprobs.device)
