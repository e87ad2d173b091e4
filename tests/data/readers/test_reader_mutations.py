"""Property: every reader, fed a randomly broken copy of a REAL official annotation sample, either builds a dataset
whose every record is exactly the (mutated) input record, or fails with a `DataFileError` that names the file.

The samples come from ../shared/realdata (see its README), cut to a handful of records so that one example runs in
milliseconds. Mutations: missing keys (top level and inside records), wrong types (str for int, list for dict,
None, bool, nested wrong types), duplicated records and ids, NaN / inf in boxes and sizes, negative and zero sizes,
empty lists and strings.

Each reader has an independent specification here (`spec_*`): it decides whether the mutated data is acceptable
and, if so, what every item must hold. A reader that accepts what the spec rejects has silently taken a bad value;
one that rejects what the spec accepts is over-strict; any exception other than `DataFileError` (a KeyError from
inside pycocotools, a TypeError from torch, an IndexError ...) is a crash. Either way the example fails.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from vlpkit.data.readers import (
    CocoCaptions,
    CocoDetection,
    DataFileError,
    KarpathyDataset,
    NLVR2Dataset,
    VisualGenome,
    VQADataset,
    build_answer_vocab,
    build_vg_vocabs,
)
from vlpkit.data.vocab import Vocab
from vlpkit.metrics.vqa import clean_whitespace, normalize_answer

REALDATA = Path(__file__).resolve().parents[3].parent / "shared" / "realdata"
pytestmark = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"real-data samples not found at {REALDATA}")

SETTINGS = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NAN, INF = float("nan"), float("inf")
# Values a mutated field can take: wrong types, nested wrong types, non-finite, negative, zero, huge, empty.
BAD_VALUES = [None, True, False, 0, -1, -7.5, 1.5, 2**63, NAN, INF, -INF, 1e300, "", "7", "abc", [], [1], [None],
              {}, {"x": None}, [[1, 2]], {"id": "1"}]
OPS = ["delete", "replace", "duplicate", "empty", "negate", "nest", "borrow"]


# ---- the mutation engine ---------------------------------------------------------------------------------
def node_paths(obj, skip: frozenset, prefix=()) -> list[tuple]:
    """Every path (tuple of keys / indices) below `obj`; the subtrees of keys in `skip` are not entered."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        out.append(prefix + (key,))
        if key not in skip:
            out += node_paths(value, skip, prefix + (key,))
    return out


def _at(obj, path):
    for key in path:
        obj = obj[key]
    return obj


def mutate(data, path: tuple, op: str, value, pick: int):
    """Apply one mutation in place to `data` at `path` (falling back to a replacement where `op` does not apply)."""
    parent, key = _at(data, path[:-1]), path[-1]
    node = parent[key]
    if op == "delete":
        del parent[key]
    elif op == "duplicate" and isinstance(parent, list):
        parent.insert(key + 1 + pick % (len(parent) - key), copy.deepcopy(node))
    elif op == "empty" and isinstance(node, (list, dict, str)):
        parent[key] = type(node)()
    elif op == "negate" and type(node) in (int, float):
        parent[key] = [0, -node, -abs(node) - 1, NAN, INF][pick % 5]
    elif op == "nest" and not isinstance(node, dict):
        parent[key] = str(node) if type(node) in (int, float) else {"value": node} if pick % 2 else [node]
    elif op == "nest":
        parent[key] = [node]
    elif op == "borrow" and len(path) >= 3 and isinstance(_at(data, path[:-2]), list):
        # the same key of a sibling record: duplicate ids, swapped image ids, another record's box ...
        siblings = [s for s in _at(data, path[:-2]) if isinstance(s, dict) and key in s] or [{key: value}]
        parent[key] = copy.deepcopy(siblings[pick % len(siblings)][key])
    else:
        parent[key] = copy.deepcopy(value)


@st.composite
def mutated(draw, base, skip=frozenset()):
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = node_paths(data, skip)
        if not paths:
            break
        mutate(data, draw(st.sampled_from(paths)), draw(st.sampled_from(OPS)), draw(st.sampled_from(BAD_VALUES)),
               draw(st.integers(0, 1000)))
    return data


# ---- the specification's building blocks -------------------------------------------------------------------
class Invalid(Exception):
    """The spec rejects the data: the reader must raise DataFileError."""


def need(cond: bool, why: str) -> None:
    if not cond:
        raise Invalid(why)


def is_int(v) -> bool:
    return type(v) is int and -(2**63) <= v < 2**63


def is_size(v) -> bool:  # an image width / height
    return is_int(v) and v > 0


def is_num(v) -> bool:
    return is_int(v) or type(v) is float and math.isfinite(v)


def record(rec, keys, where) -> dict:
    need(isinstance(rec, dict) and all(k in rec for k in keys), f"{where} lacks one of {keys}")
    return rec


def unique(ids: list, where: str) -> None:
    need(len(set(ids)) == len(ids), f"duplicate {where}")


def clip(x, y, w, h, width, height, drop=True):
    """COCO/VG [x, y, w, h] -> xyxy clipped to the image (python floats); None when empty and `drop`."""
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    return [x1, y1, x2, y2] if (x2 > x1 and y2 > y1) or not drop else None


def box_fields_ok(x, y, w, h) -> bool:
    return all(is_num(v) for v in (x, y, w, h)) and w >= 0 and h >= 0


def assert_boxes(actual: torch.Tensor, expected: list) -> None:
    assert actual.dtype == torch.float32 and tuple(actual.shape) == (len(expected), 4)
    if expected:
        torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-3)


def write_json(folder: Path, name: str, data) -> Path:
    path = folder / name
    path.write_text(json.dumps(data))
    return path


def note_outcome(what: str) -> None:
    if currently_in_test_context():  # (--hypothesis-show-statistics prints how often each happened)
        event(what)


def check(build, spec, paths):
    """Run `build()` and `spec()`; they must agree. Returns (dataset, expected) when both accept."""
    try:
        expected = spec()
    except Invalid as why:
        expected, reason = None, str(why)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = build()
    except DataFileError as err:
        note_outcome("rejected with DataFileError")
        assert expected is None, f"reader rejected data the spec accepts: {err}"
        assert any(str(p) in str(err) for p in paths), f"the error does not name the file: {err}"
        return None, None
    assert expected is not None, f"reader silently accepted bad data ({reason})"
    note_outcome("accepted")
    return ds, expected


# ---- COCO --------------------------------------------------------------------------------------------------
def _coco_samples() -> tuple[dict, dict]:
    inst = json.loads((REALDATA / "coco_detection" / "instances_val2014_100.json").read_text())
    crowd_image = next(a["image_id"] for a in inst["annotations"] if a["iscrowd"])
    image_ids = [crowd_image] + [i["id"] for i in inst["images"] if i["id"] != crowd_image][:2]
    images = [i for i in inst["images"] if i["id"] in image_ids]
    anns = []
    for image_id in image_ids:
        own = [a for a in inst["annotations"] if a["image_id"] == image_id]
        anns += [a for a in own if a["iscrowd"]][:1] + [a for a in own if not a["iscrowd"]][:2]
    anns = [{k: v for k, v in a.items() if k != "segmentation"} for a in anns]  # unused by the reader, and long
    used = {a["category_id"] for a in anns}
    cats = [c for c in inst["categories"] if c["id"] in used] + [c for c in inst["categories"] if c["id"] not in used][:1]
    detection = {"info": inst["info"], "images": images, "annotations": anns, "categories": cats}

    caps = json.loads((REALDATA / "coco_caption" / "captions_val2014_minyus_first100.json").read_text())
    # Of this sample's 100 images only one has captions among its 100 annotations: keep it, two images without
    # captions, and two captions of images absent from the file (orphans, counted).
    ids = {i["id"] for i in caps["images"]}
    with_captions = [i for i in caps["images"] if any(a["image_id"] == i["id"] for a in caps["annotations"])]
    without = [i for i in caps["images"] if i not in with_captions][:2]
    cap_anns = [a for a in caps["annotations"] if a["image_id"] == with_captions[0]["id"]]
    cap_anns += [a for a in caps["annotations"] if a["image_id"] not in ids][:2]
    captions = {"info": caps["info"], "images": with_captions[:1] + without, "annotations": cap_anns}
    return detection, captions


COCO_SKIP = frozenset({"info", "licenses", "segmentation", "area", "coco_url", "flickr_url", "date_captured",
                       "license", "supercategory"})
COCO_IMAGE_KEYS = ("id", "file_name", "height", "width")


def _spec_coco_common(data, ann_keys):
    need(isinstance(data, dict), "top level")
    for key in ("images", "annotations"):
        need(key in data and isinstance(data[key], list), key)
    images = {}
    for i, img in enumerate(data["images"]):
        record(img, COCO_IMAGE_KEYS, f"images[{i}]")
        need(is_int(img["id"]) and isinstance(img["file_name"], str), f"images[{i}] id / file_name")
        need(is_size(img["height"]) and is_size(img["width"]), f"images[{i}] size")
        need(img["id"] not in images, f"image id {img['id']} twice")
        images[img["id"]] = img
    for i, a in enumerate(data["annotations"]):
        record(a, ann_keys, f"annotations[{i}]")
        need(is_int(a["id"]) and is_int(a["image_id"]), f"annotations[{i}] id / image_id")
    unique([a["id"] for a in data["annotations"]], "annotation id")
    return images


def spec_detection(data):
    need(isinstance(data, dict) and isinstance(data.get("categories"), list), "categories")
    images = _spec_coco_common(data, ("id", "image_id", "category_id", "bbox"))
    cats = {}
    for i, c in enumerate(data["categories"]):
        record(c, ("id", "name"), f"categories[{i}]")
        need(is_int(c["id"]) and isinstance(c["name"], str), f"categories[{i}] id / name")
        need(c["id"] not in cats, "category id twice")
        cats[c["id"]] = c["name"]
    for a in data["annotations"]:
        need(is_int(a["category_id"]) and a["category_id"] in cats, "category_id")
        need(isinstance(a["bbox"], list) and len(a["bbox"]) == 4 and box_fields_ok(*a["bbox"]), "bbox")
        need(a.get("iscrowd", 0) in (0, 1) and type(a.get("iscrowd", 0)) is int, "iscrowd")
    label = {c: i for i, c in enumerate(sorted(cats))}
    located = [a for a in data["annotations"] if a["image_id"] in images]
    per_image = {i: [] for i in images}
    degenerate = 0
    for a in located:
        if a.get("iscrowd", 0):
            continue
        img = images[a["image_id"]]
        box = clip(*a["bbox"], img["width"], img["height"])
        if box is None:
            degenerate += 1
        else:
            per_image[a["image_id"]].append((a["id"], label[a["category_id"]], box))
    return {"images": [(images[i], per_image[i]) for i in sorted(images)], "degenerate": degenerate,
            "crowd": sum(a.get("iscrowd", 0) for a in located), "orphans": len(data["annotations"]) - len(located),
            "label_names": {label[c]: name for c, name in cats.items()}}


def spec_captions(data):
    images = _spec_coco_common(data, ("id", "image_id", "caption"))
    for a in data["annotations"]:
        need(isinstance(a["caption"], str), "caption")
    located = [a for a in data["annotations"] if a["image_id"] in images]
    with_captions = [i for i in sorted(images) if any(a["image_id"] == i for a in located)]
    return {"images": images, "with_captions": with_captions, "orphans": len(data["annotations"]) - len(located),
            "items": [a for i in with_captions for a in located if a["image_id"] == i]}


DETECTION, CAPTIONS = _coco_samples() if REALDATA.is_dir() else ({}, {})


@SETTINGS
@given(mutated(DETECTION, COCO_SKIP))
def test_coco_detection_mutations(data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = write_json(root, "instances_val2014.json", data)
        ds, exp = check(lambda: CocoDetection(path, root), lambda: spec_detection(data), [path])
        if ds is None:
            return
        assert len(ds) == len(exp["images"])
        assert (ds.num_degenerate, ds.num_crowd, ds.num_orphan_annotations) == (
            exp["degenerate"], exp["crowd"], exp["orphans"])
        assert ds.label_names == exp["label_names"] and ds.num_classes == len(exp["label_names"])
        for i, (img, boxes) in enumerate(exp["images"]):
            ann = ds.annotation(i)
            assert ann["image_id"] == img["id"] and ann["path"] == root / img["file_name"]
            assert ann["orig_size"] == (img["height"], img["width"])
            assert ann["annotation_ids"] == [b[0] for b in boxes]
            assert ann["target"]["labels"].tolist() == [b[1] for b in boxes]
            assert_boxes(ann["target"]["boxes"], [b[2] for b in boxes])


@SETTINGS
@given(mutated(CAPTIONS, COCO_SKIP), st.sampled_from(["caption", "image"]))
def test_coco_captions_mutations(data, per):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = write_json(root, "captions_val2014.json", data)
        ds, exp = check(lambda: CocoCaptions(path, root, per=per), lambda: spec_captions(data), [path])
        if ds is None:
            return
        assert ds.num_orphan_annotations == exp["orphans"]
        assert ds.num_images_without_captions == len(exp["images"]) - len(exp["with_captions"])
        if per == "caption":
            assert len(ds) == len(exp["items"])
            pairs = [(ds.annotation(i), a["image_id"]) for i, a in enumerate(exp["items"])]
            for (ann, _), a in zip(pairs, exp["items"], strict=True):
                assert (ann["caption_id"], ann["image_id"], ann["text"]) == (a["id"], a["image_id"],
                                                                             a["caption"].strip())
        else:
            assert len(ds) == len(exp["with_captions"])
            pairs = [(ds.annotation(i), image_id) for i, image_id in enumerate(exp["with_captions"])]
            for ann, image_id in pairs:
                anns = [a for a in exp["items"] if a["image_id"] == image_id]
                assert ann["image_id"] == image_id and ann["caption_ids"] == [a["id"] for a in anns]
                assert ann["captions"] == [a["caption"].strip() for a in anns]
        for ann, image_id in pairs:
            img = exp["images"][image_id]
            assert ann["orig_size"] == (img["height"], img["width"]) and ann["path"] == root / img["file_name"]


# ---- Karpathy ------------------------------------------------------------------------------------------------
def _karpathy_sample() -> dict:
    raw = json.loads((REALDATA / "karpathy" / "dataset_flickr8k_50img.json").read_text())
    picked = []
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        picked += [img for img in raw["images"] if img["split"] == split][:n]
    picked = [{**img, "sentences": img["sentences"][:2]} for img in picked]
    return {"images": picked, "dataset": raw["dataset"]}


KARPATHY = _karpathy_sample() if REALDATA.is_dir() else {}
KARPATHY_SPLITS = ("train", "val", "test", "restval")


def spec_karpathy(data, splits):
    need(isinstance(data, dict) and isinstance(data.get("images"), list), "images")
    selected, ids = [], []
    for i, img in enumerate(data["images"]):
        record(img, ("filename", "split", "sentences"), f"images[{i}]")
        need(isinstance(img["filename"], str) and isinstance(img.get("filepath", ""), str), "filename / filepath")
        need(isinstance(img["split"], str) and img["split"] in KARPATHY_SPLITS, "split")
        need(isinstance(img["sentences"], list), "sentences")
        for s in img["sentences"]:
            record(s, ("raw",), "sentence")
            need(isinstance(s["raw"], str) and is_int(s.get("sentid", 0)), "raw / sentid")
        need("cocoid" in img or "imgid" in img, "no image id")
        need(all(is_int(img[k]) for k in ("cocoid", "imgid") if k in img), "image id type")
        ids.append(img.get("cocoid", img.get("imgid")))
        if img["split"] in splits:
            selected.append(img)
    unique(ids, "image id")
    need(bool(selected), "no image in the splits")
    return selected


@SETTINGS
@given(mutated(KARPATHY, frozenset({"tokens", "sentids"})), st.sampled_from(["caption", "image"]),
       st.sampled_from([("train",), ("train", "val", "test")]))
def test_karpathy_mutations(data, per, splits):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = write_json(root, "dataset_flickr8k.json", data)
        ds, selected = check(lambda: KarpathyDataset(path, root, split=splits, per=per),
                             lambda: spec_karpathy(data, splits), [path])
        if ds is None:
            return
        expected = []
        for img in selected:
            base = {"image_id": img.get("cocoid", img.get("imgid")), "split": img["split"],
                    "filename": img["filename"], "path": root / img.get("filepath", "") / img["filename"]}
            if per == "image" and img["sentences"]:
                expected.append({**base, "captions": [s["raw"].strip() for s in img["sentences"]]})
            elif per == "caption":
                expected += [{**base, "text": s["raw"].strip(), "sentid": s.get("sentid")} for s in img["sentences"]]
        assert [ds.annotation(i) for i in range(len(ds))] == expected
        assert ds.num_images_without_captions == sum(not img["sentences"] for img in selected)


# ---- NLVR2 ---------------------------------------------------------------------------------------------------
NLVR2 = ([json.loads(line) for line in (REALDATA / "nlvr2" / "dev_first303.jsonl").read_text().splitlines()[:5]]
         if REALDATA.is_dir() else [])


def spec_nlvr2(records):
    need(bool(records), "no records")
    for i, rec in enumerate(records):
        record(rec, ("identifier", "sentence", "label"), f"record {i}")
        need(isinstance(rec["identifier"], str) and isinstance(rec["sentence"], str), "identifier / sentence")
        parts = rec["identifier"].split("-")
        need(len(parts) == 4 and all(parts), "identifier form")
        need(str(rec["label"]).lower() in ("true", "false"), "label")
        need(type(rec.get("directory", "")) in (int, str), "directory")
    unique([rec["identifier"] for rec in records], "identifier")
    return records


@SETTINGS
@given(mutated(NLVR2, frozenset({"validation", "extra_validations"})))
def test_nlvr2_mutations(records):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "dev.json"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        spec = (lambda: spec_nlvr2(records)) if all(isinstance(r, dict) for r in records) else (
            lambda: need(False, "a line is not an object"))
        ds, exp = check(lambda: NLVR2Dataset(path, root), spec, [path])
        if ds is None:
            return
        assert len(ds) == len(exp)
        for i, rec in enumerate(exp):
            ann = ds.annotation(i)
            pair = rec["identifier"].rsplit("-", 1)[0]
            folder = root / str(rec["directory"]) if "directory" in rec else root
            assert (ann["identifier"], ann["text"], ann["label"], ann["image_id"]) == (
                rec["identifier"], rec["sentence"], int(str(rec["label"]).lower() == "true"), pair)
            assert ann["paths"] == [folder / f"{pair}-img0.png", folder / f"{pair}-img1.png"]


# ---- VQA -----------------------------------------------------------------------------------------------------
def _vqa_sample() -> dict:
    q = json.loads((REALDATA / "vqa" / "v2_OpenEnded_mscoco_val2014_questions_first100.json").read_text())
    a = json.loads((REALDATA / "vqa" / "v2_mscoco_val2014_annotations_first100.json").read_text())
    questions = {**q, "questions": q["questions"][:3]}
    annotations = {**a, "annotations": [{**x, "answers": x["answers"][:4]} for x in a["annotations"][:3]]}
    return {"questions": questions, "annotations": annotations}


VQA = _vqa_sample() if REALDATA.is_dir() else {}
VQA_ANN_KEYS = ("question_id", "image_id", "answers", "multiple_choice_answer", "answer_type", "question_type")


def spec_vqa_annotations(a):
    need(isinstance(a, dict) and isinstance(a.get("annotations"), list), "annotations")
    for i, x in enumerate(a["annotations"]):
        record(x, VQA_ANN_KEYS, f"annotations[{i}]")
        need(is_int(x["question_id"]) and is_int(x["image_id"]), "ids")
        need(all(isinstance(x[k], str) for k in VQA_ANN_KEYS[3:]), "strings")
        need(isinstance(x["answers"], list) and bool(x["answers"]), "answers")
        for ans in x["answers"]:
            need(isinstance(ans, dict) and isinstance(ans.get("answer"), str), "answer")
    unique([x["question_id"] for x in a["annotations"]], "question_id")
    return a["annotations"]


def spec_vqa(q, a):
    need(isinstance(q, dict) and isinstance(q.get("questions"), list), "questions")
    for i, x in enumerate(q["questions"]):
        record(x, ("question_id", "image_id", "question"), f"questions[{i}]")
        need(is_int(x["question_id"]) and is_int(x["image_id"]) and isinstance(x["question"], str), "question")
    unique([x["question_id"] for x in q["questions"]], "question_id")
    need(isinstance(q.get("data_subtype"), str), "data_subtype")
    by_qid = {x["question_id"]: x for x in spec_vqa_annotations(a)}
    need(set(by_qid) == {x["question_id"] for x in q["questions"]}, "question ids differ")
    need(all(by_qid[x["question_id"]]["image_id"] == x["image_id"] for x in q["questions"]), "image ids differ")
    return [(x, by_qid[x["question_id"]]) for x in q["questions"]]


@SETTINGS
@given(mutated(VQA, frozenset({"info", "license"})))
def test_vqa_mutations(data):
    q, a = data.get("questions"), data.get("annotations")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        q_path, a_path = write_json(root, "questions.json", q), write_json(root, "annotations.json", a)
        ds, exp = check(lambda: VQADataset(q_path, a_path, root), lambda: spec_vqa(q, a), [q_path, a_path])
        if ds is not None:
            assert len(ds) == len(exp)
            for i, (question, ann) in enumerate(exp):
                got = ds.annotation(i)
                assert (got["question_id"], got["image_id"], got["text"]) == (
                    question["question_id"], question["image_id"], question["question"])
                assert got["path"] == root / f"COCO_{q['data_subtype']}_{question['image_id']:012d}.jpg"
                assert got["answers"] == [x["answer"] for x in ann["answers"]]
                assert got["normalized_answers"] == [normalize_answer(clean_whitespace(x["answer"]))
                                                     for x in ann["answers"]]
                assert [got[k] for k in VQA_ANN_KEYS[3:]] == [ann[k] for k in VQA_ANN_KEYS[3:]]
        # the vocabulary builder reads the annotations file alone
        ds, anns = check(lambda: build_answer_vocab(a_path, size=None, min_count=1),
                         lambda: spec_vqa_annotations(a), [a_path])
        if ds is not None:
            expected = {normalize_answer(clean_whitespace(x["multiple_choice_answer"])) for x in anns} - {""}
            assert set(ds.tokens) == expected


# ---- Visual Genome -------------------------------------------------------------------------------------------
def _vg_sample() -> tuple[dict, Vocab, Vocab]:
    load = lambda name: json.loads((REALDATA / "visual_genome" / name).read_text())  # noqa: E731
    image_ids = (1, 2)
    objects = [{**it, "objects": it["objects"][:3]} for it in load("objects_first25.json") if it["image_id"] in image_ids]
    object_ids = {o["object_id"] for it in objects for o in it["objects"]}
    attributes = [{**it, "attributes": [r for r in it["attributes"] if r["object_id"] in object_ids][:2]}
                  for it in load("attributes_first25.json") if it["image_id"] in image_ids]
    regions = [{**it, "regions": it["regions"][:2]} for it in load("region_descriptions_first25.json")
               if it["id"] in image_ids]
    image_data = [rec for rec in load("image_data_first100.json") if rec["image_id"] in (1, 2, 3)]
    data = {"image_data": image_data, "objects": objects, "attributes": attributes, "regions": regions}
    names = sorted({o["names"][0].strip().lower() for it in objects for o in it["objects"]})
    attrs = sorted({a.strip().lower() for it in attributes for r in it["attributes"] for a in r.get("attributes", [])})
    return data, Vocab(names[1:]), Vocab(attrs[1:])  # one name and one attribute out of vocabulary


VG, VG_OBJECTS, VG_ATTRIBUTES = _vg_sample() if REALDATA.is_dir() else ({}, None, None)


def _norm(s: str) -> str:
    return " ".join(s.split()).lower()


def spec_vg_objects_attributes(objects, attributes):
    need(isinstance(objects, list) and isinstance(attributes, list), "top level")
    for i, it in enumerate(objects):
        record(it, ("image_id", "objects"), f"objects [{i}]")
        need(is_int(it["image_id"]) and isinstance(it["objects"], list), "image_id / objects")
        for o in it["objects"]:
            record(o, ("object_id", "x", "y", "w", "h", "names"), "object")
            need(is_int(o["object_id"]) and box_fields_ok(o["x"], o["y"], o["w"], o["h"]), "object box")
            need(isinstance(o["names"], list) and bool(o["names"]) and isinstance(o["names"][0], str), "names")
    unique([it["image_id"] for it in objects], "objects image_id")
    attrs = {}
    for i, it in enumerate(attributes):
        record(it, ("image_id", "attributes"), f"attributes [{i}]")
        need(isinstance(it["attributes"], list), "attributes list")
        for r in it["attributes"]:
            record(r, ("object_id",), "attribute record")
            names = r.get("attributes")
            need(is_int(r["object_id"]), "attribute object_id")
            need(names is None or (isinstance(names, list) and all(isinstance(a, str) for a in names)), "attributes")
            normed = list(dict.fromkeys(a for a in map(_norm, names or []) if a))
            need(attrs.setdefault(r["object_id"], normed) == normed, "one object_id, two attribute lists")
    return attrs


def spec_vg(data):
    image_data, regions = data.get("image_data"), data.get("regions")
    need(isinstance(image_data, list), "image_data")
    images = {}
    for i, rec in enumerate(image_data):
        record(rec, ("image_id", "width", "height"), f"image_data [{i}]")
        need(is_int(rec["image_id"]) and is_size(rec["width"]) and is_size(rec["height"]), "image record")
        need(rec.get("url") is None or isinstance(rec["url"], str), "url")
        need(rec["image_id"] not in images, "image_id twice")
        images[rec["image_id"]] = rec
    attrs = spec_vg_objects_attributes(data.get("objects"), data.get("attributes"))
    items, counts = [], dict.fromkeys(["oov", "degenerate", "attr_oov"], 0)
    for it in data["objects"]:
        rec = images.get(it["image_id"])
        if rec is None:
            continue
        boxes, labels, attributes, object_ids = [], [], [], []
        for o in it["objects"]:
            label = VG_OBJECTS.get(_norm(o["names"][0]))
            box = clip(o["x"], o["y"], o["w"], o["h"], rec["width"], rec["height"])
            if label is None or box is None:
                counts["oov" if label is None else "degenerate"] += 1
                continue
            ids = [VG_ATTRIBUTES.get(a) for a in attrs.get(o["object_id"], [])]
            counts["attr_oov"] += ids.count(None)
            boxes.append(box), labels.append(label), object_ids.append(o["object_id"])
            attributes.append([j for j in ids if j is not None])
        items.append({"record": rec, "boxes": boxes, "labels": labels, "attributes": attributes,
                      "object_ids": object_ids})
    need(bool(items), "no image with a record")
    need(isinstance(regions, list), "regions")
    by_image = {}
    for i, it in enumerate(regions):
        record(it, ("id", "regions"), f"regions [{i}]")
        need(is_int(it["id"]) and isinstance(it["regions"], list), "region id / list")
        need(it["id"] not in by_image, "regions id twice")
        for r in it["regions"]:
            record(r, ("phrase", "x", "y", "width", "height"), "region")
            need(isinstance(r["phrase"], str) and box_fields_ok(r["x"], r["y"], r["width"], r["height"]), "region")
        by_image[it["id"]] = it["regions"]
    return items, by_image, counts


@SETTINGS
@given(mutated(VG, frozenset({"synsets", "merged_object_ids", "url", "image_url"})))
def test_visual_genome_mutations(data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = {key: write_json(root, f"{key}.json", data.get(key)) for key in VG}
        ds, exp = check(lambda: VisualGenome(paths["image_data"], paths["objects"], paths["attributes"],
                                             paths["regions"], root, VG_OBJECTS, VG_ATTRIBUTES),
                        lambda: spec_vg(data), list(paths.values()))
        if ds is not None:
            items, regions, counts = exp
            assert len(ds) == len(items)
            assert (ds.num_objects_out_of_vocab, ds.num_degenerate, ds.num_attributes_out_of_vocab) == (
                counts["oov"], counts["degenerate"], counts["attr_oov"])
            for i, item in enumerate(items):
                rec, got = item["record"], ds.annotation(i)
                url = rec.get("url")
                name = "/".join(url.rstrip("/").split("/")[-2:]) if url else f"{rec['image_id']}.jpg"
                assert got["image_id"] == rec["image_id"] and got["path"] == root / name
                assert got["orig_size"] == (rec["height"], rec["width"])
                assert got["object_ids"] == item["object_ids"]
                assert got["target"]["labels"].tolist() == item["labels"]
                assert got["target"]["attributes"] == item["attributes"]
                assert_boxes(got["target"]["boxes"], item["boxes"])
                own = regions.get(rec["image_id"], [])
                assert got["captions"] == [r["phrase"].strip() for r in own]
                assert_boxes(got["regions"]["boxes"], [clip(r["x"], r["y"], r["width"], r["height"], rec["width"],
                                                             rec["height"], drop=False) for r in own])
        # the vocabulary builder reads objects and attributes alone
        built, _ = check(lambda: build_vg_vocabs(paths["objects"], paths["attributes"], None, None),
                         lambda: spec_vg_objects_attributes(data.get("objects"), data.get("attributes")),
                         [paths["objects"], paths["attributes"]])
        if built is not None:
            names = {_norm(o["names"][0]) for it in data["objects"] for o in it["objects"]}
            assert set(built[0].tokens) == names


def test_unmutated_samples_pass_spec_and_test():
    """The real samples, unchanged, pass every spec and every property check (and are small)."""
    assert spec_detection(DETECTION)["crowd"] == 1 and len(DETECTION["annotations"]) == 7
    assert len(spec_captions(CAPTIONS)["items"]) == 4 and spec_captions(CAPTIONS)["orphans"] == 2
    assert len(spec_karpathy(KARPATHY, KARPATHY_SPLITS)) == 4 and len(spec_nlvr2(NLVR2)) == 5
    assert len(spec_vqa(VQA["questions"], VQA["annotations"])) == 3
    items, regions, counts = spec_vg(VG)
    assert len(items) == 2 and len(regions) == 2 and counts["oov"] >= 1 and counts["attr_oov"] >= 1
    for test, args in [(test_coco_detection_mutations, [DETECTION]), (test_coco_captions_mutations, [CAPTIONS, "image"]),
                       (test_karpathy_mutations, [KARPATHY, "caption", KARPATHY_SPLITS[:3]]),
                       (test_nlvr2_mutations, [NLVR2]), (test_vqa_mutations, [VQA]), (test_visual_genome_mutations, [VG])]:
        test.hypothesis.inner_test(*args)
