"""The one fine-tuning loop every task runs, and the one result it returns.

`run_finetune` trains a `TaskModel` with the `Trainer`, scores the evaluation splits (each scorer writes its
split's official results file), saves the model folder and writes `output_dir/metrics.json`. A task module
supplies only what is its own: the model, the training set, its collator and loss, and one scorer per split.

    result = finetune("vqa", "runs/demo", "shapes", "runs/vqa")   # any task, through the registry
    result.metrics["val"]["accuracy"]                             # {split: metrics} for every task
    FinetuneResult.load("runs/vqa")                               # the same, read back from metrics.json
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write
from ..data.task_data import resolve_shapes
from ..engine import Trainer, TrainerConfig
from ..model_folder import LABELS_NAME, locate_pretrained
from ..models.feature_cache import GridFeatureCache, freeze_trunk
from .base import TaskModel, write_json
from .registry import get_task

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"

#: `scorer(model, out, num_workers) -> metrics` of one split: `out` is the run's output folder, under which the
#: scorer writes the split's official results file (None: write nothing); `num_workers` is the DataLoader's.
Scorer = Callable[[TaskModel, "Path | None", int], dict[str, Any]]


@dataclass
class TrainSummary:
    """steps: optimisation steps run by this call (a resumed run counts only its own); first_loss / last_loss:
    the first and last finite training loss (None when no step ran)."""

    steps: int
    first_loss: float | None
    last_loss: float | None

    @classmethod
    def of(cls, history: list[dict[str, float]]) -> TrainSummary:
        losses = [r["loss"] for r in history if math.isfinite(r.get("loss", math.nan))]
        return cls(len(history), losses[0] if losses else None, losses[-1] if losses else None)


@dataclass
class FinetuneResult:
    """What every task's fine-tuning returns; `to_dict()` is the content of `output_dir/metrics.json`.

    task: the registered task name. output_dir: the run folder (`model/` holds the fine-tuned model).
    config: the task recipe (`to_dict()`). train: the `TrainSummary`.
    metrics: {split: metrics} of every evaluated split, as the task's `evaluate_<task>` returns them (VQA "val",
        "test"; NLVR2 "dev", "test1"; captioning and retrieval the recipe's val and test splits; detection its
        `eval_split`).
    info: task-specific facts (VQA `answer_vocab_size`, the shapes world's `baselines`, detection's
        `paired_text`, `new_parameters`, `trunk_cache` statistics with a frozen trunk).
    history: the Trainer's per-step records (not written to metrics.json; the run's `log.jsonl` has them).
    """

    task: str
    output_dir: str
    config: dict[str, Any]
    train: TrainSummary
    metrics: dict[str, dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list, repr=False)

    @property
    def model_dir(self) -> Path:
        return Path(self.output_dir) / "model"

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "output_dir": self.output_dir, "config": self.config,
                "train": asdict(self.train), "metrics": self.metrics, "info": self.info}

    @classmethod
    def load(cls, output_dir: str | Path) -> FinetuneResult:
        """The result a finished run wrote to `output_dir/metrics.json` (without `history`).

        Raises:
            FileNotFoundError: no metrics.json (the run did not finish). ValueError: a metrics.json of another
                layout (written before vlpkit had one result type: fine-tune again).
        """
        path = Path(output_dir) / METRICS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {output_dir} is not a finished fine-tuning run")
        data = json.loads(path.read_text())
        missing = sorted({"task", "output_dir", "config", "train", "metrics", "info"} - set(data))
        if missing:
            raise ValueError(f"{path} lacks {missing}: it was written by an older vlpkit; fine-tune again")
        return cls(data["task"], data["output_dir"], data["config"], TrainSummary(**data["train"]),
                   data["metrics"], data["info"])


def apply_frozen_trunk(model: TaskModel, config) -> GridFeatureCache | None:
    """With `config.frozen_trunk` (not the paper's recipe, which fine-tunes the trunk at `backbone_lr`): freeze
    the model's ResNet and 1x1 projection and cache their features per image (`vlpkit.models.feature_cache`).
    Returns the cache, or None when the trunk trains."""
    if not getattr(config, "frozen_trunk", False):
        return None
    cache = freeze_trunk(model.e2evlp, config.trunk_cache_megabytes)
    logger.info("trunk frozen; grid features cached per image (at most %.0f MB)", config.trunk_cache_megabytes)
    return cache


def log_trunk_cache(cache: GridFeatureCache) -> dict[str, float]:
    """The cache's `stats()`, also logged."""
    stats = cache.stats()
    logger.info("trunk feature cache: %d hits, %d misses, %d evictions, %d images, %.1f MB", stats["hits"],
                stats["misses"], stats["evictions"], stats["entries"], stats["megabytes"])
    return stats


def carry_labels(checkpoint, model_dir: Path) -> Path | None:
    """Copy the pretraining run's `labels.json` (object and attribute names) into a fine-tuned model folder, so
    that `E2EVLPPredictor.from_pretrained(model_dir).detect(...)` names what it finds. Returns the copy, or None
    when `checkpoint` is not a folder with a `labels.json` (an in-memory model, a fresh model)."""
    if not isinstance(checkpoint, (str, Path)):
        return None
    labels = locate_pretrained(checkpoint).labels
    if labels is None:
        return None
    target = Path(model_dir) / LABELS_NAME
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(labels.read_bytes()))
    return target


def results_scorers(evaluate: Callable, tokenizer, splits: Mapping[str, Any], batch_size: int) -> dict[str, Scorer]:
    """A `Scorer` per evaluation split of VQA- or NLVR2-style data (`splits`: {name: the split's files}), calling
    `evaluate(model, tokenizer, files, name, out / "results" (None: nothing written), batch_size=, num_workers=)`
    (`evaluate_vqa`, `evaluate_nlvr2`)."""
    return {name: functools.partial(_score_split, evaluate, tokenizer, files, name, batch_size)
            for name, files in splits.items()}


def _score_split(evaluate: Callable, tokenizer, files: Any, name: str, batch_size: int, model: TaskModel,
                 out: Path | None, num_workers: int) -> dict[str, Any]:
    return evaluate(model, tokenizer, files, name, None if out is None else out / "results", batch_size=batch_size,
                    num_workers=num_workers)


def run_finetune(task: str, model: TaskModel, loss_fn: Callable, train_set, collator, config: Any,
                 output_dir: str | Path, trainer_config: TrainerConfig, *, scorers: Mapping[str, Scorer],
                 watch: str | None = None, watch_writes: bool = False, checkpoint: Any = None,
                 resume: bool = False, info: Mapping[str, Any] | None = None,
                 save: Callable[[Path], None] | None = None) -> FinetuneResult:
    """Train `model`, score every split of `scorers`, save `output_dir/model` and `output_dir/metrics.json`.

    Args:
        task: the task's registered name. config: its recipe (`to_dict()`, saved with the model; with
            `frozen_trunk`, the trunk is frozen and its features cached per image).
        trainer_config: the run's `TrainerConfig` (the recipe's `trainer_config(output_dir, overrides)`).
        scorers: {split: `Scorer`}, scored in order after training; every process scores its share, the main one
            writes the results files.
        watch: a split of `scorers` also scored during training (the Trainer's `eval_fn`, numeric metrics
            logged): every `eval_every` steps, and at the last step when `watch_writes` or `eval_every > 0`.
        watch_writes: the watched split's scoring at the last step writes its results file and is its final
            metrics (captioning and retrieval: no second pass over val). Otherwise (VQA, NLVR2) the in-loop
            scores are logged only and the split is scored again after training.
        checkpoint: the pretraining folder fine-tuned from: its `labels.json` is copied into the model folder.
        resume: continue from the latest checkpoint in `output_dir/checkpoints`.
        info: task facts for `FinetuneResult.info`.
        save: `save(model_dir)` writes the task's extra files into the saved model folder (main process).
    Returns:
        The `FinetuneResult` (on every process; only the main one writes).
    """
    output_dir = Path(output_dir)
    if watch is not None and watch not in scorers:
        raise KeyError(f"watched split {watch!r} is not among the scored splits {sorted(scorers)}")
    watched: dict[str, Any] = {}

    def eval_fn(m: TaskModel) -> dict[str, float]:
        final = watch_writes and trainer.step == trainer.total_steps and trainer.accelerator.is_main_process
        metrics = scorers[watch](m, output_dir if final else None, 0)
        if watch_writes:
            watched.clear()
            watched.update(metrics)
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    use_watch = watch is not None and (watch_writes or trainer_config.eval_every > 0)
    cache = apply_frozen_trunk(model, config)
    trainer = Trainer(model, loss_fn, train_set, collator, trainer_config, eval_fn=eval_fn if use_watch else None)
    history = trainer.train(resume=resume)

    main = trainer.accelerator.is_main_process
    metrics: dict[str, dict[str, Any]] = {}
    for split, scorer in scorers.items():
        if use_watch and watch_writes and split == watch:
            metrics[split] = dict(watched)
        else:
            metrics[split] = scorer(model, output_dir if main else None, trainer.num_workers)
    result = FinetuneResult(task, str(output_dir), config.to_dict(), TrainSummary.of(history), metrics,
                            dict(info or {}), history)
    if main:
        model.save_pretrained(result.model_dir, config)
        carry_labels(checkpoint, result.model_dir)
        if save is not None:
            save(result.model_dir)
        if cache is not None:
            result.info["trunk_cache"] = log_trunk_cache(cache)
        write_json(output_dir / METRICS_FILE, result.to_dict())
        for split, m in metrics.items():
            logger.info("%s %s: %s", task, split, ", ".join(f"{k} {v:.2f}" for k, v in m.items()
                                                            if isinstance(v, float)))
    trainer.accelerator.wait_for_everyone()
    return result


# ---- any task by name ----------------------------------------------------------------------------------------
def finetune(task: str, checkpoint, data, output_dir: str | Path, config: Any = None,
             trainer_overrides: Mapping[str, Any] | None = None, *, shapes_images: int = 2000,
             resume: bool = False) -> FinetuneResult:
    """Fine-tune the registered task `task` (`vlpkit.tasks.registry`); `data="shapes"` is the default shapes world
    of `shapes_images` images; `config` a task config or a dict of its fields; `resume` continues an interrupted
    run from the latest checkpoint in `output_dir`. Returns the `FinetuneResult` (also in `metrics.json`)."""
    spec = get_task(task)
    if not isinstance(config, spec.config_class):
        config = spec.config_class.from_dict(dict(config or {}))
    return spec.finetune(checkpoint, resolve_shapes(data, shapes_images), output_dir, config=config,
                         trainer_overrides=trainer_overrides, resume=resume)


def evaluate(task: str, model_dir: str | Path, data: Any = "shapes", split: str | None = None,
             output_dir: str | Path | None = None, config: Any = None, *, device: str | torch.device | None = None,
             shapes_images: int = 2000) -> dict[str, Any]:
    """Evaluate a fine-tuned model folder on one split with the task's official metric.

    Args:
        task: a registered task name (`vlpkit.tasks.registry.task_names()`: vqa, nlvr2, caption, retrieval,
            detection and any registered by another package).
        model_dir: the output folder of `vlpkit finetune TASK` (or its `model/`).
        data: what the task's fine-tuning accepts: "shapes" (the default shapes world of `shapes_images` images), a
            `ShapesSetup`, a dict or a YAML/JSON file of dataset paths.
        split: default: the task's (VQA "val", NLVR2 "dev", captioning and retrieval the recipe's `test_split`,
            detection its `eval_split`). NLVR2 also takes "val" for "dev" and "test" for "test1".
        output_dir: receives the official results file of the split and `evaluation_<split>.json` (task, split,
            model folder, metrics); None: nothing is written.
        config: None (the recipe recorded at fine-tuning), or a dict of recipe fields to change (e.g.
            `{"eval_batch_size": 8}`), or a task config.
        device: default: CUDA when available, else the CPU.
    Returns:
        The task's metrics (as `evaluate_<task>` returns them), with "split".
    """
    spec = get_task(task)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    metrics = spec.evaluate(model_dir, resolve_shapes(data, shapes_images), split, output_dir, config, device=device)
    if output_dir is not None:
        record = {"task": task, "split": metrics["split"], "model": str(model_dir), "metrics": metrics}
        write_json(Path(output_dir) / f"evaluation_{metrics['split']}.json", record)
    return metrics
