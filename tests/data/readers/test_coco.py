"""COCO captions / instances readers on the real val2014 samples and on tiny official-format files."""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vlpkit.data.readers import BadImageError, CocoCaptions, CocoDetection, DataFileError


def write_png(path, width, height, mode="RGB", color=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (width, height), color).save(path, format="PNG")


@pytest.fixture
def instances(realdata):
    return realdata / "coco_detection" / "instances_val2014_100.json"


@pytest.fixture
def detection(instances, tmp_path):
    return CocoDetection(instances, tmp_path)


# ---- real instances_val2014 sample ------------------------------------------------------------------------
def test_real_instances_counts(detection, instances):
    raw = json.loads(instances.read_text())
    assert len(detection) == 100 == len(raw["images"])
    assert len(detection.label_names) == 80 and detection.num_classes == 80
    assert detection.num_crowd == 9 and detection.num_degenerate == 0 and detection.num_orphan_annotations == 0
    total = sum(len(detection.annotation(i)["target"]["labels"]) for i in range(len(detection)))
    assert total == 839 - 9
    assert detection.num_images_without_boxes == sum(
        not any(a["image_id"] == img["id"] and not a["iscrowd"] for a in raw["annotations"]) for img in raw["images"])


def test_real_instances_boxes_match_raw_json(detection, instances):
    """Independent formulation: numpy x, y, x+w, y+h of every non-crowd annotation, keyed by annotation id."""
    raw = json.loads(instances.read_text())
    cats = sorted(c["id"] for c in raw["categories"])
    expected = {a["id"]: (np.array(a["bbox"][:2] + [a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]),
                          cats.index(a["category_id"]), a["image_id"])
                for a in raw["annotations"] if not a["iscrowd"]}
    seen = 0
    for i in range(len(detection)):
        ann = detection.annotation(i)
        t = ann["target"]
        h, w = ann["orig_size"]
        assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.long
        assert (t["boxes"][:, 0::2] <= w).all() and (t["boxes"][:, 1::2] <= h).all() and (t["boxes"] >= 0).all()
        for box, label, ann_id in zip(t["boxes"], t["labels"], ann["annotation_ids"]):
            exp_box, exp_label, image_id = expected[ann_id]
            np.testing.assert_allclose(box.numpy(), exp_box, rtol=0, atol=1e-3)
            assert label == exp_label and image_id == ann["image_id"]
            seen += 1
    assert seen == len(expected)


def test_real_instances_ground_truth_as_results_scores_ap_1(detection, instances):
    """GT boxes written back through the inverse category map must score AP = 1 with pycocotools."""
    results = []
    for i in range(len(detection)):
        t = detection.annotation(i)["target"]
        results += detection.results_to_coco(t["image_id"], t["boxes"], torch.ones(len(t["labels"])), t["labels"])
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(instances))
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0) and ev.stats[1] == pytest.approx(1.0)


def test_category_maps(instances, tmp_path):
    ident = CocoDetection(instances, tmp_path, category_map="identity")
    contig = CocoDetection(instances, tmp_path)
    assert ident.num_classes == 91  # DETR's convention: max COCO id + 1
    for i in (0, 5, 50):
        a, b = ident.annotation(i)["target"]["labels"], contig.annotation(i)["target"]["labels"]
        assert [contig.label_to_category_id[int(x)] for x in b] == a.tolist()
    assert contig.label_names[0] == "person" and contig.label_to_category_id[79] == 90
    with pytest.raises(ValueError, match=r"category_map lacks the category ids \[2, 3"):
        CocoDetection(instances, tmp_path, category_map={1: 0})
    with pytest.raises(ValueError, match="same label"):
        CocoDetection(instances, tmp_path, category_map={c: 0 for c in ident.label_to_category_id})


def test_real_instances_getitem_with_generated_images(instances, tmp_path):
    ds = CocoDetection(instances, tmp_path)
    for i in range(3):
        img = ds.coco.imgs[ds.annotation(i)["image_id"]]
        write_png(tmp_path / img["file_name"], img["width"], img["height"], mode="L", color=7)
    sample = ds[2]
    assert sample["image"].mode == "RGB"
    h, w = sample["target"]["orig_size"]
    assert sample["image"].size == (w, h)
    assert torch.equal(sample["target"]["boxes"], ds.annotation(2)["target"]["boxes"])


# ---- tiny official-format file: clipping, crowd, degenerate, transforms, errors ---------------------------------
def tiny_instances(tmp_path, **overrides):
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": 20, "width": 30},
                   {"id": 3, "file_name": "b.jpg", "height": 10, "width": 10}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "bbox": [25, -5, 10, 10], "iscrowd": 0},  # clipped
            {"id": 2, "image_id": 7, "category_id": 9, "bbox": [1, 2, 3, 4], "iscrowd": 1},  # crowd
            {"id": 3, "image_id": 7, "category_id": 9, "bbox": [4, 4, 0, 5], "iscrowd": 0},  # zero width
            {"id": 4, "image_id": 7, "category_id": 9, "bbox": [40, 4, 5, 5], "iscrowd": 0},  # outside: empty
            {"id": 5, "image_id": 3, "category_id": 9, "bbox": [0, 0, 10, 10]},  # no iscrowd key
            {"id": 6, "image_id": 7, "category_id": 5, "bbox": [0.5, 1.5, 2, 3], "iscrowd": 0},
        ],
        "categories": [{"id": 9, "name": "cat"}, {"id": 5, "name": "dog"}],
    }
    data.update(overrides)
    path = tmp_path / "instances_tiny.json"
    path.write_text(json.dumps(data))
    return path


def test_tiny_instances_clip_crowd_degenerate(tmp_path):
    ds = CocoDetection(tiny_instances(tmp_path), tmp_path)
    assert len(ds) == 2 and [ds.annotation(i)["image_id"] for i in range(2)] == [3, 7]
    assert ds.num_crowd == 1 and ds.num_degenerate == 2 and ds.num_images_without_boxes == 0
    assert ds.label_names == {0: "dog", 1: "cat"}
    t = ds.annotation(1)["target"]
    assert t["boxes"].tolist() == [[25.0, 0.0, 30.0, 5.0], [0.5, 1.5, 2.5, 4.5]]
    assert t["labels"].tolist() == [0, 0] and t["attributes"] == [[], []] and t["orig_size"] == (20, 30)
    assert ds.annotation(-2)["target"]["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0]]
    with pytest.raises(IndexError, match="index 2 out of range"):
        ds.annotation(2)


def test_tiny_instances_getitem_and_transforms(tmp_path):
    write_png(tmp_path / "a.jpg", 30, 20, mode="RGBA", color=(1, 2, 3, 4))
    write_png(tmp_path / "b.jpg", 10, 10)
    calls = []

    def transforms(image, target, text):
        calls.append((image.size, target["image_id"], text))
        return image.resize((15, 10)), {**target, "seen": True}, text

    ds = CocoDetection(tiny_instances(tmp_path), tmp_path, transforms=transforms)
    sample = ds[1]
    assert calls == [((30, 20), 7, None)]
    assert sample["image"].size == (15, 10) and sample["target"]["seen"] and sample["image_id"] == 7
    assert sample["image"].getpixel((0, 0)) == (1, 2, 3)


def test_image_size_mismatch_is_a_bad_image(tmp_path):
    write_png(tmp_path / "b.jpg", 11, 10)
    ds = CocoDetection(tiny_instances(tmp_path), tmp_path)
    with pytest.raises(BadImageError, match=r"b\.jpg.*\(10, 11\) differs from the annotation's \(10, 10\)"):
        ds[0]


def test_unreadable_image_raise_and_skip(tmp_path):
    (tmp_path / "b.jpg").write_bytes(b"garbage")
    write_png(tmp_path / "a.jpg", 30, 20)
    with pytest.raises(BadImageError, match=r"b\.jpg"):
        CocoDetection(tiny_instances(tmp_path), tmp_path)[0]
    ds = CocoDetection(tiny_instances(tmp_path), tmp_path, on_bad_image="skip")
    with pytest.warns(UserWarning, match=r"skipping item 0 .*b\.jpg"):
        sample = ds[0]
    assert sample["image_id"] == 7  # the next readable item stands in
    assert list(ds.bad_images) == [str(tmp_path / "b.jpg")] and ds.num_skipped == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known-bad image is not re-opened, and not re-warned
        assert ds[0]["image_id"] == 7
    assert ds.num_skipped == 2


def test_every_image_bad_in_skip_mode(tmp_path):
    ds = CocoDetection(tiny_instances(tmp_path), tmp_path, on_bad_image="skip")
    with pytest.warns(UserWarning), pytest.raises(BadImageError, match="every one of the 2 items"):
        ds[0]
    with pytest.raises(ValueError, match="on_bad_image='ignore'"):
        CocoDetection(tiny_instances(tmp_path), tmp_path, on_bad_image="ignore")


def test_instances_format_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"COCO instances file .* not found: .*nope\.json"):
        CocoDetection(tmp_path / "nope.json", tmp_path)
    with pytest.raises(DataFileError, match=r"lacks key\(s\) \['categories'\]"):
        CocoDetection(_without(tmp_path, "categories"), tmp_path)
    bad = tiny_instances(tmp_path, annotations=[{"id": 1, "image_id": 7, "category_id": 5}])
    with pytest.raises(DataFileError, match=r"annotations\[0\] lacks key\(s\) \['bbox'\]"):
        CocoDetection(bad, tmp_path)
    bad = tiny_instances(tmp_path, annotations=[{"id": 1, "image_id": 7, "category_id": 5, "bbox": [1, 2]}])
    with pytest.raises(DataFileError, match=r"annotation id 1 has bbox \[1, 2\]"):
        CocoDetection(bad, tmp_path)
    bad = tiny_instances(tmp_path, annotations=[{"id": 1, "image_id": 7, "category_id": 4, "bbox": [1, 2, 3, 4]}])
    with pytest.raises(DataFileError, match="category_id 4, absent from 'categories'"):
        CocoDetection(bad, tmp_path)
    with pytest.raises(FileNotFoundError, match="image_root is not a directory"):
        CocoDetection(tiny_instances(tmp_path), tmp_path / "images")


def _without(tmp_path, key):
    path = tiny_instances(tmp_path)
    data = json.loads(path.read_text())
    del data[key]
    path.write_text(json.dumps(data))
    return path


# ---- captions ------------------------------------------------------------------------------------------------
def test_real_captions_sample(realdata, tmp_path):
    path = realdata / "coco_caption" / "captions_val2014_minyus_first100.json"
    # The sample took the first 100 images and the first 100 captions independently: only image 331352 has both.
    with pytest.warns(UserWarning, match="96 annotation"):
        per_caption = CocoCaptions(path, tmp_path)
    assert len(per_caption) == 4 and per_caption.num_orphan_annotations == 96
    assert per_caption.num_images_without_captions == 99
    first = per_caption.annotation(0)
    assert first["image_id"] == 331352 and first["orig_size"] == (500, 351)
    assert first["text"] == "A small closed toilet in a cramped space." and first["caption_id"] == 441
    assert first["path"] == tmp_path / "COCO_val2014_000000331352.jpg"
    with pytest.warns(UserWarning):
        per_image = CocoCaptions(path, tmp_path, per="image")
    assert len(per_image) == 1 and len(per_image.annotation(0)["captions"]) == 4
    assert per_image.annotation(0)["captions"] == [per_caption.annotation(i)["text"] for i in range(4)]


def tiny_captions(tmp_path):
    data = {"images": [{"id": 2, "file_name": "x/two.jpg", "height": 4, "width": 6},
                       {"id": 1, "file_name": "one.jpg", "height": 5, "width": 5},
                       {"id": 9, "file_name": "nine.jpg", "height": 5, "width": 5}],
            "annotations": [{"id": 10, "image_id": 2, "caption": " A dog. "},
                            {"id": 11, "image_id": 1, "caption": "A cat."},
                            {"id": 12, "image_id": 2, "caption": "Two dogs."}]}
    path = tmp_path / "captions_tiny.json"
    path.write_text(json.dumps(data))
    return path


def test_tiny_captions_items_and_getitem(tmp_path):
    write_png(tmp_path / "x" / "two.jpg", 6, 4, mode="P")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no orphans: no warning
        ds = CocoCaptions(tiny_captions(tmp_path), tmp_path)
    assert [ds.annotation(i)["text"] for i in range(len(ds))] == ["A cat.", "A dog.", "Two dogs."]
    assert ds.num_images_without_captions == 1 and ds.num_orphan_annotations == 0
    sample = ds[1]
    assert sample["text"] == "A dog." and sample["caption_id"] == 10 and sample["image"].mode == "RGB"
    assert sample["target"] == {"image_id": 2, "orig_size": (4, 6)}
    by_image = CocoCaptions(tiny_captions(tmp_path), tmp_path, per="image",
                            transforms=lambda im, t, text: (im, t, [s.upper() for s in text]))
    assert len(by_image) == 2 and by_image[1]["captions"] == ["A DOG.", "TWO DOGS."]


def test_captions_format_errors(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"images": [], "annotations": [{"id": 1, "image_id": 1}]}))
    with pytest.raises(DataFileError, match=r"c\.json: annotations\[0\] lacks key\(s\) \['caption'\]"):
        CocoCaptions(path, tmp_path)
    path.write_text(json.dumps([{"image_id": 1}]))
    with pytest.raises(DataFileError, match="the top level should be a JSON dict, got list"):
        CocoCaptions(path, tmp_path)
    with pytest.raises(ValueError, match="per='word'"):
        CocoCaptions(tiny_captions(tmp_path), tmp_path, per="word")
