"""Seeding and RNG state capture: every random stream a training step touches (Python, NumPy, torch CPU and CUDA),
as plain tensors and ints so that a checkpoint holding them loads under `torch.load(weights_only=True)`."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed


def seed_everything(seed: int, deterministic: bool = False, process_index: int = 0) -> int:
    """Seed Python, NumPy and torch (every CUDA device too) with `seed + process_index`.

    Each process gets its own stream (different dropout masks per process, as with
    `accelerate.utils.set_seed(device_specific=True)`), usable before any `Accelerator` exists.
    With `deterministic=True`, torch refuses non-deterministic kernels and cuDNN autotuning is off.

    Returns:
        The seed actually used by this process.
    """
    seed = int(seed) + int(process_index)
    if deterministic:
        # cuBLAS needs this before its first call to be reproducible (torch raises otherwise on CUDA)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    set_seed(seed, deterministic=deterministic)
    return seed


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator of this process.

    Returns:
        dict with keys "python" (int64 tensor [628]: version, the 625 words of `random.getstate()`, then a
        gauss_next flag and the float's 64 bits), "numpy" (dict(keys=uint32->int64 tensor [624], pos, has_gauss,
        cached_gaussian)), "torch" (uint8 tensor, the CPU generator) and "cuda" ([uint8 tensor] of this process's
        current CUDA device, or [] when CUDA is not in use: each DDP process drives one device, and touching all
        visible ones would create a context on each).
    """
    return {
        "python": _pack_python(random.getstate()),
        "numpy": _pack_numpy(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`. Raises `KeyError` naming a missing generator."""
    missing = [k for k in ("python", "numpy", "torch", "cuda") if k not in state]
    if missing:
        raise KeyError(f"RNG state lacks generator(s) {missing}; expected keys python, numpy, torch, cuda")
    random.setstate(_unpack_python(state["python"]))
    np.random.set_state(_unpack_numpy(state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0].cpu())


def _pack_python(state: tuple) -> torch.Tensor:
    version, words, gauss_next = state
    # gauss_next is None or a float: store a flag and the float's exact 64 bits
    gauss_bits = np.array([0.0 if gauss_next is None else gauss_next], dtype=np.float64).view(np.int64)[0]
    return torch.tensor([version, *words, int(gauss_next is not None), int(gauss_bits)], dtype=torch.int64)


def _unpack_python(packed: torch.Tensor) -> tuple:
    values = packed.tolist()
    version, words, has_gauss, gauss_bits = values[0], values[1:-2], values[-2], values[-1]
    gauss = float(np.array([gauss_bits], dtype=np.int64).view(np.float64)[0]) if has_gauss else None
    return version, tuple(words), gauss


def _pack_numpy(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    if name != "MT19937":
        raise ValueError(f"unsupported NumPy bit generator {name!r} (expected MT19937)")
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached)}


def _unpack_numpy(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return "MT19937", keys, state["pos"], state["has_gauss"], state["cached_gaussian"]
