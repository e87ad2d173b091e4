"""Karpathy caption splits: the real flickr8k sample (Flickr schema) and a tiny COCO-schema file."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vlpkit.data.readers import BadImageError, DataFileError, KarpathyDataset


@pytest.fixture
def flickr(realdata):
    return realdata / "karpathy" / "dataset_flickr8k_50img.json"


@pytest.mark.parametrize("split, n", [("train", 20), ("val", 15), ("test", 15)])
def test_real_flickr_splits(flickr, tmp_path, split, n):
    raw = [img for img in json.loads(flickr.read_text())["images"] if img["split"] == split]
    per_image = KarpathyDataset(flickr, tmp_path, split=split)
    per_caption = KarpathyDataset(flickr, tmp_path, split=split, per="caption")
    assert len(per_image) == n and len(per_caption) == 5 * n
    assert per_image.split_counts == {"train": 20, "val": 15, "test": 15} and per_image.dataset_name == "flickr8k"
    for i, img in enumerate(raw):
        ann = per_image.annotation(i)
        assert ann["image_id"] == img["imgid"] and ann["path"] == tmp_path / img["filename"]
        assert ann["captions"] == [s["raw"].strip() for s in img["sentences"]] and len(ann["captions"]) == 5
    texts = [per_caption.annotation(i)["text"] for i in range(len(per_caption))]
    assert texts == [c for i in range(n) for c in per_image.annotation(i)["captions"]]
    assert per_caption.annotation(0)["sentid"] == raw[0]["sentences"][0]["sentid"]


def test_real_flickr_several_splits_and_missing_split(flickr, tmp_path):
    assert len(KarpathyDataset(flickr, tmp_path, split=("train", "val"))) == 35
    with pytest.raises(DataFileError, match=r"no image in split\(s\) \['restval'\]; its splits are"):
        KarpathyDataset(flickr, tmp_path, split="restval")
    with pytest.raises(ValueError, match=r"split \['dev'\]"):
        KarpathyDataset(flickr, tmp_path, split="dev")


def tiny_coco(tmp_path, images=None):
    sent = lambda i, raw: {"raw": raw, "tokens": raw.lower().split(), "imgid": i, "sentid": 10 * i}  # noqa: E731
    data = {"dataset": "coco", "images": images or [
        {"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg", "imgid": 0, "cocoid": 42,
         "split": "restval", "sentences": [sent(0, "A dog ."), sent(0, "Two dogs")]},
        {"filepath": "train2014", "filename": "COCO_train2014_000000000007.jpg", "imgid": 1, "cocoid": 7,
         "split": "train", "sentences": [sent(1, " A cat . ")]},
        {"filepath": "val2014", "filename": "COCO_val2014_000000000005.jpg", "imgid": 2, "cocoid": 5,
         "split": "test", "sentences": []}]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    return path


def test_tiny_coco_schema(tmp_path):
    path = tiny_coco(tmp_path)
    ds = KarpathyDataset(path, tmp_path, split=["train", "restval"])
    assert len(ds) == 2
    assert ds.annotation(0)["path"] == tmp_path / "val2014" / "COCO_val2014_000000000042.jpg"
    assert [ds.annotation(i)["image_id"] for i in range(2)] == [42, 7]  # cocoid, for COCO caption evaluation
    assert ds.annotation(1)["captions"] == ["A cat ."]
    empty = KarpathyDataset(path, tmp_path, split="test")  # an image without sentences is counted, not an item
    assert empty.num_images_without_captions == 1 and len(empty) == 0


def test_tiny_getitem_transforms_and_bad_image(tmp_path):
    path = tiny_coco(tmp_path)
    (tmp_path / "train2014").mkdir()
    Image.new("P", (7, 3)).save(tmp_path / "train2014" / "COCO_train2014_000000000007.jpg", format="PNG")
    ds = KarpathyDataset(path, tmp_path, split=("restval", "train"), per="caption",
                         transforms=lambda im, t, text: (im, {**t, "n": 1}, text + "!"))
    sample = ds[2]
    assert sample["text"] == "A cat .!" and sample["sentid"] == 10 and sample["image"].mode == "RGB"
    assert sample["target"] == {"image_id": 7, "orig_size": (3, 7), "n": 1}
    with pytest.raises(BadImageError, match=r"val2014/COCO_val2014_000000000042\.jpg"):
        ds[0]
    skip = KarpathyDataset(path, tmp_path, split=("restval", "train"), on_bad_image="skip")
    with pytest.warns(UserWarning, match="skipping item 0"):
        assert skip[0]["captions"] == ["A cat ."]


def test_format_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Karpathy split file .* not found: .*dataset_flickr30k\.json"):
        KarpathyDataset(tmp_path / "dataset_flickr30k.json", tmp_path)
    path = tiny_coco(tmp_path, images=[{"filename": "a.jpg", "split": "train", "sentences": [{"tokens": []}]}])
    with pytest.raises(DataFileError, match=r"images\[0\]\['sentences'\]\[0\] lacks key\(s\) \['raw'\]"):
        KarpathyDataset(path, tmp_path)
    path = tiny_coco(tmp_path, images=[{"filename": "a.jpg", "sentences": []}])
    with pytest.raises(DataFileError, match=r"images\[0\] lacks key\(s\) \['split'\]"):
        KarpathyDataset(path, tmp_path)
    path = tiny_coco(tmp_path, images=[{"filename": "a.jpg", "split": "trainval", "sentences": []}])
    with pytest.raises(DataFileError, match="split 'trainval'; expected one of"):
        KarpathyDataset(path, tmp_path)
    with pytest.raises(ValueError, match="per='sentence'"):
        KarpathyDataset(tiny_coco(tmp_path), tmp_path, per="sentence")
