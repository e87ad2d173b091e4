"""`E2EVLPConfig`: every hyper-parameter of an E2E-VLP model, serialisable to JSON.

The paper's presets (Table 5) live in `vlpkit.presets`; `build_e2evlp` turns a config into a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config_io import DictConfig
from .schema import ConfigError, check_fields

__all__ = ["ConfigError", "E2EVLPConfig"]

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
POSITION_EMBEDDINGS = ("sine", "learned")
ACTIVATIONS = ("relu", "gelu")
BACKBONE_NORMS = ("frozen_bn", "batch_norm")
POOLINGS = ("cls", "text_mean")


@dataclass
class E2EVLPConfig(DictConfig):
    """Hyper-parameters of E2E-VLP. Defaults follow the paper (6-layer encoder, ResNet-50, d=256).

    Where the paper is ambiguous the choice is documented in docs/paper_fidelity.md: most notably
    `num_heads=8` (the paper states 12 heads, which does not divide d=256).
    """

    # visual trunk
    backbone: str = "resnet50"
    backbone_weights: str | None = None  # torchvision weights name ("IMAGENET1K_V1") or a local file; never downloaded in tests
    trainable_backbone_layers: int = 3  # torchvision convention: layer2..layer4 train, stem + layer1 frozen
    backbone_last_stage: str = "layer4"  # "layer3" drops C5: stride 16, a finer grid for small images
    backbone_norm: str = "frozen_bn"  # the paper's frozen BatchNorm; "batch_norm" trains it (a trunk trained from scratch)
    mask_backbone_padding: bool = True  # zero padded pixels before every conv: batch padding cannot change features
    # trunk weights and images in torch.channels_last: 1.26x faster at 800x1333 on CPU (docs/benchmarks.md).
    # None = on with frozen_bn, off with batch_norm, whose CPU training backward in channels_last loses precision
    # (gradients 0.9% off a float64 reference, against 1e-5 in NCHW; tests/models/test_channels_last.py)
    channels_last: bool | None = None
    position_embedding: str = "sine"
    # transformer
    d_model: int = 256
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 1024
    dropout: float = 0.1
    activation: str = "relu"
    layer_norm_eps: float = 1e-5
    # text
    vocab_size: int = 30522
    max_text_length: int = 40
    max_position_embeddings: int = 128
    type_vocab_size: int = 2
    pad_token_id: int = 0
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    bos_token_id: int = 101  # caption decoding starts from [CLS] ...
    eos_token_id: int = 102  # ... and ends at [SEP], so one WordPiece vocabulary serves both sides
    share_word_embeddings: bool = True  # encoder and caption decoder share one token embedding matrix
    # detection
    num_queries: int = 100
    num_classes: int = 1600  # Visual Genome objects during pretraining; COCO fine-tuning uses 91
    num_attributes: int = 400  # 0 disables the attribute head
    aux_loss: bool = True
    # not in the paper (None = off, as in DETR): sigma, in normalised image units, of a Gaussian cross-attention
    # prior around a learned reference point per query, from which boxes are also predicted (SMCA / Anchor DETR).
    # A CPU-budget aid for training from scratch; see vlpkit/models/spatial_prior.py and docs/pretraining.md
    detection_spatial_prior: float | None = None
    # what the matching heads (ITM, and the VQA / NLVR2 / retrieval heads built on the encoder) read: "cls" (the
    # paper: the final [CLS] state) or "text_mean" (not in the paper: the mean of the final text states, [CLS] and
    # [SEP] included, padding excluded). [CLS] attends mostly to the grid cells, which dilutes the word states that
    # carry a mismatch; docs/pretraining.md measures the difference.
    pooling: str = "cls"
    init_std: float = 0.02
    extra: dict[str, Any] = field(default_factory=dict)  # free-form user metadata, round-tripped untouched

    def __post_init__(self) -> None:
        self.validate()

    @property
    def use_channels_last(self) -> bool:
        """`channels_last` resolved: an explicit value, else on exactly when the trunk's BatchNorm is frozen."""
        return self.backbone_norm == "frozen_bn" if self.channels_last is None else bool(self.channels_last)

    def validate(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        check_fields(self)  # types first: the checks below compare numbers
        check(self.backbone in BACKBONES, f"backbone={self.backbone!r}; expected one of {BACKBONES}")
        check(self.position_embedding in POSITION_EMBEDDINGS,
              f"position_embedding={self.position_embedding!r}; expected one of {POSITION_EMBEDDINGS}")
        check(self.backbone_last_stage in ("layer3", "layer4"),
              f"backbone_last_stage={self.backbone_last_stage!r}; expected 'layer3' or 'layer4'")
        check(self.backbone_norm in BACKBONE_NORMS,
              f"backbone_norm={self.backbone_norm!r}; expected one of {BACKBONE_NORMS}")
        check(self.activation in ACTIVATIONS, f"activation={self.activation!r}; expected one of {ACTIVATIONS}")
        check(0 <= self.trainable_backbone_layers <= 5,
              f"trainable_backbone_layers={self.trainable_backbone_layers}; expected 0..5")
        check(self.d_model > 0 and self.num_heads > 0 and self.d_model % self.num_heads == 0,
              f"d_model={self.d_model} is not divisible by num_heads={self.num_heads} "
              "(the paper's 12 heads do not divide d=256; see docs/paper_fidelity.md)")
        check(self.d_model % 2 == 0, f"d_model={self.d_model} must be even for 2D positional encodings")
        for name in ("num_encoder_layers", "num_decoder_layers", "dim_feedforward", "vocab_size",
                     "max_text_length", "num_queries", "num_classes", "max_position_embeddings"):
            check(getattr(self, name) > 0, f"{name}={getattr(self, name)}; expected > 0")
        check(self.detection_spatial_prior is None or self.detection_spatial_prior > 0,
              f"detection_spatial_prior={self.detection_spatial_prior}; expected None (off) or a sigma > 0")
        check(self.pooling in POOLINGS, f"pooling={self.pooling!r}; expected one of {POOLINGS}")
        check(self.num_attributes >= 0, f"num_attributes={self.num_attributes}; expected >= 0")
        check(0.0 <= self.dropout < 1.0, f"dropout={self.dropout}; expected in [0, 1)")
        check(self.max_text_length <= self.max_position_embeddings,
              f"max_text_length={self.max_text_length} exceeds max_position_embeddings={self.max_position_embeddings}")
        for name in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id", "bos_token_id", "eos_token_id"):
            tid = getattr(self, name)
            check(0 <= tid < self.vocab_size, f"{name}={tid} is outside the vocabulary (vocab_size={self.vocab_size})")
