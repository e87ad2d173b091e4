"""What every downstream task shares.

- `TaskModel`: a pretrained `E2EVLP` (`e2evlp`) plus a task head (`head`). `from_checkpoint` builds it around
  pretraining weights (loaded strictly) and reports the head's parameters as newly initialised;
  `save_pretrained(dir, config)` writes the weights, the tokenizer and the fine-tuning recipe, which
  `load_finetuned` reads back for evaluation. Its `forward(batch)` returns a typed output: `TaskOutput` (VQA,
  NLVR2, captioning, retrieval) or `DetectionOutput` (detection).
- `TaskConfig`: the recipe dataclasses' dict round trip (unknown keys named) and their `TrainerConfig`.
- `TaskData`: VQA's and NLVR2's data descriptions resolved from a shapes world, "shapes", a dict or a file.
- Tokenizer plumbing (`find_tokenizer`, `check_tokenizer`, `tokenizer_overrides`, `fresh_overrides`).
- The two fine-tuning flows: `finetune_eval_splits` (VQA, NLVR2: evaluate every evaluation split at the end) and
  `finetune_val_test` (captioning, retrieval: val during training, test at the end).
- `finetune(task, ...)` / `evaluate(task, ...)`: any registered task by its name (`vlpkit.tasks.registry`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from ..builder import build_e2evlp
from ..checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    atomic_write,
    load_weights,
    read_metadata,
    save_model_config,
    save_weights,
)
from ..config import E2EVLPConfig
from ..config_io import DictConfig
from ..data.tokenization import load_tokenizer, save_tokenizer
from ..engine import Trainer, TrainerConfig
from ..model_folder import LABELS_NAME, locate_pretrained
from ..models import E2EVLP
from ..models.feature_cache import GridFeatureCache, freeze_trunk
from ..yamlio import load_yaml_file
from .registry import get_task

logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "e2evlp.backbone.trunk."  # the ResNet trunk inside a TaskModel (DETR's backbone lr group)
TOKENIZER_DIR = "tokenizer"
# Image sizes (VQA, NLVR2): DETR's / E2E-VLP's for real images, the demo recipe's for the 128-px shapes world.
IMAGE_DEFAULTS = {"files": {"train_scales": list(range(480, 801, 32)), "max_size": 1333, "eval_size": 800},
                  "shapes": {"train_scales": [128], "max_size": 160, "eval_size": 128}}
# TaskConfig fields that are TrainerConfig fields of the same meaning (a recipe without one keeps the default)
RECIPE_TRAINER_FIELDS = ("epochs", "batch_size", "lr", "backbone_lr", "weight_decay", "clip_max_norm",
                         "warmup_steps", "lr_drop_epochs", "lr_drop_factor", "seed")


@dataclass
class TaskOutput(ModelOutput):
    """What `forward(batch)` of the VQA, NLVR2, captioning and retrieval models returns (a Hugging Face
    `ModelOutput`: `out.logits`, `out["logits"]` and `out[0]` all work).

    logits: VQA [B, num_answers] answer logits; NLVR2 [B, 2] (index 1 = True); captioning [B, T-1, vocab_size]
        teacher-forced next-token logits (position t predicts caption_ids[:, t + 1]); retrieval [B] matching
        logits of the row-aligned (image, text) pairs.
    """

    logits: torch.Tensor | None = None


class MLPClassifier(nn.Module):
    """[B, in_features] -> [B, num_outputs] logits: Linear(in, hidden) - GELU - LayerNorm - Linear(hidden, out), the
    classifier of UNITER's VQA head and LXMERT's NLVR2 head (parameters `dense`, `norm`, `classifier`)."""

    def __init__(self, in_features: int, hidden: int, num_outputs: int, layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, hidden)
        self.norm = nn.LayerNorm(hidden, eps=layer_norm_eps)
        self.classifier = nn.Linear(hidden, num_outputs)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(F.gelu(self.dense(state))))


def load_e2evlp(checkpoint: str | Path | E2EVLP | None, preset: str = "e2evlp-tiny", **overrides) -> E2EVLP:
    """A pretrained E2EVLP (loaded strictly) from a `save_pretrained` folder or a pretraining run folder (its
    `model/`), an existing model, or a fresh `preset` with `overrides` (checkpoint=None)."""
    if isinstance(checkpoint, E2EVLP):
        return checkpoint
    if checkpoint is None:
        return build_e2evlp(preset, **overrides)
    model_dir = locate_pretrained(checkpoint).model_dir
    task = read_metadata(model_dir / WEIGHTS_NAME).get("task")
    if task is not None:
        raise ValueError(f"{model_dir} holds a fine-tuned {task}, not a pretraining checkpoint: load it with "
                         f"{task}.from_pretrained (or start from the pretraining run's model)")
    return E2EVLP.from_pretrained(model_dir, **overrides)


# ---- recipes -------------------------------------------------------------------------------------------------
class TaskConfig(DictConfig):
    """Mixin of the task recipe dataclasses: the dict round trip (`DictConfig`), image sizes per kind of data,
    the `TrainerConfig`."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.config_label = cls.__name__  # "unknown VQAConfig field(s) ..."

    def image_settings(self, kind: str) -> dict[str, Any]:
        """`train_scales`, `max_size`, `eval_size`: the set values, else the defaults of data `kind` ("shapes" or
        "files", `IMAGE_DEFAULTS`)."""
        return {k: getattr(self, k) if getattr(self, k) is not None else v for k, v in IMAGE_DEFAULTS[kind].items()}

    def trainer_config(self, output_dir: str | Path, overrides: Mapping[str, Any] | None = None,
                       **more: Any) -> TrainerConfig:
        """The `TrainerConfig` of this recipe; `overrides` (a mapping) and `more` (keywords) are TrainerConfig
        fields applied last (see `task_trainer_config`)."""
        return task_trainer_config(self, output_dir, overrides, **more)


def task_trainer_config(config, output_dir: str | Path, overrides: Mapping[str, Any] | None = None,
                        **more: Any) -> TrainerConfig:
    """A `TrainerConfig` from the recipe fields a task config has (`RECIPE_TRAINER_FIELDS`: batch_size, epochs, lr,
    backbone_lr, lr_drop_epochs, ...; missing ones keep TrainerConfig's defaults), the TaskModel backbone prefix
    and DDP's `find_unused_parameters` (tasks leave the heads they do not use without gradient), then `overrides`
    and `more` (TrainerConfig fields)."""
    recipe = {name: getattr(config, name) for name in RECIPE_TRAINER_FIELDS if hasattr(config, name)}
    recipe["lr_drop_epochs"] = list(recipe.get("lr_drop_epochs", []))
    base = TrainerConfig(output_dir=str(output_dir), backbone_prefix=BACKBONE_PREFIX, find_unused_parameters=True,
                         **recipe)
    return base.replace(**{**dict(overrides or {}), **more})


# ---- data descriptions ---------------------------------------------------------------------------------------
def is_shapes_setup(obj: Any) -> bool:
    """A `vlpkit.data.shapes.setup.ShapesSetup` (duck-typed: a world, a tokenizer and `model_overrides`)."""
    return hasattr(obj, "world") and hasattr(obj, "tokenizer") and callable(getattr(obj, "model_overrides", None))


def resolve_shapes(data: Any, num_images: int = 2000) -> Any:
    """`"shapes"` -> the default shapes world of `num_images` images (`prepare_shapes`); anything else as is."""
    if isinstance(data, str) and data == "shapes":
        from ..data.shapes.setup import prepare_shapes

        return prepare_shapes(num_images=num_images)
    return data


class TaskData:
    """Mixin of the data descriptions of VQA and NLVR2 (which define `from_shapes(setup)` and
    `from_dict(data, base_dir)`, and name their task in `task_name`)."""

    task_name: ClassVar[str] = "task"

    @classmethod
    def resolve(cls, setup_or_paths):
        """An instance, a `ShapesSetup`, `"shapes"` (the default shapes world), a dict, or a YAML/JSON description
        file (relative paths in it are read from its folder)."""
        if isinstance(setup_or_paths, cls):
            return setup_or_paths
        setup_or_paths = resolve_shapes(setup_or_paths)
        if hasattr(setup_or_paths, "world") and hasattr(setup_or_paths, "tokenizer"):
            return cls.from_shapes(setup_or_paths)
        if isinstance(setup_or_paths, Mapping):
            return cls.from_dict(setup_or_paths)
        if isinstance(setup_or_paths, (str, Path)):
            path = Path(setup_or_paths)
            if not path.is_file():
                raise FileNotFoundError(f"{cls.task_name} data description not found: {path} (expected 'shapes' or "
                                        "a YAML/JSON file with 'train' and 'eval' splits)")
            return cls.from_dict(load_yaml_file(path), path.parent)
        raise TypeError(f"expected a {cls.__name__}, ShapesSetup, 'shapes' or a description file, "
                        f"got {type(setup_or_paths).__name__}")


def eval_split(splits: Mapping[str, Any], name: str, task: str, aliases: Mapping[str, str] | None = None):
    """`splits[name]` (or `splits[aliases[name]]`), or a `KeyError` naming the available splits."""
    if name not in splits and aliases and aliases.get(name) in splits:
        name = aliases[name]
    if name not in splits:
        raise KeyError(f"no {task} evaluation split {name!r} in the data; available: {sorted(splits)}")
    return name, splits[name]


def mean_by_group(values: Mapping[Any, float], groups: Mapping[Any, str], where: str) -> dict[str, tuple[float, int]]:
    """{group: (mean of its values, count)}, groups sorted by name, for per-example `values` ({id: value}) and
    `groups` ({id: group}); `where` names the split in the error.

    Raises:
        ValueError: some id of `values` has no group (the first few are named).
    """
    missing = [i for i in values if i not in groups]
    if missing:
        raise ValueError(f"{where}: {len(missing)} id(s) have no group, e.g. {missing[:3]}")
    by_group: dict[str, list[float]] = {}
    for i, value in values.items():
        by_group.setdefault(groups[i], []).append(value)
    return {g: (sum(v) / len(v), len(v)) for g, v in sorted(by_group.items())}


# ---- tokenizers ----------------------------------------------------------------------------------------------
def find_tokenizer(checkpoint) -> Any:
    """The tokenizer saved with a checkpoint folder: `<checkpoint>/tokenizer`, or `<checkpoint>/../tokenizer`
    (the layout `vlpkit pretrain` writes: `<run>/model` + `<run>/tokenizer`); None when there is none."""
    if not isinstance(checkpoint, (str, Path)):
        return None
    for folder in (Path(checkpoint) / TOKENIZER_DIR, Path(checkpoint).parent / TOKENIZER_DIR):
        if folder.is_dir():
            return load_tokenizer(folder)
    return None


def check_tokenizer(tokenizer, config: E2EVLPConfig) -> None:
    """Raise when the tokenizer cannot be the model's (ids past the embedding table, other special ids)."""
    problems = []
    if len(tokenizer) > config.vocab_size:
        problems.append(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}")
    for name in ("cls", "sep", "pad"):
        tok_id, cfg_id = getattr(tokenizer, f"{name}_token_id"), getattr(config, f"{name}_token_id")
        if tok_id != cfg_id:
            problems.append(f"[{name.upper()}] is {tok_id} in the tokenizer but {cfg_id} in the model config")
    if problems:
        raise ValueError("the tokenizer does not match the model (use the tokenizer saved with the pretraining "
                         "checkpoint): " + "; ".join(problems))


def tokenizer_overrides(tokenizer) -> dict[str, int]:
    """E2EVLPConfig fields a fresh model needs to agree with `tokenizer` ([CLS] starts and [SEP] ends a text)."""
    return dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
                sep_token_id=tokenizer.sep_token_id, mask_token_id=tokenizer.mask_token_id,
                bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)


def fresh_overrides(data: Any, tokenizer) -> dict[str, Any]:
    """E2EVLPConfig fields of a model trained from scratch: a shapes setup's `model_overrides()`, else the
    tokenizer's (`tokenizer_overrides`)."""
    if callable(getattr(data, "model_overrides", None)):
        return data.model_overrides()
    return tokenizer_overrides(tokenizer)


# ---- the task model ------------------------------------------------------------------------------------------
class TaskModel(nn.Module):
    """A pretrained `E2EVLP` (`self.e2evlp`) plus a task head (`self.head`).

    Subclasses implement `forward(batch)` returning a `TaskOutput` (or, for detection, a `DetectionOutput`).
    `from_checkpoint` builds the wrapper around pretrained weights and logs (and keeps, in `new_parameters`) the
    names of the head's parameters, which start from their initialisation. `recipe_file` names the file in which
    `save_pretrained(directory, config)` records the fine-tuning recipe.
    """

    recipe_file: ClassVar[str | None] = None

    def __init__(self, e2evlp: E2EVLP, head: nn.Module) -> None:
        super().__init__()
        self.e2evlp = e2evlp
        self.head = head
        self.new_parameters = sorted(f"head.{n}" for n, _ in head.named_parameters())

    @property
    def config(self) -> E2EVLPConfig:
        return self.e2evlp.config

    def report_new_parameters(self) -> list[str]:
        if self.new_parameters:
            logger.warning("%s: newly initialised parameters (not in the pretrained checkpoint): %s",
                           type(self).__name__, ", ".join(self.new_parameters))
        return self.new_parameters

    def save_pretrained(self, directory: str | Path, config: TaskConfig | None = None) -> Path:
        """`config.json` (the E2EVLP config) + `model.safetensors` (E2EVLP and head, under e2evlp./head., with the
        task class in the metadata), `tokenizer/` when the model has one, and the recipe `config` (when given) in
        `recipe_file`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_model_config(self.config, directory / CONFIG_NAME)
        save_weights(self, directory / WEIGHTS_NAME, metadata={"format": "pt", "library": "vlpkit",
                                                               "task": type(self).__name__})
        if getattr(self, "tokenizer", None) is not None:
            save_tokenizer(self.tokenizer, directory / TOKENIZER_DIR)
        if config is not None and self.recipe_file:
            write_json(directory / self.recipe_file, config.to_dict())
        return directory

    def load_task_weights(self, directory: str | Path) -> None:
        """Load weights written by `save_pretrained` of the same task (strict: names every mismatch)."""
        load_weights(self, Path(directory) / WEIGHTS_NAME, strict=True)

    @staticmethod
    def saved_tokenizer(directory: str | Path):
        """The tokenizer `save_pretrained` wrote in `directory/tokenizer`, or None."""
        folder = Path(directory) / TOKENIZER_DIR
        return load_tokenizer(folder) if folder.is_dir() else None

    @classmethod
    def read_task_file(cls, directory: str | Path, name: str) -> dict[str, Any]:
        """The JSON `directory/name` that `save_pretrained` of this task writes, or a `FileNotFoundError`."""
        path = Path(directory) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {directory} is not a model saved by "
                                    f"{cls.__name__}.save_pretrained (for a pretraining checkpoint use "
                                    "from_checkpoint)")
        return json.loads(path.read_text())

    @classmethod
    def load_recipe(cls, directory: str | Path, config_cls: type):
        """The recipe `save_pretrained(directory, config)` recorded, as a `config_cls`; None when there is none."""
        path = Path(directory) / cls.recipe_file if cls.recipe_file else None
        if path is None or not path.is_file():
            return None
        return config_cls.from_dict(json.loads(path.read_text()))


def move_batch(batch, device: torch.device):
    return batch.to(device) if hasattr(batch, "to") else batch


def write_json(path: str | Path, data: Any) -> Path:
    """`data` as indented JSON at `path` (atomically)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=str) + "\n"))


def load_finetuned(model_cls: type[TaskModel], config_cls: type, path: str | Path,
                   config: Any = None) -> tuple[TaskModel, Any]:
    """A fine-tuned task model and its recipe, from a `finetune_*` output folder (its `model/`) or a model folder.

    Args:
        config: None (the recorded recipe, else the defaults with a warning), a `config_cls` (used as is), or a
            dict of fields that override the recorded recipe.
    Raises:
        ValueError: the folder holds another task's model.
    """
    model_dir = locate_pretrained(path).model_dir
    task = read_metadata(model_dir / WEIGHTS_NAME).get("task")
    if task != model_cls.__name__:
        held = f"a {task}" if task else "a pretrained E2EVLP (not a fine-tuned task model)"
        raise ValueError(f"{model_dir} holds {held}, not a {model_cls.__name__}")
    model = model_cls.from_pretrained(model_dir)
    if not isinstance(config, config_cls):
        recorded = model_cls.load_recipe(model_dir, config_cls)
        if recorded is None:
            logger.warning("%s records no fine-tuning recipe (%s); evaluating with the default %s", model_dir,
                           model_cls.recipe_file, config_cls.__name__)
            recorded = config_cls()
        config = recorded.replace(**dict(config or {}))
    return model.eval(), config


# ---- fine-tuning flows ---------------------------------------------------------------------------------------
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


def loss_summary(history: list[dict]) -> tuple[float | None, float | None]:
    """(first, last) finite training loss of a `Trainer.train` history."""
    losses = [r["loss"] for r in history if math.isfinite(r.get("loss", math.nan))]
    return (losses[0], losses[-1]) if losses else (None, None)


def finetune_eval_splits(task: str, model: TaskModel, loss_fn: Callable, train_set, collator, tokenizer, data,
                         config, output_dir: Path, trainer_overrides: Mapping[str, Any] | None, evaluate: Callable,
                         *, eval_fn: Callable | None = None, resume: bool = False,
                         scorable: Callable[[Any], bool] = lambda split: True,
                         extra: Mapping[str, Any] | None = None, checkpoint=None) -> dict[str, Any]:
    """Train, then evaluate every split of `data.eval`, save the model and `metrics.json` (VQA, NLVR2).

    Args:
        evaluate: `evaluate(model, tokenizer, split_files, name, output_dir, batch_size=, num_workers=) -> dict`
            (`evaluate_vqa`, `evaluate_nlvr2`); results files go to `output_dir/results`.
        eval_fn: the `Trainer`'s; by default, with `eval_every > 0`, the float metrics of the first evaluation
            split (when `scorable(split)`).
        extra: report entries placed after "config".
        checkpoint: the pretraining folder fine-tuned from; its `labels.json` is copied into `output_dir/model`.
    Returns:
        The content of `metrics.json`: {"task", "config", **extra, "train_steps", "train_loss_first",
        "train_loss_last", "metrics": {split: evaluate(...)}, "baselines"} ({} off the main process).
    """
    trainer_cfg = config.trainer_config(output_dir, trainer_overrides)
    if eval_fn is None and trainer_cfg.eval_every > 0 and data.eval:
        name, split = next(iter(data.eval.items()))
        if scorable(split):
            def eval_fn(m):
                r = evaluate(m, tokenizer, split, name, batch_size=config.eval_batch_size)
                return {k: v for k, v in r.items() if isinstance(v, float)}
    cache = apply_frozen_trunk(model, config)
    trainer = Trainer(model, loss_fn, train_set, collator, trainer_cfg, eval_fn=eval_fn)
    history = trainer.train(resume=resume)

    report: dict[str, Any] = {}
    main = trainer.accelerator.is_main_process
    # every process evaluates its share of each split; the main one writes the results files
    metrics = {name: evaluate(model, tokenizer, split, name, output_dir / "results" if main else None,
                              batch_size=config.eval_batch_size, num_workers=trainer.num_workers)
               for name, split in data.eval.items()}
    if main:
        model.save_pretrained(output_dir / "model", config)
        carry_labels(checkpoint, output_dir / "model")
        first, last = loss_summary(history)
        report = {"task": task, "config": config.to_dict(), **dict(extra or {}), "train_steps": len(history),
                  "train_loss_first": first, "train_loss_last": last, "metrics": metrics,
                  "baselines": data.baselines}
        if cache is not None:
            report["trunk_cache"] = log_trunk_cache(cache)
        write_json(output_dir / "metrics.json", report)
        for name, m in metrics.items():
            logger.info("%s %s: %s", task, name, ", ".join(f"{k} {v:.2f}" for k, v in m.items()
                                                          if isinstance(v, float)))
    trainer.accelerator.wait_for_everyone()
    return report


def finetune_val_test(model: TaskModel, loss_fn: Callable, train_set, collator, data, config, output_dir: Path,
                      trainer_overrides: Mapping[str, Any] | None, evaluate: Callable,
                      config_name: str, checkpoint=None, resume: bool = False) -> dict[str, Any]:
    """Train (scoring `config.val_split` at every evaluation, and writing its results file at the last), then save
    the model and the recipe, score `config.test_split` with its results file, and write `metrics.json`
    (captioning, retrieval).

    Args:
        data: has `tokenizer` and `splits` (a `CaptionData`).
        evaluate: `evaluate(model, tokenizer, data, split, output_dir, config) -> dict`.
        config_name: the recipe's file name in `output_dir` (it is also saved in `output_dir/model`).
        checkpoint: the pretraining folder fine-tuned from; its `labels.json` is copied into `output_dir/model`.
        resume: continue from the latest checkpoint in `output_dir/checkpoints`.
    Returns:
        {"train": {"steps", "first_loss", "last_loss"}, "output_dir", "val" (when scored), "test" (when the split
        exists)}.
    """
    val_metrics: dict[str, float] = {}

    def eval_fn(m):
        # the evaluation at the last step also writes the val split's official results file (main process)
        final = trainer.step == trainer.total_steps and trainer.accelerator.is_main_process
        metrics = evaluate(m, data.tokenizer, data, config.val_split, output_dir if final else None, config)
        val_metrics.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        return val_metrics

    cache = apply_frozen_trunk(model, config)
    trainer = Trainer(model, loss_fn, train_set, collator, config.trainer_config(output_dir, trainer_overrides),
                      eval_fn=eval_fn if config.val_split in data.splits else None)
    history = trainer.train(resume=resume)
    result: dict[str, Any] = {"train": {"steps": len(history), "first_loss": history[0]["loss"] if history else None,
                                        "last_loss": history[-1]["loss"] if history else None},
                              "output_dir": str(output_dir)}
    main = trainer.accelerator.is_main_process
    if val_metrics:
        result["val"] = dict(val_metrics)
    if config.test_split in data.splits:  # every process scores its share; the main one writes the results file
        result["test"] = evaluate(model, data.tokenizer, data, config.test_split, output_dir if main else None, config)
    if main:
        model.save_pretrained(output_dir / "model", config)
        carry_labels(checkpoint, output_dir / "model")
        write_json(output_dir / config_name, config.to_dict())
        if cache is not None:
            result["trunk_cache"] = log_trunk_cache(cache)
        write_json(output_dir / "metrics.json", result)
    return result


# ---- any task by name ----------------------------------------------------------------------------------------
def finetune(task: str, checkpoint, data, output_dir: str | Path, config: Any = None,
             trainer_overrides: Mapping[str, Any] | None = None, *, shapes_images: int = 2000,
             resume: bool = False) -> dict[str, Any]:
    """Fine-tune the registered task `task` (`vlpkit.tasks.registry`); `data="shapes"` is the default shapes world
    of `shapes_images` images; `config` a task config or a dict of its fields; `resume` continues an interrupted
    run from the latest checkpoint in `output_dir`."""
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
