"""Karpathy's caption splits (`dataset_flickr30k.json`, `dataset_flickr8k.json`, `dataset_coco.json`).

Schema: `{"dataset": name, "images": [{"filename", "imgid", "split", "sentids", "sentences": [{"raw", "tokens",
"imgid", "sentid"}], ...}]}`. The COCO file adds `filepath` ("train2014"/"val2014"), `cocoid`, and a fourth
split, `restval` (the 30K val2014 images outside Karpathy's val/test, usually trained on with `train`).

An image lives at `image_root / filepath / filename` (COCO) or `image_root / filename` (Flickr). Its `image_id`
is `cocoid` when present (so COCO caption evaluation finds it), else `imgid`. Captions are the `raw` sentences,
stripped; `raw` keeps the file's spacing of punctuation ("in the snow .").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .images import (
    DataFileError,
    ImageReader,
    Transforms,
    load_rgb,
    read_json,
    require_int,
    require_keys,
    require_type,
    require_unique,
)

SPLITS = ("train", "val", "test", "restval")
EXPECTED = "Karpathy split file (dataset_*.json: {'images': [{filename, split, sentences: [{raw}]}]})"


class KarpathyDataset(ImageReader):
    """One split (or several, e.g. `split=("train", "restval")`) of a Karpathy caption file.

    Sample: `{"image", "image_id", "target": {"image_id", "orig_size"}, "captions": list[str]}` (`per="image"`)
    or `{..., "text": str, "sentid": int}` (`per="caption"`, one item per sentence).
    """

    def __init__(self, json_path: str | Path, image_root: str | Path, split: str | Sequence[str] = "train",
                 per: str = "image", *, transforms: Transforms | None = None, on_bad_image: str = "raise"):
        super().__init__(image_root, transforms, on_bad_image)
        if per not in ("image", "caption"):
            raise ValueError(f"per={per!r}; expected 'image' or 'caption'")
        splits = (split,) if isinstance(split, str) else tuple(split)
        unknown = [s for s in splits if s not in SPLITS]
        if unknown:
            raise ValueError(f"split {unknown}; expected some of {SPLITS}")
        self.per, self.splits, self.path = per, splits, Path(json_path)

        data = read_json(json_path, EXPECTED)
        require_keys(data, ("images",), "the top level", json_path)
        require_type(data["images"], list, "'images'", json_path)
        self.dataset_name = data.get("dataset", "")
        self.split_counts: Counter = Counter()
        self._images = []
        image_ids = []
        for i, img in enumerate(data["images"]):
            require_keys(img, ("filename", "split", "sentences"), f"images[{i}]", json_path)
            for key in ("filename", "filepath"):
                if key in img:
                    require_type(img[key], str, f"images[{i}]['{key}']", json_path)
            require_type(img["sentences"], list, f"images[{i}]['sentences']", json_path)
            for j, sent in enumerate(img["sentences"]):
                require_keys(sent, ("raw",), f"images[{i}]['sentences'][{j}]", json_path)
                require_type(sent["raw"], str, f"images[{i}]['sentences'][{j}]['raw']", json_path)
                if "sentid" in sent:
                    require_int(sent["sentid"], f"images[{i}]['sentences'][{j}]['sentid']", json_path)
            if img["split"] not in SPLITS:
                raise DataFileError(f"{json_path}: images[{i}] has split {img['split']!r}; expected one of {SPLITS}")
            if "cocoid" not in img and "imgid" not in img:
                raise DataFileError(f"{json_path}: images[{i}] has neither 'cocoid' nor 'imgid'; one of them is its "
                                    f"image_id; found keys {sorted(img)}")
            for key in ("cocoid", "imgid"):
                if key in img:
                    require_int(img[key], f"images[{i}]['{key}']", json_path)
            image_ids.append((f"images[{i}]", img.get("cocoid", img.get("imgid"))))
            self.split_counts[img["split"]] += 1
            if img["split"] in splits:
                self._images.append(img)
        require_unique(image_ids, "image id (cocoid, else imgid)", json_path)
        if not self._images:
            raise DataFileError(f"{json_path} has no image in split(s) {list(splits)}; "
                                f"its splits are {dict(self.split_counts)}")
        self.num_images_without_captions = sum(not img["sentences"] for img in self._images)
        if per == "caption":
            self._items = [(i, j) for i, img in enumerate(self._images) for j in range(len(img["sentences"]))]
        else:
            self._items = [(i, None) for i, img in enumerate(self._images) if img["sentences"]]

    def __len__(self) -> int:
        return len(self._items)

    def annotation(self, index: int) -> dict:
        """`image_id`, `path`, `split`, `filename` and `captions` (per image) or `text` + `sentid` (per caption)."""
        i, j = self._items[self._check_index(index)]
        img = self._images[i]
        path = self.image_root / img.get("filepath", "") / img["filename"]
        out = {"image_id": img.get("cocoid", img.get("imgid")), "path": path, "split": img["split"],
               "filename": img["filename"]}
        if j is None:
            out["captions"] = [s["raw"].strip() for s in img["sentences"]]
        else:
            sent = img["sentences"][j]
            out.update(text=sent["raw"].strip(), sentid=sent.get("sentid"))
        return out

    def _image_paths(self, index: int) -> list[Path]:
        return [self.annotation(index)["path"]]

    def _load(self, index: int) -> dict:
        ann = self.annotation(index)
        image = load_rgb(ann["path"])
        target = {"image_id": ann["image_id"], "orig_size": (image.height, image.width)}
        key = "captions" if ann.get("captions") is not None else "text"
        image, target, text = self._apply_transforms(image, target, ann[key])
        sample = {"image": image, "image_id": ann["image_id"], "target": target, key: text}
        if key == "text":
            sample["sentid"] = ann["sentid"]
        return sample
