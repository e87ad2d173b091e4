"""`vlpkit data prepare` on the real annotation samples in ../shared/realdata: a WordPiece vocabulary trained on the
pretraining texts, VG vocabularies, every COCO category mapped onto them (exact, alias or added), captionless COCO
images and VG images of downstream evaluation splits removed and counted, and a config that pretraining reads."""

from __future__ import annotations

import json

import pytest

from vlpkit.data.prepare import coco_image_ids, map_coco_categories, prepare_pretraining_data
from vlpkit.data.vocab import Vocab


@pytest.fixture
def files(realdata, tmp_path):
    vg = tmp_path / "vg"
    vg.mkdir()
    image_data = json.loads((realdata / "visual_genome" / "image_data_first100.json").read_text())
    image_data[0]["coco_id"], image_data[1]["coco_id"] = 9001, 9002  # two VG images that COCO also has
    (vg / "image_data.json").write_text(json.dumps(image_data))
    for name in ("objects", "attributes"):
        (vg / f"{name}.json").write_text((realdata / "visual_genome" / f"{name}_first25.json").read_text())
    (tmp_path / "coco_images").mkdir()
    (tmp_path / "val_instances.json").write_text(json.dumps({"images": [{"id": 9001}], "annotations": []}))
    # the two real samples cover different images: give the real captions to the first 60 instance images, so that
    # 40 images have none
    instances = json.loads((realdata / "coco_detection" / "instances_val2014_100.json").read_text())
    captions = json.loads((realdata / "coco_caption" / "captions_val2014_minyus_first100.json").read_text())
    for k, ann in enumerate(captions["annotations"]):
        ann["image_id"] = instances["images"][k % 60]["id"]
    captions["images"] = instances["images"]
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    return {"coco_instances": realdata / "coco_detection" / "instances_val2014_100.json",
            "coco_captions": tmp_path / "captions.json",
            "coco_images": tmp_path / "coco_images", "vg": vg, "exclude": tmp_path / "val_instances.json"}


def test_prepare_reports_and_writes_what_pretraining_reads(files, tmp_path):
    from vlpkit.pretraining.run import build_data

    vg = files["vg"]
    report = prepare_pretraining_data(tmp_path / "out", files["coco_instances"], files["coco_captions"],
                                      files["coco_images"], vg / "image_data.json", vg / "objects.json",
                                      vg / "attributes.json", None, vg, vocab_size=300,
                                      exclude=[files["exclude"]])
    expected_kept = 60
    assert report["coco"] == {"images": 100, "removed_without_captions": 40, "kept": 60}
    assert report["vg"]["removed_in_downstream_eval"] == 1 and report["vg"]["kept"] == 99  # coco_id 9001 only
    kept_vg = json.loads((tmp_path / "out" / "vg" / "objects.json").read_text())
    assert image_ids_of(kept_vg) == image_ids_of(json.loads((vg / "objects.json").read_text())) - {1}
    counts = report["coco_category_counts"]
    assert sum(counts.values()) == 80 and counts["exact"] > 0
    objects = Vocab.load(tmp_path / "out" / "vg" / "objects_vocab.json")
    for name, how in report["coco_categories"].items():  # every COCO category has a class
        assert objects.get(name) is not None, name
        if how["how"] == "alias":
            assert objects.get(name) == objects.index(how["vg"])
    assert report["tokenizer"]["size"] <= 300 and "WordPiece trained on" in report["tokenizer"]["from"]
    data = json.loads((tmp_path / "out" / "data.yaml").read_text())
    sources, tokenizer, overrides, _ = build_data(data)
    assert [s.name for s in sources] == ["coco", "vg"] and overrides["num_classes"] == len(objects)
    assert len(sources[0].dataset) == expected_kept and sources[0].dataset.num_without_captions == 0


def image_ids_of(records) -> set[int]:
    return {r["image_id"] for r in records}


def test_the_cli_writes_a_valid_pretraining_config(files, tmp_path, capsys):
    from vlpkit.cli import main
    from vlpkit.pretraining.run import load_config

    code = main(["data", "prepare", "--coco-instances", str(files["coco_instances"]),
                 "--coco-captions", str(files["coco_captions"]), "--coco-images", str(files["coco_images"]),
                 "--vg", str(files["vg"]), "--exclude", str(files["exclude"]), "--vocab-size", "300",
                 "--out", str(tmp_path / "out")])
    assert code == 0 and "vlpkit pretrain --config" in capsys.readouterr().out
    config = load_config(tmp_path / "out" / "pretrain.yaml")
    assert config["model"]["preset"] == "e2evlp-6-r50" and config["data"]["kind"] == "files"
    assert config["data"]["image"]["eval_size"] == 800  # the shipped config's image section is kept


def test_coco_categories_map_exactly_by_alias_or_as_new_classes():
    objects = Vocab(["man", "table", "dog"])
    merged, mapping = map_coco_categories([{"id": 1, "name": "person"}, {"id": 2, "name": "dog"},
                                           {"id": 3, "name": "dining table"}, {"id": 4, "name": "hair drier"}],
                                          objects)
    assert mapping == {"person": ("alias", "man"), "dog": ("exact", "dog"), "dining table": ("alias", "table"),
                       "hair drier": ("added", "hair drier")}
    assert merged.tokens == ["man", "table", "dog", "hair drier"] and merged.get("person") == 0


def test_evaluation_image_ids_are_read_from_each_official_format(realdata, tmp_path):
    instances = realdata / "coco_detection" / "instances_val2014_100.json"
    assert len(coco_image_ids(instances)) == 100
    karpathy = json.loads((realdata / "karpathy" / "dataset_flickr8k_50img.json").read_text())
    for i, image in enumerate(karpathy["images"]):
        image["cocoid"] = 100 + i
    (tmp_path / "karpathy.json").write_text(json.dumps(karpathy))
    held_out = {100 + i for i, im in enumerate(karpathy["images"]) if im["split"] in ("val", "test")}
    assert coco_image_ids(tmp_path / "karpathy.json") == held_out
    (tmp_path / "q.json").write_text(json.dumps({"questions": [{"image_id": 5, "question_id": 1}]}))
    assert coco_image_ids(tmp_path / "q.json") == {5}
