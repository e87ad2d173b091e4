"""`generate`: caption an image-only encoding with an `E2EVLP` model, by beam search or greedy decoding.

Two step functions adapt the model to the model-free search algorithms:

- `CachedCaptionStep` (default, `use_cache=True`): the memory's cross-attention keys/values are projected
  once per image (`model.init_decoder_cache`) and kept once per image: the `num_beams` beams of an image attend
  to its row together (grouped cross-attention, `MultiHeadAttention`), so each step reads the memory once per
  image rather than once per beam; each step feeds only the newest token and grows the self-attention cache,
  which is reordered by beam index after every step.
- `UncachedCaptionStep` (`use_cache=False`): each step runs `model.caption_logits` on the whole prefix, i.e.
  recomputes every position and the cross-attention projections. It is the reference the cached path is
  tested and benchmarked against.
"""

from __future__ import annotations

import torch

from ..outputs import EncoderOutput, GenerationOutput
from .beam_search import beam_search
from .greedy import greedy_search


def _select_rows(encoding: EncoderOutput, index: torch.Tensor) -> EncoderOutput:
    return EncoderOutput(encoding.memory.index_select(0, index), encoding.memory_padding_mask.index_select(0, index),
                         encoding.memory_pos.index_select(0, index), encoding.text_length, encoding.grid_size)


class CachedCaptionStep:
    """Incremental decoding: prefix [N, t] -> log-probabilities [N, V], feeding only the tokens the cache lacks.

    `encoding` has one row per image; rows of the decoder state are image-major, `num_beams` per image.
    """

    def __init__(self, model, encoding: EncoderOutput, num_beams: int = 1) -> None:
        self.model = model
        self.num_beams = num_beams
        self.cache = model.init_decoder_cache(encoding)  # one cross-attention row per image, shared by its beams

    def __call__(self, prefix: torch.Tensor) -> torch.Tensor:
        logits = self.model.decode_step(prefix[:, self.cache.length:], self.cache)[:, -1]
        return logits.float().log_softmax(dim=-1)

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder(index)
        images = self.cache.memory_padding_mask.shape[0]
        if index.numel() != images * self.num_beams:
            # Finished images left the batch. Every new row of an image comes from a row of the same image, so
            # its first row names the image that stays (a copy of the projected rows, no projection).
            keep = index[:: self.num_beams] // self.num_beams
            self.cache.cross_kv = [(k.index_select(0, keep), v.index_select(0, keep)) for k, v in self.cache.cross_kv]
            self.cache.memory_padding_mask = self.cache.memory_padding_mask.index_select(0, keep)


class UncachedCaptionStep:
    """Full recomputation: prefix [N, t] -> `caption_logits` of every position -> last position's log-probs."""

    def __init__(self, model, encoding: EncoderOutput, num_beams: int = 1) -> None:
        self.model = model
        self.encoding = encoding.repeat_interleave(num_beams) if num_beams > 1 else encoding

    def __call__(self, prefix: torch.Tensor) -> torch.Tensor:
        return self.model.caption_logits(self.encoding, prefix)[:, -1].float().log_softmax(dim=-1)

    def reorder(self, index: torch.Tensor) -> None:
        if index.numel() != self.encoding.memory.shape[0]:  # beams of one image share identical memory rows
            self.encoding = _select_rows(self.encoding, index)


@torch.no_grad()
def generate(model, encoding: EncoderOutput, *, num_beams: int = 4, max_length: int = 40, min_length: int = 0,
             length_penalty: float = 0.9, length_penalty_style: str = "gnmt", num_return_sequences: int = 1,
             use_cache: bool = True) -> GenerationOutput:
    """Caption every image of `encoding` (from `model.encode(pixel_values)`: the image alone, never the caption).

    Call `model.eval()` first: dropout makes decoding random.

    Args:
        model: an `E2EVLP` (its config gives bos/eos/pad token ids and max_position_embeddings).
        encoding: EncoderOutput with memory [B, S, d].
        num_beams: beams per image; 1 runs greedy decoding.
        max_length: most generated tokens, EOS included, BOS excluded (EOS is forced at that length).
        min_length: fewest generated tokens, EOS included (EOS is masked before).
        length_penalty: alpha of the length penalty; length_penalty_style: "gnmt" ((5+len)/6)^alpha,
            "power" len^alpha, or "none" (len = generated tokens including EOS).
        num_return_sequences: hypotheses returned per image (<= num_beams), best first.
        use_cache: incremental decoding with cached keys/values (True) or recomputing the whole prefix each step.
    Returns:
        GenerationOutput: sequences [B, T] (BOS excluded, EOS included, pad_token_id after EOS), scores [B]
        (length-penalised summed log-probability of each returned sequence); all_sequences [B, n, T] and
        all_scores [B, n] when num_return_sequences = n > 1.
    """
    config = model.config
    if not isinstance(encoding, EncoderOutput):
        raise TypeError(f"encoding must be an EncoderOutput (from model.encode), got {type(encoding).__name__}")
    if max_length > config.max_position_embeddings:
        raise ValueError(f"max_length={max_length} exceeds the caption decoder's max_position_embeddings="
                         f"{config.max_position_embeddings} (BOS takes position 0)")
    step = (CachedCaptionStep if use_cache else UncachedCaptionStep)(model, encoding, num_beams)
    common = dict(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                  pad_token_id=config.pad_token_id, max_length=max_length, min_length=min_length,
                  length_penalty=length_penalty, length_penalty_style=length_penalty_style,
                  reorder_fn=step.reorder, device=encoding.memory.device)
    batch = encoding.memory.shape[0]
    if num_beams == 1:
        if num_return_sequences != 1:
            raise ValueError(f"num_return_sequences={num_return_sequences} needs num_beams >= it; got num_beams=1")
        return greedy_search(step, batch, **common)
    return beam_search(step, batch, num_beams=num_beams, num_return_sequences=num_return_sequences, **common)
