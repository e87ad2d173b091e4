"""Greedy decoding: the most probable token at every step, until EOS (what `generate(num_beams=1)` runs)."""

from __future__ import annotations

import torch

from ..outputs import GenerationOutput
from .constraints import LogProbFn, ReorderFn, check_search_arguments, checked_logprobs, constrain_logprobs
from .length_penalty import apply_length_penalty


def greedy_search(logprob_fn: LogProbFn, batch_size: int, *, bos_token_id: int, eos_token_id: int,
                  pad_token_id: int, max_length: int = 40, min_length: int = 0, length_penalty: float = 0.9,
                  length_penalty_style: str = "gnmt", reorder_fn: ReorderFn | None = None,
                  device: torch.device | str | None = None) -> GenerationOutput:
    """Greedy decoding of `batch_size` independent sequences.

    Args:
        logprob_fn: prefix [N, t] (BOS first) -> next-token log-probabilities [N, V].
        reorder_fn: called with the rows that go on (a [N'] index) whenever finished sequences are dropped.
        max_length: most generated tokens, EOS included (EOS is forced at that length).
        min_length: fewest generated tokens, EOS included (EOS is masked before).
        length_penalty, length_penalty_style: only scale the returned scores (see `length_penalty`).
    Returns:
        GenerationOutput: sequences [B, T] (BOS excluded, EOS included, `pad_token_id` after EOS; T is the
        longest sequence), scores [B] = summed log-probability / length_penalty(length).
    """
    check_search_arguments(batch_size, 1, max_length, min_length, 1, length_penalty_style)
    prefix = torch.full((batch_size, 1), bos_token_id, dtype=torch.long, device=device)
    rows = torch.arange(batch_size, device=prefix.device)  # original sequence of each running row
    summed = torch.zeros(batch_size, device=prefix.device)
    sequences = torch.full((batch_size, max_length), pad_token_id, dtype=torch.long, device=prefix.device)
    scores = torch.empty(batch_size, device=prefix.device)
    longest = 0
    for step in range(max_length):
        length = step + 1
        lprobs = constrain_logprobs(checked_logprobs(logprob_fn, prefix), length, min_length, max_length,
                                    eos_token_id, pad_token_id)
        best, token = lprobs.max(dim=-1)
        summed = summed + best
        sequences[rows, step] = token
        prefix = torch.cat([prefix, token[:, None]], dim=1)
        finished = token == eos_token_id
        if finished.any():
            scores[rows[finished]] = apply_length_penalty(summed[finished], length, length_penalty,
                                                          length_penalty_style)
            longest = length
            keep = (~finished).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            rows, summed, prefix = rows[keep], summed[keep], prefix[keep]
            if reorder_fn is not None:
                reorder_fn(keep)
    return GenerationOutput(sequences[:, :longest], scores)
