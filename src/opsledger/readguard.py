"""Proof at run time that Ansible read only the approved content.

The content hash (content.py) binds every tracked file but bookkeeping (other changes' folders,
statements, run records, records/, incidents/): a play that reads bookkeeping — a path computed
while it runs (`include_vars: "{{ x }}.yml"`, a lookup, `../../` out of a role) — would load bytes
no approval covers. So apply watches: ansible-playbook starts with a `sitecustomize` module on its
PYTHONPATH that installs a Python audit hook (PEP 578) recording every file the controller process
and its forked workers open. Afterwards, every file read inside the repository that git tracks must
be in the approved manifest; otherwise the run is not a success — it is recorded as failed (and
rolled back) naming the files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from opsledger.content import Content
from opsledger.gitrepo import git
from opsledger.layout import flat_form
from opsledger.project import Project

LOG_VARIABLE = "OPSLEDGER_READ_LOG"  # the sitecustomize below names it too

# Runs inside ansible-playbook before Ansible is imported. It must not import opsledger (its
# own files would count as read) and must not open files from the hook (that would recurse).
SITECUSTOMIZE = """\
import os
import sys


def _watch():
    log = os.environ.get("OPSLEDGER_READ_LOG")
    if not log:
        return
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    seen = set()
    busy = [False]

    def hook(event, args):
        if event != "open" or busy[0] or not args:
            return
        path = args[0]
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str) or path in seen:
            return
        busy[0] = True
        try:
            seen.add(path)
            absolute = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
            os.write(fd, absolute.encode("utf-8", "surrogateescape") + b"\\0")
        finally:
            busy[0] = False

    sys.addaudithook(hook)


_watch()
"""


@dataclass(frozen=True)
class ReadWatch:
    folder: Path

    @property
    def log(self) -> Path:
        return self.folder / "read.log"

    def env(self) -> dict[str, str]:
        """Environment for ansible-playbook that installs the watch."""
        path = [str(self.folder), *filter(None, [os.environ.get("PYTHONPATH")])]
        return {"PYTHONPATH": os.pathsep.join(path), LOG_VARIABLE: str(self.log)}

    def files(self) -> set[str]:
        """Every path the watched processes opened (absolute, as they named it)."""
        if not self.log.exists():
            return set()
        raw = self.log.read_bytes().decode("utf-8", "surrogateescape")
        return {p for p in raw.split("\0") if p}


@contextlib.contextmanager
def watching_reads() -> Iterator[ReadWatch]:
    """A scratch folder with the sitecustomize hook and the log it writes.

    Example:
        with watching_reads() as watch:
            run_playbook(..., env=watch.env())
            outside_content(project, content, watch.files())
    """
    with tempfile.TemporaryDirectory(prefix="opsledger-reads-") as tmp:
        folder = Path(tmp)
        (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
        yield ReadWatch(folder)


def outside_content(project: Project, content: Content, opened: set[str]) -> list[str]:
    """Files of the repository that were read but are not in the approved content.

    Only files git tracks count: a change can only bring files through git, so untracked ones
    are the machine's (a virtualenv, the fact cache, editor files). Paths are resolved: a
    symlink counts as its target.
    """
    root = Path(os.path.realpath(project.root))
    inside = set()
    for path in opened:
        real = Path(os.path.realpath(path))
        if real.is_relative_to(root) and real.is_file():
            inside.add(real.relative_to(root).as_posix())
    listed = git(project.root, "ls-files", "-z", check=False).stdout.split("\0")
    tracked = inside & set(listed)
    # The manifest names a change's files by key (layout.flat_form); a run opens them where
    # they lie, in the change's block folder: its own change.yml is content, not a stray read.
    return sorted(p for p in tracked if flat_form(p) not in content.files)
