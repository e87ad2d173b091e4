"""`trainer.compile_modules`: torch.compile in place, on the whole model or on named blocks; the same updates as
the eager model, the same parameter names, and an unknown block named."""

from __future__ import annotations

import pytest
import torch
from accelerate.state import AcceleratorState

from vlpkit import build_e2evlp
from vlpkit.config import ConfigError
from vlpkit.engine import Trainer, seed_everything
from vlpkit.engine.compile import compile_modules, find_submodule

from .test_trainer import Toy, ToyData, _config, _weights, loss_fn


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    torch._dynamo.reset()


def _run(tmp_path, name, **kw):
    seed_everything(0)
    model = Toy()
    trainer = Trainer(model, loss_fn, ToyData(), None, _config(tmp_path, name, **kw))
    return trainer, trainer.train(), model


@pytest.mark.parametrize("modules", [["*"], ["head"], ["backbone", "head"]])
def test_a_compiled_run_makes_the_eager_updates_with_the_eager_names(tmp_path, modules):
    _, eager_log, eager = _run(tmp_path, "eager")
    AcceleratorState._reset_state(reset_partial_state=True)
    trainer, log, model = _run(tmp_path, "compiled", compile_modules=modules, compile_backend="eager")
    assert trainer.compiled == ["" if m == "*" else m for m in modules]
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in eager_log], rel=1e-6)
    got, want = _weights(model), _weights(eager)
    assert got.keys() == want.keys()  # nn.Module.compile wraps nothing: checkpoints are interchangeable
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)


def test_block_names_resolve_inside_a_task_model_and_an_unknown_one_is_named():
    wrapper = torch.nn.Module()
    wrapper.e2evlp = build_e2evlp("e2evlp-tiny")
    assert find_submodule(wrapper, "encoder")[0] == "e2evlp.encoder"
    assert find_submodule(wrapper, "e2evlp.decoder")[0] == "e2evlp.decoder"
    with pytest.raises(ConfigError, match=r"Module has no submodule 'encodr'; its children are \['e2evlp'\]"):
        compile_modules(wrapper, ["encodr"])
