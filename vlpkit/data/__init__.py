"""Data processing for E2E-VLP: tokenisation, MLM/ITM inputs, DETR-style transforms and batching.

Dataset readers live in ``vlpkit.data.readers`` and the synthetic shapes generator in ``vlpkit.data.shapes``;
import them from there.
"""

from vlpkit.data.batch import Batch, TextTruncationWarning, collate_images, collate_samples, collate_texts
from vlpkit.data.masking import (
    IGNORE_INDEX,
    ItmPair,
    ItmSampler,
    SpecialTokenIds,
    make_itm_pairs,
    mask_tokens,
    special_token_ids,
)
from vlpkit.data.tokenization import (
    DEFAULT_MAX_TEXT_LENGTH,
    SPECIAL_TOKENS,
    load_tokenizer,
    save_tokenizer,
    train_wordpiece,
)
from vlpkit.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PER_BOX_KEYS,
    ImageBoxTransform,
    PrepareInputs,
    RandomHorizontalFlip,
    RandomSizeCrop,
    ToModelInputs,
    make_eval_transforms,
    make_train_transforms,
    swap_left_right,
)

__all__ = [
    "DEFAULT_MAX_TEXT_LENGTH",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PER_BOX_KEYS",
    "SPECIAL_TOKENS",
    "Batch",
    "ImageBoxTransform",
    "ItmPair",
    "ItmSampler",
    "PrepareInputs",
    "RandomHorizontalFlip",
    "RandomSizeCrop",
    "SpecialTokenIds",
    "TextTruncationWarning",
    "ToModelInputs",
    "collate_images",
    "collate_samples",
    "collate_texts",
    "load_tokenizer",
    "make_eval_transforms",
    "make_itm_pairs",
    "make_train_transforms",
    "mask_tokens",
    "save_tokenizer",
    "special_token_ids",
    "swap_left_right",
    "train_wordpiece",
]
