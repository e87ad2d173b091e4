"""The downstream payoff of pretraining (`benchmarks/payoff.py`) in its quick mode, so that it keeps running: a
2-step pretraining run on a 40-image world, then 4 fine-tuning steps of VQA and NLVR2 from it and from the control
(the same trunk, everything else re-drawn). The accuracies of so short a run mean nothing: the test checks the
control's construction, the records, the reuse of finished records and the docs block.

The full run (`python benchmarks/payoff.py --run runs/demo --write-docs docs/pretraining.md`) writes the table of
docs/pretraining.md.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.payoff import DOCS_BEGIN, DOCS_END, MODELS, TASKS, control_model, main
from vlpkit import E2EVLP
from vlpkit.pretraining.run import load_config, pretrain


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("payoff")
    cfg = load_config("e2evlp-tiny", [f"trainer.output_dir={tmp / 'run'}", "trainer.max_steps=2",
                                      "trainer.batch_size=4", "trainer.progress_bar=false", "trainer.eval_every=0",
                                      f"data.shapes.root={tmp / 'world'}", "data.shapes.num_images=40"])
    pretrain(cfg)
    docs = tmp / "pretraining.md"
    docs.write_text(f"# Pretraining\n\nBefore.\n\n{DOCS_BEGIN}\nold table\n{DOCS_END}\n\nAfter.\n")
    argv = ["--quick", "--run", str(tmp / "run"), "--workdir", str(tmp / "payoff"), "--output",
            str(tmp / "payoff.json"), "--write-docs", str(docs)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLPKIT_CACHE", str(tmp / "cache"))
        result = main(argv)
        again = main(argv[:-2])
    return tmp, result, again, docs.read_text()


def test_control_keeps_the_trunk_and_redraws_the_rest(quick):
    tmp = quick[0]
    pretrained = E2EVLP.from_pretrained(tmp / "run" / "model").state_dict()
    control = E2EVLP.from_pretrained(control_model(tmp / "run", tmp / "control") / "model").state_dict()
    assert pretrained.keys() == control.keys()
    for key, value in pretrained.items():
        same = torch.equal(value, control[key])
        if key.startswith("backbone."):
            assert same, key
        elif value.is_floating_point() and value.numel() > 1 and value.std() > 0:
            assert not same, key
    assert (tmp / "control" / "tokenizer" / "vocab.txt").is_file()


def test_every_model_task_and_seed_is_recorded_and_reused(quick):
    _, result, again, _ = quick
    assert sorted(result["records"]) == sorted(f"{m}/{t}/0" for m in MODELS for t in TASKS)
    assert all(0.0 <= r["accuracy"] <= 100.0 for r in result["records"].values())
    assert again["records"] == result["records"]  # read back, not run again


def test_the_docs_block_is_replaced_and_nothing_else(quick):
    docs = quick[3]
    assert docs.startswith("# Pretraining\n\nBefore.\n\n") and docs.endswith("\n\nAfter.\n")
    assert "old table" not in docs
    assert "| starting point | VQA val | NLVR2 dev |" in docs and "warmed-up trunk only" in docs
    assert "benchmarks/payoff.py" in docs
