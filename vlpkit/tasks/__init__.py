"""Downstream tasks of E2E-VLP: VQA v2, NLVR2, captioning, image-text retrieval, detection with paired text.

`finetune(task, ...)` and `evaluate(task, ...)` reach any of them by its command-line name (`TASKS`).
"""

from .base import TASKS, TaskModel, TaskOutput, evaluate, finetune, load_e2evlp

__all__ = ["TASKS", "TaskModel", "TaskOutput", "evaluate", "finetune", "load_e2evlp"]
