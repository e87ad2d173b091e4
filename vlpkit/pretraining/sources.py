"""Pretraining sources over the official files: COCO (instances + captions) and Visual Genome (objects,
attributes, region descriptions). Point the paths at the real datasets or at a generated shapes world."""

from __future__ import annotations

from collections.abc import Iterable

from torch.utils.data import Subset

from ..data.readers import VisualGenome

# moved to the readers (the tasks use them too); importable here as before
from ..data.readers.coco import CocoWithCaptions, coco_category_names  # noqa: F401
from ..data.readers.visual_genome import attribute_vocab_from_vg  # noqa: F401


def visual_genome_subset(vg: VisualGenome, image_ids: Iterable[int]) -> Subset:
    """The items of `vg` whose image id is in `image_ids` (e.g. the train split of COCO-aligned images)."""
    wanted = set(image_ids)
    keep = [i for i in range(len(vg)) if vg.annotation(i)["image_id"] in wanted]
    if not keep:
        raise ValueError(f"none of the {len(vg)} Visual Genome images is among the {len(wanted)} requested ids")
    return Subset(vg, keep)
