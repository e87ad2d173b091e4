"""The project's readers (vlpkit.data.readers) read the generated world back: the same images, boxes,
captions, answers and labels come out. Skips cleanly while the readers are not importable."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

readers = pytest.importorskip("vlpkit.data.readers", reason="vlpkit.data.readers is not importable yet")

from vlpkit.data.shapes import Scene, SceneConfig, generate_shapes_world  # noqa: E402

SHAPES = SceneConfig().shapes


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_shapes_world(tmp_path_factory.mktemp("rt") / "w", num_images=30, seed=5, nlvr2_sets=5)


def _scenes(world, split):
    return {d["image_id"]: Scene.from_dict(d) for d in json.loads(world.scenes(split).read_text())["images"]}


def test_coco_detection_round_trip(world):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = readers.CocoDetection(world.instances("train"), world.image_dir("train"))
    scenes = _scenes(world, "train")
    assert len(ds) == len(scenes)
    for i in range(len(ds)):
        ann = ds.annotation(i)
        scene = scenes[ann["image_id"]]
        boxes = torch.tensor([o.bbox for o in scene.objects], dtype=torch.float32)
        assert torch.equal(ann["target"]["boxes"], boxes)
        names = [SHAPES[ds.label_to_category_id[int(k)] - 1] for k in ann["target"]["labels"]]
        assert names == [o.shape for o in scene.objects]
    sample = ds[0]
    assert sample["image"].size == (scenes[sample["image_id"]].width, scenes[sample["image_id"]].height)


def test_coco_captions_and_karpathy_round_trip(world):
    captions = json.loads(world.captions("val").read_text())["annotations"]
    ds = readers.CocoCaptions(world.captions("val"), world.image_dir("val"), per="image")
    by_image = {}
    for c in captions:
        by_image.setdefault(c["image_id"], []).append(c["caption"])
    item = ds[0]
    assert sorted(item["captions"]) == sorted(by_image[item["image_id"]])
    kp = readers.KarpathyDataset(world.karpathy, world.root, split="val")
    assert len(kp) == len(by_image)
    for i in range(len(kp)):
        ann = kp.annotation(i)
        assert ann["path"].is_file() and sorted(ann["captions"]) == sorted(by_image[ann["image_id"]])


def test_vqa_round_trip(world):
    ds = readers.VQADataset(
        world.vqa_questions("train"),
        world.vqa_annotations("train"),
        world.image_dir("train"),
        image_name_fn=lambda image_id: f"shapes_train_{image_id:012d}.png",
    )
    anns = {
        a["question_id"]: a for a in json.loads(world.vqa_annotations("train").read_text())["annotations"]
    }
    assert len(ds) == len(anns)
    for i in range(0, len(ds), 7):
        item = ds.annotation(i)
        assert item["path"].is_file()
        assert item["multiple_choice_answer"] == anns[item["question_id"]]["multiple_choice_answer"]
        assert item["normalized_answers"] == [a["answer"] for a in anns[item["question_id"]]["answers"]]


def test_nlvr2_round_trip(world):
    for split in ("train", "dev", "test1"):
        ds = readers.NLVR2Dataset(world.nlvr2(split), world.nlvr2_image_dir(split))
        lines = [json.loads(x) for x in world.nlvr2(split).read_text().splitlines()]
        assert len(ds) == len(lines)
        for i, line in enumerate(lines):
            ann = ds.annotation(i)
            assert ann["label"] == (line["label"] == "True") and ann["text"] == line["sentence"]
            assert all(p.is_file() for p in ann["paths"])
        assert len(ds[0]["images"]) == 2


def test_visual_genome_round_trip(world):
    objects_vocab, attribute_vocab = readers.build_vg_vocabs(world.vg("objects"), world.vg("attributes"))
    ds = readers.VisualGenome(
        world.vg("image_data"),
        world.vg("objects"),
        world.vg("attributes"),
        world.vg("region_descriptions"),
        world.root / "images",
        objects_vocab,
        attribute_vocab,
    )
    scenes = {**_scenes(world, "train"), **_scenes(world, "val"), **_scenes(world, "test")}
    assert len(ds) == len(scenes)
    item = ds[0]
    scene = scenes[item["image_id"]]
    assert torch.equal(
        item["target"]["boxes"], torch.tensor([o.bbox for o in scene.objects], dtype=torch.float32)
    )
    assert len(item["captions"]) >= len(scene.objects)
