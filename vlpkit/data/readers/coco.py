"""COCO captions (`captions_*.json`) and instances (`instances_*.json`) as map-style datasets.

Both files are parsed once, checked, and indexed with pycocotools' `COCO` (kept as `.coco`, so the same ground
truth can be handed to `COCOeval`). Image `i` lives at `image_root / images[i]["file_name"]`.

Detection targets follow DETR's `ConvertCocoPolysToMask`:

* `iscrowd=1` annotations (RLE "crowd" regions) are excluded from the targets; COCOeval treats them as ignore
  regions, not objects. They are counted in `num_crowd`.
* `[x, y, w, h]` becomes absolute `[x1, y1, x2, y2]` (`torchvision.ops.box_convert`), clipped to the image.
* Boxes with zero width or height after clipping are dropped (DETR's `keep`) and counted in `num_degenerate`.
* COCO's sparse category ids (1..90 with gaps) map to contiguous labels 0..K-1 by default;
  `label_to_category_id` is the inverse used by `results_to_coco` when writing detections.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision.ops import box_convert

from .images import (
    DataFileError,
    ImageReader,
    Transforms,
    check_size,
    is_number,
    load_rgb,
    read_json,
    require_int,
    require_keys,
    require_type,
    require_unique,
)

_IMAGE_KEYS = ("id", "file_name", "height", "width")


def load_coco(path: str | Path, expected: str, ann_keys: tuple[str, ...], need_categories: bool = False) -> COCO:
    """Parse and check a COCO-format file, then index it with pycocotools (without its progress prints)."""
    data = read_json(path, expected)
    require_keys(data, ("images", "annotations") + (("categories",) if need_categories else ()), "the top level", path)
    for key in ("images", "annotations") + (("categories",) if need_categories else ()):
        require_type(data[key], list, f"'{key}'", path)
    # Ids and sizes are checked before pycocotools indexes them: it would crash on an unhashable id, and its
    # dicts keyed by id would keep only the last of two records with the same id.
    for i, img in enumerate(data["images"]):
        require_keys(img, _IMAGE_KEYS, f"images[{i}]", path)
        require_int(img["id"], f"images[{i}]['id']", path)
        require_type(img["file_name"], str, f"images[{i}]['file_name']", path)
        for key in ("height", "width"):
            require_int(img[key], f"images[{i}]['{key}']", path, minimum=1)
    require_unique(((f"images[{i}]", img["id"]) for i, img in enumerate(data["images"])), "image id", path)
    for i, ann in enumerate(data["annotations"]):
        require_keys(ann, ann_keys, f"annotations[{i}]", path)
        for key in ("id", "image_id", "category_id"):
            if key in ann_keys:
                require_int(ann[key], f"annotations[{i}]['{key}']", path)
    require_unique(((f"annotations[{i}]", a["id"]) for i, a in enumerate(data["annotations"])), "annotation id", path)
    for i, cat in enumerate(data.get("categories", []) if need_categories else []):
        require_keys(cat, ("id", "name"), f"categories[{i}]", path)
        require_int(cat["id"], f"categories[{i}]['id']", path)
        require_type(cat["name"], str, f"categories[{i}]['name']", path)
    if need_categories:
        require_unique(((f"categories[{i}]", c["id"]) for i, c in enumerate(data["categories"])), "category id", path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _warn_orphans(path: str | Path, count: int, example: int) -> None:
    warnings.warn(f"{path}: {count} annotation(s) refer to image ids absent from 'images' (e.g. {example}); "
                  "they are left out and counted in num_orphan_annotations", stacklevel=3)


class CocoCaptions(ImageReader):
    """COCO captions: one item per caption (`per="caption"`) or per image with all its captions (`per="image"`).

    Sample: `{"image": PIL RGB, "image_id": int, "target": {"image_id", "orig_size": (h, w)},
    "text": str}` (per caption, plus `"caption_id"`) or `... "captions": list[str]` (per image).
    Captions are stripped of surrounding whitespace, otherwise unchanged.

    Counted, never silently dropped: `num_orphan_annotations` (captions whose image id has no `images` record;
    they cannot be located and are left out, with a warning) and `num_images_without_captions` (not items in
    `per="image"` mode).
    """

    def __init__(self, captions_json: str | Path, image_root: str | Path, *, transforms: Transforms | None = None,
                 on_bad_image: str = "raise", per: str = "caption"):
        super().__init__(image_root, transforms, on_bad_image)
        if per not in ("caption", "image"):
            raise ValueError(f"per={per!r}; expected 'caption' or 'image'")
        self.per = per
        self.path = Path(captions_json)
        self.coco = load_coco(captions_json, "COCO captions file (captions_*.json)", ("id", "image_id", "caption"))
        for ann in self.coco.dataset["annotations"]:
            if not isinstance(ann["caption"], str):
                raise DataFileError(f"{captions_json}: annotation id {ann['id']} has a non-string caption")
        orphans = [a for a in self.coco.dataset["annotations"] if a["image_id"] not in self.coco.imgs]
        self.num_orphan_annotations = len(orphans)
        if orphans:
            _warn_orphans(captions_json, len(orphans), orphans[0]["image_id"])
        image_ids = sorted(self.coco.imgs)
        with_captions = [i for i in image_ids if self.coco.imgToAnns.get(i)]
        self.num_images_without_captions = len(image_ids) - len(with_captions)
        if per == "image":
            self._items = with_captions
        else:
            self._items = [a["id"] for i in with_captions for a in self.coco.imgToAnns[i]]

    def __len__(self) -> int:
        return len(self._items)

    def _record(self, image_id: int) -> dict:
        img = self.coco.imgs[image_id]
        return {"image_id": image_id, "path": self.image_root / img["file_name"],
                "orig_size": (int(img["height"]), int(img["width"]))}

    def annotation(self, index: int) -> dict:
        """Everything but pixels: `image_id`, `path`, `orig_size` and `text`+`caption_id` or `captions`."""
        index = self._check_index(index)
        if self.per == "image":
            image_id = self._items[index]
            anns = self.coco.imgToAnns[image_id]
            return {**self._record(image_id), "captions": [a["caption"].strip() for a in anns],
                    "caption_ids": [a["id"] for a in anns]}
        ann = self.coco.anns[self._items[index]]
        return {**self._record(ann["image_id"]), "text": ann["caption"].strip(), "caption_id": ann["id"]}

    def _image_paths(self, index: int) -> list[Path]:
        return [self.annotation(index)["path"]]

    def _load(self, index: int) -> dict:
        ann = self.annotation(index)
        image = load_rgb(ann["path"])
        check_size(image, ann["orig_size"], ann["path"])
        target = {"image_id": ann["image_id"], "orig_size": ann["orig_size"]}
        key = "captions" if self.per == "image" else "text"
        image, target, text = self._apply_transforms(image, target, ann[key])
        sample = {"image": image, "image_id": ann["image_id"], "target": target, key: text}
        if self.per == "caption":
            sample["caption_id"] = ann["caption_id"]
        return sample


class CocoDetection(ImageReader):
    """COCO instances: one item per image (all images of the file, sorted by id, including those without boxes).

    Args:
        instances_json: an `instances_*.json` file.
        image_root: the folder holding the `file_name`s (e.g. `val2014/`).
        category_map: `"contiguous"` (COCO ids in increasing order -> 0..K-1), `"identity"` (label = COCO id,
            DETR's 91-way convention), or an explicit dict COCO id -> label that must cover every category used.

    Sample: `{"image", "image_id", "target": {"boxes": FloatTensor [T, 4] absolute xyxy pixels,
    "labels": LongTensor [T], "attributes": [[]] * T, "image_id", "orig_size": (h, w)}}`.
    """

    def __init__(self, instances_json: str | Path, image_root: str | Path, *, transforms: Transforms | None = None,
                 on_bad_image: str = "raise", category_map: str | Mapping[int, int] = "contiguous"):
        super().__init__(image_root, transforms, on_bad_image)
        self.path = Path(instances_json)
        self.coco = coco = load_coco(instances_json, "COCO instances file (instances_*.json)",
                                     ("id", "image_id", "category_id", "bbox"), need_categories=True)
        self.category_id_to_label = self._category_map(category_map)
        self.label_to_category_id = {label: cat for cat, label in self.category_id_to_label.items()}
        self.label_names = {label: coco.cats[cat]["name"] for cat, label in self.category_id_to_label.items()}
        self.num_classes = max(self.label_to_category_id, default=-1) + 1
        self._image_ids = sorted(coco.imgs)
        position = {image_id: i for i, image_id in enumerate(self._image_ids)}

        anns = coco.dataset["annotations"]
        for ann in anns:
            bbox = ann["bbox"]
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox)
                    and bbox[2] >= 0 and bbox[3] >= 0):
                raise DataFileError(f"{instances_json}: annotation id {ann['id']} has bbox {bbox!r}; "
                                    "expected [x, y, width, height] (finite numbers, width and height >= 0)")
            if ann.get("iscrowd", 0) not in (0, 1) or type(ann.get("iscrowd", 0)) is not int:
                raise DataFileError(f"{instances_json}: annotation id {ann['id']} has iscrowd {ann['iscrowd']!r}; "
                                    "expected 0 or 1")
            if ann["category_id"] not in coco.cats:
                raise DataFileError(f"{instances_json}: annotation id {ann['id']} has category_id "
                                    f"{ann['category_id']}, absent from 'categories'")
        located = [a for a in anns if a["image_id"] in position]
        self.num_orphan_annotations = len(anns) - len(located)
        if self.num_orphan_annotations:
            _warn_orphans(instances_json, self.num_orphan_annotations,
                          next(a["image_id"] for a in anns if a["image_id"] not in position))
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in located], dtype=bool)
        self.num_crowd = int(crowd.sum())
        kept = [a for a, c in zip(located, crowd) if not c]

        # One vectorised pass over all annotations: convert, clip to the image, drop empty boxes.
        pos = torch.tensor([position[a["image_id"]] for a in kept], dtype=torch.long)
        boxes = box_convert(torch.tensor([a["bbox"] for a in kept], dtype=torch.float32).reshape(-1, 4),
                            "xywh", "xyxy")
        sizes = torch.tensor([[coco.imgs[i]["width"], coco.imgs[i]["height"]] for i in self._image_ids],
                             dtype=torch.float32).reshape(-1, 2)
        wh = sizes[pos]
        boxes = torch.minimum(boxes.clamp(min=0), wh.repeat(1, 2))
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        self.num_degenerate = int((~keep).sum())
        labels = torch.tensor([self.category_id_to_label[a["category_id"]] for a in kept], dtype=torch.long)
        ann_ids = torch.tensor([a["id"] for a in kept], dtype=torch.long)
        pos, boxes, labels, ann_ids = pos[keep], boxes[keep], labels[keep], ann_ids[keep]
        order = torch.argsort(pos, stable=True)  # group by image, file order within an image
        self._boxes, self._labels, self._ann_ids = boxes[order], labels[order], ann_ids[order]
        counts = torch.bincount(pos, minlength=len(self._image_ids))
        self._offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]).tolist()
        self.num_images_without_boxes = int((counts == 0).sum())

    def _category_map(self, category_map: str | Mapping[int, int]) -> dict[int, int]:
        cat_ids = sorted(self.coco.cats)
        if category_map == "contiguous":
            return {cat: i for i, cat in enumerate(cat_ids)}
        if category_map == "identity":
            return {cat: cat for cat in cat_ids}
        if not isinstance(category_map, Mapping):
            raise ValueError(f"category_map={category_map!r}; expected 'contiguous', 'identity' or a dict")
        used = {a["category_id"] for a in self.coco.dataset["annotations"]}
        missing = sorted(used - set(category_map))
        if missing:
            raise ValueError(f"category_map lacks the category ids {missing} used in {self.path}")
        labels = list(category_map.values())
        if len(set(labels)) != len(labels):
            raise ValueError("category_map maps two category ids to the same label; the inverse would be ambiguous")
        return {int(k): int(v) for k, v in category_map.items() if k in self.coco.cats}

    def __len__(self) -> int:
        return len(self._image_ids)

    def annotation(self, index: int) -> dict:
        """`image_id`, `path`, `orig_size`, `target` (as in the sample) and `annotation_ids` [T]."""
        index = self._check_index(index)
        image_id = self._image_ids[index]
        img = self.coco.imgs[image_id]
        lo, hi = self._offsets[index], self._offsets[index + 1]
        orig_size = (int(img["height"]), int(img["width"]))
        target = {"boxes": self._boxes[lo:hi].clone(), "labels": self._labels[lo:hi].clone(),
                  "attributes": [[] for _ in range(hi - lo)], "image_id": image_id, "orig_size": orig_size}
        return {"image_id": image_id, "path": self.image_root / img["file_name"], "orig_size": orig_size,
                "target": target, "annotation_ids": self._ann_ids[lo:hi].tolist()}

    def _image_paths(self, index: int) -> list[Path]:
        return [self.image_root / self.coco.imgs[self._image_ids[self._check_index(index)]]["file_name"]]

    def _load(self, index: int) -> dict:
        ann = self.annotation(index)
        image = load_rgb(ann["path"])
        check_size(image, ann["orig_size"], ann["path"])
        image, target, _ = self._apply_transforms(image, ann["target"], None)
        return {"image": image, "image_id": ann["image_id"], "target": target}

    def results_to_coco(self, image_id: int, boxes: torch.Tensor, scores: torch.Tensor,
                        labels: torch.Tensor) -> list[dict]:
        """Detections for one image in COCO's result format (for `COCO.loadRes` / `COCOeval`).

        Args: `boxes` [N, 4] absolute xyxy pixels of the original image, `scores` [N], `labels` [N]
        (this dataset's labels; mapped back to COCO category ids).
        """
        unknown = sorted(set(labels.tolist()) - set(self.label_to_category_id))
        if unknown:
            raise ValueError(f"labels {unknown} have no COCO category (valid labels: 0..{self.num_classes - 1})")
        xywh = box_convert(boxes.detach().float().cpu(), "xyxy", "xywh").tolist()
        return [{"image_id": int(image_id), "category_id": self.label_to_category_id[int(label)],
                 "bbox": box, "score": float(score)}
                for box, score, label in zip(xywh, scores.tolist(), labels.tolist())]


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
    cats = json.loads(Path(instances_json).read_text())["categories"]
    return [c["name"] for c in sorted(cats, key=lambda c: c["id"])]
