"""Every reader on a tiny generated shapes world: its official-format files and images must read end to end."""

from __future__ import annotations

import json
import warnings

import pytest

from vlpkit.data.readers import (
    CocoCaptions,
    CocoDetection,
    KarpathyDataset,
    NLVR2Dataset,
    VisualGenome,
    VQADataset,
    build_answer_vocab,
    build_vg_vocabs,
)
from vlpkit.data.shapes import generate_shapes_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_shapes_world(tmp_path_factory.mktemp("shapes"), num_images=12, seed=0, nlvr2_sets=4,
                                 answer_noise=0.0)


@pytest.fixture(autouse=True)
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the generator writes consistent files: no orphan or skip warning
        yield


def test_coco_detection_and_captions(world):
    raw = json.loads(world.instances("train").read_text())
    ds = CocoDetection(world.instances("train"), world.image_dir("train"))
    assert len(ds) == len(raw["images"]) and ds.num_degenerate == 0 and ds.num_orphan_annotations == 0
    boxes = 0
    for i in range(len(ds)):
        sample = ds[i]
        h, w = sample["target"]["orig_size"]
        assert sample["image"].size == (w, h) and sample["image"].mode == "RGB"
        boxes += len(sample["target"]["labels"])
    assert boxes == len(raw["annotations"]) - ds.num_crowd
    assert sorted(ds.label_names.values()) == sorted(c["name"] for c in raw["categories"])
    caps = CocoCaptions(world.captions("train"), world.image_dir("train"), per="image")
    assert len(caps) == len(ds) and all(len(caps[i]["captions"]) == 5 for i in range(len(caps)))


def test_visual_genome(world):
    files = [world.vg(n) for n in ("image_data", "objects", "attributes", "region_descriptions")]
    ov, av = build_vg_vocabs(world.vg("objects"), world.vg("attributes"))
    ds = VisualGenome(*files, world.root / "images", ov, av)  # urls are "images/<split>/<file>"
    objects = json.loads(world.vg("objects").read_text())
    assert len(ds) == len(objects) and ds.num_objects_out_of_vocab == 0 and ds.num_attributes_out_of_vocab == 0
    sample = ds[0]
    assert len(sample["target"]["labels"]) == len(objects[0]["objects"]) and sample["captions"]


def test_vqa(world):
    vocab = build_answer_vocab(world.vqa_annotations("train"), size=None, min_count=1)
    ds = VQADataset(world.vqa_questions("train"), world.vqa_annotations("train"), world.image_dir("train"),
                    answer_vocab=vocab, image_name_fn=lambda i: f"shapes_train_{i:012d}.png")
    for i in range(0, len(ds), 7):
        sample = ds[i]
        assert sample["answer_scores"].max() == 1.0  # noise-free answers: all ten annotators agree
        mc = ds.annotation(i)["multiple_choice_answer"]
        assert vocab[int(sample["answer_scores"].argmax())] == mc


def test_nlvr2_and_karpathy(world):
    ds = NLVR2Dataset(world.nlvr2("train"), world.nlvr2_image_dir("train"))
    assert len(ds) > 0
    for i in range(len(ds)):
        assert len(ds[i]["images"]) == 2
    test1 = NLVR2Dataset(world.nlvr2("test1"), world.nlvr2_image_dir("test1"))
    assert test1[0]["images"][0].mode == "RGB"
    kp = KarpathyDataset(world.karpathy, world.root, split=("train", "val", "test"), per="caption")
    assert len(kp) == 5 * 12 and kp[0]["text"]
