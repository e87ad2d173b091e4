"""Saving and loading weights: safetensors only (no pickle), strict loading that names every mismatch,
atomic writes (temporary file + rename, so a crash never leaves a half-written file)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_model
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointMismatchError(RuntimeError):
    """Weights that do not fit the model: lists missing keys, unexpected keys and shape mismatches."""


class CorruptFileError(RuntimeError):
    """A weights or state file that cannot be read: truncated, overwritten or not the format its name says."""


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """`safetensors.torch.load_file`, with an error naming the file when it is truncated or corrupt."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CorruptFileError(f"{path} is truncated or corrupt ({err}); restore it or load another "
                               "checkpoint") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it over `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the mode a plain open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """safetensors file of `model`'s state (tied tensors stored once; channels_last weights stored contiguous)."""
    return atomic_write(path, lambda tmp: save_model(model, tmp, metadata=metadata, force_contiguous=True))


def _tied_aliases(model: nn.Module) -> dict[str, str]:
    """Map every state-dict name to a canonical name of the same storage (tied weights share one)."""
    canonical: dict[tuple, str] = {}
    aliases = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype) if tensor.numel() else (name,)
        aliases[name] = canonical.setdefault(key, name)
    return aliases


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> tuple[list[str], list[str]]:
    """Load a safetensors file into `model`.

    Tied weights may be stored under any one of their names. With `strict=True`, any missing key, unexpected key
    or shape mismatch raises `CheckpointMismatchError` naming all of them.
    Returns:
        (missing keys, unexpected keys) — both empty under strict loading.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path} (expected a .safetensors file)")
    state = read_safetensors(path)
    own = model.state_dict()
    aliases = _tied_aliases(model)
    groups: dict[str, list[str]] = {}
    for name, canon in aliases.items():
        groups.setdefault(canon, []).append(name)
    resolved, missing = {}, []
    for names in groups.values():
        present = [n for n in names if n in state]
        if not present:
            missing.extend(names)
            continue
        for n in names:
            resolved[n] = state[present[0]]
    known = set(aliases)
    unexpected = sorted(k for k in state if k not in known)
    mismatched = [f"{k}: checkpoint {list(v.shape)} vs model {list(own[k].shape)}"
                  for k, v in resolved.items() if v.shape != own[k].shape]
    if strict and (missing or unexpected or mismatched):
        raise CheckpointMismatchError(
            f"weights in {path} do not fit this model:\n  missing keys: {sorted(missing)}\n"
            f"  unexpected keys: {unexpected}\n  shape mismatches: {mismatched}")
    resolved = {k: v for k, v in resolved.items() if v.shape == own[k].shape}
    model.load_state_dict(resolved, strict=False)
    return sorted(missing), unexpected


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict from `.safetensors` (preferred) or a `.pth`/`.pt` file read with weights_only=True."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_torch(path)


def read_torch(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True)` on CPU (no pickle code runs), with an error naming the file when it is
    truncated or corrupt (an OSError, such as a permission error, names the file itself)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError) as err:
        raise CorruptFileError(f"{path} is truncated or corrupt ({str(err).splitlines()[0]})") from None


def save_model_config(config, path: str | Path) -> Path:
    """Write a saved model's `config.json` without `backbone_weights`: the trunk's initial weights are a
    training-time input (an ImageNet name, a warm-up file in a cache) that the saved weights already contain, so
    a saved model never points at a file outside its folder."""
    if getattr(config, "backbone_weights", None) is not None:
        config = config.replace(backbone_weights=None)
    return atomic_write(path, lambda tmp: config.save(tmp))


def load_model_config(path: str | Path):
    """The `E2EVLPConfig` of a saved model, ready to build the model its weights fit. `backbone_weights` is
    dropped (folders written before `save_model_config` recorded it; building would load that file only for the
    saved weights to replace it, and it may no longer exist)."""
    from .config import E2EVLPConfig

    config = E2EVLPConfig.load(path)
    return config.replace(backbone_weights=None) if config.backbone_weights is not None else config


def save_pretrained(model, directory: str | Path) -> Path:
    """`directory/config.json` (without the trunk's initial weights, `save_model_config`) +
    `directory/model.safetensors`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model_config(model.config, directory / CONFIG_NAME)
    save_weights(model, directory / WEIGHTS_NAME, metadata={"format": "pt", "library": "vlpkit"})
    return directory


def load_pretrained(directory: str | Path, build, **overrides):
    """Build the model described by `directory/config.json` with `build(config, **overrides)` (the builder,
    `vlpkit.build_e2evlp`, passed in so that this module stays below it) and load its weights strictly."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"pretrained directory not found: {directory} "
                                f"(expected {CONFIG_NAME} and {WEIGHTS_NAME} written by save_pretrained)")
    config = load_model_config(directory / CONFIG_NAME)
    model = build(config, **overrides)
    load_weights(model, directory / WEIGHTS_NAME, strict=True)
    return model


def read_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
