"""Beam search over a batch of images x beams, fairseq-style, independent of the model.

The search only sees a step function `logprob_fn(prefix [N, t]) -> [N, V]` and tells a stateful one (the
decoder cache) how rows move with `reorder_fn(index)`, so the same code runs the cached model, the uncached
model and synthetic distributions in the tests. Rows are image-major: row `i * num_beams + k` is beam k of
image i. There is no Python loop over images.

Each step, for every image:
1. every beam x every token is a candidate scored by its summed log-probability; the best `2 * num_beams` are
   kept (at most `num_beams` of them end with EOS, so at least `num_beams` go on);
2. candidates ending with EOS are finalised only if they rank among the top `num_beams` (fairseq); their
   score is divided by the length penalty and they join the image's `num_beams` best finished hypotheses;
3. the best `num_beams` candidates not ending with EOS become the new beams (the cache is reordered);
4. the image is done when its worst kept finished hypothesis scores at least the best score any beam can
   still reach: log-probabilities are <= 0, so a beam's sum can only fall, and with a monotone penalty the
   best it can reach is at the shortest or the longest length still allowed. Done images leave the batch.
"""

from __future__ import annotations

import torch

from ..outputs import GenerationOutput
from .constraints import LogProbFn, ReorderFn, check_search_arguments, checked_logprobs, constrain_logprobs
from .length_penalty import length_penalty as penalty_divisor


def best_reachable_score(summed: torch.Tensor, length: int, min_length: int, max_length: int,
                         divisors: list[float]) -> torch.Tensor:
    """Upper bound of the penalised score of any finished continuation of beams of `length` tokens.

    summed: [..., K] summed log-probabilities (<= 0); divisors[n]: length penalty of length n.
    Returns [...]: the best bound over the K beams.
    """
    shortest = max(length + 1, min_length)
    return torch.maximum(summed / divisors[shortest], summed / divisors[max_length]).amax(dim=-1)


def beam_search(logprob_fn: LogProbFn, batch_size: int, *, bos_token_id: int, eos_token_id: int,
                pad_token_id: int, num_beams: int = 4, max_length: int = 40, min_length: int = 0,
                length_penalty: float = 0.9, length_penalty_style: str = "gnmt", num_return_sequences: int = 1,
                reorder_fn: ReorderFn | None = None, device: torch.device | str | None = None) -> GenerationOutput:
    """Beam search for `batch_size` inputs with `num_beams` beams each.

    Args:
        logprob_fn: prefix [N, t] (BOS first; N = running images x num_beams) -> log-probabilities [N, V].
        reorder_fn: called after every step but the last with the [N'] rows that go on (beam of origin of each
            new beam; rows of finished images dropped).
        max_length: most generated tokens, EOS included (EOS is forced at that length).
        min_length: fewest generated tokens, EOS included (EOS is masked before).
        length_penalty, length_penalty_style: alpha and formula of `vlpkit.generation.length_penalty`.
        num_return_sequences: hypotheses returned per input (best first).
    Returns:
        GenerationOutput: sequences [B, T] and scores [B] of the best hypothesis (BOS excluded, EOS included,
        `pad_token_id` after EOS; T is the longest returned sequence; score = summed log-probability /
        length_penalty(length)); with num_return_sequences=n > 1 also all_sequences [B, n, T] and
        all_scores [B, n]. An input with fewer than n possible sequences gets -inf scores for the missing ones.
    """
    check_search_arguments(batch_size, num_beams, max_length, min_length, num_return_sequences,
                           length_penalty_style)
    k = num_beams
    prefix = torch.full((batch_size * k, 1), bos_token_id, dtype=torch.long, device=device)
    dev = prefix.device
    images = torch.arange(batch_size, device=dev)  # original image of each running image
    summed = torch.zeros(batch_size, k, device=dev)
    summed[:, 1:] = -torch.inf  # all beams start identical: expand only the first at step 1
    fin_scores = torch.full((batch_size, k), -torch.inf, device=dev)
    fin_lengths = torch.zeros(batch_size, k, dtype=torch.long, device=dev)
    fin_tokens = torch.full((batch_size, k, max_length), pad_token_id, dtype=torch.long, device=dev)
    rank = torch.arange(2 * k, device=dev)
    divisors = penalty_divisor(torch.arange(max_length + 1), length_penalty, length_penalty_style).tolist()

    for step in range(max_length):
        length = step + 1
        n = images.numel()
        lprobs = constrain_logprobs(checked_logprobs(logprob_fn, prefix), length, min_length, max_length,
                                    eos_token_id, pad_token_id)
        vocab = lprobs.shape[-1]
        candidates = (summed.reshape(-1, 1) + lprobs).view(n, k * vocab)
        cand_scores, cand_index = candidates.topk(2 * k, dim=1)  # [n, 2k], best first
        cand_rows = cand_index // vocab + torch.arange(n, device=dev)[:, None] * k  # rows of `prefix`
        cand_tokens = cand_index % vocab
        cand_eos = cand_tokens == eos_token_id

        # finalise EOS candidates ranked among the top k, keep each image's k best finished hypotheses
        final = cand_eos[:, :k] & cand_scores[:, :k].isfinite()
        if final.any():
            new_scores = torch.where(final, cand_scores[:, :k] / divisors[length], -torch.inf)
            new_tokens = torch.full((n, k, max_length), pad_token_id, dtype=torch.long, device=dev)
            new_tokens[:, :, : length - 1] = prefix[cand_rows[:, :k], 1:]
            new_tokens[:, :, length - 1] = cand_tokens[:, :k]
            pool_scores = torch.cat([fin_scores[images], new_scores], dim=1)
            pool_lengths = torch.cat([fin_lengths[images], torch.full_like(fin_lengths[images], length)], dim=1)
            pool_tokens = torch.cat([fin_tokens[images], new_tokens], dim=1)
            kept_scores, kept = pool_scores.topk(k, dim=1)
            fin_scores[images] = kept_scores
            fin_lengths[images] = pool_lengths.gather(1, kept)
            fin_tokens[images] = pool_tokens.gather(1, kept[..., None].expand(-1, -1, max_length))
        if length == max_length:
            break

        # the k best candidates that do not end with EOS go on
        active = (cand_eos * 2 * k + rank).topk(k, dim=1, largest=False).indices  # EOS pushed last
        summed = cand_scores.gather(1, active)
        rows = cand_rows.gather(1, active)
        tokens = cand_tokens.gather(1, active)

        worst_finished = fin_scores[images].amin(dim=1)
        running = worst_finished < best_reachable_score(summed, length, min_length, max_length, divisors)
        if not running.all():
            if not running.any():
                break
            images, summed, rows, tokens = images[running], summed[running], rows[running], tokens[running]
        rows, tokens = rows.reshape(-1), tokens.reshape(-1, 1)
        prefix = torch.cat([prefix[rows], tokens], dim=1)
        if reorder_fn is not None:
            reorder_fn(rows)

    return _pack(fin_scores, fin_lengths, fin_tokens, num_return_sequences)


def _pack(scores: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor, n: int) -> GenerationOutput:
    """Best-first finished hypotheses [B, k(, max_length)] -> GenerationOutput trimmed to the longest returned."""
    scores, lengths, tokens = scores[:, :n], lengths[:, :n], tokens[:, :n]
    longest = int(lengths.max())
    tokens = tokens[..., :longest]
    if n == 1:
        return GenerationOutput(tokens[:, 0], scores[:, 0])
    return GenerationOutput(tokens[:, 0], scores[:, 0], tokens, scores)
