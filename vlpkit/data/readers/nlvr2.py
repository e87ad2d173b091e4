"""NLVR2: a sentence, two images, and whether the sentence is true of the pair.

Official files (github.com/lil-lab/nlvr, `nlvr2/data/{train,dev,test1}.json`) are JSON lines with
`identifier` ("<split>-<set>-<pair>-<sentence>", e.g. "dev-850-0-0"), `sentence`, `label` ("True"/"False"),
and, in train only, `directory` (the subfolder 0..99 of the train images).

Image names follow the official release: the identifier without its sentence field, plus `-img0.png` (left)
and `-img1.png` (right): "dev-850-0-0" -> "dev-850-0-img0.png", "dev-850-0-img1.png". Point `image_root` at the
split's image folder (`images/train`, `dev`, `test1`); train images are looked up in `image_root/<directory>/`.
Some of the official "png" files are JPEGs; Pillow reads them by content.
"""

from __future__ import annotations

from pathlib import Path

from .images import DataFileError, ImageReader, Transforms, load_rgb, read_jsonl, require_type

EXPECTED = "NLVR2 JSON-lines file (one {identifier, sentence, label} object per line)"
LABELS = {"true": 1, "false": 0}


def image_names(identifier: str) -> tuple[str, str]:
    """The (left, right) image file names of an NLVR2 identifier."""
    parts = identifier.split("-")
    if len(parts) != 4 or not all(parts):
        raise ValueError(f"NLVR2 identifier {identifier!r} is not of the form '<split>-<set>-<pair>-<sentence>'")
    pair = "-".join(parts[:3])
    return f"{pair}-img0.png", f"{pair}-img1.png"


def consistency_group(identifier: str) -> str:
    """The official consistency-group key: the identifier with its pair field blanked ("dev-850--0")."""
    split, set_id, _, sentence = identifier.split("-")
    return f"{split}-{set_id}--{sentence}"


class NLVR2Dataset(ImageReader):
    """NLVR2 examples: one item per line of the JSON-lines file.

    Sample: `{"images": [left, right] (PIL RGB), "image_id": "<split>-<set>-<pair>", "identifier": str,
    "text": str, "label": int (1 = True, 0 = False), "targets": [left_target, right_target]}` where each target
    is `{"image_id": file name, "orig_size": (h, w)}`. `transforms` is called once per image; the sentence goes
    through the left image's call (the right one gets `text=None`), so a text-changing transform sees it once.
    """

    def __init__(self, jsonl_path: str | Path, image_root: str | Path, *, transforms: Transforms | None = None,
                 on_bad_image: str = "raise"):
        super().__init__(image_root, transforms, on_bad_image)
        self.path = Path(jsonl_path)
        self._items = []
        first_seen: dict[str, int] = {}
        for lineno, rec in enumerate(read_jsonl(jsonl_path, EXPECTED), start=1):
            missing = [k for k in ("identifier", "sentence", "label") if k not in rec]
            if missing:
                raise DataFileError(f"{jsonl_path} record {lineno} lacks key(s) {missing}; expected keys "
                                    f"['identifier', 'sentence', 'label'], found {sorted(rec)}")
            for key in ("identifier", "sentence"):
                require_type(rec[key], str, f"record {lineno} '{key}'", jsonl_path)
            if rec["identifier"] in first_seen:
                raise DataFileError(f"{jsonl_path} record {lineno}: identifier {rec['identifier']!r} appears twice "
                                    f"(records {first_seen[rec['identifier']]} and {lineno})")
            first_seen[rec["identifier"]] = lineno
            if "directory" in rec and type(rec["directory"]) not in (int, str):
                raise DataFileError(f"{jsonl_path} record {lineno}: directory {rec['directory']!r}; expected the "
                                    "train image subfolder as a JSON integer or string")
            label = LABELS.get(str(rec["label"]).lower())
            if label is None:
                raise DataFileError(f"{jsonl_path} record {lineno}: label {rec['label']!r}; expected 'True' or 'False'")
            try:
                left, right = image_names(rec["identifier"])
            except ValueError as err:
                raise DataFileError(f"{jsonl_path} record {lineno}: {err}") from None
            folder = self.image_root / str(rec["directory"]) if "directory" in rec else self.image_root
            self._items.append({"identifier": rec["identifier"], "text": rec["sentence"], "label": label,
                                "paths": (folder / left, folder / right)})
        if not self._items:
            raise DataFileError(f"{jsonl_path} holds no records; expected {EXPECTED}")

    def __len__(self) -> int:
        return len(self._items)

    def annotation(self, index: int) -> dict:
        """`identifier`, `image_id` (the pair), `text`, `label`, `paths` (left, right)."""
        item = self._items[self._check_index(index)]
        return {**item, "image_id": item["identifier"].rsplit("-", 1)[0], "paths": list(item["paths"])}

    def _image_paths(self, index: int) -> list[Path]:
        return list(self._items[self._check_index(index)]["paths"])

    def _load(self, index: int) -> dict:
        ann = self.annotation(index)
        images, targets, text = [], [], ann["text"]
        for side, path in enumerate(ann["paths"]):
            image = load_rgb(path)
            target = {"image_id": path.name, "orig_size": (image.height, image.width)}
            image, target, new_text = self._apply_transforms(image, target, text if side == 0 else None)
            if side == 0:
                text = new_text
            images.append(image)
            targets.append(target)
        return {"images": images, "image_id": ann["image_id"], "identifier": ann["identifier"], "text": text,
                "label": ann["label"], "targets": targets}
