"""Image loading, annotation-file loading and their errors, shared by every reader.

Two kinds of bad input, two policies:

* An annotation file that is missing or not in the expected format is a user error that no training run can
  recover from: it fails at construction with `FileNotFoundError` / `DataFileError`, naming the path and what was
  expected.
* An image that cannot be read fails when it is first needed (readers are lazy) with `BadImageError`, naming the
  path. With `on_bad_image="skip"` the reader instead warns, records the image in `bad_images`, counts the
  substitution in `num_skipped`, and returns the next readable item. Nothing is dropped silently.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

BAD_IMAGE_POLICIES = ("raise", "skip")


class DataFileError(ValueError):
    """An annotation file exists but does not have the expected format (the message names path and key)."""


class BadImageError(OSError):
    """An image file could not be read or does not match its annotation."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot use image {self.path}: {reason}")


# ---- annotation files ------------------------------------------------------------------------------------
def read_json(path: str | Path, expected: str) -> Any:
    """Parse a JSON file; `expected` says what the file should be (it goes into every error message)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{expected} not found: {path}")
    try:
        with path.open("rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFileError(f"{path} is not valid JSON ({err}); expected {expected}") from err


def read_jsonl(path: str | Path, expected: str) -> list[dict]:
    """Parse a JSON-lines file (one object per line, blank lines ignored); errors name the line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{expected} not found: {path}")
    records = []
    with path.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise DataFileError(f"{path} line {lineno} is not valid JSON ({err}); expected {expected}") from err
            if not isinstance(record, dict):
                raise DataFileError(f"{path} line {lineno}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    return records


def require_type(value: Any, kind: type | tuple[type, ...], where: str, path: str | Path) -> Any:
    """`value` if it is an instance of `kind`, else a `DataFileError` naming the file and the location."""
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataFileError(f"{path}: {where} should be a JSON {names}, got {type(value).__name__}")
    return value


def require_keys(record: Any, keys: Iterable[str], where: str, path: str | Path) -> dict:
    """`record` if it is a dict holding every key of `keys`, else a `DataFileError` listing the missing ones."""
    require_type(record, dict, where, path)
    keys = list(keys)
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataFileError(f"{path}: {where} lacks key(s) {missing}; expected keys {keys}, found {sorted(record)}")
    return record


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def require_int(value: Any, where: str, path: str | Path, minimum: int | None = None) -> int:
    """`value` if it is a JSON integer (not a bool, within int64) >= `minimum`, else a `DataFileError` naming the
    file, the location and the value: ids and image sizes must not be silently rounded, cast or parsed."""
    if type(value) is not int or not -(2**63) <= value < 2**63 or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise DataFileError(f"{path}: {where} is {_shown(value)}; expected an integer{bound}")
    return value


def require_number(value: Any, where: str, path: str | Path, minimum: float | None = None) -> float:
    """`value` if it is a finite JSON number (not a bool, not NaN / Infinity) >= `minimum`, else a `DataFileError`
    (a NaN or infinite box coordinate would otherwise be clipped or dropped as "degenerate" without a word)."""
    if not is_number(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise DataFileError(f"{path}: {where} is {_shown(value)}; expected a finite number{bound}")
    return value


def is_number(value: Any) -> bool:
    """A finite JSON number (what `require_number` accepts without a bound)."""
    return type(value) is float and math.isfinite(value) or type(value) is int and -(2**63) <= value < 2**63


def require_unique(ids: Iterable[tuple[str, Any]], what: str, path: str | Path) -> None:
    """`ids` are (location, id) pairs; a `DataFileError` naming both locations when an id appears twice (a dict
    keyed by id would otherwise keep the last record and drop the first without a word)."""
    seen: dict[Any, str] = {}
    for where, value in ids:
        if value in seen:
            raise DataFileError(f"{path}: {what} {_shown(value)} appears twice, at {seen[value]} and {where}")
        seen[value] = where


def check_image_root(image_root: str | Path) -> Path:
    root = Path(image_root)
    if not root.is_dir():
        raise FileNotFoundError(f"image_root is not a directory: {root}")
    return root


# ---- images ----------------------------------------------------------------------------------------------
def load_rgb(path: str | Path) -> Image.Image:
    """Open an image and return it fully decoded in RGB (from L, LA, RGBA, P, CMYK, I;16, ...).

    Raises `BadImageError(path, reason)` for a missing, truncated or unidentifiable file.
    """
    try:
        with Image.open(path) as img:
            img.load()
            # A palette image with a transparent colour must go through RGBA, or PIL warns and guesses.
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadImageError(path, f"{type(err).__name__}: {err}") from err


def check_size(image: Image.Image, expected_hw: tuple[int, int], path: str | Path) -> None:
    """Boxes are given in the annotation's pixel frame; an image of another size would silently misplace them."""
    actual_hw = (image.height, image.width)
    if tuple(expected_hw) != actual_hw:
        raise BadImageError(path, f"size (h, w)={actual_hw} differs from the annotation's {tuple(expected_hw)}")


Transforms = Callable[[Image.Image, dict, Any], tuple[Image.Image, dict, Any]]


class ImageReader(Dataset):
    """Base of the readers: the `on_bad_image` policy and the transforms call.

    Subclasses implement `__len__`, `annotation(index)` (everything but pixels; never opens an image) and
    `_load(index)` (the full sample, may raise `BadImageError`).
    """

    def __init__(self, image_root: str | Path, transforms: Transforms | None, on_bad_image: str):
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image={on_bad_image!r}; expected one of {BAD_IMAGE_POLICIES}")
        self.image_root = check_image_root(image_root)
        self.transforms = transforms
        self.on_bad_image = on_bad_image
        self.bad_images: dict[str, str] = {}  # path -> reason, for every image found unreadable so far
        self.num_skipped = 0  # how many times __getitem__ substituted the next item for a bad one

    def __len__(self) -> int:
        raise NotImplementedError

    def annotation(self, index: int) -> dict:
        raise NotImplementedError

    def _load(self, index: int) -> dict:
        raise NotImplementedError

    def _image_paths(self, index: int) -> Sequence[Path]:
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {n}")
        return index % n

    def _apply_transforms(self, image: Image.Image, target: dict, text: Any):
        if self.transforms is None:
            return image, target, text
        return self.transforms(image, target, text)

    def __getitem__(self, index: int) -> dict:
        index = self._check_index(index)
        if self.on_bad_image == "raise":
            return self._load(index)
        # "skip": the next readable item stands in, so a map-style dataset keeps its length and a DataLoader
        # never sees a None. Counts live in the process that read the image (one per DataLoader worker);
        # the warning is what reaches the user from every process.
        n = len(self)
        for offset in range(n):
            j = (index + offset) % n
            if any(str(p) in self.bad_images for p in self._image_paths(j)):
                self.num_skipped += 1
                continue
            try:
                return self._load(j)
            except BadImageError as err:
                self.bad_images[err.path] = err.reason
                self.num_skipped += 1
                warnings.warn(f"skipping item {j} of {type(self).__name__}: {err}", stacklevel=2)
        raise BadImageError(self.image_root, f"every one of the {n} items has an unreadable image")
