"""The baseline tree a benchmark measures against in the same run: a given checkout, or a
temporary `git worktree` of a ref, removed when the run ends (whatever ends it)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def baseline_tree(repo: Path, ref: str, given: str | None = None) -> Iterator[Path]:
    """`given` if set, else a detached worktree of `ref` in `repo` for the `with` block."""
    if given:
        yield Path(given)
        return
    tree = Path(tempfile.mkdtemp(prefix="spg-baseline-")) / "tree"
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "-q",
                    str(tree), ref], check=True)  # fmt: skip
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force",
                        str(tree)], check=False)  # fmt: skip
        shutil.rmtree(tree.parent, ignore_errors=True)


def short_commit(tree: Path) -> str:
    """The short hash of `tree`'s checked-out commit ("" if git cannot tell)."""
    return subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
