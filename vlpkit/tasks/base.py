"""What every downstream task shares.

- `TaskModel`: a pretrained `E2EVLP` (`e2evlp`) plus a task head (`head`). `from_checkpoint` builds it around
  pretraining weights (loaded strictly) and reports the head's parameters as newly initialised;
  `save_pretrained(dir, config)` writes the weights, the tokenizer and the fine-tuning recipe, which
  `load_finetuned` reads back for evaluation. Its `forward(batch)` returns a typed output: `TaskOutput` (VQA,
  NLVR2, captioning, retrieval) or `DetectionOutput` (detection).
- `TaskConfig`: the recipe dataclasses' dict round trip (unknown keys named) and their nested `TrainerConfig`.
- Tokenizer plumbing (`find_tokenizer`, `check_tokenizer`, `tokenizer_overrides`, `fresh_overrides`).

The fine-tuning loop every task runs, and `finetune` / `evaluate` by task name, are in `vlpkit.tasks.finetuning`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
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
    load_model_config,
    load_weights,
    read_metadata,
    save_model_config,
    save_weights,
)
from ..config import E2EVLPConfig
from ..config_io import DictConfig
from ..data.tokenization import load_tokenizer, save_tokenizer, tokenizer_overrides  # noqa: F401  (public here too)
from ..engine import TrainerConfig
from ..model_folder import locate_pretrained
from ..models import E2EVLP
from ..schema import ConfigError

logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "e2evlp.backbone.trunk."  # the ResNet trunk inside a TaskModel (DETR's backbone lr group)
TOKENIZER_DIR = "tokenizer"
TASK_JSON = "task.json"  # the task-model folder's own record (TaskModel)
# Image sizes (VQA, NLVR2): DETR's / E2E-VLP's for real images, the demo recipe's for the 128-px shapes world.
IMAGE_DEFAULTS = {"files": {"train_scales": list(range(480, 801, 32)), "max_size": 1333, "eval_size": 800},
                  "shapes": {"train_scales": [128], "max_size": 160, "eval_size": 128}}
# the TrainerConfig fields that recipes held at their top level before they nested a TrainerConfig (read back by
# TaskConfig.from_dict from the task.json of earlier folders)
FLAT_TRAINER_FIELDS = ("epochs", "batch_size", "lr", "backbone_lr", "weight_decay", "clip_max_norm",
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
def task_trainer(**fields: Any) -> TrainerConfig:
    """The `TrainerConfig` of a task recipe: the TaskModel's ResNet trains at `backbone_lr` (`BACKBONE_PREFIX`),
    DDP tolerates the heads a task leaves without gradient (`find_unused_parameters`), then `fields`."""
    return TrainerConfig(backbone_prefix=BACKBONE_PREFIX, find_unused_parameters=True, **fields)


class TaskConfig(DictConfig):
    """Mixin of the task recipe dataclasses: the dict round trip (`DictConfig`), image sizes per kind of data, and
    the nested `trainer`: the recipe's `TrainerConfig` (batch size, epochs, learning rates and their schedule,
    seed), whose defaults are the task's (paper) recipe.

    Subclasses declare `trainer: TrainerConfig = field(default_factory=lambda: task_trainer(...))` and call
    `self.check_trainer()` in `__post_init__`. `trainer` may also be given as a dict of changes to the task's
    defaults (`VQAConfig(trainer={"lr": 3e-4})`, YAML, `from_dict`, `replace(trainer={...})`).
    """

    trainer: TrainerConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.config_label = cls.__name__  # "unknown VQAConfig field(s) ..."

    @classmethod
    def default_trainer(cls) -> TrainerConfig:
        """The task's own `TrainerConfig` defaults (the `trainer` field's)."""
        return cls.__dataclass_fields__["trainer"].default_factory()  # type: ignore[attr-defined]

    def check_trainer(self) -> None:
        """A dict `trainer` becomes the task's defaults with those changes (unknown fields named)."""
        if isinstance(self.trainer, Mapping):
            self.trainer = self.default_trainer().replace(**self.trainer)
        elif not isinstance(self.trainer, TrainerConfig):
            raise ConfigError(f"{type(self).__name__}.trainer: expected a TrainerConfig or a dict of its fields, "
                              f"got {type(self.trainer).__name__}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """As `DictConfig.from_dict`; a recipe written before recipes nested their `TrainerConfig` (trainer fields
        at the top level, as in the task.json of earlier folders) is read with those fields moved to `trainer`."""
        data = dict(data)
        flat = {k: data.pop(k) for k in list(data) if k in FLAT_TRAINER_FIELDS and k not in cls.field_names()}
        if flat:
            logger.warning("%s: %s given at the top level of the recipe; read as trainer.%s (recipes nest them "
                           "under 'trainer')", cls.__name__, sorted(flat), "/".join(sorted(flat)))
            data["trainer"] = {**flat, **dict(data.get("trainer") or {})}
        return super().from_dict(data)

    def replace(self, **changes: Any):
        """As `DictConfig.replace`; `trainer` may be a dict of changes to the present trainer."""
        if isinstance(changes.get("trainer"), Mapping):
            changes["trainer"] = self.trainer.replace(**changes["trainer"])
        return super().replace(**changes)

    def image_settings(self, kind: str) -> dict[str, Any]:
        """`train_scales`, `max_size`, `eval_size`: the set values, else the defaults of data `kind` ("shapes" or
        "files", `IMAGE_DEFAULTS`)."""
        return {k: getattr(self, k) if getattr(self, k) is not None else v for k, v in IMAGE_DEFAULTS[kind].items()}

    def trainer_config(self, output_dir: str | Path, overrides: Mapping[str, Any] | None = None,
                       **more: Any) -> TrainerConfig:
        """The run's `TrainerConfig`: `trainer` writing to `output_dir`, with `overrides` (a mapping) and `more`
        (keywords) applied last (e.g. `max_steps`, which a recipe leaves to the run)."""
        return self.trainer.replace(output_dir=str(output_dir), **{**dict(overrides or {}), **more})


# ---- data descriptions ---------------------------------------------------------------------------------------
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


def fresh_overrides(data: Any, tokenizer) -> dict[str, Any]:
    """E2EVLPConfig fields of a model trained from scratch: a shapes setup's `model_overrides()`, else the
    tokenizer's (`tokenizer_overrides`)."""
    if callable(getattr(data, "model_overrides", None)):
        return data.model_overrides()
    return tokenizer_overrides(tokenizer)


# ---- the task model ------------------------------------------------------------------------------------------
class TaskModel(nn.Module):
    """A pretrained `E2EVLP` (`self.e2evlp`) plus a task head (`self.head`).

    Subclasses implement `forward(batch)` returning a `TaskOutput` (or, for detection, a `DetectionOutput`),
    `arguments()` (the JSON-able construction arguments beyond the E2EVLP and the tokenizer: head sizes, image
    sizes) and `from_arguments` (the reverse). `from_checkpoint` builds the wrapper around pretrained weights and
    logs (and keeps, in `new_parameters`) the names of the head's parameters, which start from their
    initialisation.

    One folder format for every task (`save_pretrained` / `from_pretrained`):

        config.json         the E2EVLP config
        model.safetensors   E2EVLP and head weights (under e2evlp./head.), the model class in the metadata
        task.json           {"task": registered name, "model_class", "arguments": arguments(), "recipe": the
                            fine-tuning recipe or null}
        tokenizer/          when the model has a tokenizer
        ...                 a task's own data files (VQA: answer_vocab.json)

    Folders written before `task.json` existed (their weights name the model class; `<task>_task.json` /
    `<task>_config.json` beside them) still load: the subclass's `legacy_files` and `legacy_arguments` read them.
    """

    task_name: ClassVar[str] = ""
    #: (file with construction arguments or None, recipe file) of folders written before task.json
    legacy_files: ClassVar[tuple[str | None, str | None]] = (None, None)

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

    def arguments(self) -> dict[str, Any]:
        """The construction arguments `from_arguments` takes back (JSON-able)."""
        return {}

    @classmethod
    def from_arguments(cls, e2evlp: E2EVLP, tokenizer, arguments: dict[str, Any], directory: Path) -> TaskModel:
        """The model around `e2evlp` from saved `arguments` (`directory`: the folder, for a task's data files)."""
        raise NotImplementedError(f"{cls.__name__}.from_arguments")

    def save_pretrained(self, directory: str | Path, config: TaskConfig | None = None) -> Path:
        """Write the task-model folder (see the class docstring); `config`: the recipe recorded in task.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_model_config(self.config, directory / CONFIG_NAME)
        save_weights(self, directory / WEIGHTS_NAME, metadata={"format": "pt", "library": "vlpkit",
                                                               "task": type(self).__name__})
        if getattr(self, "tokenizer", None) is not None:
            save_tokenizer(self.tokenizer, directory / TOKENIZER_DIR)
        write_json(directory / TASK_JSON, {"task": self.task_name, "model_class": type(self).__name__,
                                           "arguments": self.arguments(),
                                           "recipe": None if config is None else config.to_dict()})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, tokenizer=None, **arguments: Any) -> TaskModel:
        """Load a folder written by `save_pretrained` of this class (strictly: every weight must fit).

        Args:
            tokenizer: replaces the saved one. arguments: replace saved construction arguments (e.g. `eval_size`);
                None values are ignored.
        Raises:
            FileNotFoundError: not a task-model folder. ValueError: a folder of another task (both named).
        """
        return cls.load_with_record(directory, tokenizer, **arguments)[0]

    @classmethod
    def load_with_record(cls, directory: str | Path, tokenizer=None,
                         **arguments: Any) -> tuple[TaskModel, dict[str, Any]]:
        """`from_pretrained`, also returning the folder's task record (`task_record`: task, arguments, recipe)."""
        directory = Path(directory)
        record = cls.task_record(directory)
        if record["model_class"] != cls.__name__:
            raise ValueError(f"{directory} holds a {record['model_class']}, not a {cls.__name__}: load it with "
                             f"{record['model_class']}.from_pretrained (or vlpkit.inference.E2EVLPPredictor)")
        saved = dict(record["arguments"])
        saved.update({k: v for k, v in arguments.items() if v is not None})
        e2evlp = build_e2evlp(load_model_config(directory / CONFIG_NAME))
        model = cls.from_arguments(e2evlp, tokenizer if tokenizer is not None else saved_tokenizer(directory), saved,
                                   directory)
        load_weights(model, directory / WEIGHTS_NAME, strict=True)
        model.new_parameters = []
        return model, record

    @classmethod
    def task_record(cls, directory: str | Path) -> dict[str, Any]:
        """The folder's task.json; for a folder written before task.json existed, the same record built from the
        model class its weights name and that class's `legacy_files`.

        Raises:
            FileNotFoundError: not a task-model folder (a pretraining checkpoint, or no weights; named).
        """
        directory = Path(directory)
        path = directory / TASK_JSON
        if path.is_file():
            return json.loads(path.read_text())
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{path} not found: {directory} is not a task-model folder (no {TASK_JSON}, "
                                    f"no {WEIGHTS_NAME})")
        held = read_metadata(weights).get("task")
        if held is None:
            raise FileNotFoundError(f"{directory} holds a pretrained E2EVLP, not a fine-tuned task model: wrap it "
                                    f"with {cls.__name__}.from_checkpoint")
        if held != cls.__name__:
            return {"task": None, "model_class": held, "arguments": {}, "recipe": None}
        arguments_file, recipe_file = cls.legacy_files
        if arguments_file and not (directory / arguments_file).is_file():
            raise FileNotFoundError(f"{directory} holds {held} weights but neither {TASK_JSON} nor {arguments_file}")
        stored = json.loads((directory / arguments_file).read_text()) if arguments_file else {}
        recipe_path = directory / recipe_file if recipe_file else None
        recipe = json.loads(recipe_path.read_text()) if recipe_path is not None and recipe_path.is_file() else None
        return {"task": cls.task_name, "model_class": held, "arguments": cls.legacy_arguments(stored, recipe),
                "recipe": recipe}

    @classmethod
    def legacy_arguments(cls, stored: dict[str, Any], recipe: dict[str, Any] | None) -> dict[str, Any]:
        """`arguments()` of a legacy folder from its arguments file (`stored`) and recipe."""
        return {k: v for k, v in stored.items() if k != "task"}

    @classmethod
    def load_recipe(cls, directory: str | Path, config_cls: type):
        """The recipe the folder records, as a `config_cls`; None when there is none."""
        recipe = cls.task_record(directory).get("recipe")
        return None if recipe is None else config_cls.from_dict(recipe)


def saved_tokenizer(directory: str | Path):
    """The tokenizer `save_pretrained` wrote in `directory/tokenizer`, or None."""
    folder = Path(directory) / TOKENIZER_DIR
    return load_tokenizer(folder) if folder.is_dir() else None


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
        ValueError: the folder holds another task's model. FileNotFoundError: it holds a pretrained E2EVLP or no
            model (`TaskModel.task_record`).
    """
    model_dir = locate_pretrained(path).model_dir
    model, record = model_cls.load_with_record(model_dir)
    if not isinstance(config, config_cls):
        if record.get("recipe") is None:
            logger.warning("%s records no fine-tuning recipe; evaluating with the default %s", model_dir,
                           config_cls.__name__)
            recorded = config_cls()
        else:
            recorded = config_cls.from_dict(record["recipe"])
        config = recorded.replace(**dict(config or {}))
    return model.eval(), config
