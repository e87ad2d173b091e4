"""The blocks of E2E-VLP, each in its own file."""

from ..outputs import DetectionOutput, E2EVLPOutput, EncoderOutput, GenerationOutput, ImageEmbedding
from .attention import MultiHeadAttention
from .backbone import GridFeatureExtractor, build_resnet_trunk
from .decoder import DecoderCache, DecoderLayer, SharedDecoder
from .e2evlp import E2EVLP
from .encoder import CrossModalEncoder, EncoderLayer
from .feedforward import MLP, FeedForward
from .heads import DetectionHead, ITMHead, Pooler, TiedLMHead
from .position import PositionEmbeddingLearned, PositionEmbeddingSine
from .text_embeddings import TextEmbeddings

__all__ = [
    "E2EVLP", "E2EVLPOutput", "MultiHeadAttention", "GridFeatureExtractor", "build_resnet_trunk", "DecoderCache",
    "DecoderLayer", "SharedDecoder", "CrossModalEncoder", "EncoderLayer", "MLP", "FeedForward", "DetectionHead",
    "ITMHead", "Pooler", "TiedLMHead", "DetectionOutput", "EncoderOutput", "ImageEmbedding", "GenerationOutput",
    "PositionEmbeddingLearned", "PositionEmbeddingSine", "TextEmbeddings",
]
