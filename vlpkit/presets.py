"""Named configurations: the paper's Table 5 models and a tiny CPU model.

| preset           | encoder layers | backbone  | paper parameters |
|------------------|----------------|-----------|------------------|
| e2evlp-6-r50     | 6              | ResNet-50 | 49M              |
| e2evlp-6-r101    | 6              | ResNet-101| 68M              |
| e2evlp-6-r152    | 6              | ResNet-152| 84M              |
| e2evlp-12-r50    | 12             | ResNet-50 | 59M              |
| e2evlp-12-r101   | 12             | ResNet-101| 78M              |
| e2evlp-12-r152   | 12             | ResNet-152| 94M              |
| e2evlp-tiny      | 2              | ResNet-18 | (CPU tests, notebooks, demo) |
"""

from __future__ import annotations

from .config import ConfigError, E2EVLPConfig

# Parameter counts printed in the paper's Table 5, in millions.
PAPER_PARAMETERS_M = {
    "e2evlp-6-r50": 49, "e2evlp-6-r101": 68, "e2evlp-6-r152": 84,
    "e2evlp-12-r50": 59, "e2evlp-12-r101": 78, "e2evlp-12-r152": 94,
}


def _paper(layers: int, depth: int) -> dict:
    return dict(backbone=f"resnet{depth}", num_encoder_layers=layers, num_decoder_layers=6, d_model=256,
                dim_feedforward=1024, num_queries=100, max_text_length=40)


PRESETS: dict[str, dict] = {
    **{f"e2evlp-{layers}-r{depth}": _paper(layers, depth) for layers in (6, 12) for depth in (50, 101, 152)},
    "e2evlp-tiny": dict(backbone="resnet18", d_model=128, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                        dim_feedforward=512, num_queries=16, vocab_size=1000, num_classes=8, num_attributes=16,
                        max_text_length=40, max_position_embeddings=64, cls_token_id=2, sep_token_id=3,
                        mask_token_id=4, bos_token_id=2, eos_token_id=3, pad_token_id=0),
}


def get_preset(name: str, **overrides) -> E2EVLPConfig:
    """The config of a named preset, with optional field overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {sorted(PRESETS)}")
    unknown = sorted(set(overrides) - set(E2EVLPConfig.field_names()))
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown}; valid fields: {E2EVLPConfig.field_names()}")
    return E2EVLPConfig(**{**PRESETS[name], **overrides})
