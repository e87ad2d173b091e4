"""The shapes world's pretraining sources (`shapes_sources`); the world with its tokenizer and label vocabularies
(`prepare_shapes`) is `vlpkit.data.shapes.setup`.

A user with the real datasets replaces this module's paths by COCO's and Visual Genome's (see
`vlpkit.pretraining.sources`) and keeps everything else.
"""

from __future__ import annotations

from ..data.readers import VisualGenome
from ..data.readers.coco import CocoWithCaptions

# the world's setup lives with the world (vlpkit.data.shapes.setup); importable here as before
from ..data.shapes.setup import ShapesSetup, prepare_shapes, split_image_ids, world_texts  # noqa: F401
from .data import Source
from .sources import visual_genome_subset


def shapes_sources(setup: ShapesSetup, split: str = "train", coco_tasks=("mlm", "itm", "detection", "caption"),
                   vg_tasks=("mlm", "detection", "attributes"), coco_weight: float = 1.0,
                   vg_weight: float = 1.0) -> list[Source]:
    """The paper's two pretraining sources on the shapes world.

    - "coco": COCO instances + captions (captions serve MLM, ITM and generation; boxes serve detection);
    - "vg": Visual Genome objects with attributes; region phrases serve MLM. They are not used for ITM or
      generation by default: a phrase such as "red circle" describes a region, and may describe another image too.
    A task left out of both lists (or a weight of 0... use an empty list) is simply not trained on.
    """
    world = setup.world
    sources = []
    if coco_tasks:
        coco = CocoWithCaptions(world.instances(split), world.captions(split), world.image_dir(split))
        sources.append(Source("coco", coco, tuple(coco_tasks), coco_weight))
    if vg_tasks:
        files = [world.vg(n) for n in ("image_data", "objects", "attributes", "region_descriptions")]
        vg = VisualGenome(*files, world.root / "images", setup.object_vocab, setup.attribute_vocab)
        sources.append(Source("vg", visual_genome_subset(vg, split_image_ids(world, split)), tuple(vg_tasks),
                              vg_weight))
    return sources
