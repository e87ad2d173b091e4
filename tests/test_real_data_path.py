"""The real-data path, end to end through the CLI, offline: `vlpkit data prepare` on the official annotation samples
in ../shared/realdata, `vlpkit pretrain` from the shipped e2evlp-6-r50 config (the paper's sizes, except the input
scale, a trunk trained from scratch and a handful of steps), then `vlpkit finetune` and `vlpkit evaluate` for all
five tasks, each from another working directory than the data's, with every results file checked against its
official schema. The images are stand-ins the test writes at each annotation's size (the real ones are not
shipped)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from vlpkit.cli import main

SMALL_TASK = ["task.train_scales=[96]", "task.max_size=128", "task.eval_size=96", "trainer.batch_size=2"]
SHORT = ["trainer.max_steps=1", "trainer.progress_bar=false", "trainer.save_every=0", "trainer.log_every=1"]


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


def _stand_in(path: Path, width: int = 64, height: int = 48, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = ((seed * 67) % 256, (seed * 131) % 256, (seed * 29) % 256)
    if not path.exists():  # the readers check each image against its annotation's size: keep the first
        Image.new("RGB", (width, height), colour).save(path)


@pytest.fixture
def data(realdata, tmp_path):
    """The samples laid out as a user would have them, with stand-in images."""
    root = tmp_path / "realdata"
    instances = json.loads((realdata / "coco_detection" / "instances_val2014_100.json").read_text())
    captions = json.loads((realdata / "coco_caption" / "captions_val2014_minyus_first100.json").read_text())
    for k, ann in enumerate(captions["annotations"]):  # the two samples cover other images: pair them up
        ann["image_id"] = instances["images"][k % 60]["id"]
    captions["images"] = instances["images"]
    ann = root / "coco" / "annotations"
    ann.mkdir(parents=True)
    (ann / "instances_val2014.json").write_text(json.dumps(instances))
    (ann / "captions_val2014.json").write_text(json.dumps(captions))
    for i, im in enumerate(instances["images"]):
        _stand_in(root / "coco" / "val2014" / im["file_name"], im["width"], im["height"], i)
    vqa = realdata / "vqa"
    for name in ("v2_OpenEnded_mscoco_val2014_questions_first100.json", "v2_mscoco_val2014_annotations_first100.json"):
        shutil.copy(vqa / name, ann / name)
    for q in json.loads((vqa / "v2_OpenEnded_mscoco_val2014_questions_first100.json").read_text())["questions"]:
        _stand_in(root / "coco" / "val2014" / f"COCO_val2014_{q['image_id']:012d}.jpg", seed=q["image_id"])
    vg = root / "vg"
    vg.mkdir()
    shutil.copy(realdata / "visual_genome" / "image_data_first100.json", vg / "image_data.json")
    for name in ("objects", "attributes"):
        shutil.copy(realdata / "visual_genome" / f"{name}_first25.json", vg / f"{name}.json")
    for rec in json.loads((vg / "image_data.json").read_text()):
        _stand_in(vg / "/".join(rec["url"].split("/")[-2:]), rec["width"], rec["height"], rec["image_id"])
    nlvr2 = root / "nlvr2"
    nlvr2.mkdir()
    lines = (realdata / "nlvr2" / "dev_first303.jsonl").read_text().splitlines()[:40]
    (nlvr2 / "dev.jsonl").write_text("\n".join(lines) + "\n")
    for line in lines:
        pair = json.loads(line)["identifier"].rsplit("-", 1)[0]
        for side in (0, 1):
            _stand_in(nlvr2 / "dev" / f"{pair}-img{side}.png", seed=hash(pair) % 97 + side)
    karpathy = json.loads((realdata / "karpathy" / "dataset_flickr8k_50img.json").read_text())
    shutil.copy(realdata / "karpathy" / "dataset_flickr8k_50img.json", root / "flickr8k.json")
    for i, im in enumerate(karpathy["images"]):
        _stand_in(root / "flickr8k" / im["filename"], seed=i)
    # the data files of the downstream tasks, with paths relative to their own folder
    (root / "vqa.yaml").write_text(json.dumps({
        "train": {"questions": "coco/annotations/v2_OpenEnded_mscoco_val2014_questions_first100.json",
                  "annotations": "coco/annotations/v2_mscoco_val2014_annotations_first100.json",
                  "image_root": "coco/val2014"},
        "eval": {"val": {"questions": "coco/annotations/v2_OpenEnded_mscoco_val2014_questions_first100.json",
                         "annotations": "coco/annotations/v2_mscoco_val2014_annotations_first100.json",
                         "image_root": "coco/val2014"}}}))
    (root / "nlvr2.yaml").write_text(json.dumps({"train": {"jsonl": "nlvr2/dev.jsonl", "image_root": "nlvr2/dev"},
                                                 "eval": {"dev": {"jsonl": "nlvr2/dev.jsonl",
                                                                  "image_root": "nlvr2/dev"}}}))
    (root / "captions.yaml").write_text(json.dumps({"karpathy": "flickr8k.json", "images": "flickr8k"}))
    split = {"instances": "coco/annotations/instances_val2014.json",
             "captions": "coco/annotations/captions_val2014.json", "images": "coco/val2014"}
    (root / "detection.yaml").write_text(json.dumps({"train": split, "val": split}))
    return root


def test_the_real_data_path_runs_end_to_end_through_the_cli(data, tmp_path, monkeypatch):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    coco = data / "coco" / "annotations"
    assert main(["data", "prepare", "--coco-instances", str(coco / "instances_val2014.json"),
                 "--coco-captions", str(coco / "captions_val2014.json"), "--coco-images", str(data / "coco" / "val2014"),
                 "--vg", str(data / "vg"), "--vocab-size", "400", "--out", str(tmp_path / "prepared"),
                 "--exclude", str(coco / "v2_OpenEnded_mscoco_val2014_questions_first100.json")]) == 0
    run = tmp_path / "pretrain"
    assert main(["pretrain", "--config", str(tmp_path / "prepared" / "pretrain.yaml"), *_sets([
        f"trainer.output_dir={run}", "trainer.max_steps=2", "trainer.batch_size=2", "trainer.mixed_precision=no",
        "trainer.progress_bar=false", "trainer.log_every=1", "trainer.warmup_steps=0",
        "model.overrides.backbone_weights=null", "model.overrides.backbone_norm=batch_norm",
        "model.overrides.trainable_backbone_layers=5", "data.image.train_scales=[96]", "data.image.max_size=128",
        "data.image.eval_size=96"])]) == 0
    config = json.loads((run / "model" / "config.json").read_text())
    assert (config["backbone"], config["num_encoder_layers"], config["d_model"], config["num_queries"]) == (
        "resnet50", 6, 256, 100)

    cases = {"vqa": (["task.answer_min_count=1"], "val"), "nlvr2": ([], "dev"),
             "caption": (["task.max_generation_length=6", "task.eval_tokenizer=simple", "task.max_eval_images=4"],
                         "test"),
             "retrieval": (["task.max_eval_images=4"], "test"),
             "detection": (["task.crop=false"], "val")}
    for task, (extra, split) in cases.items():
        data_file = str(data / ("captions.yaml" if task in ("caption", "retrieval") else f"{task}.yaml"))
        out = tmp_path / task
        assert main(["finetune", task, "--checkpoint", str(run), "--data", data_file, "--output", str(out),
                     *_sets(SMALL_TASK + extra + SHORT)]) == 0, task
        evaluation = tmp_path / f"{task}-evaluation"
        assert main(["evaluate", task, "--model", str(out), "--data", data_file, "--split", split,
                     "--output", str(evaluation)]) == 0, task
        _check_results(task, evaluation, data)


def _check_results(task: str, folder: Path, data: Path) -> None:
    if task == "vqa":
        questions = json.loads((data / "coco" / "annotations" /
                                "v2_OpenEnded_mscoco_val2014_questions_first100.json").read_text())["questions"]
        results = json.loads((folder / "vqa_OpenEnded_mscoco_val2014_e2evlp_results.json").read_text())
        assert sorted(r["question_id"] for r in results) == sorted(q["question_id"] for q in questions)
        assert all(set(r) == {"question_id", "answer"} and isinstance(r["answer"], str) for r in results)
    elif task == "nlvr2":
        rows = list(csv.reader((folder / "dev_predictions.csv").read_text().splitlines()))
        lines = (data / "nlvr2" / "dev.jsonl").read_text().splitlines()
        identifiers = [json.loads(line)["identifier"] for line in lines]
        assert sorted(r[0] for r in rows) == sorted(identifiers)
        assert all(len(r) == 2 and r[1] in ("True", "False") for r in rows)
    elif task == "caption":
        results = json.loads((folder / "captions_test_vlpkit_results.json").read_text())
        assert results and all(set(r) == {"image_id", "caption"} and isinstance(r["caption"], str) for r in results)
    elif task == "retrieval":
        assert list(folder.glob("retrieval_test*.json")), sorted(p.name for p in folder.iterdir())
    else:
        results = json.loads((folder / "detections_val_results.json").read_text())
        categories = {c["id"] for c in json.loads((data / "coco" / "annotations" /
                                                   "instances_val2014.json").read_text())["categories"]}
        assert results and all(set(r) >= {"image_id", "category_id", "bbox", "score"} for r in results)
        assert {r["category_id"] for r in results} <= categories  # real COCO category ids, not contiguous labels
