"""`ResumableDistributedSampler`: torch's `DistributedSampler` plus a position inside the epoch, so that a run
resumed from a checkpoint sees exactly the samples an uninterrupted run would have seen next.

torch's sampler can only restart an epoch from its beginning, and `torchdata`'s `StatefulDistributedSampler` is
not a dependency of vlpkit; the extra logic here is the position bookkeeping alone.

The epoch's global order is torch's: `randperm(len(dataset))` seeded with `seed + epoch`, padded (or truncated
with `drop_last`) to a multiple of the number of processes, process `r` reading positions `r, r + n, r + 2n, ...`.
The position counts *global* samples consumed, so a run resumed on a different number of processes still
continues from the same point of the same order (exact when the number is unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DistributedSampler


class ResumableDistributedSampler(DistributedSampler):
    """A seeded, distributed-aware sampler that can resume in the middle of an epoch.

    Args:
        dataset: anything with `len()`.
        num_replicas / rank: number of processes and this process's index (default: from torch.distributed,
            else 1 / 0, so it also serves single-process training).
        shuffle, seed, drop_last: as `torch.utils.data.DistributedSampler`.

    Usage (the trainer does this): `set_epoch(e)` at every epoch start (resets the position to 0), then after
    consuming `k` samples on every process, `advance(k)`; `state_dict()` / `load_state_dict()` save and restore
    (seed, epoch, position). An iterator reflects the position at the time `iter()` is called, so the
    prefetching of a `DataLoader` with workers does not disturb the bookkeeping.
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        if num_replicas is None and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            num_replicas, rank = 1, 0 if rank is None else rank
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.dataset_size = len(dataset)  # type: ignore[arg-type]
        self.position = 0  # global samples of this epoch already consumed (all processes together)

    # ---- order ----------------------------------------------------------------------------------------
    def global_order(self) -> list[int]:
        """All dataset indices of the current epoch, padded/truncated to `total_size` (torch's rule)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.dataset_size, generator=g).tolist()
        else:
            indices = list(range(self.dataset_size))
        if self.drop_last:
            return indices[: self.total_size]
        padding = self.total_size - len(indices)
        if padding > 0:
            indices += (indices * math.ceil(padding / max(len(indices), 1)))[:padding]
        return indices

    def _remaining(self) -> list[int]:
        order = self.global_order()
        rest = order[min(self.position, len(order)):]
        # only after a change of the number of processes can the rest be uneven across them
        extra = len(rest) % self.num_replicas
        if extra:
            if self.drop_last:
                rest = rest[: len(rest) - extra]
            else:
                rest += (order * math.ceil(self.num_replicas / max(len(order), 1)))[: self.num_replicas - extra]
        return rest

    def __iter__(self) -> Iterator[int]:
        return iter(self._remaining()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        """Samples this process will still read in the current epoch."""
        rest = max(self.total_size - self.position, 0)
        if self.drop_last:
            return rest // self.num_replicas
        return math.ceil(rest / self.num_replicas)

    @property
    def epoch_length(self) -> int:
        """Samples per process in a whole epoch (`num_samples` of torch's sampler)."""
        return self.num_samples

    # ---- bookkeeping ----------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its beginning."""
        super().set_epoch(epoch)
        self.position = 0

    def advance(self, num_samples: int) -> int:
        """Record that every process consumed `num_samples` more samples of this epoch.

        Returns:
            The samples per process actually consumed (less than `num_samples` at the end of the epoch).
        """
        if num_samples < 0:
            raise ValueError(f"advance(num_samples={num_samples}): expected >= 0")
        consumed = min(num_samples, len(self))
        self.position = min(self.position + consumed * self.num_replicas, self.total_size)
        return consumed

    def state_dict(self) -> dict[str, Any]:
        """{"seed", "epoch", "position", "num_replicas", "dataset_size", "shuffle", "drop_last"} (plain ints/bools)."""
        return {"seed": int(self.seed), "epoch": int(self.epoch), "position": int(self.position),
                "num_replicas": int(self.num_replicas), "dataset_size": int(self.dataset_size),
                "shuffle": bool(self.shuffle), "drop_last": bool(self.drop_last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state; the dataset must have the same length (else the order is meaningless)."""
        missing = [k for k in ("seed", "epoch", "position", "dataset_size") if k not in state]
        if missing:
            raise KeyError(f"sampler state lacks {missing}; got keys {sorted(state)}")
        if state["dataset_size"] != self.dataset_size:
            raise ValueError(f"cannot resume the data order: the checkpoint was taken on a dataset of "
                             f"{state['dataset_size']} samples, this dataset has {self.dataset_size}")
        for key in ("shuffle", "drop_last"):
            if key in state and bool(state[key]) != getattr(self, key):
                raise ValueError(f"cannot resume the data order: checkpoint sampler has {key}={state[key]}, "
                                 f"this one {key}={getattr(self, key)}")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = min(int(state["position"]), self.total_size)
