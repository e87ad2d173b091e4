"""Loader workers: the automatic count (0 on a CPU, one core kept per process on a GPU node) and worker processes
feeding the trainer the same batches as the main process does."""

from __future__ import annotations

import pytest
from accelerate.state import AcceleratorState

from tests.engine.test_trainer import Toy, ToyData, loss_fn
from vlpkit.config import ConfigError
from vlpkit.engine import Trainer, TrainerConfig, seed_everything
from vlpkit.engine import loader as loader_module
from vlpkit.engine.loader import loader_workers


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize(("cores", "per_node", "expected"), [(16, "1", 8), (16, "2", 7), (64, "8", 7),
                                                              (2, "1", 1), (1, "1", 0), (4, "8", 0)])
def test_automatic_count_on_a_gpu_keeps_one_core_per_process(monkeypatch, cores, per_node, expected):
    monkeypatch.setattr(loader_module, "available_cores", lambda: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", per_node)
    assert loader_workers(None, "cuda") == expected
    assert loader_workers(None, "cpu") == 0  # the step needs every core
    assert loader_workers(3, "cpu") == loader_workers(3, "cuda") == 3  # an explicit count is kept


def test_workers_feed_the_same_batches_as_the_main_process(tmp_path):
    def run(name, workers):
        seed_everything(0)
        cfg = TrainerConfig(output_dir=str(tmp_path / name), batch_size=4, max_steps=5, lr=1e-2, save_every=0,
                            progress_bar=False, seed=3, num_workers=workers, cpu=True)
        trainer = Trainer(Toy(), loss_fn, ToyData(), None, cfg)
        history = trainer.train()
        AcceleratorState._reset_state(reset_partial_state=True)
        return trainer.num_workers, [r["loss"] for r in history]

    assert run("auto", None)[0] == 0  # on a CPU
    main, two = run("main", 0), run("two", 2)
    assert two[0] == 2 and two[1] == main[1]
    with pytest.raises(ConfigError, match=r"num_workers=-1; expected >= 0 or None"):
        TrainerConfig(num_workers=-1)
