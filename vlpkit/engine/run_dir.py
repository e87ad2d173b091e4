"""Guards of a run's output folder: one run at a time (a lock file), and a folder checked writable with room for a
checkpoint before step 1.

The lock is an advisory `fcntl.flock` on `<output_dir>/.lock`: the operating system releases it when the process
ends, however it ends, so a lock left by a crashed or killed run is recognised as stale (the file is there, nobody
holds it) and taken over. The file records who holds it, for the message another run gets.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks in the standard library
    fcntl = None

LOCK_NAME = ".lock"


class RunDirError(RuntimeError):
    """The output folder cannot take this run: locked by another run, not writable, or too little free space."""


class RunLock:
    """An exclusive lock on a run folder, held from `acquire()` to `release()` (or the end of the process).

    `stale` is the holder recorded by a previous run that ended without releasing (crash, kill -9), else None.
    """

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / LOCK_NAME
        self._fd: int | None = None
        self.stale: dict | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise `RunDirError` naming the run that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunDirError(f"{self.path.parent} is in use by another run ({_describe(holder)}); wait for it "
                                  "to finish or choose another output_dir") from None
            # the holder may have released and removed the file between our open and flock: then we hold a lock
            # on a file nobody else will open, so start again on the path's current file
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd)
        self.stale = previous or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Unlock and remove the lock file (a clean end leaves no lock behind)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


def describe_stale(stale: dict) -> str:
    """One line for the log when a run takes over the lock of one that did not end cleanly."""
    return f"took over the lock of a run that did not end cleanly ({_describe(stale)}; no longer running)"


def check_writable(output_dir: str | Path, checkpoint_bytes: int = 0) -> None:
    """Create `output_dir` if needed, prove it writable with a probe file, and check that it has room for one
    checkpoint of `checkpoint_bytes` (with 10% to spare).

    Raises:
        RunDirError: naming the folder and the cause (the OS error, or free vs needed bytes).
    """
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=output_dir)
        try:
            os.write(fd, b"vlpkit")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise RunDirError(f"output_dir {output_dir} is not writable ({err.strerror or err}); choose a folder this "
                          "process can write to") from None
    free = shutil.disk_usage(output_dir).free
    needed = int(checkpoint_bytes * 1.1)
    if free < needed:
        raise RunDirError(f"output_dir {output_dir} has {free / 2**20:.1f} MiB free, but one checkpoint of this run "
                          f"needs about {needed / 2**20:.1f} MiB (weights and optimizer state); free some space or "
                          "choose another output_dir")
