"""Visual Genome reader and vocabularies on the real first-25-images sample and on tiny official-format files."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from PIL import Image

from vlpkit.data.readers import BadImageError, DataFileError, VisualGenome, build_vg_vocabs
from vlpkit.data.readers.visual_genome import default_image_name, normalize_name
from vlpkit.data.vocab import Vocab


@pytest.fixture
def vg(realdata):
    d = realdata / "visual_genome"
    return {"image_data": d / "image_data_first100.json", "objects": d / "objects_first25.json",
            "attributes": d / "attributes_first25.json", "regions": d / "region_descriptions_first25.json"}


def make(files, root, object_vocab, attribute_vocab, **kw):
    return VisualGenome(files["image_data"], files["objects"], files["attributes"], files["regions"], root,
                        object_vocab, attribute_vocab, **kw)


def test_real_sample_with_full_vocabularies(vg, tmp_path):
    objects = json.loads(vg["objects"].read_text())
    attributes = json.loads(vg["attributes"].read_text())
    regions = json.loads(vg["regions"].read_text())
    ov, av = build_vg_vocabs(vg["objects"], vg["attributes"], num_objects=None, num_attributes=None)
    ds = make(vg, tmp_path, ov, av)
    assert len(ds) == 25 and ds.num_images_without_objects == 75  # image_data lists 100 images
    assert ds.num_objects_out_of_vocab == 0 and ds.num_degenerate == 0
    # attributes.json has 966 object records, objects.json 790: the 176 others have no object to join.
    assert ds.num_attribute_records_unmatched == 176

    raw_obj = {o["object_id"]: o for item in objects for o in item["objects"]}
    raw_attr = {r["object_id"]: r.get("attributes") or [] for item in attributes for r in item["attributes"]}
    total = 0
    for i in range(len(ds)):
        ann = ds.annotation(i)
        t = ann["target"]
        h, w = ann["orig_size"]
        assert (t["boxes"][:, 2:] <= torch.tensor([w, h])).all() and (t["boxes"] >= 0).all()
        for box, label, attrs, oid in zip(t["boxes"], t["labels"], t["attributes"], ann["object_ids"]):
            o = raw_obj[oid]
            assert ov[int(label)] == o["names"][0].strip().lower().replace("  ", " ")
            assert box.tolist() == [o["x"], o["y"], min(o["x"] + o["w"], w), min(o["y"] + o["h"], h)]
            assert sorted(av[a] for a in attrs) == sorted({" ".join(x.lower().split()) for x in raw_attr[oid]})
        total += len(t["labels"])
    assert total == 790
    assert sum(len(ds.annotation(i)["captions"]) for i in range(len(ds))) == sum(len(r["regions"]) for r in regions)
    first = ds.annotation(0)
    reg = regions[0]["regions"][0]
    assert first["captions"][0] == reg["phrase"].strip() == first["regions"]["phrases"][0]
    assert first["regions"]["boxes"][0].tolist() == [reg["x"], reg["y"], reg["x"] + reg["width"],
                                                     reg["y"] + reg["height"]]
    assert first["path"] == tmp_path / "VG_100K_2" / "1.jpg"
    assert ds.annotation(1)["path"] == tmp_path / "VG_100K" / "2.jpg"


def test_real_sample_vocabulary_cut_counts_out_of_vocab(vg, tmp_path):
    objects = json.loads(vg["objects"].read_text())
    ov, av = build_vg_vocabs(vg["objects"], vg["attributes"], num_objects=20, num_attributes=10)
    assert len(ov) == 20 and len(av) == 10
    counts = Counter(normalize_name(o["names"][0]) for item in objects for o in item["objects"])
    assert ov.counts == sorted(ov.counts, reverse=True) and ov.counts[0] == max(counts.values())
    assert all(counts[t] >= c for t, c in zip(ov.tokens, ov.counts)) and min(ov.counts) >= sorted(
        counts.values(), reverse=True)[19]
    ds = make(vg, tmp_path, ov, av)
    kept = sum(len(ds.annotation(i)["target"]["labels"]) for i in range(len(ds)))
    assert kept + ds.num_objects_out_of_vocab == 790
    assert ds.num_objects_out_of_vocab == sum(c for t, c in counts.items() if t not in ov)
    assert ds.num_attributes_out_of_vocab > 0


def test_real_sample_getitem_with_generated_images(vg, tmp_path):
    ov, av = build_vg_vocabs(vg["objects"], vg["attributes"], num_objects=50, num_attributes=20)
    ds = make(vg, tmp_path, ov, av)
    ann = ds.annotation(3)
    h, w = ann["orig_size"]
    ann["path"].parent.mkdir(parents=True)
    Image.new("RGB", (w, h), (3, 4, 5)).save(ann["path"], format="PNG")
    sample = ds[3]
    assert sample["image"].size == (w, h) and sample["image_id"] == ann["image_id"]
    assert torch.equal(sample["target"]["boxes"], ann["target"]["boxes"])
    assert sample["captions"] == ann["captions"] and len(sample["regions"]["phrases"]) == len(sample["captions"])


# ---- tiny files -------------------------------------------------------------------------------------------------
def tiny_vg(tmp_path, objects=None):
    files = {
        "image_data": [{"image_id": 5, "url": "https://x/VG_100K/5.jpg", "width": 40, "height": 30},
                       {"image_id": 6, "width": 10, "height": 10}],
        "objects": objects or [{"image_id": 5, "objects": [
            {"object_id": 1, "x": 1, "y": 2, "w": 10, "h": 5, "names": ["Dog "]},
            {"object_id": 2, "x": 30, "y": 20, "w": 20, "h": 20, "names": ["dog", "puppy"]},  # clipped
            {"object_id": 3, "x": 3, "y": 3, "w": 0, "h": 4, "names": ["cat"]},  # zero width
            {"object_id": 4, "x": 3, "y": 3, "w": 4, "h": 4, "names": ["unicorn"]},  # not in vocab
            {"object_id": 5, "x": 0, "y": 0, "w": 4, "h": 4, "names": ["cat"]}]},
            {"image_id": 6, "objects": [{"object_id": 9, "x": 0, "y": 0, "w": 5, "h": 5, "names": ["dog"]}]}],
        "attributes": [{"image_id": 5, "attributes": [
            {"object_id": 1, "attributes": ["Brown", "brown ", "sleepy"]},
            {"object_id": 5, "attributes": ["black"]},
            {"object_id": 77, "attributes": ["black"]}]}],
        "regions": [{"id": 5, "regions": [{"region_id": 1, "image_id": 5, "phrase": "a dog and a cat ",
                                           "x": 0, "y": 1, "width": 12, "height": 6}]},
                    {"id": 404, "regions": [{"region_id": 2, "image_id": 404, "phrase": "gone",
                                             "x": 0, "y": 0, "width": 1, "height": 1}]}],
    }
    paths = {}
    for key, data in files.items():
        paths[key] = tmp_path / f"{key}.json"
        paths[key].write_text(json.dumps(data))
    return paths


def test_tiny_vg_targets_and_counts(tmp_path):
    files = tiny_vg(tmp_path)
    ov, av = build_vg_vocabs(files["objects"], files["attributes"], num_objects=2, num_attributes=2)
    assert ov.tokens == ["dog", "cat"] and ov.counts == [3, 2]  # "Dog " and "dog" are one class
    assert av.tokens == ["black", "brown"] and av.counts == [2, 1]  # ties: alphabetical; "sleepy" cut
    ds = make(files, tmp_path, ov, av)
    assert ds.num_objects_out_of_vocab == 1 and ds.num_degenerate == 1
    assert ds.num_attributes_out_of_vocab == 1 and ds.num_attribute_records_unmatched == 1
    assert ds.num_regions_without_image == 1
    t = ds.annotation(0)["target"]
    assert t["boxes"].tolist() == [[1, 2, 11, 7], [30, 20, 40, 30], [0, 0, 4, 4]]
    assert t["labels"].tolist() == [0, 0, 1] and t["attributes"] == [[1], [], [0]]
    assert ds.annotation(0)["captions"] == ["a dog and a cat"]
    assert ds.annotation(1)["captions"] == [] and ds.annotation(1)["path"] == tmp_path / "6.jpg"


def test_tiny_vg_getitem_transforms_and_bad_images(tmp_path):
    files = tiny_vg(tmp_path)
    ov, av = Vocab(["dog", "cat"]), Vocab(["black", "brown"])
    (tmp_path / "VG_100K").mkdir()
    Image.new("L", (40, 30), 9).save(tmp_path / "VG_100K" / "5.jpg", format="PNG")
    Image.new("RGB", (12, 10)).save(tmp_path / "6.jpg", format="PNG")  # wrong size for its record
    seen = []
    ds = make(files, tmp_path, ov, av, transforms=lambda im, t, text: (seen.append(text) or im, t, text))
    assert ds[0]["image"].getpixel((0, 0)) == (9, 9, 9) and seen == [["a dog and a cat"]]
    with pytest.raises(BadImageError, match=r"6\.jpg.*differs"):
        ds[1]
    skip = make(files, tmp_path, ov, av, on_bad_image="skip")
    with pytest.warns(UserWarning, match="skipping item 1"):
        assert skip[1]["image_id"] == 5
    assert skip.num_skipped == 1 and str(tmp_path / "6.jpg") in skip.bad_images


def test_custom_image_name_and_vocab_files(tmp_path):
    files = tiny_vg(tmp_path)
    ov_path = tmp_path / "objects_vocab.txt"
    ov_path.write_text("dog,puppy\ncat\n")
    av_path = tmp_path / "attrs.json"
    Vocab(["black"]).save(av_path)
    ds = make(files, tmp_path, ov_path, av_path, image_name_fn=lambda rec: f"flat/{rec['image_id']}.jpg")
    assert ds.annotation(0)["path"] == tmp_path / "flat" / "5.jpg"
    assert ds.annotation(0)["target"]["labels"].tolist() == [0, 0, 1]
    assert default_image_name({"image_id": 3, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/3.jpg"}) \
        == "VG_100K_2/3.jpg"


def test_vg_format_errors(tmp_path):
    files = tiny_vg(tmp_path)
    ov, av = Vocab(["dog"]), Vocab(["black"])
    with pytest.raises(FileNotFoundError, match=r"Visual Genome objects\.json .* not found: .*nope\.json"):
        VisualGenome(files["image_data"], tmp_path / "nope.json", files["attributes"], None, tmp_path, ov, av)
    bad = tiny_vg(tmp_path, objects=[{"image_id": 5, "objects": [{"object_id": 1, "x": 0, "y": 0, "w": 1,
                                                                    "names": ["a"]}]}])
    with pytest.raises(DataFileError, match=r"objects\.json: \[0\]\['objects'\]\[0\] lacks key\(s\) \['h'\]"):
        make(bad, tmp_path, ov, av)
    files = tiny_vg(tmp_path)
    files["regions"].write_text(json.dumps([{"id": 5, "regions": [{"phrase": "p", "x": 0, "y": 0, "w": 1,
                                                                   "h": 1}]}]))
    with pytest.raises(DataFileError, match=r"lacks key\(s\) \['width', 'height'\]"):
        make(files, tmp_path, ov, av)
    files["image_data"].write_text(json.dumps({"images": []}))
    with pytest.raises(DataFileError, match="the top level should be a JSON list, got dict"):
        make(files, tmp_path, ov, av)
    bad = tiny_vg(tmp_path, objects=[{"image_id": 5, "objects": [{"object_id": 1, "x": 0, "y": 0, "w": 1, "h": 1,
                                                                    "names": []}]}])
    with pytest.raises(DataFileError, match=r"object_id 1 has names=\[\]"):
        make(bad, tmp_path, ov, av)
    with pytest.raises(TypeError, match="object_vocab should be a Vocab or a path"):
        make(tiny_vg(tmp_path), tmp_path, ["dog"], av)
