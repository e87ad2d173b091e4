"""What the search algorithms share: the step-function contract, argument checks and the token constraints
(padding never generated, EOS masked before `min_length` and forced at `max_length`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .length_penalty import check_length_penalty_style

# prefix [N, t] long (BOS first) -> next-token log-probabilities [N, V] (values <= 0: the early stop relies on it)
LogProbFn = Callable[[torch.Tensor], torch.Tensor]
# index [N'] long: row i of the next step continues row index[i] of this step (beams reordered, finished
# images dropped); stateful step functions (a decoder cache) must follow it.
ReorderFn = Callable[[torch.Tensor], None]


def check_search_arguments(batch_size: int, num_beams: int, max_length: int, min_length: int,
                           num_return_sequences: int, length_penalty_style: str) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected >= 1")
    if num_beams < 1:
        raise ValueError(f"num_beams={num_beams}; expected >= 1")
    if max_length < 1:
        raise ValueError(f"max_length={max_length}; expected >= 1 (generated tokens, EOS included)")
    if not 0 <= min_length <= max_length:
        raise ValueError(f"min_length={min_length}; expected 0 <= min_length <= max_length={max_length}")
    if not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"num_return_sequences={num_return_sequences}; expected 1 <= n <= num_beams={num_beams}")
    check_length_penalty_style(length_penalty_style)


def checked_logprobs(logprob_fn: LogProbFn, prefix: torch.Tensor) -> torch.Tensor:
    """Call the step function and check that it returned one float row per prefix."""
    lprobs = logprob_fn(prefix)
    if lprobs.dim() != 2 or lprobs.shape[0] != prefix.shape[0] or not lprobs.is_floating_point():
        raise ValueError(f"logprob_fn must return float log-probabilities [N={prefix.shape[0]}, V] for a prefix "
                         f"of shape {list(prefix.shape)}, got {lprobs.dtype} {list(lprobs.shape)}")
    return lprobs.float()


def constrain_logprobs(lprobs: torch.Tensor, length: int, min_length: int, max_length: int, eos_token_id: int,
                       pad_token_id: int) -> torch.Tensor:
    """Mask tokens that may not be generated as token number `length` (1-based, EOS counted).

    Masked entries become -inf; the others keep the model's log-probability (no renormalisation), so that
    scores stay the model's log-probability of the returned sequence.
    """
    lprobs = lprobs.clone()
    if pad_token_id != eos_token_id:
        lprobs[:, pad_token_id] = -torch.inf
    if length < min_length:
        lprobs[:, eos_token_id] = -torch.inf
    if length >= max_length:
        eos = lprobs[:, eos_token_id].clone()
        lprobs.fill_(-torch.inf)
        lprobs[:, eos_token_id] = eos
    return lprobs
