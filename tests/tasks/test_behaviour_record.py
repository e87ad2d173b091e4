"""Every task's behaviour on fixed seeds, recorded before the task layer is redesigned (issue: one task design).

For each task: three fine-tuning steps from one seeded `e2evlp-tiny` on a 48-image shapes world, then
`vlpkit.tasks.evaluate` of the saved folder on the task's default split. The record (`record/behaviour.json`)
holds every logged loss term per step, the evaluation metrics and the SHA-256 of the official results file;
beside it, the predictor's captions and VQA answers on two validation images. A redesign that keeps the
arithmetic must reproduce the record bit for bit on the machine that wrote it (same torch version and CPU
capability); elsewhere the loss terms are compared to a relative 1e-3 and the rest is skipped, since float
reductions differ between CPU kernels and a 3-step model's argmax predictions can flip on a near-tie.

Rewrite the record only when behaviour is meant to change:
    VLPKIT_WRITE_RECORD=1 .venv/bin/python -m pytest tests/tasks/test_behaviour_record.py
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlpkit import build_e2evlp
from vlpkit.inference import E2EVLPPredictor
from vlpkit.pretraining.shapes import prepare_shapes
from vlpkit.tasks import evaluate, finetune

HERE = Path(__file__).resolve().parent / "record"
RECORD = HERE / "behaviour.json"
WRITE = os.environ.get("VLPKIT_WRITE_RECORD") == "1"
SIZE = {"train_scales": [64], "max_size": 96, "eval_size": 64}
TRAIN = {"max_steps": 3, "batch_size": 4, "progress_bar": False, "save_every": 0, "log_every": 1, "seed": 0}
# task -> (recipe fields beside SIZE, the official results file of its default evaluation split)
CASES = {
    "vqa": ({"answer_min_count": 1, "trainer": {"lr": 1e-3}}, "vqa_OpenEnded_shapes_val_e2evlp_results.json"),
    "nlvr2": ({"trainer": {"lr": 1e-3}, "frozen_trunk": True}, "dev_predictions.csv"),
    "caption": ({"max_generation_length": 8, "eval_tokenizer": "simple"}, "captions_test_vlpkit_results.json"),
    "retrieval": ({}, "retrieval_test_results.json"),
    "detection": ({"crop": False, "frozen_trunk": True}, "detections_val_results.json"),
}
NOT_BEHAVIOUR = ("samples_per_s",)  # wall-clock figures in the log


def machine() -> dict:
    # the thread count splits CPU reductions differently: the same machine with 1 thread differs in the 7th digit
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads()}


@pytest.fixture(scope="module")
def record() -> dict:
    if WRITE:
        return {"machine": machine(), "tasks": {}}
    return json.loads(RECORD.read_text())


@pytest.fixture(scope="module")
def same_machine(record) -> bool:
    return record["machine"] == machine()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 48-image world (the smallest with NLVR2 dev and test1 sets) on the recorded vocabulary: WordPiece
    training is not deterministic (huggingface/tokenizers#1794), so the tokenizer is not retrained."""
    root = tmp_path_factory.mktemp("record") / "world"
    (root / "tokenizer").mkdir(parents=True)
    shutil.copy(HERE / "vocab.txt", root / "tokenizer" / "vocab.txt")
    return prepare_shapes(root, num_images=48, seed=0)


@pytest.fixture(scope="module")
def runs(setup, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    folders = {}
    for task, (extra, _) in CASES.items():
        torch.manual_seed(0)
        model = build_e2evlp("e2evlp-tiny", **setup.model_overrides())
        folders[task] = out / task
        finetune(task, model, setup, folders[task], {**SIZE, **extra}, TRAIN)
    return folders


def observe(task: str, run: Path, setup, tmp_path: Path) -> dict:
    losses = [{k: v for k, v in r.items() if k not in ("kind", "lr", "lr_backbone", *NOT_BEHAVIOUR)}
              for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    metrics = evaluate(task, run, setup, output_dir=tmp_path)
    results = tmp_path / CASES[task][1]
    return {"losses": losses,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not k.endswith("_file")},
            "results_sha256": hashlib.sha256(results.read_bytes()).hexdigest()}


def assert_close(got, want, rel: float, where: str) -> None:
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            assert_close(got[k], want[k], rel, f"{where}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, rel, f"{where}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=rel, abs_tol=rel), f"{where}: {got} != recorded {want}"
    else:
        assert got == want, f"{where}: {got!r} != recorded {want!r}"


@pytest.mark.parametrize("task", list(CASES))
def test_task_reproduces_its_record(task, runs, setup, record, same_machine, tmp_path):
    seen = observe(task, runs[task], setup, tmp_path)
    if WRITE:
        record["tasks"][task] = seen
        RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        return
    want = record["tasks"][task]
    assert seen["losses"], "no training step was logged"
    if not same_machine:
        assert_close(seen["losses"], want["losses"], 1e-3, f"{task}.losses")
        pytest.skip(f"recorded on {record['machine']}, running on {machine()}: losses agree to 1e-3; "
                    "metrics and predictions are compared bit for bit only on the recording machine")
    assert seen == want


def test_predictor_reproduces_its_record(runs, setup, record, same_machine):
    world = setup.world
    images_info = json.loads(world.instances("val").read_text())["images"][:2]
    images = [Image.open(world.image_dir("val") / im["file_name"]) for im in images_info]
    caption = E2EVLPPredictor.from_pretrained(runs["caption"] / "model")
    vqa = E2EVLPPredictor.from_pretrained(runs["vqa"] / "model")
    seen = {"captions": caption.caption(images),
            "answers": vqa.answer(images, ["what color is the circle?", "how many objects are there?"])}
    seen = json.loads(json.dumps(seen, default=str))
    if WRITE:
        record["predictor"] = seen
        RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        return
    if not same_machine:
        pytest.skip(f"recorded on {record['machine']}, running on {machine()}: predictions are compared only on "
                    "the recording machine")
    assert seen == record["predictor"]
