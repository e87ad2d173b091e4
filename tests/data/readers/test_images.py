"""Image loading (mode conversion, errors naming the path) and annotation-file errors shared by the readers."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vlpkit.data.readers.images import (
    BadImageError,
    DataFileError,
    load_rgb,
    read_json,
    read_jsonl,
    require_keys,
)


@pytest.mark.parametrize(
    "mode, color, expected",
    [
        ("L", 100, (100, 100, 100)),
        ("RGBA", (10, 20, 30, 0), (10, 20, 30)),  # alpha dropped, colour kept
        ("LA", (7, 255), (7, 7, 7)),
        ("RGB", (1, 2, 3), (1, 2, 3)),
        ("I;16", 200, (200, 200, 200)),
    ],
)
def test_load_rgb_converts_modes(tmp_path, mode, color, expected):
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    Image.new(mode, (5, 3), color).save(path)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (5, 3)
    assert img.getpixel((4, 2)) == expected


def test_load_rgb_palette_with_transparency_has_no_warning(tmp_path, recwarn):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 200, 100, 50] + [0] * (256 * 3 - 6))
    img.info["transparency"] = 0
    img.save(tmp_path / "p.png", transparency=0)
    out = load_rgb(tmp_path / "p.png")
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (200, 100, 50)
    assert not [w for w in recwarn.list if "Palette" in str(w.message)]


def test_load_rgb_reads_by_content_not_extension(tmp_path):
    # NLVR2 ships JPEGs named *.png; COCO tests here write PNGs named *.jpg.
    Image.new("RGB", (6, 2), (9, 9, 9)).save(tmp_path / "x.png", format="JPEG")
    assert load_rgb(tmp_path / "x.png").size == (6, 2)


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_load_rgb_bad_files_name_the_path(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        Image.new("RGB", (64, 64), (1, 2, 3)).save(path, format="JPEG")
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    with pytest.raises(BadImageError, match="bad.jpg") as info:
        load_rgb(path)
    assert info.value.path == str(path)


def test_load_rgb_missing_file(tmp_path):
    with pytest.raises(BadImageError, match="nope.png.*FileNotFoundError"):
        load_rgb(tmp_path / "nope.png")


def test_read_json_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VQA questions file not found: .*missing\.json"):
        read_json(tmp_path / "missing.json", "VQA questions file")
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(DataFileError, match=r"broken\.json is not valid JSON .*expected COCO"):
        read_json(tmp_path / "broken.json", "COCO instances file")


def test_read_jsonl_names_the_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n\n" + "{oops\n")
    with pytest.raises(DataFileError, match=r"x\.jsonl line 3 is not valid JSON"):
        read_jsonl(path, "NLVR2 file")
    path.write_text("[1, 2]\n")
    with pytest.raises(DataFileError, match="line 1: expected a JSON object, got list"):
        read_jsonl(path, "NLVR2 file")


def test_require_keys_lists_missing_and_expected():
    with pytest.raises(DataFileError, match=r"f\.json: images\[3\] lacks key\(s\) \['width'\]; expected keys"):
        require_keys({"id": 1, "height": 2}, ("id", "height", "width"), "images[3]", "f.json")
    with pytest.raises(DataFileError, match="should be a JSON dict, got list"):
        require_keys([], ("id",), "the top level", "f.json")
