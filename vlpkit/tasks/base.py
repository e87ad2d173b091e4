"""What every downstream task shares: a wrapper that holds a pretrained `E2EVLP` and a task head, loading
pretraining checkpoints (strictly for the E2EVLP part, with the head reported as newly initialised)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..builder import build_e2evlp
from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, atomic_write, load_weights, save_weights
from ..config import E2EVLPConfig
from ..models import E2EVLP

logger = logging.getLogger(__name__)


def load_e2evlp(checkpoint: str | Path | E2EVLP | None, preset: str = "e2evlp-tiny", **overrides) -> E2EVLP:
    """A pretrained E2EVLP from a `save_pretrained` folder (strict), an existing model, or a fresh preset."""
    if isinstance(checkpoint, E2EVLP):
        return checkpoint
    if checkpoint is None:
        return build_e2evlp(preset, **overrides)
    return E2EVLP.from_pretrained(checkpoint, **overrides)


class TaskModel(nn.Module):
    """A pretrained `E2EVLP` (`self.e2evlp`) plus a task head (`self.head`).

    Subclasses implement `forward(batch) -> dict` (logits etc.). `from_pretrained_e2evlp` builds the wrapper
    around pretrained weights and logs (and returns, in `new_parameters`) the names of the head's parameters,
    which start from their initialisation.
    """

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

    def save_pretrained(self, directory: str | Path) -> Path:
        """`config.json` (the E2EVLP config) + `model.safetensors` (E2EVLP and head, under e2evlp./head.)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / CONFIG_NAME, lambda tmp: self.config.save(tmp))
        save_weights(self, directory / WEIGHTS_NAME, metadata={"format": "pt", "library": "vlpkit",
                                                               "task": type(self).__name__})
        return directory

    def load_task_weights(self, directory: str | Path) -> None:
        """Load weights written by `save_pretrained` of the same task (strict: names every mismatch)."""
        load_weights(self, Path(directory) / WEIGHTS_NAME, strict=True)


def move_batch(batch, device: torch.device):
    return batch.to(device) if hasattr(batch, "to") else batch
