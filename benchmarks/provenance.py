"""What a generated docs table records about its making, and how it is written into a page.

`config_sha` (the content hash of a shipped config) and `git_commit` go beside every generated table; tests in
`tests/test_docs.py` compare the recorded hash with the shipped config's, so a table cannot silently go stale.
`replace_block` rewrites the text between a page's `<!-- name:begin -->` / `<!-- name:end -->` markers.
Light on purpose (no torch): the docs tests and `notebooks/execute.py` import it.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def config_sha(name: str = "e2evlp-tiny") -> str:
    """The first 12 hex digits of the SHA-256 of `vlpkit/configs/<name>.yaml`."""
    return hashlib.sha256((ROOT / "vlpkit" / "configs" / f"{name}.yaml").read_bytes()).hexdigest()[:12]


def git_commit() -> str:
    """The checkout's short commit hash ("unknown" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def replace_block(path: Path, begin: str, end: str, body: str) -> None:
    """Write `begin`, newline, `body`, newline, `end` in place of the first `begin` ... `end` block of `path`.

    Raises:
        ValueError: the page lacks either marker (named with the file).
    """
    text = path.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{path} has no {begin} ... {end} block to replace")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{body}\n{end}{tail}")
