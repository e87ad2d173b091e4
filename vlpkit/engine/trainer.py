"""`Trainer`: a training loop generic over a model and a loss function, on Hugging Face accelerate.

accelerate does the device placement, DDP wrapping (`torchrun` / `accelerate launch`, one or many nodes), mixed
precision (bf16 / fp16 autocast and the fp16 grad scaler), gradient clipping and the cross-process reductions.
vlpkit adds what a research run needs on top: DETR's optimizer recipe, checkpoints that resume bit-exactly,
a NaN guard, and logs of every loss term.

    trainer = Trainer(model, loss_fn, dataset, collate_fn, TrainerConfig(output_dir="runs/pretrain"))
    history = trainer.train()            # or trainer.train(resume=True) after an interruption

`loss_fn(model, batch) -> {"loss": total, "loss_bbox": ..., ...}`: the total under "loss" (back-propagated) and
every weighted term under its own key (logged). The model and the loss run inside one module so that DDP and
autocast see the whole computation, whichever methods of the model `loss_fn` calls.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    broadcast_object_list,
    is_xpu_available,
    send_to_device,
)
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    atomic_write,
    load_weights,
    save_model_config,
    save_weights,
)
from ..config import ConfigError
from ..config_io import DictConfig
from ..schema import check_fields
from .compile import compile_modules
from .loader import loader_workers
from .logging import MetricLogger
from .optim import build_optimizer, build_scheduler, check_lr_groups
from .run_dir import RunDirError, RunLock, check_writable, describe_stale
from .sampler import ResumableDistributedSampler
from .seeding import capture_rng_state, restore_rng_state, seed_everything
from .state import (
    TRAINER_STATE_NAME,
    CheckpointManager,
    load_torch,
    resolve_checkpoint,
    rng_state_name,
    save_torch,
    write_checksums,
)

MIXED_PRECISIONS = ("no", "bf16", "fp16")
NAN_POLICIES = ("raise", "skip")
TRAINER_CONFIG_NAME = "trainer_config.json"
STATE_FORMAT_VERSION = 1
# fields that fix the data order and the loss scaling: changing them on resume breaks exact continuation
_ORDER_FIELDS = ("batch_size", "grad_accum_steps", "seed", "shuffle", "drop_last")


class NonFiniteLossError(FloatingPointError):
    """A loss term or the gradient norm is NaN/inf; raised before the optimizer step could use it."""


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions (forward and backward) through oneDNN rather than torch's slow
    reference convolution; with native bf16 (AVX512-BF16, AMX) bf16 then beats float32. PyTorch exposes the check
    only as `torch.ops.mkldnn._is_mkldnn_bf16_supported` (what its own tests use); False when it is missing."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass
class TrainerConfig(DictConfig):
    """Everything that defines a training run, serialisable to JSON.

    Steps count optimizer updates (one update = `grad_accum_steps` micro-batches of `batch_size` samples on
    every process). Defaults follow DETR's recipe as used by E2E-VLP: AdamW, lr 1e-4, backbone lr 1e-5,
    weight decay 1e-4, gradient clipping at norm 0.1.
    """

    config_label = "trainer config"  # (not a field: no annotation)

    output_dir: str = "outputs/train"
    epochs: int = 1
    max_steps: int | None = None  # when set, overrides `epochs`
    batch_size: int = 8  # per process and micro-batch
    lr: float = 1e-4
    backbone_lr: float = 1e-5
    backbone_prefix: str = "backbone.trunk."  # parameters named so train at `backbone_lr` (DETR: the ResNet only)
    # more AdamW groups by name prefix, {name: {"lr": float, "prefixes": [str, ...]}} (engine.optim.param_groups);
    # warm-up and lr drops scale them like the others
    lr_groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1  # 0 disables clipping (the norm is still logged)
    warmup_steps: int = 0
    lr_drop_epochs: list[int] = field(default_factory=list)  # 0-based epochs from which the lr is x lr_drop_factor
    lr_drop_factor: float = 0.1
    grad_accum_steps: int = 1
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (fp16 needs a GPU)
    # torch.compile, in place (engine.compile): [] off, ["*"] the whole model, or submodule names ("encoder",
    # "decoder"); parameter names and checkpoints are the eager model's
    compile_modules: list[str] = field(default_factory=list)
    compile_dynamic: bool | None = None  # torch.compile's `dynamic` (None: dynamic after the first size change)
    compile_backend: str = "inductor"
    seed: int = 42
    deterministic: bool = False  # torch.use_deterministic_algorithms: bit-exact reruns and resumes
    shuffle: bool = True
    drop_last: bool = False
    num_workers: int | None = None  # DataLoader workers; None: engine.loader.loader_workers (0 on a CPU)
    log_every: int = 10  # steps between console / log.jsonl lines (0: only the last step)
    eval_every: int = 0  # 0: evaluate only at the end
    save_every: int = 500  # 0: save only at the end
    keep_last: int = 3  # 0 keeps every checkpoint
    nan_policy: str = "raise"  # "raise" | "skip" (skip the update, keep going)
    find_unused_parameters: bool = False  # DDP: needed when a loss leaves some parameters without gradient
    cpu: bool = False  # train on the CPU even when a GPU is present
    tensorboard: bool = False
    progress_bar: bool = True

    def __post_init__(self) -> None:
        self.output_dir = str(self.output_dir)
        self.validate()

    def validate(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        check_fields(self)  # types first: the checks below compare numbers
        check(self.mixed_precision in MIXED_PRECISIONS,
              f"mixed_precision={self.mixed_precision!r}; expected one of {MIXED_PRECISIONS}")
        check(self.nan_policy in NAN_POLICIES, f"nan_policy={self.nan_policy!r}; expected one of {NAN_POLICIES}")
        check(self.max_steps is None or self.max_steps > 0, f"max_steps={self.max_steps}; expected > 0 or None")
        check(self.max_steps is not None or self.epochs > 0, f"epochs={self.epochs}; expected > 0")
        for name in ("batch_size", "grad_accum_steps"):
            check(getattr(self, name) >= 1, f"{name}={getattr(self, name)}; expected >= 1")
        for name in ("lr", "backbone_lr", "weight_decay", "clip_max_norm", "warmup_steps", "log_every", "eval_every",
                     "save_every", "keep_last", "seed"):
            check(getattr(self, name) >= 0, f"{name}={getattr(self, name)}; expected >= 0")
        check(self.num_workers is None or self.num_workers >= 0,
              f"num_workers={self.num_workers}; expected >= 0 or None (automatic)")
        try:
            check_lr_groups(self.lr_groups)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        check(0.0 < self.lr_drop_factor <= 1.0, f"lr_drop_factor={self.lr_drop_factor}; expected in (0, 1]")
        check(all(e > 0 for e in self.lr_drop_epochs) and self.lr_drop_epochs == sorted(self.lr_drop_epochs),
              f"lr_drop_epochs={self.lr_drop_epochs}; expected increasing epochs > 0")


LossFn = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]
EvalFn = Callable[[nn.Module], Mapping[str, float]]


class _ModelWithLoss(nn.Module):
    """`loss_fn(model, batch)` as a module: DDP's gradient hooks and accelerate's autocast wrap its forward."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn  # registered as a submodule when it is one (e.g. a criterion with buffers)

    def forward(self, batch: Any) -> Mapping[str, torch.Tensor]:
        return self.loss_fn(self.model, batch)


class Trainer:
    """Train `model` on `train_dataset` by minimising `loss_fn(model, batch)["loss"]`.

    Args:
        model: any `nn.Module`; its parameters named `config.backbone_prefix...` train at `backbone_lr`, those
            matched by `config.lr_groups` at their group's lr.
        loss_fn: `(model, batch) -> dict[str, Tensor]` of scalars: "loss" (the total) and each weighted term.
        train_dataset: a map-style dataset (`len()` and integer indexing).
        collate_fn: list of samples -> batch (None: torch's default collate). Batches are moved to the device
            with `accelerate.utils.send_to_device` (nested dicts/lists/tuples of tensors).
        config: `TrainerConfig`.
        eval_fn: `(model) -> dict[str, float]`, called every `eval_every` steps and at the end, in eval mode under
            `torch.no_grad()`, on every process (so it may gather across processes), with the bare model (not its
            DDP wrapper).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, train_dataset: Dataset, collate_fn: Callable | None = None,
                 config: TrainerConfig | None = None, eval_fn: EvalFn | None = None) -> None:
        cfg = self.config = config if config is not None else TrainerConfig()
        if not isinstance(cfg, TrainerConfig):
            raise TypeError(f"config must be a TrainerConfig, got {type(cfg).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable (model, batch) -> dict, got {type(loss_fn).__name__}")
        if len(train_dataset) == 0:  # type: ignore[arg-type]
            raise ValueError("train_dataset is empty")
        if isinstance(loss_fn, nn.Module) and any(p.requires_grad for p in loss_fn.parameters()):
            raise ValueError(f"loss_fn ({type(loss_fn).__name__}) has trainable parameters, which the optimizer "
                             "would not update; make them part of the model")
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        # accelerate sets up CPU-only multi-process runs (gloo) only when told cpu=True; without it, torchrun's
        # processes would each train alone on the whole dataset
        cpu = cfg.cpu or (world_size > 1 and not torch.cuda.is_available() and not is_xpu_available())
        self.accelerator = acc = Accelerator(
            mixed_precision=cfg.mixed_precision, cpu=cpu,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)])
        if world_size > 1 and acc.num_processes == 1:
            raise RuntimeError(f"launched as {world_size} processes (WORLD_SIZE) but accelerate set up "
                               f"{acc.num_processes} ({acc.distributed_type}); check the launcher and devices")
        if cfg.mixed_precision == "fp16" and acc.device.type == "cpu":
            raise ConfigError("mixed_precision='fp16' needs a GPU (accelerate would silently train in fp32 on CPU); "
                              "use 'bf16' or 'no' on CPU")
        if cfg.mixed_precision == "bf16" and acc.device.type == "cpu" and not cpu_has_fast_bf16():
            # measured on a CPU without oneDNN bf16: forward + backward of e2evlp-tiny 6.2 s in bf16 against 0.6 s
            # in fp32 (aten::_slow_conv2d). With it (AVX512-BF16) bf16 wins: docs/training.md
            warnings.warn("mixed_precision='bf16' on CPU runs convolutions through torch's slow reference path "
                          "on this CPU, which lacks oneDNN bf16 support (about 10x slower for e2evlp-tiny); set "
                          "trainer.mixed_precision=no here, bf16 is meant for GPUs and bf16-capable CPUs",
                          stacklevel=2)
        seed_everything(cfg.seed, cfg.deterministic, acc.process_index)
        self.compiled = compile_modules(model, cfg.compile_modules, dynamic=cfg.compile_dynamic,
                                        backend=cfg.compile_backend)
        self.num_workers = loader_workers(cfg.num_workers, acc.device)

        self.model, self.loss_fn, self.eval_fn = model, loss_fn, eval_fn
        self.train_dataset, self.collate_fn = train_dataset, collate_fn
        self.sampler = ResumableDistributedSampler(train_dataset, num_replicas=acc.num_processes,
                                                   rank=acc.process_index, shuffle=cfg.shuffle, seed=cfg.seed,
                                                   drop_last=cfg.drop_last)
        per_rank = self.sampler.epoch_length
        micro_batches = per_rank // cfg.batch_size if cfg.drop_last else math.ceil(per_rank / cfg.batch_size)
        if micro_batches == 0:
            raise ValueError(f"an epoch holds no full batch: {per_rank} samples per process < batch_size="
                             f"{cfg.batch_size} with drop_last=True")
        self.steps_per_epoch = math.ceil(micro_batches / cfg.grad_accum_steps)
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * self.steps_per_epoch

        optimizer = build_optimizer(model, cfg.lr, cfg.backbone_lr, cfg.weight_decay, cfg.backbone_prefix,
                                    cfg.lr_groups)
        # not passed to accelerator.prepare: accelerate would step it once per process (its convention for
        # schedules written in samples); this one is written in optimizer updates
        self.scheduler = build_scheduler(optimizer, cfg.warmup_steps, self.steps_per_epoch, cfg.lr_drop_epochs,
                                         cfg.lr_drop_factor)
        self.module, self.optimizer = acc.prepare(_ModelWithLoss(model, loss_fn), optimizer)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

        self.checkpoints = CheckpointManager(cfg.output_dir, cfg.keep_last)
        self.logger = MetricLogger(cfg.output_dir, enabled=acc.is_main_process, tensorboard=cfg.tensorboard)
        self.step = 0
        self.term_names: list[str] | None = None
        self._resumed = False
        self._saved_step: int | None = None  # step of the checkpoint on disk that matches the weights
        self._lock: RunLock | None = None
        self._started = False
        self._ran = False  # checkpoints in output_dir are this trainer's own (a second train() call extends them)

    # ---- properties ----------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """Current 0-based epoch (the sampler's)."""
        return self.sampler.epoch

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    # ---- the run folder --------------------------------------------------------------------------------
    def checkpoint_bytes(self) -> int:
        """About the size of one checkpoint: the weights plus AdamW's two float32 moments per trained value."""
        seen, total = set(), 0
        for tensor in self.model.state_dict().values():
            if tensor.data_ptr() not in seen or not tensor.numel():
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
        return total + sum(2 * 4 * p.numel() for p in self.params)

    def start(self, resume: bool = False) -> None:
        """Every check of the output folder, before anything in it changes: take its lock (a second run into
        the same folder is refused at once), check that it is writable with room for a checkpoint, then either
        resume from its latest intact checkpoint or refuse a folder that holds another run's checkpoints.
        `train()` calls it; call it first yourself to write your own files only once every check has passed
        (as `vlpkit.pretraining.pretrain` does), then `release()` (or let `train()` do it)."""
        if self._started:
            return
        acc = self.accelerator
        problem = None
        if acc.is_main_process:
            try:
                self._lock = RunLock(self.output_dir).acquire()
                check_writable(self.output_dir, self.checkpoint_bytes())
            except RunDirError as err:
                self.release()
                problem = str(err)
            if self._lock is not None and self._lock.stale:
                self.logger.info(describe_stale(self._lock.stale))
        if acc.num_processes > 1:  # every process stops on the main process's refusal, none waits for it
            problem = broadcast_object_list([problem])[0]
        if problem is not None:
            raise RunDirError(problem)
        try:
            if resume and not self._resumed:
                if self.checkpoints.latest() is not None:
                    self.resume()
                else:
                    self.logger.info(f"resume=True but {self.output_dir} holds no checkpoint: starting from scratch")
            elif not self._resumed and not self._ran and self.checkpoints.steps():
                raise FileExistsError(f"{self.output_dir} already holds checkpoints {self.checkpoints.steps()}; "
                                      "pass resume=True to continue that run, or choose another output_dir")
        except BaseException:
            self.release()
            raise
        self._started = self._ran = True

    def release(self) -> None:
        """Give the output folder's lock back (`train()` does at its end)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self._started = False

    # ---- the loop ------------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> list[dict[str, float]]:
        """Run until `total_steps` updates are done.

        Args:
            resume: continue from the latest checkpoint in `output_dir` when one exists (else start fresh).
        Returns:
            One dict per update made by this call: "step", "epoch", "loss" and every other term (averaged over
            the accumulated micro-batches and over processes), "lr", "lr_backbone" and "lr_<group>", "grad_norm",
            "samples_per_s", and "eval/<name>" at evaluation steps.
        Raises:
            NonFiniteLossError: a NaN/inf loss term or gradient norm (with `nan_policy="raise"`), before the
                optimizer step: the weights are those of the previous step.
            FileExistsError: `output_dir` holds checkpoints of another run and `resume` is False.
            RunDirError: `output_dir` is in use by another run, not writable, or too full for a checkpoint.
        """
        owned = not self._started  # a caller that called start() itself releases
        self.start(resume)
        try:
            return self._train_loop()
        finally:
            if owned:
                self.release()

    def _train_loop(self) -> list[dict[str, float]]:
        cfg, acc = self.config, self.accelerator
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.output_dir / TRAINER_CONFIG_NAME, self.config.save)

        history: list[dict[str, float]] = []
        recent: deque[float] = deque(maxlen=cfg.log_every or 20)  # the progress bar's running loss
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (cfg.progress_bar and acc.is_main_process))
        evaluated_at = None
        self.module.train()
        try:
            while self.step < self.total_steps:
                loader = self._loader()
                batches, remaining = iter(loader), len(loader)
                if remaining == 0:  # resumed exactly at the end of an epoch (possible with drop_last)
                    self.sampler.set_epoch(self.sampler.epoch + 1)
                    continue
                while remaining > 0 and self.step < self.total_steps:
                    window = min(cfg.grad_accum_steps, remaining)
                    record = self._update(batches, window)
                    remaining -= window
                    history.append(record)
                    recent.append(record["loss"])
                    bar.update(1)
                    bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", refresh=False)
                    last = self.step == self.total_steps
                    if (cfg.log_every and self.step % cfg.log_every == 0) or last:
                        self.logger.log("train", record, self.total_steps)
                    if remaining == 0:
                        self.sampler.set_epoch(self.sampler.epoch + 1)
                    if self.eval_fn is not None and ((cfg.eval_every and self.step % cfg.eval_every == 0) or last):
                        record.update({f"eval/{k}": v for k, v in self.evaluate().items()})
                        evaluated_at = self.step
                    if (cfg.save_every and self.step % cfg.save_every == 0) or last:
                        self.save_checkpoint()
            if self.eval_fn is not None and evaluated_at != self.step:
                self.evaluate()
            if self._saved_step != self.step and self.step > 0:
                self.save_checkpoint()
        finally:
            bar.close()
        return history

    def _loader(self) -> DataLoader:
        """A DataLoader over what is left of the current epoch.

        Its generator (worker seeds) is derived from (seed, epoch, process, position), never from the global
        torch RNG, which must advance only with the training computation for resumes to be exact.
        """
        cfg = self.config
        if hasattr(self.train_dataset, "set_epoch"):  # datasets whose per-item randomness is seeded by epoch
            self.train_dataset.set_epoch(self.sampler.epoch)
        entropy = [cfg.seed, self.sampler.epoch, self.accelerator.process_index, self.sampler.position]
        generator = torch.Generator()
        generator.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1))
        return DataLoader(self.train_dataset, batch_size=cfg.batch_size, sampler=self.sampler,
                          collate_fn=self.collate_fn, num_workers=self.num_workers, drop_last=cfg.drop_last,
                          generator=generator, pin_memory=self.accelerator.device.type == "cuda")

    def _update(self, batches, window: int) -> dict[str, float]:
        """Forward/backward `window` micro-batches, then one optimizer update (or a NaN stop)."""
        acc, cfg = self.accelerator, self.config
        start = time.perf_counter()
        sums = None
        for i in range(window):
            batch = send_to_device(next(batches), acc.device, non_blocking=acc.device.type == "cuda")
            # gradients are all-reduced across processes only on the window's last backward
            sync = contextlib.nullcontext() if i == window - 1 else acc.no_sync(self.module)
            with sync:
                terms = self._check_terms(self.module(batch))
                acc.backward(terms["loss"] / window)
            values = torch.stack([terms[name].detach().float().reshape(()) for name in self.term_names])
            sums = values if sums is None else sums + values
        consumed = self.sampler.advance(window * cfg.batch_size)
        means = acc.reduce(sums / window, reduction="mean").tolist()  # one collective for all terms
        step, epoch = self.step + 1, self.sampler.epoch
        record: dict[str, Any] = {"step": step, "epoch": epoch, **dict(zip(self.term_names, means))}

        # name the culprit term before the total it makes non-finite
        bad = [name for name in [*self.term_names[1:], "loss"] if not math.isfinite(record[name])]
        grad_norm = None
        if not bad:
            max_norm = cfg.clip_max_norm if cfg.clip_max_norm > 0 else math.inf
            grad_norm = float(acc.clip_grad_norm_(self.params, max_norm))
            # with the fp16 scaler an inf norm is expected: the scaler skips that update and lowers its scale
            if not math.isfinite(grad_norm) and acc.scaler is None:
                bad = ["grad_norm"]
                record["grad_norm"] = grad_norm
        if bad:
            self._non_finite(record, bad)
            return record

        record.update(self._learning_rates())
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step = step
        record["grad_norm"] = grad_norm
        record["samples_per_s"] = consumed * acc.num_processes / max(time.perf_counter() - start, 1e-9)
        return record

    def _check_terms(self, out: Any) -> Mapping[str, torch.Tensor]:
        if not isinstance(out, Mapping) or "loss" not in out:
            got = sorted(out) if isinstance(out, Mapping) else type(out).__name__
            raise TypeError(f"loss_fn must return a dict of scalar tensors with the total under 'loss'; got {got}")
        for name, value in out.items():
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise TypeError(f"loss_fn returned {name!r} = {shape}; every value must be a scalar tensor")
        if not out["loss"].requires_grad:
            raise ValueError("loss_fn's 'loss' does not require grad (computed under no_grad, detached, or from "
                             "frozen parameters only)")
        names = ["loss", *(k for k in out if k != "loss")]
        if self.term_names is None:
            self.term_names = names
        elif set(names) != set(self.term_names):
            raise ValueError(f"loss_fn returned terms {names} at step {self.step + 1}, but {self.term_names} "
                             "before; every step must return the same keys (they are reduced across processes)")
        return out

    def _non_finite(self, record: dict[str, Any], bad: list[str]) -> None:
        step = record["step"]
        values = ", ".join(f"{k}={record[k]}" for k in [*self.term_names, "grad_norm"] if k in record)
        if self.config.nan_policy == "raise":
            latest = self.checkpoints.latest()
            raise NonFiniteLossError(
                f"non-finite {bad[0]!r} at step {step} (epoch {record['epoch']}): {values}. Training stopped "
                f"before the optimizer step, so the weights are those after step {step - 1}; latest checkpoint: "
                f"{latest if latest is not None else 'none'}")
        warnings.warn(f"non-finite {bad[0]!r} at step {step}: {values}; update skipped (nan_policy='skip')",
                      stacklevel=3)
        self.optimizer.zero_grad(set_to_none=True)
        record.update(self._learning_rates())
        self.scheduler.step()
        self.step = step
        record["skipped"] = 1

    def _learning_rates(self) -> dict[str, float]:
        return {"lr" if g["name"] == "default" else f"lr_{g['name']}": float(g["lr"])
                for g in self.optimizer.param_groups}

    # ---- evaluation ----------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """`eval_fn(model)` in eval mode under no_grad (and autocast); logged as kind "eval"."""
        if self.eval_fn is None:
            raise ValueError("no eval_fn was given to the Trainer")
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            with torch.no_grad(), self.accelerator.autocast():
                # the bare module: a DDP wrapper would sync buffers at each forward, and processes evaluating
                # shares of different sizes run different numbers of forwards
                metrics = self.eval_fn(self.accelerator.unwrap_model(self.model))
        finally:
            for module, mode in modes.items():
                module.training = mode
        if not isinstance(metrics, Mapping):
            raise TypeError(f"eval_fn must return a dict[str, float], got {type(metrics).__name__}")
        try:
            metrics = {str(k): float(v) for k, v in metrics.items()}
        except (TypeError, ValueError) as err:
            raise TypeError(f"eval_fn returned a non-numeric metric in {dict(metrics)}: {err}") from err
        self.logger.log("eval", {"step": self.step, **metrics}, self.total_steps)
        return metrics

    # ---- checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write `output_dir/checkpoints/step_XXXXXXXX/` atomically (all processes must call this)."""
        acc = self.accelerator
        staging = self.checkpoints.staging_path(self.step)
        if acc.is_main_process:
            self.checkpoints.stage(self.step)
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_weights(self.model, staging / WEIGHTS_NAME,
                         metadata={"format": "pt", "library": "vlpkit", "step": str(self.step)})
            config = getattr(self.model, "config", None)
            if callable(getattr(config, "save", None)):
                save_model_config(config, staging / CONFIG_NAME)
            save_torch(self._trainer_state(), staging / TRAINER_STATE_NAME)
        save_torch(capture_rng_state(), staging / rng_state_name(acc.process_index))
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_checksums(staging)
            self.checkpoints.commit(self.step)
        acc.wait_for_everyone()
        self._saved_step = self.step
        return self.checkpoints.path(self.step)

    def _trainer_state(self) -> dict[str, Any]:
        scaler = self.accelerator.scaler
        return {"format_version": STATE_FORMAT_VERSION, "step": self.step, "epoch": self.sampler.epoch,
                "sampler": self.sampler.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "num_processes": self.accelerator.num_processes, "term_names": self.term_names,
                "config": self.config.to_dict()}

    def resume(self, checkpoint: str | Path | None = None) -> Path:
        """Load a checkpoint: weights, optimizer, schedule, scaler, data position and this process's RNGs.

        Args:
            checkpoint: a `step_XXXXXXXX` directory or a run's output_dir (its latest checkpoint);
                default: this trainer's output_dir.
        Returns:
            The checkpoint directory loaded. `train()` then continues from its step.

        The schedule's shape and base learning rates come from the current config (a run can be extended by
        raising `epochs`); everything else comes from the checkpoint.
        """
        acc = self.accelerator
        path = resolve_checkpoint(checkpoint if checkpoint is not None else self.output_dir)
        state = load_torch(path / TRAINER_STATE_NAME)
        missing = [k for k in ("step", "sampler", "optimizer", "scheduler") if k not in state]
        if missing:
            raise KeyError(f"{path / TRAINER_STATE_NAME} lacks {missing}; is it a vlpkit training checkpoint?")
        load_weights(self.model, path / WEIGHTS_NAME, strict=True)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as err:
            raise ValueError(f"optimizer state in {path} does not fit this model's parameter groups "
                             f"(changed backbone_prefix or frozen layers?): {err}") from err
        self.scheduler.load_state_dict(state["scheduler"])
        if acc.scaler is not None and state.get("scaler"):
            acc.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        self.term_names = state.get("term_names")
        self._apply_schedule()
        self._warn_inexact(state)

        rng_file = path / rng_state_name(acc.process_index)
        if rng_file.is_file():
            restore_rng_state(load_torch(rng_file))
        else:
            warnings.warn(f"{rng_file} is missing (different number of processes?); reseeding this process from "
                          f"seed + step: the continuation is not bit-exact", stacklevel=2)
            seed_everything(self.config.seed + self.step, self.config.deterministic, acc.process_index)
        self.logger.truncate_after(self.step)
        if checkpoint is None:  # newer checkpoints of this run that failed verification: set aside, never pruned into
            acc.wait_for_everyone()
            if acc.is_main_process:
                for step in self.checkpoints.steps():
                    if step > self.step:
                        moved = self.checkpoints.set_aside(self.checkpoints.path(step))
                        self.logger.info(f"set the damaged checkpoint {self.checkpoints.path(step).name} aside as "
                                         f"{moved.name}")
        self._resumed = True
        self._saved_step = self.step
        self.logger.info(f"resumed from {path} at step {self.step}, epoch {self.epoch}")
        return path

    def _apply_schedule(self) -> None:
        """Base learning rates and weight decay from the config; lr = base * factor(step), as LambdaLR computes."""
        cfg = self.config
        base = {"default": cfg.lr, "backbone": cfg.backbone_lr,
                **{name: float(spec["lr"]) for name, spec in cfg.lr_groups.items()}}
        groups = self.optimizer.param_groups
        renamed = [g["name"] for g in groups if g["name"] not in base]
        if renamed:
            raise ValueError(f"the checkpoint's optimizer has parameter groups {renamed}, which this config does "
                             f"not define (its groups: {sorted(base)}); resume with the run's lr_groups")
        self.scheduler.base_lrs = [base[g["name"]] for g in groups]
        for group, lr, fn in zip(groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["initial_lr"] = lr
            group["weight_decay"] = cfg.weight_decay
            group["lr"] = lr * fn(self.scheduler.last_epoch)
        self.scheduler._last_lr = [g["lr"] for g in groups]

    def _warn_inexact(self, state: dict[str, Any]) -> None:
        saved = state.get("config", {})
        changed = [f"{k}: {saved[k]!r} -> {getattr(self.config, k)!r}" for k in _ORDER_FIELDS
                   if k in saved and saved[k] != getattr(self.config, k)]
        if state.get("num_processes", self.accelerator.num_processes) != self.accelerator.num_processes:
            changed.append(f"num_processes: {state['num_processes']} -> {self.accelerator.num_processes}")
        if changed:
            warnings.warn("resuming with a different data order or batch: " + "; ".join(changed) +
                          " (the run continues, but not as the uninterrupted run would have)", stacklevel=3)
