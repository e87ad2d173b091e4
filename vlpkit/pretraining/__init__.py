"""E2E-VLP pretraining: the joint objective, the data mixture and the runner."""

from .data import PretrainingCollator, PretrainingDataset, Source
from .objective import ObjectiveConfig, PretrainingObjective

__all__ = ["ObjectiveConfig", "PretrainingObjective", "PretrainingCollator", "PretrainingDataset", "Source"]
