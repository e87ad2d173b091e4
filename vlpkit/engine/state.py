"""Training checkpoints on disk: atomic step directories, a `latest` pointer, keep the last N.

Layout of `output_dir/checkpoints/`:

    step_00000400/
        model.safetensors      weights (vlpkit.checkpoint.save_weights; tied tensors stored once)
        config.json            the model's config, when the model has `.config.save(path)`
        trainer_state.pt       optimizer, scheduler, grad scaler, step, epoch, sampler, trainer config
        rng_state_0.pt ...     one file per process: Python, NumPy, torch CPU and CUDA generators
        checksums.json         size and SHA-256 of every file above, written last
    step_00000500/
    latest                     text file naming the newest complete directory ("step_00000500")

A directory is written under a hidden staging name (`.step_00000500.tmp`) and renamed into place only when every
file is complete, so a crash at any moment leaves either the old set of checkpoints or the new one. Older
directories are deleted only after the new one and the pointer are in place. Every `.pt` file holds only
tensors, dicts, lists, strings and numbers and is read back with `torch.load(weights_only=True)`.

Resuming verifies the checksums: a checkpoint damaged after it was written (a truncated copy, a bad disk, a flipped
byte, which `torch.load` does not notice) is reported by file and skipped for the newest intact one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CorruptFileError, atomic_write, read_torch

CHECKPOINTS_DIR = "checkpoints"
LATEST_NAME = "latest"
TRAINER_STATE_NAME = "trainer_state.pt"
CHECKSUMS_NAME = "checksums.json"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rng_state_name(process_index: int) -> str:
    return f"rng_state_{process_index}.pt"


def save_torch(obj: Any, path: str | Path) -> Path:
    """`torch.save` through a temporary file and a rename."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True)` on CPU, with an error naming the file when it is absent, truncated or
    corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    return read_torch(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: str | Path) -> Path:
    """`directory/checksums.json`: {file name: {"size", "sha256"}} of every other file in `directory`."""
    directory = Path(directory)
    sums = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(directory.iterdir()) if p.is_file() and p.name != CHECKSUMS_NAME}
    return atomic_write(directory / CHECKSUMS_NAME, lambda tmp: Path(tmp).write_text(json.dumps(sums, indent=1)))


def verify_checkpoint(directory: str | Path) -> str | None:
    """None when every file listed in `directory/checksums.json` is there with its size and SHA-256, else the
    first problem ("model.safetensors: 1234 bytes, 5678 recorded (truncated?)"). A checkpoint written before
    checksums existed (no checksums.json) is only checked for its trainer state file."""
    directory = Path(directory)
    listing = directory / CHECKSUMS_NAME
    if not listing.is_file():
        return None if (directory / TRAINER_STATE_NAME).is_file() else f"{TRAINER_STATE_NAME} is missing"
    try:
        sums = json.loads(listing.read_text())
    except ValueError:
        return f"{CHECKSUMS_NAME} is corrupt"
    for name, expected in sums.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{name}: {size} bytes, {expected['size']} recorded (truncated?)"
        if _sha256(path) != expected["sha256"]:
            return f"{name}: SHA-256 differs from the one recorded at save time (overwritten or damaged)"
    return None


class CheckpointManager:
    """Step directories under `output_dir/checkpoints`, at most `keep_last` of them (0 keeps all).

    Writing is split in three so that several processes can add their own files to one checkpoint:
    `stage(step)` (one process) -> every process writes into the returned directory -> `commit(step)`
    (one process).
    """

    def __init__(self, output_dir: str | Path, keep_last: int = 3) -> None:
        if keep_last < 0:
            raise ValueError(f"keep_last={keep_last}; expected >= 0 (0 keeps every checkpoint)")
        self.root = Path(output_dir) / CHECKPOINTS_DIR
        self.keep_last = keep_last

    # ---- paths ----------------------------------------------------------------------------------------
    def path(self, step: int) -> Path:
        return self.root / step_dir_name(step)

    def staging_path(self, step: int) -> Path:
        return self.root / f".{step_dir_name(step)}.tmp"

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints present, ascending."""
        if not self.root.is_dir():
            return []
        found = (_STEP_DIR.match(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self) -> Path | None:
        """The newest complete checkpoint: the one `latest` names, else the highest step present, else None.

        The fallback covers a crash between the directory rename and the pointer update.
        """
        steps = self.steps()
        pointer = self.root / LATEST_NAME
        if pointer.is_file():
            named = self.root / pointer.read_text().strip()
            if _STEP_DIR.match(named.name) and named.is_dir():
                if not steps or int(_STEP_DIR.match(named.name).group(1)) >= steps[-1]:
                    return named
        return self.path(steps[-1]) if steps else None

    # ---- writing --------------------------------------------------------------------------------------
    def stage(self, step: int) -> Path:
        """Create an empty staging directory for `step` (removing a stale one left by a crash)."""
        staging = self.staging_path(step)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        return staging

    def commit(self, step: int) -> Path:
        """Make the staged checkpoint of `step` visible, point `latest` at it, then prune old ones."""
        staging, final = self.staging_path(step), self.path(step)
        if not staging.is_dir():
            raise FileNotFoundError(f"no staged checkpoint for step {step} at {staging} (call stage() first)")
        _fsync_tree(staging)
        if final.exists():  # the same step saved again (e.g. after a resume): swap, then drop the old copy
            trash = self.root / f".{final.name}.old"
            if trash.exists():
                shutil.rmtree(trash)
            os.replace(final, trash)
            os.replace(staging, final)
            shutil.rmtree(trash)
        else:
            os.replace(staging, final)
        _fsync_dir(self.root)
        atomic_write(self.root / LATEST_NAME, lambda tmp: Path(tmp).write_text(final.name + "\n"))
        self.prune(keep=final)
        return final

    def prune(self, keep: Path | None = None) -> list[Path]:
        """Delete all but the newest `keep_last` checkpoints (never `keep`) and stale staging directories."""
        removed = []
        self.clean_staging()
        if self.keep_last:
            for step in self.steps()[: -self.keep_last]:
                path = self.path(step)
                if keep is None or path != keep:
                    shutil.rmtree(path)
                    removed.append(path)
        return removed

    def clean_staging(self) -> None:
        """Remove staging (and swapped-out) directories left by a crashed run (not those set aside as corrupt)."""
        if self.root.is_dir():
            for p in [*self.root.glob(".step_*.tmp"), *self.root.glob(".step_*.old")]:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)

    def latest_intact(self) -> tuple[Path | None, list[tuple[Path, str]]]:
        """(the newest checkpoint that passes `verify_checkpoint`, [(newer damaged checkpoint, its problem)])."""
        damaged = []
        for path in (self.path(s) for s in reversed(self.steps())):  # newest first, as `latest()` ranks them
            problem = verify_checkpoint(path)
            if problem is None:
                return path, damaged
            damaged.append((path, problem))
        return None, damaged

    def set_aside(self, path: Path) -> Path:
        """Rename a damaged checkpoint to `.<name>.corrupt` (kept for inspection, never resumed from or pruned)."""
        target = self.root / f".{path.name}.corrupt"
        if target.exists():
            shutil.rmtree(target)
        os.replace(path, target)
        return target


class CorruptCheckpointError(CorruptFileError):
    """A checkpoint whose files fail their checksums (or are missing), with no intact one to fall back to."""


def resolve_checkpoint(path: str | Path) -> Path:
    """A verified checkpoint directory from either itself or a run's `output_dir`: its newest intact checkpoint.

    When the newest checkpoints of a run are damaged, each is named in one warning line and the newest intact one
    is returned. A step directory given explicitly is verified and never replaced by another.

    Raises:
        FileNotFoundError: naming the path and what was expected there.
        CorruptCheckpointError: the given step directory, or every checkpoint of the run, is damaged (names the
            files).
    """
    path = Path(path)
    if (path / TRAINER_STATE_NAME).is_file() or (path / CHECKSUMS_NAME).is_file():
        problem = verify_checkpoint(path)
        if problem is not None:
            raise CorruptCheckpointError(f"checkpoint {path} is damaged: {problem}")
        return path
    manager = CheckpointManager(path)
    if manager.latest() is None:
        raise FileNotFoundError(f"no checkpoint to resume from at {path}: expected a step directory holding "
                                f"{TRAINER_STATE_NAME} or an output_dir with {CHECKPOINTS_DIR}/step_XXXXXXXX/")
    intact, damaged = manager.latest_intact()
    for bad, problem in damaged:
        fallback = f"falling back to {intact.name}" if intact is not None else "no intact checkpoint is left"
        warnings.warn(f"checkpoint {bad} is damaged ({problem}); {fallback}", stacklevel=2)
    if intact is None:
        listing = "; ".join(f"{bad.name}: {problem}" for bad, problem in damaged)
        raise CorruptCheckpointError(f"every checkpoint in {manager.root} is damaged ({listing}); start a new run "
                                     "or restore a checkpoint from a copy")
    return intact


def _fsync_tree(directory: Path) -> None:
    """Flush every file of `directory` to disk, so the rename never publishes data still in the page cache."""
    for p in directory.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
