"""Training engine: a `Trainer` generic over a model and a loss function, built on Hugging Face accelerate.

    >>> from vlpkit.engine import Trainer, TrainerConfig
    >>> trainer = Trainer(model, loss_fn, dataset, collate_fn, TrainerConfig(output_dir="runs/x", epochs=2))
    >>> history = trainer.train(resume=True)
"""

from .logging import MetricLogger, read_log
from .optim import build_optimizer, build_scheduler, lr_factor, param_groups
from .sampler import ResumableDistributedSampler
from .seeding import capture_rng_state, restore_rng_state, seed_everything
from .state import CheckpointManager, resolve_checkpoint
from .trainer import NonFiniteLossError, Trainer, TrainerConfig

__all__ = [
    "Trainer", "TrainerConfig", "NonFiniteLossError", "MetricLogger", "read_log",
    "build_optimizer", "build_scheduler", "lr_factor", "param_groups", "ResumableDistributedSampler",
    "seed_everything", "capture_rng_state", "restore_rng_state", "CheckpointManager", "resolve_checkpoint",
]
