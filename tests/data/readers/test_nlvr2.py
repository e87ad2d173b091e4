"""NLVR2 reader on the real dev / test1 lines (image names checked against the official hash file)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vlpkit.data.readers import BadImageError, DataFileError, NLVR2Dataset
from vlpkit.data.readers.nlvr2 import consistency_group, image_names


def test_real_dev_sample(realdata, tmp_path):
    d = realdata / "nlvr2"
    ds = NLVR2Dataset(d / "dev_first303.jsonl", tmp_path)
    anns = [ds.annotation(i) for i in range(len(ds))]
    assert len(ds) == 303 and sum(a["label"] for a in anns) == 157
    first = anns[0]
    assert first["identifier"] == "dev-850-0-0" and first["label"] == 0 and first["image_id"] == "dev-850-0"
    assert first["paths"] == [tmp_path / "dev-850-0-img0.png", tmp_path / "dev-850-0-img1.png"]
    # The official image hash file is keyed by the released image names: ours must be exactly those.
    hashes = json.loads((d / "dev_hashes_subset.json").read_text())
    names = {p.name for a in anns for p in a["paths"]}
    assert len(hashes) == 346 and names == set(hashes)
    assert len({consistency_group(a["identifier"]) for a in anns}) == 88
    # The official prediction CSV is keyed by identifier, in file order.
    rows = (d / "pred_all_true_dev_first303.csv").read_text().split()
    assert [r.split(",")[0] for r in rows if r.startswith("dev-")] == [a["identifier"] for a in anns]


def test_real_test1_sample(realdata, tmp_path):
    ds = NLVR2Dataset(realdata / "nlvr2" / "test1_first100.jsonl", tmp_path)
    assert len(ds) == 100 and sum(ds.annotation(i)["label"] for i in range(100)) == 53
    assert ds.annotation(0)["paths"][1].name == "test1-0-1-img1.png"


def test_image_names_and_groups():
    assert image_names("dev-850-0-0") == ("dev-850-0-img0.png", "dev-850-0-img1.png")
    assert image_names("train-10171-3-2") == ("train-10171-3-img0.png", "train-10171-3-img1.png")
    assert consistency_group("dev-850-0-0") == "dev-850--0"
    with pytest.raises(ValueError, match="not of the form"):
        image_names("dev-850-0")


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_train_directory_getitem_and_transforms(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [
        {"identifier": "train-5-1-0", "sentence": "The left image has two dogs.", "label": "True", "directory": 12},
        {"identifier": "train-6-0-3", "sentence": "No dogs.", "label": "false", "directory": 3}])
    (tmp_path / "12").mkdir()
    Image.new("RGB", (5, 4), (1, 1, 1)).save(tmp_path / "12" / "train-5-1-img0.png")
    Image.new("L", (3, 2), 2).save(tmp_path / "12" / "train-5-1-img1.png", format="JPEG")  # a "png" that is a JPEG
    calls = []

    def transforms(image, target, text):
        calls.append((target["image_id"], text))
        return image, target, None if text is None else text.upper()

    ds = NLVR2Dataset(path, tmp_path, transforms=transforms)
    assert [ds.annotation(i)["label"] for i in range(2)] == [1, 0]
    sample = ds[0]
    assert calls == [("train-5-1-img0.png", "The left image has two dogs."), ("train-5-1-img1.png", None)]
    assert sample["text"] == "THE LEFT IMAGE HAS TWO DOGS." and sample["label"] == 1
    assert [im.size for im in sample["images"]] == [(5, 4), (3, 2)] and sample["images"][1].mode == "RGB"
    assert [t["orig_size"] for t in sample["targets"]] == [(4, 5), (2, 3)]
    with pytest.raises(BadImageError, match=r"3/train-6-0-img0\.png"):
        ds[1]
    skip = NLVR2Dataset(path, tmp_path, on_bad_image="skip")
    with pytest.warns(UserWarning, match="skipping item 1"):
        assert skip[1]["identifier"] == "train-5-1-0"
    assert skip.num_skipped == 1 and str(tmp_path / "3" / "train-6-0-img0.png") in skip.bad_images


def test_format_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"NLVR2 JSON-lines file .* not found: .*dev\.json"):
        NLVR2Dataset(tmp_path / "dev.json", tmp_path)
    path = write_lines(tmp_path / "a.jsonl", [{"identifier": "dev-1-0-0", "sentence": "s", "label": "True"},
                                              {"identifier": "dev-1-0-1", "sentence": "s"}])
    with pytest.raises(DataFileError, match=r"a\.jsonl record 2 lacks key\(s\) \['label'\]"):
        NLVR2Dataset(path, tmp_path)
    path = write_lines(tmp_path / "b.jsonl", [{"identifier": "dev-1-0-0", "sentence": "s", "label": "maybe"}])
    with pytest.raises(DataFileError, match=r"record 1: label 'maybe'; expected 'True' or 'False'"):
        NLVR2Dataset(path, tmp_path)
    path = write_lines(tmp_path / "c.jsonl", [{"identifier": "dev-1-0", "sentence": "s", "label": "True"}])
    with pytest.raises(DataFileError, match=r"record 1: NLVR2 identifier 'dev-1-0' is not of the form"):
        NLVR2Dataset(path, tmp_path)
    (tmp_path / "d.jsonl").write_text("\n")
    with pytest.raises(DataFileError, match="holds no records"):
        NLVR2Dataset(tmp_path / "d.jsonl", tmp_path)
