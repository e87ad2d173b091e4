"""Trainer on a toy regression model: the update against a hand-written reference, logs, reproducibility,
gradient accumulation, the NaN guard, mixed precision, in-process resume and the config's JSON round trip."""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import torch
from accelerate.state import AcceleratorState
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from vlpkit.config import ConfigError
from vlpkit.engine import NonFiniteLossError, Trainer, TrainerConfig, lr_factor, read_log, seed_everything
from vlpkit.engine import trainer as trainer_module
from vlpkit.engine.state import TRAINER_STATE_NAME, rng_state_name


class ToyData(Dataset):
    """Sample i: x ~ N(0, 1)^4 seeded by i, target y = x . w + noise."""

    def __init__(self, n: int = 24) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1000 + i)
        x = torch.randn(4, generator=g)
        return {"x": x, "y": (x * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum(0, keepdim=True) + 0.1}


class Toy(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 16)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(torch.relu(self.backbone(x))))


def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mse = (model(batch["x"]) - batch["y"]).pow(2).mean()
    l1 = model.head.weight.abs().sum()
    return {"loss": mse + 0.01 * l1, "loss_mse": mse, "loss_l1": 0.01 * l1}


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate's singletons, as its own tests do
    torch.use_deterministic_algorithms(deterministic)


def _config(tmp_path, name="run", **kw) -> TrainerConfig:
    base = dict(output_dir=str(tmp_path / name), batch_size=4, epochs=2, lr=1e-2, backbone_lr=1e-3,
                save_every=0, log_every=1, progress_bar=False, seed=3, backbone_prefix="backbone.")
    return TrainerConfig(**{**base, **kw})


def _train(tmp_path, name="run", model=None, data=None, fn=loss_fn, eval_fn=None, **kw):
    if model is None:
        seed_everything(0)
        model = Toy()
    trainer = Trainer(model, fn, data or ToyData(), None, _config(tmp_path, name, **kw), eval_fn=eval_fn)
    return trainer, trainer.train()


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_updates_equal_a_hand_written_adamw_with_groups_and_clipping(tmp_path):
    seed_everything(0)
    model = Toy()
    reference = copy.deepcopy(model)
    data = ToyData()
    trainer, history = _train(tmp_path, model=model, data=data, epochs=1, clip_max_norm=0.5, warmup_steps=2,
                              weight_decay=1e-2)

    # the same run written out by hand: torch's sampler order, AdamW groups, clip, linear warm-up
    opt = torch.optim.AdamW([{"params": [reference.head.weight, reference.head.bias], "lr": 1e-2},
                             {"params": [reference.backbone.weight, reference.backbone.bias], "lr": 1e-3}],
                            weight_decay=1e-2)
    sampler = DistributedSampler(data, num_replicas=1, rank=0, seed=3)
    order = list(sampler)
    clipped_norms = []
    for step in range(len(order) // 4):
        batch = torch.utils.data.default_collate([data[i] for i in order[4 * step: 4 * step + 4]])
        for group, base in zip(opt.param_groups, (1e-2, 1e-3)):
            group["lr"] = base * min(1.0, (step + 1) / 2)
        loss_fn(reference, batch)["loss"].backward()
        clipped_norms.append(float(torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)))
        opt.step()
        opt.zero_grad()
    for name, value in _weights(reference).items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=1e-6, atol=1e-7, msg=name)
    assert [r["grad_norm"] for r in history] == pytest.approx(clipped_norms, rel=1e-5)
    assert max(clipped_norms) > 0.5  # clipping was active, so the comparison tests it
    assert [r["lr"] for r in history][:3] == pytest.approx([5e-3, 1e-2, 1e-2])
    assert [r["lr_backbone"] for r in history][:3] == pytest.approx([5e-4, 1e-3, 1e-3])


def test_logs_every_term_lr_and_throughput_and_calls_eval(tmp_path):
    calls = []

    def eval_fn(model):
        assert not model.training and not torch.is_grad_enabled()
        calls.append(trainer_steps())
        return {"weight_sum": model.head.weight.sum()}

    seed_everything(0)
    model = Toy(dropout=0.1)
    trainer = Trainer(model, loss_fn, ToyData(), None, _config(tmp_path, log_every=2, eval_every=4,
                                                                 warmup_steps=3, lr_drop_epochs=[1]),
                      eval_fn=eval_fn)

    def trainer_steps():
        return trainer.step

    history = trainer.train()
    assert trainer.total_steps == 12 and len(history) == 12 and model.training
    assert calls == [4, 8, 12]
    train_log = read_log(tmp_path / "run", "train")
    assert [r["step"] for r in train_log] == [2, 4, 6, 8, 10, 12]
    for record in train_log:
        for key in ("loss", "loss_mse", "loss_l1", "lr", "lr_backbone", "grad_norm", "samples_per_s", "epoch"):
            assert key in record, key
        assert record["loss"] == pytest.approx(record["loss_mse"] + record["loss_l1"], rel=1e-5)
        assert record["lr"] == pytest.approx(1e-2 * lr_factor(record["step"] - 1, 3, 6, [1]))
        assert record["samples_per_s"] > 0
    assert [r["step"] for r in read_log(tmp_path / "run", "eval")] == [4, 8, 12]
    assert history[7]["eval/weight_sum"] == pytest.approx(read_log(tmp_path / "run", "eval")[1]["weight_sum"])
    assert [r["epoch"] for r in history] == [0] * 6 + [1] * 6
    saved = json.loads((tmp_path / "run" / "trainer_config.json").read_text())
    assert TrainerConfig.from_dict(saved) == trainer.config


def test_seeded_run_reproduces_its_loss_curve(tmp_path):
    def curve(name, seed):
        seed_everything(0)
        trainer, history = _train(tmp_path, name, model=Toy(dropout=0.2), seed=seed, deterministic=True)
        return [(r["loss"], r["loss_mse"], r["grad_norm"]) for r in history], _weights(trainer.model)

    first, w1 = curve("a", seed=5)
    second, w2 = curve("b", seed=5)
    other, _ = curve("c", seed=6)
    assert first == second
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert other != first  # the seed drives data order and dropout


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    seed_everything(0)
    m_big = Toy()
    big = Trainer(m_big, loss_fn, ToyData(), None, _config(tmp_path, "big", batch_size=8, max_steps=3)).train()
    seed_everything(0)
    m_acc = Toy()
    accumulated = Trainer(m_acc, loss_fn, ToyData(), None,
                          _config(tmp_path, "acc", batch_size=2, grad_accum_steps=4, max_steps=3)).train()
    assert [r["loss"] for r in accumulated] == pytest.approx([r["loss"] for r in big], rel=1e-5)
    for name, value in m_big.state_dict().items():
        torch.testing.assert_close(m_acc.state_dict()[name], value, rtol=1e-5, atol=1e-6)


def test_accumulation_window_is_cut_at_the_end_of_the_epoch(tmp_path):
    trainer, history = _train(tmp_path, batch_size=4, grad_accum_steps=4, epochs=2, data=ToyData(20))
    assert trainer.steps_per_epoch == 2  # 5 micro-batches: windows of 4 and 1
    assert [r["epoch"] for r in history] == [0, 0, 1, 1]
    assert [r["samples_per_s"] > 0 for r in history] == [True] * 4


def test_nan_loss_stops_before_the_optimizer_step(tmp_path):
    calls = {"n": 0}
    snapshot = {}

    def nan_at_3(model, batch):
        calls["n"] += 1
        out = dict(loss_fn(model, batch))
        if calls["n"] == 3:
            snapshot.update(_weights(model))
            out["loss_bad"] = torch.tensor(float("nan"))
            out["loss"] = out["loss"] + out["loss_bad"]
        else:
            out["loss_bad"] = torch.zeros(())
        return out

    seed_everything(0)
    model = Toy()
    trainer = Trainer(model, nan_at_3, ToyData(), None, _config(tmp_path, save_every=1))
    with pytest.raises(NonFiniteLossError, match=r"non-finite 'loss_bad' at step 3 .*step_00000002"):
        trainer.train()
    assert trainer.step == 2
    assert all(torch.equal(model.state_dict()[k], v) for k, v in snapshot.items())


def test_nan_policy_skip_skips_only_that_update(tmp_path):
    def nan_once(model, batch):
        out = loss_fn(model, batch)
        if nan_once.calls == 1:
            out["loss_mse"] = out["loss_mse"] * float("inf")
            out["loss"] = out["loss"] + out["loss_mse"]
        nan_once.calls += 1
        return out

    nan_once.calls = 0
    with pytest.warns(UserWarning, match="non-finite 'loss_mse' at step 2"):
        trainer, history = _train(tmp_path, fn=nan_once, nan_policy="skip", max_steps=4)
    assert [r.get("skipped", 0) for r in history] == [0, 1, 0, 0]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.parametrize("fast_bf16", [False, True])
def test_bf16_autocast_on_cpu_and_fp16_refused(tmp_path, monkeypatch, fast_bf16):
    """bf16 autocasts on a CPU; the slow-path warning comes only where oneDNN has no bf16 (checked both ways)."""
    monkeypatch.setattr(trainer_module, "cpu_has_fast_bf16", lambda: fast_bf16)
    dtypes = []

    def recording_loss(model, batch):
        dtypes.append(model.backbone(batch["x"]).dtype)
        return loss_fn(model, batch)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, history = _train(tmp_path, fn=recording_loss, mixed_precision="bf16", max_steps=2)
    slow = [w for w in caught if "bf16' on CPU runs convolutions through torch's slow" in str(w.message)]
    assert len(slow) == (0 if fast_bf16 else 1)
    assert dtypes == [torch.bfloat16] * 2
    assert all(math.isfinite(r["loss"]) for r in history)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay fp32
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(ConfigError, match="fp16' needs a GPU"):
        _train(tmp_path, "fp16", mixed_precision="fp16")


def test_resume_in_process_continues_exactly_and_extends_the_run(tmp_path):
    seed_everything(0)
    full_model = Toy(dropout=0.3)
    full = Trainer(full_model, loss_fn, ToyData(), None, _config(tmp_path, "full", epochs=3, deterministic=True))
    full_history = full.train()

    seed_everything(0)
    part = Trainer(Toy(dropout=0.3), loss_fn, ToyData(), None,
                   _config(tmp_path, "part", epochs=3, max_steps=8, save_every=4, deterministic=True))
    part.train()
    state_file = tmp_path / "part" / "checkpoints" / "step_00000008" / TRAINER_STATE_NAME
    state = torch.load(state_file, weights_only=True)  # everything saved loads without pickle
    torch.load(state_file.parent / rng_state_name(0), weights_only=True)
    assert state["step"] == 8 and state["sampler"]["epoch"] == 1 and state["sampler"]["position"] == 8

    seed_everything(123)  # a different model init: the checkpoint must override it
    resumed_model = Toy(dropout=0.3)
    resumed = Trainer(resumed_model, loss_fn, ToyData(), None,
                      _config(tmp_path, "part", epochs=3, deterministic=True))  # max_steps lifted: 18 steps
    rest = resumed.train(resume=True)
    assert [r["step"] for r in rest] == list(range(9, 19))
    assert [r["loss"] for r in rest] == [r["loss"] for r in full_history[8:]]
    assert all(torch.equal(resumed_model.state_dict()[k], v) for k, v in full_model.state_dict().items())
    assert [r["step"] for r in read_log(tmp_path / "part", "train")] == list(range(1, 19))


def test_refuses_to_mix_runs_and_checks_loss_fn_output(tmp_path):
    _train(tmp_path, max_steps=1)
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(FileExistsError, match="resume=True"):
        _train(tmp_path, max_steps=1)
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(TypeError, match="total under 'loss'"):
        _train(tmp_path, "b", fn=lambda m, b: {"mse": m(b["x"]).sum()})
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(TypeError, match=r"'loss' = \[4, 1\]"):
        _train(tmp_path, "c", fn=lambda m, b: {"loss": m(b["x"])})


def test_tensorboard_requested_but_missing_warns(tmp_path):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.warns(UserWarning, match="TensorBoard is unavailable"):
            _train(tmp_path, tensorboard=True, max_steps=1)
        assert read_log(tmp_path / "run", "train")
    else:
        _train(tmp_path, tensorboard=True, max_steps=2)
        assert list((tmp_path / "run" / "tensorboard").iterdir())


def test_config_json_round_trip_and_validation(tmp_path):
    cfg = TrainerConfig(output_dir=str(tmp_path), lr_drop_epochs=[6, 9], mixed_precision="bf16", max_steps=10)
    cfg.save(tmp_path / "c.json")
    assert TrainerConfig.load(tmp_path / "c.json") == cfg
    assert TrainerConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match=r"unknown trainer config field\(s\) \['lrr'\]"):
        TrainerConfig.from_dict({"lrr": 1})
    with pytest.raises(ConfigError, match="mixed_precision='fp8'"):
        TrainerConfig(mixed_precision="fp8")
    with pytest.raises(ConfigError, match="nan_policy"):
        cfg.replace(nan_policy="ignore")
    with pytest.raises(ConfigError, match="lr_drop_epochs"):
        TrainerConfig(lr_drop_epochs=[9, 6])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        TrainerConfig.load(tmp_path / "missing.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TrainerConfig.from_dict(cfg.to_dict()).lr_drop_epochs == [6, 9]


def test_a_non_numeric_field_is_named():
    from vlpkit.config import ConfigError
    from vlpkit.engine import TrainerConfig

    with pytest.raises(ConfigError, match=r"lr='1e-3' \(str\); expected a number"):
        TrainerConfig(lr="1e-3")
