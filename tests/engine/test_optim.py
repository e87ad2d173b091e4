"""AdamW parameter groups and the warm-up + step-decay schedule (checked against torch's own schedulers)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import ChainedScheduler, LinearLR, MultiStepLR

from vlpkit import build_e2evlp
from vlpkit.config import ConfigError
from vlpkit.engine import Trainer, TrainerConfig, build_optimizer, build_scheduler, lr_factor, param_groups


def test_param_groups_split_e2evlp_by_prefix_and_skip_frozen():
    model = build_e2evlp("e2evlp-tiny")
    groups = {g["name"]: g for g in param_groups(model, lr=1e-4, backbone_lr=1e-5, weight_decay=1e-4)}
    assert groups["default"]["lr"] == 1e-4 and groups["backbone"]["lr"] == 1e-5
    assert groups["default"]["weight_decay"] == groups["backbone"]["weight_decay"] == 1e-4

    named = dict(model.named_parameters())  # deduplicated: tied embeddings appear once
    ids = {id(p): n for n, p in named.items()}
    backbone = {ids[id(p)] for p in groups["backbone"]["params"]}
    rest = {ids[id(p)] for p in groups["default"]["params"]}
    assert backbone == {n for n, p in named.items() if n.startswith("backbone.trunk.") and p.requires_grad}
    assert rest == {n for n, p in named.items() if not n.startswith("backbone.trunk.") and p.requires_grad}
    assert "backbone.trunk.conv1.weight" not in backbone  # stem frozen (trainable_backbone_layers=3)
    assert "backbone.input_proj.weight" in rest  # DETR trains the 1x1 projection at the base lr
    total = len(groups["backbone"]["params"]) + len(groups["default"]["params"])
    assert total == len({id(p) for p in model.parameters() if p.requires_grad})


def test_param_groups_custom_prefix_and_errors():
    model = build_e2evlp("e2evlp-tiny")
    groups = {g["name"]: g for g in param_groups(model, 1e-4, 1e-5, 0.0, backbone_prefix="backbone.trunk.")}
    assert any(p is model.backbone.input_proj.weight for p in groups["default"]["params"])
    assert all(p is not model.backbone.input_proj.weight for p in groups["backbone"]["params"])

    plain = nn.Linear(2, 2)  # no backbone: a single group
    assert [g["name"] for g in param_groups(plain, 1e-3, 1e-4, 0.0)] == ["default"]
    plain.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        param_groups(plain, 1e-3, 1e-4, 0.0)


@pytest.mark.parametrize("warmup, steps_per_epoch, drops", [(5, 4, (3, 5)), (1, 7, (2,)), (4, 3, ())])
def test_schedule_matches_torch_linear_warmup_then_multistep(warmup, steps_per_epoch, drops):
    def optimizer():
        return build_optimizer(nn.Sequential(nn.Linear(2, 2)), lr=1e-4, backbone_lr=1e-5)

    ours_opt = optimizer()
    ours = build_scheduler(ours_opt, warmup, steps_per_epoch, drops, gamma=0.1)
    ref_opt = optimizer()
    ref = ChainedScheduler([
        LinearLR(ref_opt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1),
        MultiStepLR(ref_opt, milestones=[e * steps_per_epoch for e in drops], gamma=0.1),
    ]) if warmup > 1 else MultiStepLR(ref_opt, milestones=[e * steps_per_epoch for e in drops], gamma=0.1)
    for step in range(8 * steps_per_epoch):
        got, want = ours_opt.param_groups[0]["lr"], ref_opt.param_groups[0]["lr"]
        assert math.isclose(got, want, rel_tol=1e-9), (step, got, want)
        ours_opt.step()
        ref_opt.step()
        ours.step()
        ref.step()


def test_schedule_state_dict_resumes_and_follows_current_config():
    opt = build_optimizer(nn.Linear(2, 2), lr=1.0)
    sched = build_scheduler(opt, warmup_steps=3, steps_per_epoch=2, drop_epochs=[2])
    for _ in range(3):
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert state["lr_lambdas"] == [{}]  # the schedule's shape is not frozen into the checkpoint
    loaded = torch.load(_roundtrip(state), weights_only=True)

    opt2 = build_optimizer(nn.Linear(2, 2), lr=1.0)
    sched2 = build_scheduler(opt2, warmup_steps=3, steps_per_epoch=2, drop_epochs=[2])
    sched2.load_state_dict(loaded)
    for _ in range(4):
        opt.step()
        sched.step()
        opt2.step()
        sched2.step()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert sched.last_epoch == 7 and opt.param_groups[0]["lr"] == pytest.approx(0.1)


def _roundtrip(obj):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_vqa_drop_epochs():
    cfg = TrainerConfig(lr=1e-4, epochs=12, lr_drop_epochs=[6, 9])  # the VQA recipe's schedule
    steps_per_epoch = 10
    factors = [lr_factor(s, 0, steps_per_epoch, cfg.lr_drop_epochs) for s in range(12 * steps_per_epoch)]
    by_epoch = [factors[e * steps_per_epoch: (e + 1) * steps_per_epoch] for e in range(12)]
    assert all(f == 1.0 for e in range(6) for f in by_epoch[e])
    assert all(f == pytest.approx(0.1) for e in range(6, 9) for f in by_epoch[e])
    assert all(f == pytest.approx(0.01) for e in range(9, 12) for f in by_epoch[e])


FUSION = {"fusion": {"lr": 2e-5, "prefixes": ["text_embeddings.", "encoder.", "mlm_head.", "itm_head."]}}


def test_lr_groups_take_their_prefixes_after_the_backbone():
    model = build_e2evlp("e2evlp-tiny")
    # a second group whose prefix also matches encoder names: the first listed group wins
    lr_groups = {**FUSION, "late": {"lr": 3e-5, "prefixes": ["encoder.", "decoder."]}}
    groups = {g["name"]: g for g in param_groups(model, 1e-4, 1e-5, 0.0, lr_groups=lr_groups)}
    assert [groups[n]["lr"] for n in ("default", "backbone", "fusion", "late")] == [1e-4, 1e-5, 2e-5, 3e-5]
    ids = {id(p): n for n, p in model.named_parameters()}
    names = {g: {ids[id(p)] for p in groups[g]["params"]} for g in groups}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names["fusion"] == {n for n in trainable if n.split(".")[0] in ("text_embeddings", "encoder", "mlm_head",
                                                                             "itm_head")}
    assert names["late"] == {n for n in trainable if n.startswith("decoder.")}
    assert names["backbone"] == {n for n in trainable if n.startswith("backbone.trunk.")}
    assert "backbone.input_proj.weight" in names["default"] and "query_embed.weight" in names["default"]
    assert set().union(*names.values()) == trainable
    assert sum(len(v) for v in names.values()) == len(trainable)  # every parameter in exactly one group


@pytest.mark.parametrize("lr_groups, match", [
    ({"backbone": {"lr": 1e-4, "prefixes": ["encoder."]}}, "reserved"),
    ({"fusion": {"lr": 1e-4}}, "expected"),
    ({"fusion": {"lr": -1.0, "prefixes": ["encoder."]}}, "expected a number >= 0"),
    ({"fusion": {"lr": 1e-4, "prefixes": "encoder."}}, "non-empty list"),
    ({"fusion": {"lr": 1e-4, "prefixes": ["encoder.", ""]}}, "non-empty list"),
    ({"fusion": {"lr": 1e-4, "prefixes": ["encodr."]}}, r"match no trainable parameter.*encodr"),
])
def test_lr_groups_errors_name_the_group(lr_groups, match):
    with pytest.raises(ValueError, match=match):
        param_groups(build_e2evlp("e2evlp-tiny"), 1e-4, 1e-5, 0.0, lr_groups=lr_groups)


def test_trainer_config_lr_groups_round_trip_and_validation():
    config = TrainerConfig(lr_groups=FUSION)
    assert TrainerConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match="lr_groups"):
        TrainerConfig(lr_groups={"fusion": {"lr": "fast", "prefixes": ["encoder."]}})


def test_trainer_warms_up_and_logs_every_lr_group(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    data = [(torch.randn(3), torch.randn(1)) for _ in range(8)]

    def loss_fn(m, batch):
        x, y = batch
        return {"loss": ((m(x) - y) ** 2).mean()}

    config = TrainerConfig(output_dir=str(tmp_path), max_steps=4, batch_size=4, lr=1e-2, warmup_steps=4,
                           lr_groups={"head": {"lr": 1e-3, "prefixes": ["1."]}}, save_every=0, progress_bar=False,
                           cpu=True)
    history = Trainer(model, loss_fn, data, config=config).train()
    assert [h["lr_head"] for h in history] == pytest.approx([1e-3 * (s + 1) / 4 for s in range(4)])
    assert [h["lr"] for h in history] == pytest.approx([1e-2 * (s + 1) / 4 for s in range(4)])
