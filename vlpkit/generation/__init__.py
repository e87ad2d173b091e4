"""Caption generation: model-free greedy and beam search, length penalties, and `generate` for `E2EVLP`."""

from .beam_search import beam_search
from .decoding import CachedCaptionStep, UncachedCaptionStep, generate
from .greedy import greedy_search
from .length_penalty import LENGTH_PENALTY_STYLES, apply_length_penalty, length_penalty

__all__ = ["generate", "beam_search", "greedy_search", "length_penalty", "apply_length_penalty",
           "LENGTH_PENALTY_STYLES", "CachedCaptionStep", "UncachedCaptionStep"]
