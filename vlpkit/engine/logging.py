"""`MetricLogger`: one record -> a console line, a line of `output_dir/log.jsonl`, and TensorBoard scalars when
asked for and installed. Only the main process writes (pass `enabled=False` elsewhere)."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..checkpoint import atomic_write

LOG_NAME = "log.jsonl"
TENSORBOARD_DIR = "tensorboard"


def format_record(kind: str, record: dict[str, Any], total_steps: int | None = None) -> str:
    """`[train] step 20/100 | epoch 0 | loss 1.234 | ... | 123.4 samples/s` (learning rates in e-notation)."""
    parts = []
    step = record.get("step")
    if step is not None:
        parts.append(f"step {step}/{total_steps}" if total_steps else f"step {step}")
    for key, value in record.items():
        if key in ("step", "samples_per_s"):
            continue
        if isinstance(value, float):
            text = f"{value:.2e}" if key.startswith("lr") else f"{value:.4g}"
        else:
            text = str(value)
        parts.append(f"{key} {text}")
    if "samples_per_s" in record:
        parts.append(f"{record['samples_per_s']:.1f} samples/s")
    return f"[{kind}] " + " | ".join(parts)


class MetricLogger:
    """Writes records of `{name: number}` with a `"step"` key.

    Args:
        output_dir: `log.jsonl` (and `tensorboard/`) go here.
        enabled: False on every process but the main one: then nothing is written.
        tensorboard: also write TensorBoard scalars (`<kind>/<name>`); when the `tensorboard` package is
            missing, a warning says so once and the other outputs continue.
        console: print a line per record (through `tqdm.write`, so it does not break a progress bar).
    """

    def __init__(self, output_dir: str | Path, enabled: bool = True, tensorboard: bool = False,
                 console: bool = True) -> None:
        self.path = Path(output_dir) / LOG_NAME
        self.enabled = enabled
        self.console = console
        self.writer = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError as err:
                    warnings.warn(f"tensorboard=True but TensorBoard is unavailable ({err}); logging to "
                                  f"{self.path} and the console only. Install it with `pip install tensorboard`.",
                                  stacklevel=2)
                else:
                    self.writer = SummaryWriter(log_dir=str(Path(output_dir) / TENSORBOARD_DIR))

    def log(self, kind: str, record: dict[str, Any], total_steps: int | None = None) -> None:
        """Write `{"kind": kind, **record}` to log.jsonl, a console line, and TensorBoard scalars."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"kind": kind, **record}) + "\n")
        if self.console:
            tqdm.write(format_record(kind, record, total_steps), file=sys.stdout)
        if self.writer is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)
            self.writer.flush()

    def info(self, message: str) -> None:
        """A console line (main process only), outside log.jsonl."""
        if self.enabled and self.console:
            tqdm.write(message, file=sys.stdout)

    def truncate_after(self, step: int) -> None:
        """Drop the records of steps after `step`: on resume, a killed run's lines past its checkpoint go."""
        if not self.enabled or not self.path.is_file():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            if record.get("step", 0) <= step:
                kept.append(line)
        if len(kept) != len(lines):
            atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(kept)))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_log(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a `log.jsonl` (of one `kind` when given)."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_NAME
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]
