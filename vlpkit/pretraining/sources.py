"""Pretraining sources over the official files: COCO (instances + captions) and Visual Genome (objects,
attributes, region descriptions). Point the paths at the real datasets or at a generated shapes world."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from torch.utils.data import Dataset, Subset

from ..data.readers import CocoCaptions, CocoDetection, VisualGenome
from ..data.vocab import Vocab


class CocoWithCaptions(Dataset):
    """COCO instances joined with COCO captions by image id: sample = CocoDetection's sample + "captions".

    Images without any caption are kept (their captions list is empty) and listed in `ids_without_captions`
    (`num_without_captions` counts them); a caller that trains text tasks on every image must refuse them.
    """

    def __init__(self, instances_json: str | Path, captions_json: str | Path, image_root: str | Path,
                 category_map="contiguous") -> None:
        self.detection = CocoDetection(instances_json, image_root, category_map=category_map)
        captions = CocoCaptions(captions_json, image_root, per="image")
        self.captions = {}
        for i in range(len(captions)):
            ann = captions.annotation(i)
            self.captions[ann["image_id"]] = ann["captions"]
        ids = [self.detection.annotation(i)["image_id"] for i in range(len(self.detection))]
        self.ids_without_captions = [i for i in ids if not self.captions.get(i)]
        self.num_without_captions = len(self.ids_without_captions)

    def __len__(self) -> int:
        return len(self.detection)

    def __getitem__(self, index: int) -> dict:
        sample = self.detection[index]
        return {**sample, "captions": list(self.captions.get(sample["image_id"], []))}


def coco_category_names(instances_json: str | Path) -> list[str]:
    """Category names in contiguous-label order (sorted category id), as `CocoDetection` numbers them."""
    import json

    cats = json.loads(Path(instances_json).read_text())["categories"]
    return [c["name"] for c in sorted(cats, key=lambda c: c["id"])]


def visual_genome_subset(vg: VisualGenome, image_ids: Iterable[int]) -> Subset:
    """The items of `vg` whose image id is in `image_ids` (e.g. the train split of COCO-aligned images)."""
    wanted = set(image_ids)
    keep = [i for i in range(len(vg)) if vg.annotation(i)["image_id"] in wanted]
    if not keep:
        raise ValueError(f"none of the {len(vg)} Visual Genome images is among the {len(wanted)} requested ids")
    return Subset(vg, keep)


def attribute_vocab_from_vg(objects_json: str | Path, attributes_json: str | Path, size: int = 400) -> Vocab:
    """Attribute vocabulary by frequency (see `vlpkit.data.readers.visual_genome.build_vg_vocabs`)."""
    from ..data.readers.visual_genome import build_vg_vocabs

    _, attributes = build_vg_vocabs(objects_json, attributes_json, num_objects=1, num_attributes=size)
    return attributes
