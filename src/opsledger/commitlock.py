"""One opsledger writer of a checkout's git index and HEAD at a time, across processes.

git lets one process write the index at a time and refuses the others (`fatal: Unable to
create '.git/index.lock': File exists`); worse, `git commit -- <paths>` reads the index before
it locks it, so a record another process staged meanwhile drops out of the index again (its
own commit then says "pathspec ... did not match any file(s) known to git"). Two commands
that commit in one checkout at once (two people opening incidents, an inspection and an
approval, two applies to two environments) failed, or lost a step. Every opsledger step that
writes the index or moves HEAD therefore holds `opsledger-commit.lock` in the checkout's git
folder (flock: the kernel drops it when its holder dies, so it is never stale) for its whole
read, write and commit. It lives beside the index it guards (a linked worktree has its own),
not in the work tree: a refused command leaves nothing there for `git status` to show.

Re-entrant in a process: apply holds it around writing a record and then commits through
`gitrepo.commit_paths`, which takes it again. (`change migrate-layout` opens the same file on
its own and refuses rather than waits, see migrate.py.)
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from opsledger.gitenv import git_env

LOCK_FILE = "opsledger-commit.lock"

_GUARD = threading.RLock()  # threads of one process take turns like processes do
_HELD: dict[str, list[int]] = {}  # project root -> [descriptor, depth], under _GUARD


@contextlib.contextmanager
def commit_lock(root: Path) -> Iterator[None]:
    """Hold the checkout's commit lock, waiting for a peer that holds it; re-entrant.

    A folder that is no git checkout, or one whose git folder is read-only, is not locked:
    git then refuses the write itself, with its own words.

    Example:
        with commit_lock(project.root):
            path.write_text(text); commit_paths(project.root, [path], "Record", ...)
    """
    where = str(root.resolve())
    with _GUARD:
        held = _HELD.get(where)
        if held is not None:
            held[1] += 1
            try:
                yield
            finally:
                held[1] -= 1
            return
        fd = _open(root)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a holder that dies lets go (the kernel's flock)
        _HELD[where] = [fd if fd is not None else -1, 1]
        try:
            yield
        finally:
            del _HELD[where]
            if fd is not None:
                os.close(fd)  # closing the descriptor releases the flock


def git_folder(root: Path) -> Path | None:
    """The git folder of the checkout at `root` (its own, for a linked worktree), or None."""
    where = str(root)
    if where not in _GIT_DIRS:
        proc = subprocess.run(
            ["git", "-C", where, "rev-parse", "--absolute-git-dir"],
            capture_output=True,
            text=True,
            check=False,
            env=git_env(),
        )
        found = proc.stdout.strip() if proc.returncode == 0 else ""
        _GIT_DIRS[where] = Path(found) if found else None
    return _GIT_DIRS[where]


def lock_path(root: Path) -> Path | None:
    """The commit lock's file of the checkout at `root`, or None outside a git work tree."""
    folder = git_folder(root)
    return folder / LOCK_FILE if folder is not None else None


_GIT_DIRS: dict[str, Path | None] = {}


def _open(root: Path) -> int | None:
    path = lock_path(root)
    if path is None:
        return None
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return None


P = ParamSpec("P")
R = TypeVar("R")


def under_commit_lock(step: Callable[P, R]) -> Callable[P, R]:
    """Run a step that reads, changes and commits files of the project under its commit lock.

    For steps whose first argument is the Project: choosing the next free id (INC-0004) and
    writing it, or reading an incident's timeline and appending to it, must not interleave
    with another command doing the same, or one of the two writes is lost.
    """

    @functools.wraps(step)
    def locked(*args: P.args, **kwargs: P.kwargs) -> R:
        project: Any = args[0] if args else kwargs["project"]
        with commit_lock(project.root):
            return step(*args, **kwargs)

    return locked
