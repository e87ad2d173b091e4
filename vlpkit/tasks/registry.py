"""The task registry: the one place where `vlpkit finetune/evaluate`, `vlpkit.tasks.finetune/evaluate`, the
predictor and the docs find a downstream task.

A task module describes itself with a `Task` and registers it when it is imported (`register_task`). The
built-in tasks (`BUILTIN`) are imported on first lookup. A task of another package is found in one of two ways:
importing its module registers it, or an entry point of the `vlpkit.tasks` group names the module, so that the
command line also offers it:

    # pyproject.toml of your package
    [project.entry-points."vlpkit.tasks"]
    colour-count = "mypackage.colour_count"

Listing the names (`task_names`) imports no task module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

#: The built-in tasks: command-line name -> module that registers it.
BUILTIN = {"vqa": "vlpkit.tasks.vqa", "nlvr2": "vlpkit.tasks.nlvr2", "caption": "vlpkit.tasks.captioning",
           "retrieval": "vlpkit.tasks.retrieval", "detection": "vlpkit.tasks.detection"}
ENTRY_POINT_GROUP = "vlpkit.tasks"


@dataclass(frozen=True)
class Task:
    """A downstream task, as the command line, `finetune`/`evaluate` and the predictor use it.

    name: the command-line name (`vlpkit finetune NAME`).
    config_class: the recipe dataclass (`from_dict(dict)` naming unknown keys, `to_dict()`).
    model_class: the `TaskModel` subclass. A fine-tuned folder records this class's name in its weights'
        metadata, and `model_class.from_pretrained(folder)` loads it.
    finetune: `finetune(checkpoint, data, output_dir, config=, trainer_overrides=, resume=) -> FinetuneResult`:
        trains, evaluates, saves the model under `output_dir/model` and returns the result it writes to
        `metrics.json` (the built-in tasks build their model, data, loss and scorers, and hand them to
        `vlpkit.tasks.finetuning.run_finetune`).
    evaluate: `evaluate(model_dir, data, split, output_dir, config, device=) -> dict`: the metrics of one split
        of a fine-tuned folder, with "split".
    summary: one line for `--help` and the docs.
    """

    name: str
    config_class: type
    model_class: type
    finetune: Callable[..., dict[str, Any]]
    evaluate: Callable[..., dict[str, Any]]
    summary: str = ""


_registry: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add `task` under `task.name` and return it (a module's `TASK = register_task(Task(...))`).

    Raises:
        ValueError: another module already registered a task of that name.
    """
    existing = _registry.get(task.name)
    if existing is not None and existing.model_class.__module__ != task.model_class.__module__:
        raise ValueError(f"task {task.name!r} is already registered by {existing.model_class.__module__} "
                         f"({existing.model_class.__name__}); {task.model_class.__module__} registers it again "
                         f"with {task.model_class.__name__}: choose another name")
    _registry[task.name] = task  # the same module imported again (importlib.reload) replaces its entry
    return task


def _entry_points() -> dict[str, str]:
    """Entry points of the `vlpkit.tasks` group: name -> module."""
    return {ep.name: ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)}


def task_names() -> list[str]:
    """Every task name: built-in, declared by an entry point, or registered so far (no task module imported)."""
    return sorted({*BUILTIN, *_entry_points(), *_registry})


def get_task(name: str) -> Task:
    """The task registered as `name`, importing its module on first use.

    Raises:
        ValueError: no such task (the known names are listed), or its module did not register it.
    """
    if name not in _registry:
        module = BUILTIN.get(name) or _entry_points().get(name)
        if module is None:
            raise ValueError(f"unknown task {name!r}; expected one of {task_names()}")
        importlib.import_module(module)
        if name not in _registry:
            raise ValueError(f"module {module} is named for task {name!r} but does not register it "
                             f"(register_task(Task(name={name!r}, ...)))")
    return _registry[name]


def task_of_model(class_name: str) -> Task:
    """The task whose `model_class` is named `class_name`, as a fine-tuned folder's weights record it.

    Raises:
        ValueError: no task has that model class (modules that failed to import are named).
    """
    failures = []
    for name in task_names():
        try:
            task = get_task(name)
        except Exception as err:  # a broken unrelated task module must not hide the one looked for
            failures.append(f"{name}: {type(err).__name__}: {err}")
            continue
        if task.model_class.__name__ == class_name:
            return task
    raise ValueError(f"the weights were saved by task model {class_name!r}, but no registered task has that "
                     f"model class (tasks: {task_names()})"
                     + (f"; tasks that failed to load: {failures}" if failures else ""))
