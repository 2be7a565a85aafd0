"""The approved content as a folder of its own: what apply runs, verifies and rolls back from.

Why: the content hash binds every file but bookkeeping (content.py), yet a run started in the
working tree can still *reach* bookkeeping — `cat changes/OTHER/notes.txt` in a command task, a
`pipe` lookup, a Testinfra suite or a controller command reading a path computed at run time, a
submodule's files — and bookkeeping is what anyone may commit without an approval. The read
watch (readguard.py) sees only Python `open` calls, so it cannot close that. An export can: it
holds exactly the approved files, written from git's objects by the blob ids the manifest itself
names, so bookkeeping, untracked files and submodule contents are simply not there, whatever a
play computes. The read watch stays as a second line, for absolute paths back into the
repository.

Machine-local files git ignores (the venv, the lab's keys and known_hosts and the fact cache
under `.opsledger/`, vault password files) are linked in from the project: no change can bring
them, and a run needs them. Python byte-code caches are not linked (an export compiles its own).

Example:
    with exported(project, decision.content.files) as tree:
        run_playbook(tree, playbook=tree.root / "site.yml", ...)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from opsledger.content import blob_id, is_content
from opsledger.errors import OpsledgerError, Problem
from opsledger.gitrepo import git, git_env
from opsledger.layout import shown_path
from opsledger.project import Project

SYMLINK = "120000"
EXECUTABLE = "100755"
SUBMODULE = "160000"  # a gitlink: its files are another repository's, never approved here
# Ignored names an export never links: byte-code and tool caches of the machine's own runs.
_NOT_LINKED = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}


def commit_content(project: Project, commit: str, change_id: str) -> dict[str, str]:
    """The content (path -> "mode blob") of `commit`, bookkeeping left out as content.py does.

    Example:
        commit_content(project, "4f2c9e1", "CHG-0007")["site.yml"]  # '100644 9b1c...'
    """
    listed = git(project.root, "ls-tree", "-r", "-z", "--full-tree", commit).stdout
    files: dict[str, str] = {}
    for entry in filter(None, listed.split("\0")):
        meta, _, path = entry.partition("\t")
        mode, _kind, blob = meta.split()
        if is_content(path, change_id):
            files[path] = f"{mode} {blob}"
    return files


def _safe(path: str) -> PurePosixPath:
    """A manifest path as a relative path that stays inside the export (git allows no other)."""
    rel = PurePosixPath(path)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or ".git" in rel.parts:
        raise OpsledgerError(
            Problem(
                f"the content names a path that cannot be exported: {path!r}",
                path,
                "content",
                "remove the file from the repository",
            )
        )
    return rel


def _blobs(project: Project, ids: list[str]) -> dict[str, bytes]:
    """Each blob git holds, read in one `git cat-file --batch`; missing ones are left out."""
    if not ids:
        return {}
    proc = subprocess.run(
        ["git", "-C", str(project.root), "cat-file", "--batch"],
        input="".join(f"{i}\n" for i in ids).encode(),
        capture_output=True,
        env=git_env(),
        check=False,
    )
    out, pos, found = proc.stdout, 0, {}
    for oid in ids:
        end = out.find(b"\n", pos)
        if end < 0:
            break
        header = out[pos:end].decode("ascii", "replace").split()
        if len(header) == 3 and header[1] == "blob":
            size = int(header[2])
            found[oid] = out[end + 1 : end + 1 + size]
            pos = end + 1 + size + 1
        else:  # "<oid> missing" (a file edited but not committed, as plan may read it)
            pos = end + 1
    return found


def _from_disk(project: Project, files: dict[str, str], blobs: dict[str, bytes]) -> None:
    """Blobs git does not hold yet (plan reads a dirty tree): the file, if it is those bytes.

    A manifest keys a change's files flat (`layout.flat_form`); on disk the file may lie in
    the change's block folder, so it is read from where it is stored (`layout.shown_path`).
    """
    for path, entry in files.items():
        mode, blob = entry.split()
        if mode == SUBMODULE or blob in blobs:
            continue
        stored = shown_path(project.root, path)  # where it lies: what the refusal names too
        real = project.root / _safe(stored)
        try:
            data = os.fsencode(os.readlink(real)) if mode == SYMLINK else real.read_bytes()
        except OSError:
            data = b""
        if blob_id(data) != blob:
            raise OpsledgerError(
                Problem(
                    f"{stored} is no longer the content that was decided "
                    f"(git holds no {blob[:12]})",
                    stored,
                    "content",
                    "run the command again: the content changed while it ran",
                )
            )
        blobs[blob] = data


def _write(tree: Path, files: dict[str, str], blobs: dict[str, bytes]) -> None:
    for path, entry in sorted(files.items()):
        mode, blob = entry.split()
        target = tree / _safe(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == SUBMODULE:
            target.mkdir(exist_ok=True)  # an empty folder: its files are not approved
        elif mode == SYMLINK:
            target.symlink_to(os.fsdecode(blobs[blob]))
        else:
            target.write_bytes(blobs[blob])
            target.chmod(0o755 if mode == EXECUTABLE else 0o644)


def link_machine_local(project: Project, tree: Path) -> None:
    """Link what git ignores in the project (the venv, keys, fact cache) into `tree`."""
    ignored = git(
        project.root,
        "ls-files",
        "--others",
        "--ignored",
        "--exclude-standard",
        "--directory",
        "-z",  # unquoted, NUL-separated: names with spaces or non-ASCII stay whole
    ).stdout.split("\0")
    for line in filter(None, ignored):
        parts = Path(line.rstrip("/")).parts
        if _NOT_LINKED & set(parts) or parts[-1].endswith(".pyc"):
            continue
        for depth in range(1, len(parts) + 1):  # link the first missing level
            target = tree.joinpath(*parts[:depth])
            if not target.exists() and not target.is_symlink():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(project.root.joinpath(*parts[:depth]))
                break


@contextlib.contextmanager
def exported(project: Project, files: dict[str, str]) -> Iterator[Project]:
    """A temporary folder holding exactly `files` (a content manifest) and the machine's own.

    Example:
        with exported(project, commit_content(project, base, change.id)) as before:
            load_runbook(before, "pg-switchover")
    """
    wanted = {e.split()[1] for e in files.values() if not e.startswith(SUBMODULE)}
    blobs = _blobs(project, sorted(wanted))
    _from_disk(project, files, blobs)
    with tempfile.TemporaryDirectory(prefix="opsledger-export-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        _write(tree, files, blobs)
        link_machine_local(project, tree)
        yield Project(tree)


def _ignored(project: Project, paths: list[str]) -> set[str]:
    """The paths the project's ignore rules make machine-local (a run's retry file, a cache)."""
    if not paths:
        return set()
    proc = subprocess.run(
        ["git", "-C", str(project.root), "check-ignore", "--no-index", "-z", "--stdin"],
        input="\0".join(paths).encode("utf-8", "surrogateescape"),
        capture_output=True,
        env=git_env(),
        check=False,
    )
    return {os.fsdecode(p) for p in proc.stdout.split(b"\0") if p}


def altered(project: Project, tree: Project, files: dict[str, str]) -> list[str]:
    """Paths of the export that a run added, removed or rewrote, sorted.

    A play can write on the controller (a task delegated to localhost): into its own export it
    could plant a group_vars file or rewrite a suite before verification reads it. The machine's
    own links (`link_machine_local`) and new files the project's ignore rules cover are
    machine-local, as in the working tree, and passed over.

    Example:
        altered(project, tree, decision.content.files)  # ['inventories/lab/group_vars/x.yml']
    """
    found: dict[str, str] = {}  # path -> "symlink" | "file" | "folder"
    for folder, dirs, names in os.walk(tree.root):
        for name in [*dirs, *names]:
            path = Path(folder) / name
            rel = path.relative_to(tree.root).as_posix()
            if path.is_symlink():
                if os.readlink(path) == str(project.root / rel) and rel not in files:
                    continue  # linked in from the machine, not content
                found[rel] = "symlink"
            elif path.is_file():
                found[rel] = "file"
            elif rel in files and files[rel].startswith(SUBMODULE):
                found[rel] = "folder"
    changed = sorted(set(files) - set(found))
    added = [p for p, kind in found.items() if kind != "folder" and p not in files]
    changed += sorted(set(added) - _ignored(project, added))
    for path, kind in found.items():
        if path not in files or kind == "folder":
            continue
        mode, blob = files[path].split()
        real = tree.root / path
        if kind == "symlink":
            ok = mode == SYMLINK and blob_id(os.fsencode(os.readlink(real))) == blob
        else:
            executable = os.stat(real).st_mode & 0o111 != 0
            ok = mode != SYMLINK and executable == (mode == EXECUTABLE)
            ok = ok and blob_id(real.read_bytes()) == blob
        if not ok:
            changed.append(path)
    return sorted(set(changed))
