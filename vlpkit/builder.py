"""`build_e2evlp`: construct every block of E2E-VLP from a config and inject them into the model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import E2EVLPConfig
from .models.backbone import GridFeatureExtractor, build_resnet_trunk
from .models.decoder import DecoderLayer, SharedDecoder
from .models.e2evlp import E2EVLP
from .models.encoder import CrossModalEncoder, EncoderLayer
from .models.heads import DetectionHead, ITMHead, TiedLMHead
from .models.position import PositionEmbeddingLearned, PositionEmbeddingSine
from .models.spatial_prior import build_reference_points
from .models.text_embeddings import TextEmbeddings
from .presets import get_preset


def resolve_config(config: str | E2EVLPConfig | dict, **overrides: Any) -> E2EVLPConfig:
    """A preset name, a config or a dict of fields, with overrides -> a validated `E2EVLPConfig`."""
    if isinstance(config, str):
        return get_preset(config, **overrides)
    if isinstance(config, dict):
        config = E2EVLPConfig.from_dict(config)
    if not isinstance(config, E2EVLPConfig):
        raise TypeError(f"expected a preset name, E2EVLPConfig or dict, got {type(config).__name__}")
    return config.replace(**overrides) if overrides else config


def build_position_encoding(config: E2EVLPConfig) -> nn.Module:
    if config.position_embedding == "sine":
        return PositionEmbeddingSine(config.d_model // 2, normalize=True)
    return PositionEmbeddingLearned(config.d_model // 2)


def _embedding(num: int, dim: int, std: float, padding_idx: int | None = None) -> nn.Embedding:
    emb = nn.Embedding(num, dim, padding_idx=padding_idx)
    nn.init.normal_(emb.weight, std=std)
    if padding_idx is not None:
        nn.init.zeros_(emb.weight[padding_idx])
    return emb


def build_e2evlp(config: str | E2EVLPConfig | dict = "e2evlp-6-r50", **overrides: Any) -> E2EVLP:
    """Build an E2E-VLP model.

    Examples:
        >>> build_e2evlp("e2evlp-12-r152")                       # a paper preset
        >>> build_e2evlp("e2evlp-tiny", num_encoder_layers=3)    # a preset with overrides
        >>> build_e2evlp(E2EVLPConfig(backbone="resnet101"))     # a config

    Raises:
        ConfigError: unknown preset (lists the valid ones) or unknown/invalid field (lists the valid fields).
    """
    cfg = resolve_config(config, **overrides)
    d = cfg.d_model
    trunk, channels = build_resnet_trunk(cfg.backbone, cfg.backbone_weights, cfg.backbone_last_stage,
                                         cfg.backbone_norm)
    stride = 32 if cfg.backbone_last_stage == "layer4" else 16
    if cfg.use_channels_last:
        trunk = trunk.to(memory_format=torch.channels_last)
    backbone = GridFeatureExtractor(trunk, channels, d, cfg.trainable_backbone_layers, cfg.mask_backbone_padding,
                                    stride, cfg.use_channels_last)

    word_embeddings = _embedding(cfg.vocab_size, d, cfg.init_std, cfg.pad_token_id)
    text_embeddings = TextEmbeddings(word_embeddings, cfg.max_position_embeddings, cfg.type_vocab_size, d,
                                     cfg.dropout, init_std=cfg.init_std)
    caption_words = word_embeddings if cfg.share_word_embeddings else _embedding(
        cfg.vocab_size, d, cfg.init_std, cfg.pad_token_id)
    caption_embeddings = TextEmbeddings(caption_words, cfg.max_position_embeddings, 0, d, cfg.dropout,
                                        init_std=cfg.init_std)

    layer_args = (d, cfg.num_heads, cfg.dim_feedforward, cfg.dropout, cfg.activation, cfg.layer_norm_eps)
    encoder = CrossModalEncoder([EncoderLayer(*layer_args) for _ in range(cfg.num_encoder_layers)])
    decoder = SharedDecoder([DecoderLayer(*layer_args) for _ in range(cfg.num_decoder_layers)],
                            nn.LayerNorm(d, eps=cfg.layer_norm_eps))

    return E2EVLP(
        config=cfg,
        backbone=backbone,
        position_encoding=build_position_encoding(cfg),
        text_embeddings=text_embeddings,
        encoder=encoder,
        decoder=decoder,
        query_embed=_embedding(cfg.num_queries, d, 1.0),  # DETR: N(0, 1) query positions
        caption_embeddings=caption_embeddings,
        mlm_head=TiedLMHead(word_embeddings),
        itm_head=ITMHead(d),
        detection_head=DetectionHead(d, cfg.num_classes, cfg.num_attributes),
        caption_head=TiedLMHead(caption_words),
        reference_points=(build_reference_points(cfg.num_queries)
                          if cfg.detection_spatial_prior is not None else None),
    )


# `E2EVLP.from_pretrained` builds through this builder without importing it (the models sit below the builder)
E2EVLP.builder = staticmethod(build_e2evlp)
