"""`vlpkit pretrain` -> `vlpkit finetune TASK` -> `vlpkit evaluate TASK`, in process, on a tiny shapes world: the
evaluation of the saved task folder reproduces the metrics and the official results file of fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlpkit.cli import main
from vlpkit.inference import E2EVLPPredictor, load_labels

IMAGES = 48  # the smallest world with NLVR2 dev and test1 sets (images // 16 sets, split 80/10/10)
SMALL = ["task.train_scales=[64]", "task.max_size=96", "task.eval_size=64", "trainer.batch_size=4"]
TRAIN = ["trainer.max_steps=3", "trainer.progress_bar=false", "trainer.save_every=0", "trainer.log_every=1"]
# task -> (extra recipe fields, --split given to evaluate, the split's name in the task, results file of that split)
CASES = {
    "vqa": (["task.answer_min_count=1", "trainer.lr=1e-3"], "val", "val",
            "results/vqa_OpenEnded_shapes_val_e2evlp_results.json"),
    # frozen_trunk: fine-tuning scores through the feature cache, `evaluate` reloads without one; they must agree
    "nlvr2": (["trainer.lr=1e-3", "task.frozen_trunk=true"], "val", "dev", "results/dev_predictions.csv"),  # val = dev
    "caption": (["task.max_generation_length=8", "task.eval_tokenizer=simple"], None, "test",
                "captions_test_vlpkit_results.json"),
    "retrieval": ([], None, "test", "retrieval_test_results.json"),
    "detection": (["task.crop=false", "task.frozen_trunk=true"], None, "val", "detections_val_results.json"),
}


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("vlpkit-cache")  # where `--data shapes` generates its world


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, cache):
    """A `vlpkit pretrain` run folder (model/, tokenizer/) of one step on the 48-image shapes world."""
    run = tmp_path_factory.mktemp("pretrain") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLPKIT_CACHE", str(cache))
        assert main(["pretrain", "--config", "e2evlp-tiny", *_sets([
            "trainer.max_steps=1", f"trainer.output_dir={run}", f"data.shapes.num_images={IMAGES}",
            "trainer.batch_size=4", "data.image.train_scales=[64]", "data.image.max_size=96",
            "data.image.eval_size=64", "trainer.progress_bar=false", "trainer.save_every=0",
            "warmup.steps=2", "warmup.batch_size=4"])]) == 0
    assert (run / "model" / "model.safetensors").is_file() and (run / "tokenizer").is_dir()
    # the CLI ran the config's trunk warm-up and pretrained from it
    saved = json.loads((run / "pretrain_config.json").read_text())
    assert saved["model"]["overrides"]["backbone_weights"].endswith(".safetensors")
    return run


def _table_body(text: str, title: str) -> list[str]:
    """The header and rows of the metrics table printed under `title`."""
    lines = text.splitlines()
    start = lines.index(title) + 1
    end = start + 2  # header and rule
    while end < len(lines) and len(lines[end].split()) == 2 and _is_number(lines[end].split()[1]):
        end += 1
    return lines[start:end]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _without_paths(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith("_file") and k != "split"}


@pytest.mark.parametrize("task", list(CASES))
def test_evaluate_reproduces_the_finetuning_metrics_and_results_file(task, pretrained, cache, tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setenv("VLPKIT_CACHE", str(cache))
    extra, split_arg, split, results = CASES[task]
    run = tmp_path / task
    data = ["--data", "shapes", "--shapes-images", str(IMAGES)]
    assert main(["finetune", task, "--checkpoint", str(pretrained), *data, "--output", str(run),
                 *_sets(SMALL + extra + TRAIN)]) == 0
    finetune_out = capsys.readouterr().out
    # the fine-tuned folder names what it detects: the pretraining run's labels.json comes along
    assert load_labels(run / "model").objects == load_labels(pretrained).objects != []
    saved = json.loads((run / "metrics.json").read_text())
    assert ("trunk_cache" in saved["info"]) is ("task.frozen_trunk=true" in extra)  # the option reached the recipe
    if "trunk_cache" in saved["info"]:
        assert saved["info"]["trunk_cache"]["misses"] > 0 and saved["config"]["frozen_trunk"] is True
    expected = saved["metrics"][split]

    out = tmp_path / "evaluation"
    assert main(["evaluate", task, "--model", str(run), *data, "--output", str(out),
                 *(["--split", split_arg] if split_arg else [])]) == 0
    evaluate_out = capsys.readouterr().out
    record = json.loads((out / f"evaluation_{split}.json").read_text())
    assert record["task"] == task and record["split"] == split and record["metrics"]["split"] == split
    assert _without_paths(record["metrics"]) == _without_paths(expected)
    if task != "detection":  # (3 steps leave the detector at AP 0; its detections file is compared below)
        assert any(v > 0 for k, v in expected.items() if isinstance(v, float) and not k.startswith("num_"))
    # the official results file: the same predictions, byte for byte
    assert (out / results.split("/")[-1]).read_bytes() == (run / results).read_bytes()
    # and the same printed table
    title = f"{task} {split}"
    assert _table_body(evaluate_out, f"{title} ({run})") == _table_body(finetune_out, title)

    # the folder is refused as another task's, and an unknown split names the available ones
    other = "vqa" if task != "vqa" else "caption"
    with pytest.raises(ValueError, match="not a (VQAModel|CaptionModel)"):
        main(["evaluate", other, "--model", str(run), *data])
    if task in ("vqa", "nlvr2"):
        with pytest.raises(KeyError, match="available"):
            main(["evaluate", task, "--model", str(run), *data, "--split", "train2"])
    if task == "vqa":  # the fine-tuned folder answers questions about a file, as the predictor does
        image = _image_file(tmp_path / "mine.png")
        assert main(["predict", "--model", str(run), str(image), "--question", "what color is the circle?",
                     "--json"]) == 0
        [result] = json.loads(capsys.readouterr().out)
        expected = E2EVLPPredictor.from_pretrained(run).answer([Image.open(image).convert("RGB")],
                                                                ["what color is the circle?"])
        assert result["answer"] == expected[0] and 0 < result["answer_score"] <= 1


def _image_file(path, seed=0):
    """A 96x72 PNG of coloured noise blocks: the user's own image, of a size the model never saw."""
    pixels = np.random.default_rng(seed).integers(0, 255, (9, 12, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    Image.fromarray(pixels).save(path)
    return path


def test_predict_on_image_files(pretrained, tmp_path, capsys):
    images = [str(_image_file(tmp_path / "a.png", 0)), str(_image_file(tmp_path / "b.jpg", 1))]
    assert main(["predict", "--model", str(pretrained), *images, "--caption", "--detect", "--threshold", "0",
                 "--match", "a red circle", "--match", "three blue squares", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    predictor = E2EVLPPredictor.from_pretrained(pretrained)
    pictures = [Image.open(p).convert("RGB") for p in images]
    assert [r["image"] for r in results] == images
    assert [r["caption"] for r in results] == predictor.caption(pictures)
    queries = predictor.model.config.num_queries
    for r, det in zip(results, predictor.detect(pictures, threshold=0.0)):
        assert len(r["detections"]) == queries == len(det["labels"])  # threshold 0 keeps every query
        assert [d["label"] for d in r["detections"]] == det["labels"]
        assert all(0 <= d["box"][0] <= d["box"][2] <= 96 and 0 <= d["box"][1] <= d["box"][3] <= 72
                   for d in r["detections"])  # pixels of the file as given
    matched = predictor.match(pictures, ["a red circle", "three blue squares"])
    assert [v for r in results for v in r["match"].values()] == pytest.approx(matched.flatten().tolist(), abs=1e-4)

    # the text form, the default (a caption), and named errors with exit status 2
    assert main(["predict", "--model", str(pretrained), images[0]]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == images[0] and out.splitlines()[1].startswith(f"  caption: {results[0]['caption']}")
    assert main(["predict", "--model", str(pretrained), images[0], "--question", "how many?"]) == 2
    assert "cannot answer questions: it has no VQA head" in capsys.readouterr().err
    assert main(["predict", "--model", str(pretrained), str(tmp_path / "missing.jpg")]) == 2
    assert f"image not found: {tmp_path / 'missing.jpg'}" in capsys.readouterr().err
    (tmp_path / "notes.jpg").write_text("not an image")
    assert main(["predict", "--model", str(pretrained), str(tmp_path / "notes.jpg")]) == 2
    assert "notes.jpg is not a readable image" in capsys.readouterr().err


def test_evaluate_arguments_are_checked(tmp_path):
    with pytest.raises(SystemExit):
        main(["evaluate", "vqa"])  # --model is required
    with pytest.raises(SystemExit, match="expected 'shapes', a YAML/JSON file"):
        main(["evaluate", "vqa", "--model", str(tmp_path), "--data", str(tmp_path / "missing.yaml")])
    with pytest.raises(SystemExit, match="evaluate trains nothing"):
        main(["evaluate", "vqa", "--model", str(tmp_path), "--set", "trainer.max_steps=1"])


def test_shapes_nlvr2_sets_sizes_the_generated_worlds_nlvr2(cache, tmp_path, monkeypatch):
    from vlpkit.cli import _task_data

    monkeypatch.setenv("VLPKIT_CACHE", str(cache))
    setup = _task_data("shapes", IMAGES, nlvr2_sets=5)
    assert setup.world.manifest["params"]["nlvr2_sets"] == 5
    lines = [line for split in ("train", "dev", "test1")
             for line in setup.world.nlvr2(split).read_text().splitlines() if line]
    assert len(lines) == 5 * 8  # 8 statements per set: 2 sentences x 4 pairs
    default = _task_data("shapes", IMAGES)
    assert default.world.root != setup.world.root and default.world.manifest["params"]["nlvr2_sets"] is None
    with pytest.raises(SystemExit, match="--shapes-nlvr2-sets applies to --data shapes only"):
        _task_data(str(tmp_path), IMAGES, nlvr2_sets=5)


def test_a_data_file_reads_its_relative_paths_from_its_own_folder(cache, tmp_path, monkeypatch):
    """`--data FILE` from another working directory: every task reads the file's relative paths from the file's
    folder, as the Python API does (VQA and NLVR2 through the task data, captions and retrieval through
    `caption_data`, detection through `detection_data`)."""
    import shutil

    from vlpkit.cli import _task_data
    from vlpkit.data.tokenization import save_tokenizer
    from vlpkit.tasks.captioning import caption_data
    from vlpkit.tasks.detection import detection_data
    from vlpkit.tasks.vqa import VQAData

    monkeypatch.setenv("VLPKIT_CACHE", str(cache))
    shapes_setup = _task_data("shapes", IMAGES)
    w = shapes_setup.world
    data = tmp_path / "data"
    (data / "ann").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copy(w.captions(split), data / "ann" / f"captions_{split}.json")
        shutil.copy(w.instances(split), data / "ann" / f"instances_{split}.json")
        (data / f"{split}_images").symlink_to(w.image_dir(split))
    save_tokenizer(shapes_setup.tokenizer, data / "tok")
    (data / "captions.yaml").write_text(
        "tokenizer: tok\nsplits:\n  train: {captions: ann/captions_train.json, images: train_images}\n"
        "  val: {captions: ann/captions_val.json, images: val_images}\n")
    (data / "detection.yaml").write_text(
        "train: {instances: ann/instances_train.json, captions: ann/captions_train.json, images: train_images}\n"
        "tokenizer: tok\n")
    shutil.copy(w.vqa_questions("val"), data / "ann" / "questions_val.json")
    (data / "vqa.yaml").write_text("train: {questions: ann/questions_val.json, image_root: val_images}\n"
                                   "eval: {val: {questions: ann/questions_val.json, image_root: val_images}}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    captions = caption_data(_task_data(str(data / "captions.yaml"), IMAGES))
    assert captions.splits["val"].annotations == data / "ann" / "captions_val.json"
    assert captions.splits["train"].image_root == data / "train_images"
    detection = detection_data(_task_data(str(data / "detection.yaml"), IMAGES))
    assert detection["train"]["images"] == str(data / "train_images")
    assert detection["tokenizer"] == str(data / "tok")
    vqa = VQAData.resolve(_task_data(str(data / "vqa.yaml"), IMAGES))
    assert vqa.train[0].questions == data / "ann" / "questions_val.json"
    # a data file without a tokenizer takes the checkpoint's (as VQA and NLVR2 do), and says so when there is none
    (data / "no_tok.yaml").write_text((data / "captions.yaml").read_text().replace("tokenizer: tok\n", ""))
    with pytest.raises(ValueError, match="lacks 'tokenizer', and no tokenizer is saved with the checkpoint"):
        caption_data(data / "no_tok.yaml")
    assert caption_data(data / "no_tok.yaml", shapes_setup.tokenizer).tokenizer is shapes_setup.tokenizer


def test_finetune_resume_continues_exactly(pretrained, cache, tmp_path, monkeypatch):
    """`vlpkit finetune --resume` after a run stopped at a checkpoint ends with the weights of the uninterrupted
    run (captioning; every task goes through the same trainer)."""
    import torch
    from safetensors.torch import load_file

    monkeypatch.setenv("VLPKIT_CACHE", str(cache))
    common = ["finetune", "caption", "--checkpoint", str(pretrained), "--data", "shapes", "--shapes-images",
              str(IMAGES), *_sets(SMALL + ["task.max_generation_length=4", "task.eval_tokenizer=simple",
                                           "trainer.progress_bar=false", "trainer.save_every=2",
                                           "trainer.deterministic=true", "task.max_eval_images=2"])]
    assert main([*common, "--output", str(tmp_path / "whole"), "--set", "trainer.max_steps=4"]) == 0
    assert main([*common, "--output", str(tmp_path / "cut"), "--set", "trainer.max_steps=2"]) == 0
    assert main([*common, "--output", str(tmp_path / "cut"), "--set", "trainer.max_steps=4", "--resume"]) == 0
    # the val split's official results file is written too, not only the test split's
    assert (tmp_path / "whole" / "captions_val_vlpkit_results.json").is_file()
    assert (tmp_path / "whole" / "captions_test_vlpkit_results.json").is_file()
    whole = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    for name, value in whole.items():
        assert torch.equal(value, resumed[name]), name
