"""COCO box AP: the published cocoapi fake-results numbers, empty results, and the model-output conversion."""

from __future__ import annotations

import json

import pytest
import torch

from vlpkit.metrics.detection import STAT_NAMES, evaluate_detections, load_coco_gt, to_coco_results

GT = "coco_detection/instances_val2014_100.json"
RESULTS = "coco_detection/instances_val2014_fakebbox100_results.json"


@pytest.fixture
def gt(realdata):
    return load_coco_gt(realdata / GT)


def test_published_fake_bbox_scores(realdata, gt):
    expected = json.loads((realdata / "coco_detection/expected_scores.json").read_text())
    full = expected["published_full_precision_faster_coco_eval_tests_test_cocoapi_fake_data_py"]["bbox"]
    results = json.loads((realdata / RESULTS).read_text())
    before = json.dumps(results)
    stats = evaluate_detections(gt, results, img_ids=sorted(gt.getImgIds())[:100])
    assert json.dumps(results) == before  # the caller's list is not modified by loadRes
    assert list(stats) == list(STAT_NAMES)
    assert stats["AP"] == 0.5045806987249628
    assert [stats[k] for k in STAT_NAMES] == pytest.approx(full, rel=1e-12)
    published = expected["published_3dp_cocoapi_val2014_fake_eval_res_txt_and_pycocoEvalDemo_ipynb"]["bbox"]
    assert [round(stats[k], 3) for k in STAT_NAMES] == published
    # Paths work too, and img_ids=None means all GT images (the same 100 here).
    assert evaluate_detections(realdata / GT, realdata / RESULTS) == stats


def test_empty_results_score_like_missed_detections(gt):
    """Empty list (pycocotools' loadRes crashes on it) == detections that miss everything: COCOeval's zeros."""
    empty = evaluate_detections(gt, [])
    img = gt.dataset["images"][0]
    far_off = [
        {"image_id": img["id"], "category_id": gt.getCatIds()[0], "bbox": [0.0, 0.0, 0.5, 0.5], "score": 0.1}
    ]
    assert empty == evaluate_detections(gt, far_off)
    assert set(empty.values()) == {0.0}


def _gt_as_model_outputs(gt):
    """The GT boxes of every image as normalised cxcywh model outputs, labels = index into the category list."""
    cat_ids = sorted(gt.getCatIds())
    image_ids, boxes, scores, labels, sizes = [], [], [], [], []
    for img in gt.dataset["images"]:
        anns = gt.loadAnns(gt.getAnnIds(imgIds=img["id"]))
        w, h = img["width"], img["height"]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        cxcywh = torch.stack([(xywh[:, 0] + xywh[:, 2] / 2) / w, (xywh[:, 1] + xywh[:, 3] / 2) / h,
                              xywh[:, 2] / w, xywh[:, 3] / h], dim=-1)  # fmt: skip
        image_ids.append(img["id"])
        boxes.append(cxcywh.float())
        scores.append(torch.linspace(1.0, 0.5, len(anns)))
        labels.append(torch.tensor([cat_ids.index(a["category_id"]) for a in anns], dtype=torch.long))
        sizes.append((h, w))
    return image_ids, boxes, scores, labels, sizes, cat_ids


def test_conversion_of_gt_boxes_scores_perfect_ap(gt):
    image_ids, boxes, scores, labels, sizes, cat_ids = _gt_as_model_outputs(gt)
    results = to_coco_results(boxes, scores, labels, image_ids, sizes, cat_ids)
    assert len(results) == len(gt.getAnnIds())
    first = gt.loadAnns(gt.getAnnIds(imgIds=image_ids[0]))[0]
    assert results[0]["category_id"] == first["category_id"]
    assert results[0]["bbox"] == pytest.approx(first["bbox"], abs=1e-3)  # float32 round trip of pixel boxes
    stats = evaluate_detections(gt, results)
    for name in ("AP", "AP50", "AP75", "AR100"):
        assert stats[name] == pytest.approx(1.0), name
    # A dict label map gives the same results.
    assert to_coco_results(boxes, scores, labels, image_ids, sizes, dict(enumerate(cat_ids))) == results


def test_conversion_batched_tensor_matches_list():
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    out = to_coco_results(
        boxes, torch.tensor([[0.9, 0.3]]), torch.tensor([[1, 0]]), [7], torch.tensor([[100, 200]]), [5, 9]
    )
    assert out[0] == {
        "image_id": 7,
        "category_id": 9,
        "bbox": pytest.approx([80.0, 30.0, 40.0, 40.0]),
        "score": pytest.approx(0.9),
    }
    assert out[1]["bbox"] == pytest.approx([0.0, 50.0, 100.0, 50.0]) and out[1]["category_id"] == 5
    assert (
        to_coco_results(
            list(boxes), list(torch.tensor([[0.9, 0.3]])), [torch.tensor([1, 0])], [7], [(100, 200)], [5, 9]
        )
        == out
    )


def test_bad_inputs(gt, realdata, tmp_path):
    img_id, cat_id = gt.dataset["images"][0]["id"], gt.getCatIds()[0]
    ok = {"image_id": img_id, "category_id": cat_id, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}
    with pytest.raises(ValueError, match="image 999999999, which is not among the evaluated GT images"):
        evaluate_detections(gt, [{**ok, "image_id": 999999999}])
    with pytest.raises(ValueError, match="category_id 1000, not a GT category"):
        evaluate_detections(gt, [{**ok, "category_id": 1000}])
    with pytest.raises(KeyError, match=r"lacks \['score'\]"):
        evaluate_detections(gt, [{k: v for k, v in ok.items() if k != "score"}])
    with pytest.raises(ValueError, match="negative width"):
        evaluate_detections(gt, [{**ok, "bbox": [1.0, 2.0, -3.0, 4.0]}])
    with pytest.raises(ValueError, match="4 finite numbers"):
        evaluate_detections(gt, [{**ok, "bbox": [1.0, 2.0, 3.0]}])
    with pytest.raises(ValueError, match="not among the evaluated"):
        evaluate_detections(gt, [ok], img_ids=[gt.dataset["images"][1]["id"]])
    with pytest.raises(ValueError, match="img_ids holds 1 id"):
        evaluate_detections(gt, [ok], img_ids=[-1])
    with pytest.raises(FileNotFoundError, match="nope.json"):
        evaluate_detections(tmp_path / "nope.json", [ok])
    box = [torch.tensor([[0.5, 0.5, 0.1, 0.1]])]
    with pytest.raises(ValueError, match="label 3 has no entry"):
        to_coco_results(box, [torch.tensor([0.5])], [torch.tensor([3])], [1], [(10, 10)], [5, 9])
    with pytest.raises(ValueError, match="label -1 has no entry"):
        to_coco_results(box, [torch.tensor([0.5])], [torch.tensor([-1])], [1], [(10, 10)], [5, 9])
    with pytest.raises(ValueError, match=r"must be \[N\] with N = 1"):
        to_coco_results(box, [torch.tensor([0.5, 0.1])], [torch.tensor([0])], [1], [(10, 10)], [5])
    with pytest.raises(ValueError, match="boxes covers 1 images but image_ids has 2"):
        to_coco_results(box, [torch.tensor([0.5])], [torch.tensor([0])], [1, 2], [(10, 10)], [5])
    with pytest.raises(ValueError, match=r"orig_sizes must be \[B, 2\]"):
        to_coco_results(box, [torch.tensor([0.5])], [torch.tensor([0])], [1], [(10, 10, 3)], [5])
