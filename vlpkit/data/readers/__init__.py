"""Map-style datasets over the official annotation files of COCO, Visual Genome, VQA v2, NLVR2 and the
Karpathy caption splits. See docs/data/formats.md.

Every reader takes `(annotation file(s)..., image_root, transforms=None, on_bad_image="raise" | "skip")`,
validates its files at construction, opens images only in `__getitem__`, and offers `annotation(i)`: the same
item without pixels.
"""

from .coco import CocoCaptions, CocoDetection
from .images import BadImageError, DataFileError, load_rgb
from .karpathy import KarpathyDataset
from .nlvr2 import NLVR2Dataset
from .visual_genome import VisualGenome, build_vg_vocabs
from .vqa import VQADataset, build_answer_vocab

__all__ = [
    "BadImageError",
    "CocoCaptions",
    "CocoDetection",
    "DataFileError",
    "KarpathyDataset",
    "NLVR2Dataset",
    "VQADataset",
    "VisualGenome",
    "build_answer_vocab",
    "build_vg_vocabs",
    "load_rgb",
]
