"""Pretraining speed of e2evlp-tiny on the shapes world: one optimizer step with all four losses (MLM, ITM,
detection with attributes, caption generation), beside the data loader's own throughput.

- `test_loader_throughput`: `PretrainingDataset` (shapes world, the demo recipe's images: shorter side 128, at
  most 160, flips) + `PretrainingCollator` through a `DataLoader`, nothing else; images/s.
- `test_training_step`: `PretrainingObjective` forward, backward, gradient clipping (0.1) and an AdamW step on one
  fixed collated batch; images/s and peak memory (`extra_info["peak_bytes"]`: on CUDA,
  `torch.cuda.max_memory_allocated`; on a CPU, the bytes live before the step - parameters, optimizer state,
  batch - plus the highest rise of allocated bytes during the step, gradients included, from `torch.profiler`'s
  memory events).
  The step must be slower than the loader (the loader is not the bottleneck).
- `test_training_step_compiled`: the same step with the transformer side compiled (`trainer.compile_modules:
  [encoder, decoder]`, torch.compile in place), each round paired with the eager step; `extra_info` records the
  compile time (the first compiled step minus an eager one) and the steps after which compiling has paid for
  itself. Quick mode compiles with the "eager" backend (the wiring only); the full grid with inductor.

The loader runs in the main process on a CPU (the trainer's default `num_workers=0`; the step needs the same
cores), and with up to 8 persistent workers when a GPU trains.

    quick (make test):  batch 4, one round, a 16-image world
    full  (make bench): batches 8 and 32, 3 rounds, a 120-image world
"""

from __future__ import annotations

import itertools
import os
import time

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader

from benchmarks.bench_forward import DEVICE, benchmark_paired, seconds, synchronize
from benchmarks.conftest import pick
from vlpkit.builder import build_e2evlp
from vlpkit.engine.compile import compile_modules
from vlpkit.engine.optim import build_optimizer
from vlpkit.engine.trainer import cpu_has_fast_bf16
from vlpkit.pretraining.data import PretrainingCollator, PretrainingDataset
from vlpkit.pretraining.objective import ObjectiveConfig, PretrainingObjective
from vlpkit.pretraining.run import image_transforms
from vlpkit.pretraining.shapes import prepare_shapes, shapes_sources

BATCHES = pick([4], [8, 32])
NUM_IMAGES = pick(16, 120)
LOADER_BATCHES = pick(2, 5)
ROUNDS = pick(1, 3)
IMAGE = {"train_scales": [128], "max_size": 160, "crop": False, "flip": True}  # configs/e2evlp-tiny.yaml
WORKERS = 0 if DEVICE.type == "cpu" else min(8, os.cpu_count() or 1)
LOSSES = ("mlm", "itm", "detection", "caption", "det/loss_attr")
COMPILE_BACKEND = pick("eager", "inductor")

_images_per_s: dict = {}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    setup = prepare_shapes(tmp_path_factory.mktemp("bench_training") / "shapes", num_images=NUM_IMAGES)
    train_transforms, _ = image_transforms(IMAGE)
    dataset = PretrainingDataset(shapes_sources(setup), train_transforms, seed=0)
    collator = PretrainingCollator(setup.tokenizer, max_length=40, seed=0)
    return setup, dataset, collator


def make_loader(dataset, collator, batch: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch, shuffle=True, collate_fn=collator, num_workers=WORKERS,
                      persistent_workers=WORKERS > 0, generator=torch.Generator().manual_seed(0), drop_last=True)


def full_batch(loader: DataLoader):
    """The first batch in which every pretraining task has targets (both sources present)."""
    for batch in itertools.islice(loader, 20):
        has = {"mlm": bool((batch.mlm_labels != -100).any()), "itm": bool((batch.itm_labels != -100).any()),
               "detection": any(t["has_boxes"] for t in batch.targets),
               "attributes": any("attributes" in t for t in batch.targets),
               "caption": bool((batch.caption_ids[:, 1:] != 0).any())}
        if all(has.values()):
            return batch
    raise AssertionError(f"no batch of the first 20 serves every task; last one: {has}")


def tensor_bytes(*objects) -> int:
    """Bytes of every tensor in (nested lists/dicts/dataclass fields of) `objects`, each storage counted once."""
    seen, total = set(), 0

    def visit(obj):
        nonlocal total
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(obj, dict):
            for value in obj.values():
                visit(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                visit(value)
        elif hasattr(obj, "__dataclass_fields__"):
            for name in obj.__dataclass_fields__:
                visit(getattr(obj, name))

    for obj in objects:
        visit(obj)
    return total


def peak_step_bytes(step, model, optimizer, batch) -> int:
    """Peak memory of one call of `step` (see the module docstring for what is counted on a CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        return torch.cuda.max_memory_allocated()
    # the profiler records no free of a block allocated before it started: drop the old gradients first, so that
    # every tensor live at the start (parameters, buffers, optimizer state, batch) stays live through the step
    optimizer.zero_grad(set_to_none=True)
    resting = tensor_bytes(list(model.parameters()), list(model.buffers()), list(optimizer.state.values()), batch)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # allocation (+bytes) and free (-bytes) events in time order; the running sum is the change in live bytes
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    return resting + max(itertools.accumulate((e.nbytes() for e in events), initial=0))


@pytest.mark.parametrize("batch", BATCHES)
def test_loader_throughput(benchmark, shapes, batch):
    _, dataset, collator = shapes
    loader = make_loader(dataset, collator, batch)

    def load() -> int:
        return sum(len(b) for b in itertools.islice(loader, LOADER_BATCHES))

    benchmark.group = f"pretraining batch {batch}"
    benchmark.extra_info.update(kind="loader", batch=batch, batches=LOADER_BATCHES, workers=WORKERS,
                                images=batch * LOADER_BATCHES, device=str(DEVICE))
    count = benchmark.pedantic(load, rounds=ROUNDS, iterations=1, warmup_rounds=1 if WORKERS else 0)
    assert count == batch * LOADER_BATCHES
    _images_per_s[("loader", batch)] = count / benchmark.stats.stats.median
    benchmark.extra_info["images_per_s"] = _images_per_s[("loader", batch)]


def training_step(shapes, batch: int, compile: tuple[str, ...] = (), backend: str = "inductor"):
    """(model, optimizer, batch, step): `step(bf16=False)` is one pretraining optimizer step of e2evlp-tiny on a
    fixed batch, under bf16 autocast when asked (master weights stay float32, as the trainer's "bf16")."""
    setup, dataset, collator = shapes
    torch.manual_seed(0)
    model = build_e2evlp("e2evlp-tiny", **setup.model_overrides()).to(DEVICE).train()
    compile_modules(model, compile, backend=backend)
    cfg = model.config
    objective = PretrainingObjective(ObjectiveConfig(), cfg.num_classes, cfg.num_attributes, cfg.pad_token_id)
    optimizer = build_optimizer(model, lr=5e-4, backbone_lr=2e-4)
    data = full_batch(make_loader(dataset, collator, batch)).to(DEVICE)

    def step(bf16: bool = False):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
            out = objective(model, data)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        synchronize()
        return out

    return model, optimizer, data, step


@pytest.mark.parametrize("batch", BATCHES)
def test_training_step(benchmark, shapes, batch):
    model, optimizer, data, step = training_step(shapes, batch)
    step()  # warm-up: creates the optimizer state
    peak = peak_step_bytes(step, model, optimizer, data)
    benchmark.group = f"pretraining batch {batch}"
    benchmark.extra_info.update(kind="training_step", batch=batch, preset="e2evlp-tiny", peak_bytes=peak,
                                image_size=list(data.pixel_values.shape[-2:]), text_length=data.input_ids.shape[1],
                                parameters=model.num_parameters(), device=str(DEVICE))
    out = benchmark.pedantic(step, rounds=ROUNDS, iterations=1)
    assert all(key in out and bool(torch.isfinite(out[key])) for key in LOSSES), sorted(out)
    images_per_s = batch / benchmark.stats.stats.median
    benchmark.extra_info["images_per_s"] = images_per_s
    loader = _images_per_s.get(("loader", batch))
    if loader is not None:
        benchmark.extra_info["loader_images_per_s"] = loader
        assert loader > images_per_s, f"the data loader ({loader:.1f} images/s) is slower than the step"


@pytest.mark.parametrize("batch", BATCHES[-1:])
def test_training_step_bf16(benchmark, shapes, batch):
    """The same pretraining step under bf16 autocast, each round paired with a float32 step just before it."""
    _, _, _, step = training_step(shapes, batch)
    step(False)  # creates the optimizer state
    step(True)
    benchmark.group = f"pretraining bf16 batch {batch}"
    benchmark.extra_info.update(kind="bf16_training", batch=batch, preset="e2evlp-tiny", device=str(DEVICE),
                                fast_bf16=cpu_has_fast_bf16() if DEVICE.type == "cpu" else True)
    out, _ = benchmark_paired(benchmark, lambda: step(True), {"fp32": lambda: step(False)}, ROUNDS,
                              warm_partners=False)
    assert all(bool(torch.isfinite(out[key])) for key in LOSSES), sorted(out)


@pytest.mark.parametrize("batch", BATCHES[-1:])
def test_training_step_compiled(benchmark, shapes, batch):
    """The pretraining step with the encoder and the decoder compiled, each round paired with an eager step."""
    _, _, _, eager = training_step(shapes, batch)
    eager()  # creates the optimizer state
    eager_s = min(seconds(eager) for _ in range(2))
    torch._dynamo.reset()
    _, _, _, compiled = training_step(shapes, batch, ("encoder", "decoder"), COMPILE_BACKEND)
    start = time.perf_counter()
    compiled()  # compiles forward and backward
    first_s = time.perf_counter() - start
    benchmark.group = f"pretraining compiled batch {batch}"
    out, median = benchmark_paired(benchmark, compiled, {"eager": eager}, ROUNDS, warm_partners=False)
    assert all(bool(torch.isfinite(out[key])) for key in LOSSES), sorted(out)
    eager_median = benchmark.extra_info["paired"]["eager"]["median_s"]
    saved = eager_median - median
    benchmark.extra_info.update(kind="compiled_training", batch=batch, preset="e2evlp-tiny", device=str(DEVICE),
                                backend=COMPILE_BACKEND, modules=["encoder", "decoder"],
                                compile_s=max(first_s - eager_s, 0.0),
                                break_even_steps=(first_s - eager_s) / saved if saved > 0 else None)
