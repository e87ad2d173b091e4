"""Downstream tasks of E2E-VLP: VQA v2, NLVR2, captioning, image-text retrieval, detection with paired text."""

from .base import TaskModel, load_e2evlp

__all__ = ["TaskModel", "load_e2evlp"]
