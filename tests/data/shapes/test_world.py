"""The generated world on disk: official schemas (compared with real samples), counts that agree with the
scenes, pycocotools loading, determinism, caching, and a timing report."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from vlpkit.data.shapes import SceneConfig, WorldConfig, generate_shapes_world
from vlpkit.data.shapes.render import shape_mask
from vlpkit.data.shapes.world import WORLD_VERSION

SPLITS = ("train", "val", "test")
NLVR2_SPLITS = ("train", "dev", "test1")
RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
SMALL = {"num_images": 40, "seed": 3, "nlvr2_sets": 10}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_shapes_world(tmp_path_factory.mktemp("world") / "w", **SMALL)


def load(path: Path):
    return json.loads(path.read_text())


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def scenes(world, split) -> dict[int, dict]:
    return {d["image_id"]: d for d in load(world.scenes(split))["images"]}


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------------------------------
# Layout, manifest, caching


def test_manifest_lists_every_file_with_its_size(world):
    manifest = load(world.root / "manifest.json")
    assert manifest["version"] == WORLD_VERSION and manifest["params"] == WorldConfig(**SMALL).params()
    on_disk = {
        str(p.relative_to(world.root)): p.stat().st_size
        for p in world.root.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    assert manifest["files"] == on_disk
    assert manifest["counts"]["images"] == {"train": 32, "val": 4, "test": 4}
    assert sum(name.endswith(".png") for name in on_disk) == 40 + 10 * 8
    assert not [p for p in world.root.rglob(".*tmp*")], "temporary files left behind"


def test_cache_is_reused_and_only_when_complete(tmp_path):
    root = tmp_path / "w"
    first = generate_shapes_world(root, num_images=12, seed=1, nlvr2_sets=3)
    assert not first.reused
    stamp = (root / "stats.json").stat().st_mtime_ns
    again = generate_shapes_world(root, num_images=12, seed=1, nlvr2_sets=3)
    assert again.reused and (root / "stats.json").stat().st_mtime_ns == stamp
    # a missing file makes the copy incomplete: everything is written again
    (root / "vqa" / "v2_shapes_val_annotations.json").unlink()
    repaired = generate_shapes_world(root, num_images=12, seed=1, nlvr2_sets=3)
    assert not repaired.reused and (root / "vqa" / "v2_shapes_val_annotations.json").is_file()
    # other parameters: regenerated, and files of the old world that the new one lacks are removed
    smaller = generate_shapes_world(root, num_images=6, seed=1, nlvr2_sets=3)
    assert not smaller.reused
    assert sorted(p.name for p in (root / "images" / "train").iterdir()) == sorted(
        load(smaller.instances("train"))["images"][i]["file_name"]
        for i in range(smaller.manifest["counts"]["images"]["train"])
    )
    assert generate_shapes_world(root, num_images=6, seed=1, nlvr2_sets=3, force=True).reused is False


def test_default_root_is_keyed_by_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("VLPKIT_CACHE", str(tmp_path))
    a = generate_shapes_world(num_images=5, seed=0, nlvr2_sets=0)
    b = generate_shapes_world(num_images=5, seed=1, nlvr2_sets=0)
    assert (
        a.root.parent == tmp_path and a.root.name == f"shapes-{WorldConfig(num_images=5, nlvr2_sets=0).key()}"
    )
    assert a.root != b.root
    assert generate_shapes_world(config=WorldConfig(num_images=5, seed=0, nlvr2_sets=0)).reused


def test_bad_options_are_named(tmp_path):
    with pytest.raises(TypeError, match="num_imgs"):
        generate_shapes_world(tmp_path, num_imgs=3)
    with pytest.raises(TypeError, match="not both"):
        generate_shapes_world(tmp_path, config=WorldConfig(num_images=3), seed=4)
    with pytest.raises(ValueError, match="split_fractions"):
        WorldConfig(split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="answer_noise"):
        WorldConfig(answer_noise=2.0)
    with pytest.raises(ValueError, match="unknown split"):
        generate_shapes_world(tmp_path / "x", num_images=3, nlvr2_sets=0).instances("dev")


def test_same_seed_same_bytes_and_other_seed_other_world(world, tmp_path):
    twin = generate_shapes_world(tmp_path / "twin", **SMALL)
    assert digest(twin.root) == digest(world.root)
    other = generate_shapes_world(tmp_path / "other", **{**SMALL, "seed": 4})
    a, b = digest(world.root), digest(other.root)
    assert a.keys() == b.keys()
    changed = [k for k in a if a[k] != b[k]]
    assert len(changed) > 0.9 * len(a), "another seed should change nearly every file"


# ---------------------------------------------------------------------------------------------------------
# Official schemas: the key sets of the real sample files in shared/realdata


def test_coco_files_have_official_keys(world, realdata):
    real = load(realdata / "coco_detection" / "instances_val2014_100.json")
    ours = load(world.instances("train"))
    assert set(ours) == set(real)
    assert set(ours["images"][0]) == set(real["images"][0])
    real_ann = next(a for a in real["annotations"] if not a["iscrowd"])
    assert set(ours["annotations"][0]) == set(real_ann)
    assert set(ours["categories"][0]) == set(real["categories"][0])
    real_cap = load(realdata / "coco_caption" / "captions_val2014_minyus_first100.json")
    caps = load(world.captions("val"))
    assert set(caps) == set(real_cap) and set(caps["annotations"][0]) == set(real_cap["annotations"][0])


def test_vqa_files_have_official_keys(world, realdata):
    real_q = load(realdata / "vqa" / "v2_OpenEnded_mscoco_val2014_questions_first100.json")
    real_a = load(realdata / "vqa" / "v2_mscoco_val2014_annotations_first100.json")
    q, a = load(world.vqa_questions("val")), load(world.vqa_annotations("val"))
    assert set(q) == set(real_q) and set(q["questions"][0]) == set(real_q["questions"][0])
    assert set(a) == set(real_a) and set(a["annotations"][0]) == set(real_a["annotations"][0])
    assert set(a["annotations"][0]["answers"][0]) == set(real_a["annotations"][0]["answers"][0])
    official_types = set((realdata / "vqa" / "mscoco_question_types.txt").read_text().split("\n")) - {""}
    for split in SPLITS:
        for ann in load(world.vqa_annotations(split))["annotations"]:
            assert ann["question_type"] in official_types
            assert ann["answer_type"] in ("yes/no", "number", "other")


def test_vg_files_have_official_keys(world, realdata):
    vg = realdata / "visual_genome"
    pairs = [
        ("image_data", "image_data_first100.json", None),
        ("objects", "objects_first25.json", "objects"),
        ("attributes", "attributes_first25.json", "attributes"),
        ("region_descriptions", "region_descriptions_first25.json", "regions"),
        ("relationships", "relationships_first25.json", "relationships"),
    ]
    for name, real_name, inner in pairs:
        real, ours = load(vg / real_name), load(world.vg(name))
        assert set(ours[0]) == set(real[0]), name
        if inner:
            real_entry = next(
                e
                for item in real
                for e in item[inner]
                if not (name == "attributes" and "attributes" not in e)
            )
            assert set(ours[0][inner][0]) == set(real_entry), name
    rel = load(world.vg("relationships"))
    entry = next(r for item in rel for r in item["relationships"])
    assert {"object_id", "x", "y", "w", "h", "name", "synsets"} == set(entry["subject"])


def test_nlvr2_files_have_official_keys_and_layout(world, realdata):
    real = lines(realdata / "nlvr2" / "dev_first303.jsonl")
    for split in NLVR2_SPLITS:
        rows = lines(world.nlvr2(split))
        expected = set(real[0]) | ({"directory"} if split == "train" else set())
        assert all(set(r) == expected for r in rows), split
        for r in rows:
            s, set_id, pair_id, sent_id = r["identifier"].split("-")
            assert s == split and 0 <= int(pair_id) < 4 and sent_id in ("0", "1")
            assert r["label"] in ("True", "False")
            folder = world.nlvr2_image_dir(split) / (str(r["directory"]) if split == "train" else "")
            for k, url in enumerate((r["left_url"], r["right_url"])):
                path = folder / f"{split}-{set_id}-{pair_id}-img{k}.png"
                assert path.is_file() and world.root / "nlvr2" / url == path
        groups = Counter(re.sub(r"-\d+-(\d+)$", r"--\1", r["identifier"]) for r in rows)
        assert set(groups.values()) == {4}  # each sentence labelled on all 4 pairs of its set
    labels = Counter(r["label"] for split in NLVR2_SPLITS for r in lines(world.nlvr2(split)))
    assert 0.4 < labels["True"] / sum(labels.values()) < 0.6, labels


def test_karpathy_file_has_official_keys(world, realdata):
    real = load(realdata / "karpathy" / "dataset_flickr8k_50img.json")
    ours = load(world.karpathy)
    assert set(ours) == set(real) and ours["dataset"] == "shapes"
    # dataset_coco.json flavour: flickr keys plus filepath and cocoid
    assert set(ours["images"][0]) == set(real["images"][0]) | {"filepath", "cocoid"}
    assert set(ours["images"][0]["sentences"][0]) == set(real["images"][0]["sentences"][0])
    sentids = [s["sentid"] for img in ours["images"] for s in img["sentences"]]
    assert sentids == list(range(len(sentids)))
    for i, img in enumerate(ours["images"]):
        assert img["imgid"] == i and len(img["sentences"]) == 5
        assert img["sentids"] == [s["sentid"] for s in img["sentences"]]
        assert (world.root / img["filepath"] / img["filename"]).is_file()
        for s in img["sentences"]:
            assert s["imgid"] == i and s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower())
    assert Counter(img["split"] for img in ours["images"]) == {"train": 32, "val": 4, "test": 4}


# ---------------------------------------------------------------------------------------------------------
# Counts and pixels agree with the scenes


def test_pycocotools_loads_instances_and_counts_match(world):
    for split in SPLITS:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(world.instances(split)))
        truth = scenes(world, split)
        assert sorted(coco.getImgIds()) == sorted(truth)
        names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
        assert names == {i + 1: s for i, s in enumerate(SceneConfig().shapes)}
        ious = []
        for image_id, scene in truth.items():
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            assert len(anns) == len(scene["objects"])
            assert [a["id"] for a in anns] == scene["object_ids"]
            for a, o in zip(anns, scene["objects"]):
                assert names[a["category_id"]] == o["shape"]
                x0, y0, x1, y1 = o["bbox"]
                assert a["bbox"] == [x0, y0, x1 - x0, y1 - y0]
                # the polygon, rasterised by pycocotools, is the drawn shape up to PIL's half-pixel border
                mask = coco.annToMask(a).astype(bool)
                drawn = shape_mask(o["shape"], *o["center"], o["radius"], scene["width"], scene["height"])
                assert drawn.sum() == o["area"] == a["area"]
                ious.append((mask & drawn).sum() / (mask | drawn).sum())
            for shape in SceneConfig().shapes:
                cat = next(k for k, v in names.items() if v == shape)
                assert len(coco.getAnnIds(imgIds=[image_id], catIds=[cat])) == sum(
                    ob["shape"] == shape for ob in scene["objects"]
                )
        assert min(ious) > 0.7 and np.mean(ious) > 0.9


def test_images_show_their_scenes(world):
    checked = 0
    for split in SPLITS:
        info = {im["id"]: im for im in load(world.instances(split))["images"]}
        for image_id, d in scenes(world, split).items():
            pixels = np.asarray(Image.open(world.image_dir(split) / info[image_id]["file_name"]))
            assert pixels.shape == (info[image_id]["height"], info[image_id]["width"], 3)
            for o in d["objects"]:
                if o["visible"] == 1.0:
                    assert tuple(pixels[int(o["center"][1]), int(o["center"][0])]) == RGB[o["color"]]
                    checked += 1
    assert checked > 100


def test_vg_agrees_with_coco_and_scenes(world):
    objects = {item["image_id"]: item["objects"] for item in load(world.vg("objects"))}
    attributes = {item["image_id"]: item["attributes"] for item in load(world.vg("attributes"))}
    regions = {item["id"]: item["regions"] for item in load(world.vg("region_descriptions"))}
    image_data = {item["image_id"]: item for item in load(world.vg("image_data"))}
    assert set(objects) == set(attributes) == set(regions) == set(image_data)
    for split in SPLITS:
        for image_id, d in scenes(world, split).items():
            assert (world.root / image_data[image_id]["url"]).is_file()
            objs = objects[image_id]
            assert [o["object_id"] for o in objs] == d["object_ids"]
            for vg, attr, o in zip(objs, attributes[image_id], d["objects"]):
                assert vg["names"] == [o["shape"]] and attr["object_id"] == vg["object_id"]
                assert sorted(attr["attributes"]) == sorted([o["color"], o["size"]])
                assert [vg["x"], vg["y"], vg["x"] + vg["w"], vg["y"] + vg["h"]] == o["bbox"]
            # every region box is the union of some objects' boxes and lies inside the image
            for r in regions[image_id]:
                assert 0 <= r["x"] and r["x"] + r["width"] <= d["width"]
                assert 0 <= r["y"] and r["y"] + r["height"] <= d["height"]
            assert len(regions[image_id]) >= len(objs)


def test_vqa_questions_and_annotations_match(world):
    for split in SPLITS:
        q, a = (
            load(world.vqa_questions(split))["questions"],
            load(world.vqa_annotations(split))["annotations"],
        )
        assert [x["question_id"] for x in q] == [x["question_id"] for x in a]
        assert len({x["question_id"] for x in q}) == len(q)
        for qq, aa in zip(q, a):
            assert qq["image_id"] == aa["image_id"] and qq["question_id"] // 1000 == qq["image_id"]
            assert [x["answer_id"] for x in aa["answers"]] == list(range(1, 11))
            assert {x["answer"] for x in aa["answers"]} == {
                aa["multiple_choice_answer"]
            }  # no noise by default
        per_image = Counter(x["image_id"] for x in q)
        assert min(per_image.values()) >= 4 and max(per_image.values()) == 6


def test_stats_agree_with_files(world):
    stats = world.stats()
    train = load(world.vqa_annotations("train"))["annotations"]
    prior = {}
    for qt in {a["question_type"] for a in train}:
        prior[qt] = Counter(
            a["multiple_choice_answer"] for a in train if a["question_type"] == qt
        ).most_common(1)[0][0]
    for split in SPLITS:
        anns = load(world.vqa_annotations(split))["annotations"]
        block = stats["vqa"][split]
        assert block["num_questions"] == len(anns)
        assert block["ceiling"] == 1.0
        fallback = Counter(a["multiple_choice_answer"] for a in train).most_common(1)[0][0]
        expected = np.mean(
            [prior.get(a["question_type"], fallback) == a["multiple_choice_answer"] for a in anns]
        )
        assert block["majority_baseline"] == pytest.approx(expected)
        assert 0 < block["majority_baseline"] < 0.7
        fam = {
            qid: f
            for d in scenes(world, split).values()
            for qid, f in zip(d["question_ids"], d["question_families"])
        }
        assert {f: b["count"] for f, b in block["by_family"].items()} == dict(Counter(fam.values()))
    for split in NLVR2_SPLITS:
        rows = lines(world.nlvr2(split))
        assert stats["nlvr2"][split]["num_true"] == sum(r["label"] == "True" for r in rows)
        assert stats["nlvr2"][split]["num_statements"] == len(rows)
    counts = stats["objects"]["train"]
    assert counts["num_objects"] == sum(len(d["objects"]) for d in scenes(world, "train").values())
    assert counts["min_visible"] >= SceneConfig().min_visible


def test_answer_noise_keeps_the_truth_in_the_majority(tmp_path):
    w = generate_shapes_world(tmp_path / "noisy", num_images=20, seed=2, nlvr2_sets=0, answer_noise=0.5)
    anns = [a for s in SPLITS for a in load(w.vqa_annotations(s))["annotations"]]
    disagreeing = 0
    for a in anns:
        votes = Counter(x["answer"] for x in a["answers"])
        assert votes[a["multiple_choice_answer"]] >= 7
        disagreeing += len(votes) > 1
        assert all(
            x["answer_confidence"] == ("yes" if x["answer"] == a["multiple_choice_answer"] else "maybe")
            for x in a["answers"]
        )
    assert disagreeing > 0.5 * len(anns)
    assert w.stats()["vqa"]["train"]["ceiling"] == 1.0


def test_generation_time_report(tmp_path):
    start = time.perf_counter()
    w = generate_shapes_world(tmp_path / "timed", num_images=200, seed=0)
    seconds = time.perf_counter() - start
    print(
        f"\nshapes world: 200 images + {w.manifest['counts']['nlvr2_images']} NLVR2 images in {seconds:.2f} s"
    )
    assert seconds < 60  # generous; the target is 2000 images in < 30 s on 2 cores
