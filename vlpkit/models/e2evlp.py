"""The E2E-VLP model: blocks injected by `vlpkit.build_e2evlp`, wired MDETR-style (encode once, decode many ways)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import E2EVLPConfig
from ..generation import generate
from ..outputs import DetectionOutput, E2EVLPOutput, EncoderOutput, GenerationOutput, ImageEmbedding
from .backbone import GridFeatureExtractor
from .decoder import DecoderCache, SharedDecoder
from .encoder import CrossModalEncoder
from .heads import DetectionHead, ITMHead, TiedLMHead
from .spatial_prior import gaussian_attention_bias, grid_cell_centres
from .text_embeddings import TextEmbeddings


class E2EVLP(nn.Module):
    """End-to-end vision-language model (Xu et al., 2021).

    pixels -> `backbone` (ResNet + 1x1 conv) -> grid [B, d, H, W] + `position_encoding`;
    text -> `text_embeddings`; `[CLS] text [SEP] grid` -> `encoder` -> memory;
    memory -> `decoder` with `query_embed` -> `detection_head` (objects, boxes, attributes); optionally with
    `reference_points` (a spatial prior, not in the paper; `vlpkit.models.spatial_prior`);
    memory -> `decoder` with `caption_embeddings`, causally -> `caption_head` (image-to-text generation);
    memory -> `mlm_head` (text positions), `itm_head` ([CLS]).

    The model holds no construction logic: `vlpkit.build_e2evlp` builds every block. The builder installs itself
    as `E2EVLP.builder` when `vlpkit.builder` is imported, so that `from_pretrained` can build a saved model
    without this module importing the layer above it.
    """

    builder = None  # set to `vlpkit.builder.build_e2evlp` by vlpkit.builder

    def __init__(self, config: E2EVLPConfig, backbone: GridFeatureExtractor, position_encoding: nn.Module,
                 text_embeddings: TextEmbeddings, encoder: CrossModalEncoder, decoder: SharedDecoder,
                 query_embed: nn.Embedding, caption_embeddings: TextEmbeddings, mlm_head: TiedLMHead,
                 itm_head: ITMHead, detection_head: DetectionHead, caption_head: TiedLMHead,
                 reference_points: nn.Embedding | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.position_encoding = position_encoding
        self.text_embeddings = text_embeddings
        self.encoder = encoder
        self.decoder = decoder
        self.query_embed = query_embed
        self.caption_embeddings = caption_embeddings
        self.mlm_head = mlm_head
        self.itm_head = itm_head
        self.detection_head = detection_head
        self.caption_head = caption_head
        self.reference_points = reference_points  # [Q, 2] logits; only with config.detection_spatial_prior
        # set by `vlpkit.models.feature_cache.freeze_trunk`: a frozen backbone memoised per image (not a module)
        self.feature_cache = None

    # ---- encoding ---------------------------------------------------------------------------------------
    def embed_image(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> ImageEmbedding:
        """Backbone, 1x1 projection and 2D positions of a batch of images.

        Args:
            pixel_values: [B, 3, H, W] float, normalised, zero on padding.
            pixel_mask: [B, H, W] bool/int, 1 on real pixels (None: no padding).
        Returns:
            ImageEmbedding with features/pos [B, H/32 * W/32, d] (ceil).
        """
        self._check_image(pixel_values, pixel_mask)
        extract = self.backbone if self.feature_cache is None else self.feature_cache
        features, grid_mask = extract(pixel_values, pixel_mask)
        pos = self.position_encoding(grid_mask).to(features.dtype)
        return ImageEmbedding(features.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2),
                              ~grid_mask.flatten(1), tuple(features.shape[-2:]))

    def encode(self, pixel_values: torch.Tensor | None = None, pixel_mask: torch.Tensor | None = None,
               input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, image: ImageEmbedding | None = None) -> EncoderOutput:
        """Fuse images and texts.

        Args:
            pixel_values: [B, 3, H, W] float, normalised, zero on padding (or pass `image` instead).
            pixel_mask: [B, H, W] bool/int, 1 on real pixels (None: no padding).
            input_ids: [B, L] long, `[CLS] text [SEP] [PAD]...`; None encodes the image alone (`[CLS] [SEP]`),
                as image-to-text generation does so that the decoder never sees the caption it predicts.
            attention_mask: [B, L], 1 on real tokens (None: all real).
            token_type_ids: [B, L] segment ids (None: zeros).
            image: a precomputed `embed_image` result, to encode the same images with several texts.
        Returns:
            EncoderOutput with memory [B, L + H/32 * W/32, d].
        """
        if image is None:
            if pixel_values is None:
                raise ValueError("encode needs pixel_values or a precomputed image embedding")
            image = self.embed_image(pixel_values, pixel_mask)
        batch = len(image)
        device = image.features.device
        self._check_text(input_ids, attention_mask, batch)
        if input_ids is None:
            input_ids = torch.tensor([[self.config.cls_token_id, self.config.sep_token_id]],
                                     device=device).expand(batch, -1)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text = self.text_embeddings(input_ids, token_type_ids)
        src = torch.cat([text, image.features.to(text.dtype)], dim=1)
        pos = torch.cat([torch.zeros_like(text), image.pos.to(text.dtype)], dim=1)
        padding_mask = torch.cat([~attention_mask.bool(), image.padding_mask], dim=1)
        memory = self.encoder(src, pos, padding_mask)
        return EncoderOutput(memory, padding_mask, pos, text.shape[1], image.grid_size)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    token_type_ids: torch.Tensor | None = None) -> EncoderOutput:
        """Encode texts alone, `[CLS] text [SEP]` with no grid (the text side of the image-text contrastive
        option of pretraining, not in the paper). Returns EncoderOutput with memory [B, L, d], grid_size (0, 0)."""
        self._check_text(input_ids, attention_mask, input_ids.shape[0])
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text = self.text_embeddings(input_ids, token_type_ids)
        padding_mask = ~attention_mask.bool()
        memory = self.encoder(text, torch.zeros_like(text), padding_mask)
        return EncoderOutput(memory, padding_mask, torch.zeros_like(text), text.shape[1], (0, 0))

    def _check_image(self, pixel_values, pixel_mask) -> None:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor [B, 3, H, W], got {type(pixel_values).__name__}")
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must have shape [B, 3, H, W], got {list(pixel_values.shape)}")
        if pixel_values.shape[0] == 0:
            raise ValueError("empty batch: pixel_values has batch size 0")
        if not pixel_values.is_floating_point():
            raise TypeError(f"pixel_values must be a normalised float tensor, got dtype {pixel_values.dtype} "
                            "(use vlpkit.data transforms to convert uint8 images)")
        b, _, h, w = pixel_values.shape
        if pixel_mask is not None and tuple(pixel_mask.shape) != (b, h, w):
            raise ValueError(f"pixel_mask must have shape {[b, h, w]} to match pixel_values, got {list(pixel_mask.shape)}")

    def _check_text(self, input_ids, attention_mask, batch: int) -> None:
        if input_ids is None:
            return
        if input_ids.dim() != 2 or input_ids.shape[0] != batch:
            raise ValueError(f"input_ids must have shape [B={batch}, L], got {list(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            raise ValueError(f"input_ids contain ids outside [0, vocab_size={self.config.vocab_size}): "
                             f"min {int(input_ids.min())}, max {int(input_ids.max())}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {list(attention_mask.shape)} != input_ids shape "
                             f"{list(input_ids.shape)}")

    # ---- heads reading an encoding ----------------------------------------------------------------------
    def detect(self, encoding: EncoderOutput) -> DetectionOutput:
        """Object queries through the shared decoder -> DETR predictions (every decoder layer, for aux losses)."""
        batch = encoding.memory.shape[0]
        query_pos = self.query_embed.weight[None].expand(batch, -1, -1).to(encoding.memory.dtype)
        reference, bias = None, None
        if self.reference_points is not None:
            reference = self.reference_points.weight
            grid_padding = encoding.memory_padding_mask[:, encoding.text_length:].unflatten(1, encoding.grid_size)
            bias = gaussian_attention_bias(reference.sigmoid(), grid_cell_centres(grid_padding),
                                           self.config.detection_spatial_prior, encoding.text_length)
        hidden = self.decoder(torch.zeros_like(query_pos),
                              self.decoder.memory_kv(encoding.memory, encoding.memory_pos),
                              encoding.memory_padding_mask, query_pos=query_pos, causal=False,
                              return_intermediate=self.config.aux_loss, cross_attn_bias=bias)
        layers = [self.detection_head(h, reference) for h in hidden]
        last = layers[-1]
        return DetectionOutput(last["pred_logits"], last["pred_boxes"], last.get("pred_attributes"), layers[:-1])

    def mlm_logits(self, encoding: EncoderOutput) -> torch.Tensor:
        """[B, L, vocab_size] masked-token logits at every text position."""
        return self.mlm_head(encoding.text_states)

    def pooled_state(self, encoding: EncoderOutput) -> torch.Tensor:
        """[B, d] the state the matching heads read: [CLS] (the paper) or the text mean (`config.pooling`)."""
        return encoding.pooled(self.config.pooling)

    def itm_logits(self, encoding: EncoderOutput) -> torch.Tensor:
        """[B, 2] image-text matching logits from the pooled state (index 1 = the text matches the image)."""
        return self.itm_head(self.pooled_state(encoding))

    def caption_logits(self, encoding: EncoderOutput, caption_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-token logits.

        Args:
            caption_ids: [B, T] decoder input `[BOS] w1 ... wn` (targets are the same shifted left by one).
        Returns:
            [B, T, vocab_size]; position t predicts token t+1 and sees tokens 0..t only.
        """
        hidden = self.decoder(self.caption_embeddings(caption_ids),
                              self.decoder.memory_kv(encoding.memory, encoding.memory_pos),
                              encoding.memory_padding_mask, causal=True, return_intermediate=False)[-1]
        return self.caption_head(hidden)

    # ---- incremental decoding ---------------------------------------------------------------------------
    def init_decoder_cache(self, encoding: EncoderOutput) -> DecoderCache:
        """Project the memory's cross-attention keys/values once; the cache then grows one token per step."""
        return DecoderCache(self.decoder.memory_kv(encoding.memory, encoding.memory_pos),
                            encoding.memory_padding_mask)

    def decode_step(self, token_ids: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """[B, t] new tokens (positions continue after the cache) -> [B, t, vocab_size] logits; extends `cache`."""
        embeddings = self.caption_embeddings(token_ids, position_offset=cache.length)
        hidden = self.decoder(embeddings, cache.cross_kv, cache.memory_padding_mask, causal=True, cache=cache,
                              return_intermediate=False)[-1]
        return self.caption_head(hidden)

    def generate(self, pixel_values: torch.Tensor | None = None, pixel_mask: torch.Tensor | None = None,
                 encoding: EncoderOutput | None = None, **kwargs) -> GenerationOutput:
        """Caption images (or an existing image-only encoding); see `vlpkit.generation.generate` for options."""
        if encoding is None:
            if pixel_values is None:
                raise ValueError("generate needs pixel_values or an encoding")
            encoding = self.encode(pixel_values, pixel_mask)
        return generate(self, encoding, **kwargs)

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None,
                input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> E2EVLPOutput:
        """Encode once and run the detection, MLM and ITM heads on the encoding."""
        encoding = self.encode(pixel_values, pixel_mask, input_ids, attention_mask, token_type_ids)
        return E2EVLPOutput(encoding, self.detect(encoding), self.mlm_logits(encoding), self.itm_logits(encoding))

    # ---- persistence ------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `config.json` and `model.safetensors` to `directory`; see `vlpkit.checkpoint`."""
        from ..checkpoint import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides) -> E2EVLP:
        """Build from `directory/config.json` with `vlpkit.build_e2evlp` and load `model.safetensors` strictly."""
        from ..checkpoint import load_pretrained

        if cls.builder is None:  # only when this module is loaded without the package (vlpkit/__init__ sets it)
            raise RuntimeError("E2EVLP.from_pretrained needs vlpkit.builder imported (import vlpkit)")
        return load_pretrained(directory, cls.builder, **overrides)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameters counted once even when tied."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
