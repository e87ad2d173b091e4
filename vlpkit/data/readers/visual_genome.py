"""Visual Genome (v1.2 / v1.4): objects with class and attribute labels, region descriptions as captions.

Files (from https://homes.cs.washington.edu/~ranjay/visualgenome/api.html):

* `image_data.json`: `[{image_id, url, width, height, coco_id, flickr_id}]`
* `objects.json`: `[{image_id, objects: [{object_id, x, y, w, h, names: [..], synsets, merged_object_ids}]}]`
* `attributes.json`: `[{image_id, attributes: [{object_id, x, y, w, h, names, attributes: [..] (optional)}]}]`
* `region_descriptions.json`: `[{id, regions: [{region_id, image_id, phrase, x, y, width, height}]}]` —
  note `width`/`height` here, not `w`/`h`.

Choices (the usual bottom-up-attention practice, made explicit):

* An object's class is its first name, lowercased with whitespace collapsed; an attribute is normalised the same
  way. Objects whose class is not in `object_vocab` are left out of the target and counted
  (`num_objects_out_of_vocab`); attributes not in `attribute_vocab` likewise (`num_attributes_out_of_vocab`).
* Attributes are joined to objects by `object_id`; attribute records whose object is not in `objects.json`
  are counted (`num_attribute_records_unmatched`).
* Boxes `[x, y, w, h]` become absolute xyxy clipped to the image; zero-area boxes are dropped and counted
  (`num_degenerate`), as for COCO.
* Images are items when they appear in both `image_data.json` and `objects.json`, in `objects.json` order.
* The image file is `image_root / "VG_100K[_2]/<id>.jpg"`, taken from the record's `url` (the official zips
  unpack to `VG_100K/` and `VG_100K_2/`); pass `image_name_fn(record) -> relative path` for another layout.

`build_vg_vocabs` ranks classes and attributes by frequency. The 1600/400 vocabularies of bottom-up attention
were additionally merged by hand from the top 2500/1000; load theirs with `Vocab.load("objects_vocab.txt")`
to reproduce them exactly.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchvision.ops import box_convert

from ..vocab import Vocab, as_vocab
from .images import (
    DataFileError,
    ImageReader,
    Transforms,
    check_size,
    load_rgb,
    read_json,
    require_int,
    require_keys,
    require_number,
    require_type,
    require_unique,
)

_WS = re.compile(r"\s+")

EXPECTED = {
    "image_data": "Visual Genome image_data.json (a list of {image_id, url, width, height})",
    "objects": "Visual Genome objects.json (a list of {image_id, objects: [{object_id, x, y, w, h, names}]})",
    "attributes": "Visual Genome attributes.json (a list of {image_id, attributes: [{object_id, attributes}]})",
    "regions": "Visual Genome region_descriptions.json (a list of {id, regions: [{phrase, x, y, width, height}]})",
}


def normalize_name(name: str) -> str:
    """VG object / attribute name -> vocabulary key: lowercase, stripped, single spaces."""
    return _WS.sub(" ", name).strip().lower()


def default_image_name(record: dict) -> str:
    """`VG_100K_2/1.jpg` from the record's url; `<image_id>.jpg` when there is no url."""
    url = record.get("url")
    if url:
        return "/".join(url.rstrip("/").split("/")[-2:])
    return f"{record['image_id']}.jpg"


def _load_list(source: str | Path | list, kind: str, item_keys: tuple[str, ...], list_key: str,
               entry_keys: tuple[str, ...]) -> tuple[list, str]:
    """Read (or accept already-parsed) VG JSON and check its per-image and per-entry keys."""
    path = "<in-memory list>" if isinstance(source, list) else str(source)
    data = source if isinstance(source, list) else read_json(source, EXPECTED[kind])
    require_type(data, list, "the top level", path)
    for i, item in enumerate(data):
        require_keys(item, item_keys + (list_key,), f"[{i}]", path)
        require_type(item[list_key], list, f"[{i}]['{list_key}']", path)
        for j, entry in enumerate(item[list_key]):
            require_keys(entry, entry_keys, f"[{i}]['{list_key}'][{j}]", path)
    return data, path


def _check_box(entry: dict, keys: tuple[str, str, str, str], where: str, path: str) -> None:
    """x, y finite; width, height finite and >= 0 (a NaN or negative size is not a "degenerate" box to drop)."""
    for k in keys:
        require_number(entry[k], f"{where}['{k}']", path, minimum=0 if k in keys[2:] else None)


def _load_objects(source):
    data, path = _load_list(source, "objects", ("image_id",), "objects", ("object_id", "x", "y", "w", "h", "names"))
    for i, item in enumerate(data):
        require_int(item["image_id"], f"[{i}]['image_id']", path)
        for j, obj in enumerate(item["objects"]):
            require_int(obj["object_id"], f"[{i}]['objects'][{j}]['object_id']", path)
            _check_box(obj, ("x", "y", "w", "h"), f"[{i}]['objects'][{j}]", path)
            _first_name(obj, path)
    require_unique(((f"[{i}]", item["image_id"]) for i, item in enumerate(data)), "image_id", path)
    return data, path


def _load_attributes(source):
    data, path = _load_list(source, "attributes", ("image_id",), "attributes", ("object_id",))
    names_of: dict[int, tuple[str, list[str]]] = {}  # object_id -> (where, its attribute names)
    for i, item in enumerate(data):
        for j, rec in enumerate(item["attributes"]):
            where = f"[{i}]['attributes'][{j}]"
            require_int(rec["object_id"], f"{where}['object_id']", path)
            names = rec.get("attributes")
            if names is not None:
                require_type(names, list, f"{where}['attributes']", path)
                for k, name in enumerate(names):
                    require_type(name, str, f"{where}['attributes'][{k}]", path)
            seen = names_of.setdefault(rec["object_id"], (where, _attribute_names(rec)))
            if seen[1] != _attribute_names(rec):
                raise DataFileError(f"{path}: object_id {rec['object_id']} has two different attribute records, "
                                    f"{seen[0]} and {where}")
    return data, path


def _first_name(obj: dict, path: str) -> str:
    names = obj["names"]
    if not (isinstance(names, list) and names and isinstance(names[0], str)):
        raise DataFileError(f"{path}: object_id {obj['object_id']} has names={names!r}; expected a non-empty list")
    return normalize_name(names[0])


def _attribute_names(record: dict) -> list[str]:
    seen = []
    for a in record.get("attributes") or []:
        a = normalize_name(a)
        if a and a not in seen:
            seen.append(a)
    return seen


def build_vg_vocabs(objects_json: str | Path | list, attributes_json: str | Path | list,
                    num_objects: int | None = 1600, num_attributes: int | None = 400,
                    min_count: int = 1) -> tuple[Vocab, Vocab]:
    """Object and attribute vocabularies: the `num_objects` / `num_attributes` most frequent normalised names.

    An object counts its first name once; an attribute counts once per object that has it (in attributes.json).
    `None` keeps every name seen at least `min_count` times. Accepts paths or the already-parsed lists.
    """
    objects, obj_path = _load_objects(objects_json)
    attributes, _ = _load_attributes(attributes_json)
    object_counts = Counter(_first_name(o, obj_path) for item in objects for o in item["objects"])
    attribute_counts = Counter(a for item in attributes for rec in item["attributes"] for a in _attribute_names(rec))
    return (Vocab.from_counts(object_counts, num_objects, min_count, name=f"vg objects, top {num_objects}"),
            Vocab.from_counts(attribute_counts, num_attributes, min_count, name=f"vg attributes, top {num_attributes}"))


def _xyxy(entries: list[dict], w_key: str, h_key: str, width: float, height: float) -> torch.Tensor:
    xywh = torch.tensor([[e["x"], e["y"], e[w_key], e[h_key]] for e in entries], dtype=torch.float32).reshape(-1, 4)
    boxes = box_convert(xywh, "xywh", "xyxy")
    return torch.minimum(boxes.clamp(min=0), torch.tensor([width, height, width, height], dtype=torch.float32))


class VisualGenome(ImageReader):
    """Visual Genome images with object detection targets (class + attributes) and region captions.

    Sample: `{"image", "image_id", "target": {"boxes": FloatTensor [T, 4] absolute xyxy, "labels": LongTensor [T],
    "attributes": list[list[int]] (T lists of attribute ids), "image_id", "orig_size": (h, w)},
    "captions": list[str] (region phrases), "regions": {"phrases": list[str], "boxes": FloatTensor [R, 4]}}`.
    Region boxes are absolute xyxy in the ORIGINAL image and are not passed through `transforms`.
    """

    def __init__(self, image_data_json: str | Path, objects_json: str | Path, attributes_json: str | Path,
                 region_descriptions_json: str | Path | None, image_root: str | Path,
                 object_vocab: Vocab | str | Path, attribute_vocab: Vocab | str | Path, *,
                 transforms: Transforms | None = None, on_bad_image: str = "raise",
                 image_name_fn: Callable[[dict], str] = default_image_name):
        super().__init__(image_root, transforms, on_bad_image)
        self.object_vocab = as_vocab(object_vocab, "object_vocab")
        self.attribute_vocab = as_vocab(attribute_vocab, "attribute_vocab")
        self.image_name_fn = image_name_fn

        image_data = read_json(image_data_json, EXPECTED["image_data"])
        require_type(image_data, list, "the top level", image_data_json)
        images = {}
        for i, rec in enumerate(image_data):
            require_keys(rec, ("image_id", "width", "height"), f"[{i}]", image_data_json)
            require_int(rec["image_id"], f"[{i}]['image_id']", image_data_json)
            for key in ("width", "height"):
                require_int(rec[key], f"[{i}]['{key}']", image_data_json, minimum=1)
            if rec.get("url") is not None:
                require_type(rec["url"], str, f"[{i}]['url']", image_data_json)
            images[rec["image_id"]] = rec
        require_unique(((f"[{i}]", rec["image_id"]) for i, rec in enumerate(image_data)), "image_id", image_data_json)
        objects, obj_path = _load_objects(objects_json)
        attributes, _ = _load_attributes(attributes_json)

        attrs_by_object: dict[int, list[str]] = {}
        for item in attributes:
            for rec in item["attributes"]:
                attrs_by_object[rec["object_id"]] = _attribute_names(rec)

        self.num_objects_out_of_vocab = 0
        self.num_attributes_out_of_vocab = 0
        self.num_degenerate = 0
        self.num_images_without_record = 0  # objects.json images absent from image_data.json
        self._items: list[dict] = []
        matched_objects = set()
        for item in objects:
            rec = images.get(item["image_id"])
            if rec is None:
                self.num_images_without_record += 1
                continue
            self._items.append(self._encode_objects(rec, item["objects"], attrs_by_object, obj_path))
            matched_objects.update(o["object_id"] for o in item["objects"])
        if not self._items:
            raise DataFileError(f"no image of {objects_json} has a record in {image_data_json}; "
                                "are they from the same Visual Genome release?")
        self.num_attribute_records_unmatched = len(set(attrs_by_object) - matched_objects)
        self.num_images_without_objects = len(images) - len(self._items)

        self.num_regions_without_image = 0
        self._regions: dict[int, tuple[list[str], torch.Tensor]] = {}
        if region_descriptions_json is not None:
            self._read_regions(region_descriptions_json)

    def _encode_objects(self, rec: dict, objs: list[dict], attrs_by_object: dict, path: str) -> dict:
        boxes = _xyxy(objs, "w", "h", rec["width"], rec["height"])
        keep_box = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).tolist()
        keep, labels, attributes, object_ids = [], [], [], []
        for i, (obj, ok) in enumerate(zip(objs, keep_box)):
            label = self.object_vocab.get(_first_name(obj, path))
            if label is None:
                self.num_objects_out_of_vocab += 1
                continue
            if not ok:
                self.num_degenerate += 1
                continue
            ids = []
            for a in attrs_by_object.get(obj["object_id"], []):
                a_id = self.attribute_vocab.get(a)
                if a_id is None:
                    self.num_attributes_out_of_vocab += 1
                else:
                    ids.append(a_id)
            keep.append(i)
            labels.append(label)
            attributes.append(ids)
            object_ids.append(obj["object_id"])
        return {"record": rec, "boxes": boxes[keep], "labels": torch.tensor(labels, dtype=torch.long),
                "attributes": attributes, "object_ids": object_ids}

    def _read_regions(self, path: str | Path) -> None:
        regions, path = _load_list(path, "regions", ("id",), "regions",
                                   ("phrase", "x", "y", "width", "height"))
        for i, item in enumerate(regions):
            require_int(item["id"], f"[{i}]['id']", path)
            for j, region in enumerate(item["regions"]):
                require_type(region["phrase"], str, f"[{i}]['regions'][{j}]['phrase']", path)
                _check_box(region, ("x", "y", "width", "height"), f"[{i}]['regions'][{j}]", path)
        require_unique(((f"[{i}]", item["id"]) for i, item in enumerate(regions)), "id", path)
        sizes = {it["record"]["image_id"]: (it["record"]["width"], it["record"]["height"]) for it in self._items}
        for item in regions:
            if item["id"] not in sizes:
                self.num_regions_without_image += len(item["regions"])
                continue
            phrases = [r["phrase"].strip() for r in item["regions"]]
            self._regions[item["id"]] = (phrases, _xyxy(item["regions"], "width", "height", *sizes[item["id"]]))

    def __len__(self) -> int:
        return len(self._items)

    def annotation(self, index: int) -> dict:
        """`image_id`, `path`, `orig_size`, `target`, `object_ids` [T], `captions` and `regions` (see class doc)."""
        item = self._items[self._check_index(index)]
        rec = item["record"]
        orig_size = (int(rec["height"]), int(rec["width"]))
        target = {"boxes": item["boxes"].clone(), "labels": item["labels"].clone(),
                  "attributes": [list(a) for a in item["attributes"]], "image_id": rec["image_id"],
                  "orig_size": orig_size}
        phrases, region_boxes = self._regions.get(rec["image_id"], ([], torch.zeros(0, 4)))
        return {"image_id": rec["image_id"], "path": self._path(rec), "orig_size": orig_size, "target": target,
                "object_ids": list(item["object_ids"]), "captions": list(phrases),
                "regions": {"phrases": list(phrases), "boxes": region_boxes.clone()}}

    def _path(self, rec: dict[str, Any]) -> Path:
        return self.image_root / self.image_name_fn(rec)

    def _image_paths(self, index: int) -> list[Path]:
        return [self._path(self._items[self._check_index(index)]["record"])]

    def _load(self, index: int) -> dict:
        ann = self.annotation(index)
        image = load_rgb(ann["path"])
        check_size(image, ann["orig_size"], ann["path"])
        image, target, captions = self._apply_transforms(image, ann["target"], ann["captions"])
        return {"image": image, "image_id": ann["image_id"], "target": target, "captions": captions,
                "regions": ann["regions"]}


def attribute_vocab_from_vg(objects_json: str | Path, attributes_json: str | Path, size: int = 400) -> Vocab:
    """Attribute vocabulary by frequency (see `vlpkit.data.readers.visual_genome.build_vg_vocabs`)."""
    _, attributes = build_vg_vocabs(objects_json, attributes_json, num_objects=1, num_attributes=size)
    return attributes
