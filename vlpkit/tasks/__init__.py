"""Downstream tasks of E2E-VLP: VQA v2, NLVR2, captioning, image-text retrieval, detection with paired text.

`finetune(task, ...)` (returning a `FinetuneResult`) and `evaluate(task, ...)` reach any of them by its name; `vlpkit.tasks.registry` holds the
tasks (`get_task`, `task_names`) and lets another package add one (`register_task`).
"""

from .base import TaskModel, TaskOutput, load_e2evlp
from .finetuning import FinetuneResult, TrainSummary, evaluate, finetune
from .registry import Task, get_task, register_task, task_names

__all__ = ["FinetuneResult", "Task", "TaskModel", "TaskOutput", "TrainSummary", "evaluate", "finetune", "get_task",
           "load_e2evlp", "register_task", "task_names"]
