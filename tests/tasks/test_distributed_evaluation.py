"""Evaluation spread over processes: in a real 2-process gloo group each process runs the model on its share of a
split only, and every task's metrics and results files equal those of one process evaluating the whole split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.gloo import needs_fork, run_two_ranks
from vlpkit.builder import build_e2evlp
from vlpkit.data.shapes import SceneConfig
from vlpkit.ops.distributed import gather_shards, shard_range
from vlpkit.pretraining.shapes import prepare_shapes
from vlpkit.tasks.captioning import CaptioningConfig, CaptionModel, evaluate_captioning
from vlpkit.tasks.detection import DetectionConfig, DetectionModel, evaluate_detection
from vlpkit.tasks.nlvr2 import NLVR2Data, NLVR2Model, evaluate_nlvr2
from vlpkit.tasks.retrieval import RetrievalConfig, RetrievalModel, evaluate_retrieval
from vlpkit.tasks.vqa import VQAData, VQAModel, build_answer_vocab, evaluate_vqa

SIZE = dict(eval_size=64, max_size=96)


def test_shares_cover_the_range_in_order_and_differ_by_at_most_one():
    assert shard_range(7) == range(0, 7)  # one process: everything
    for n in (0, 1, 5, 6, 17):
        for world in (2, 3, 4):
            shares = [range(r * n // world, (r + 1) * n // world) for r in range(world)]
            assert [i for s in shares for i in s] == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert gather_shards((3, 1)) == [3, 1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    # 60 images: val splits of odd and even sizes, so the shares are uneven for some task
    setup = prepare_shapes(tmp_path_factory.mktemp("dist_eval") / "world", num_images=60, seed=4,
                           scene=SceneConfig(image_size=64), nlvr2_sets=4, answer_noise=0.3)
    torch.manual_seed(0)
    e2evlp = build_e2evlp("e2evlp-tiny", dropout=0.0, **setup.model_overrides()).eval()
    return setup, e2evlp


def _evaluate_all(setup, e2evlp, out: Path | None) -> dict:
    """Every task's evaluation of its validation split with one shared tiny model; `out` receives the results
    files (None: nothing written). Also counts the encoder rows this process ran."""
    rows = [0]
    hook = e2evlp.encoder.register_forward_hook(lambda m, args, output: rows.__setitem__(0, rows[0] + len(args[0])))
    vqa = VQAData.from_shapes(setup)
    vocab = build_answer_vocab(vqa.train[0].annotations, size=None, min_count=1)
    nlvr2 = NLVR2Data.from_shapes(setup)
    tok = setup.tokenizer
    sub = (lambda name: out / name) if out is not None else (lambda name: None)
    torch.manual_seed(1)  # the task heads are initialised alike in every process
    try:
        metrics = {
            "vqa": evaluate_vqa(VQAModel(e2evlp, vocab, tok, **SIZE).eval(), tok, vqa.eval["val"], "val",
                                sub("vqa"), batch_size=5),
            "nlvr2": evaluate_nlvr2(NLVR2Model(e2evlp, tok, **SIZE).eval(), tok, nlvr2.eval["dev"], "dev",
                                    sub("nlvr2"), batch_size=5),
            "caption": evaluate_captioning(CaptionModel.from_checkpoint(e2evlp, tok, **SIZE).eval(), tok, setup,
                                           "val", sub("caption"),
                                           CaptioningConfig(max_generation_length=6, eval_tokenizer="simple",
                                                            eval_batch_size=3, **SIZE)),
            "retrieval_full": evaluate_retrieval(RetrievalModel.from_checkpoint(e2evlp, tok, **SIZE).eval(), tok,
                                                 setup, "val", sub("retrieval"),
                                                 RetrievalConfig(image_batch_size=3, **SIZE), mode="full"),
            "retrieval_rerank": evaluate_retrieval(RetrievalModel.from_checkpoint(e2evlp, tok, **SIZE).eval(), tok,
                                                   setup, "val", None, RetrievalConfig(image_batch_size=3, **SIZE),
                                                   mode="rerank", k=2),
            "detection": evaluate_detection(DetectionModel(e2evlp).eval(), tok, setup, "val", sub("detection"),
                                            DetectionConfig(eval_batch_size=3, train_scales=[64], **SIZE)),
        }
    finally:
        hook.remove()
    return {"metrics": metrics, "encoder_rows": rows[0]}


def _worker(rank: int, out_dir: str, setup, e2evlp) -> dict:
    return _evaluate_all(setup, e2evlp, Path(out_dir) / "files" if rank == 0 else None)


def _files(folder: Path) -> dict[str, object]:
    return {str(p.relative_to(folder)): json.loads(p.read_text()) if p.suffix == ".json" else p.read_text()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@needs_fork
@pytest.mark.timeout(300)
def test_two_processes_evaluate_shares_and_match_one_process(tmp_path, world):
    setup, e2evlp = world
    single = _evaluate_all(setup, e2evlp, tmp_path / "single")

    ranks = run_two_ranks(_worker, tmp_path, str(tmp_path), setup, e2evlp, timeout=280)

    # the work was split: each process ran the encoder on part of what one process runs, together all of it
    assert all(0 < r["encoder_rows"] < single["encoder_rows"] for r in ranks)
    assert sum(r["encoder_rows"] for r in ranks) == single["encoder_rows"]

    files = {"results_file", "predictions_file"}  # where rank 0 wrote its file (not the single run's folder)
    for name, expected in single["metrics"].items():
        expected = {k: v for k, v in expected.items() if k not in files}
        for r in ranks:
            got = {k: v for k, v in r["metrics"][name].items() if k not in files}
            assert set(got) == set(expected), name
            for key, value in expected.items():
                assert got[key] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-6, abs=1e-9)), \
                    (name, key)
    assert single["metrics"]["vqa"]["num_questions"] > 1 and single["metrics"]["detection"]["num_images"] > 1

    # rank 0 wrote the same official files (same predictions, same order); rank 1 wrote nothing
    expected_files, got_files = _files(tmp_path / "single"), _files(tmp_path / "files")
    assert set(got_files) == set(expected_files) and len(expected_files) >= 6
    for name, content in expected_files.items():
        if name.startswith("detection/") and name.endswith("results.json"):
            for a, b in zip(got_files[name], content, strict=True):  # boxes and scores from float arithmetic
                assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
                assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3) and a["score"] == pytest.approx(b["score"])
        elif isinstance(content, dict) and "metrics" in content:
            assert {k: v for k, v in got_files[name].items() if k != "metrics"} == \
                {k: v for k, v in content.items() if k != "metrics"}, name
        else:
            assert got_files[name] == pytest.approx(content) if isinstance(content, dict) else \
                got_files[name] == content, name
