"""Running git in the project: the change log *is* the git history."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from opsledger.commitlock import commit_lock, git_folder
from opsledger.errors import OpsledgerError, Problem
from opsledger.gitenv import git_env
from opsledger.steady import steady_memo
from opsledger.yamlio import outside_problem


def git(
    root: Path, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """`git -C root ARGS`; with check, failure raises OpsledgerError carrying git's words."""
    proc = subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        # A path git prints may be any bytes: kept (surrogateescape), never a decoding crash;
        # content.py refuses such a name where it would matter.
        encoding="utf-8",
        errors="surrogateescape",
        env=git_env(env),
    )
    if check and proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        # git's own verdict (`fatal: Unable to create '.git/index.lock': File exists.`), not
        # the advice it may print after it
        last = [line for line in said if line.startswith(("fatal:", "error:"))][:1] or said[-1:]
        last = last or ["(no output)"]
        command = next(
            (a for i, a in enumerate(args) if not a.startswith("-") and args[i - 1 : i] != ["-c"]),
            args[0],
        )
        raise OpsledgerError(
            Problem(
                f"git {command} failed: {last[0]}",
                field="git",
                fix="run the git command yourself to see more",
            ),
            1,
        )
    return proc


def is_repo(root: Path) -> bool:
    return git(root, "rev-parse", "--git-dir", check=False).returncode == 0


def require_history(root: Path, command: str) -> None:
    """The project is the top of a git work tree with at least one commit, else exit 2.

    Approvals, runs and the audit trail are read from history: outside a repository (or in a
    folder of another one, or before the first commit) there is none, and answering anyway
    would deny, allow or report on nothing.
    """
    top = git(root, "rev-parse", "--show-toplevel", check=False)
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root.resolve():
        raise OpsledgerError(
            Problem(
                "not the top of a git repository",
                str(root),
                "git",
                f"{command} reads approvals and records from git: run it in a clone of the "
                "project (git init and commit it first)",
            )
        )
    if git(root, "rev-parse", "--verify", "-q", "HEAD^{commit}", check=False).returncode != 0:
        raise OpsledgerError(
            Problem(
                "the repository has no commits yet",
                str(root),
                "git",
                f"commit the project before {command}",
            )
        )


def head(root: Path) -> str:
    return git(root, "rev-parse", "HEAD").stdout.strip()


def write_and_commit(
    root: Path,
    path: Path,
    text: str,
    message: str,
    *,
    name: str,
    email: str,
    signing_key: Path | None = None,
) -> str:
    """Write one file and commit it as this person, or leave the tree as it was."""
    return write_files_and_commit(
        root,
        {path: text},
        lambda paths: commit_paths(
            root, paths, message, name=name, email=email, signing_key=signing_key
        ),
    )


def write_files_and_commit(
    root: Path, files: Mapping[Path, str], commit: Callable[[list[Path]], str]
) -> str:
    """Write these files and `commit(paths)` them, or leave the tree exactly as it was.

    The one path for every step that records itself as a commit (approvals, reviews,
    withdrawals, incident and problem steps). A commit can fail after the write (a key git
    cannot sign with, a hook, a held `.git/index.lock`, no repository at all): then every file
    gets its old content back (or goes, with the folders made for it) and leaves the index, so
    a failed step leaves nothing behind that a later command would read as done.
    """
    with commit_lock(root):  # another command's commit must not interleave (commitlock.py)
        return _write_files_and_commit(root, files, commit)


def _write_files_and_commit(
    root: Path, files: Mapping[Path, str], commit: Callable[[list[Path]], str]
) -> str:
    for path in files:
        if refused := outside_problem(path, root):  # a symlinked folder would write elsewhere
            raise OpsledgerError(refused)
    old = {path: path.read_bytes() if path.is_file() else None for path in files}
    made: list[Path] = []
    for path in files:
        made += [p for p in (path.parent, *path.parent.parents) if not p.exists() and p not in made]
    made.sort(key=lambda p: len(p.parts), reverse=True)  # innermost first
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_whole(root, path, text)
        return commit([*files])
    except BaseException:
        _restore(root, old, made)
        raise


def _restore(root: Path, old: Mapping[Path, bytes | None], made: list[Path]) -> None:
    """Undo `write_files_and_commit`'s writes: old contents back, new files and folders gone."""
    relative = [str(p.resolve().relative_to(root.resolve())) for p in old]
    git(root, "reset", "-q", "--", *relative, check=False)
    for path, content in old.items():
        if content is None:
            path.unlink(missing_ok=True)
        else:
            write_whole(root, path, content)
    for folder in made:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def write_whole(root: Path, path: Path, content: str | bytes) -> None:
    """Replace `path` by `content` at once: a reader sees the old bytes or the new, never part.

    Commands that only read (`incident show`, `report`, `decide`) do not wait for the commit
    lock; an incident step rewrote incident.yml in place, and a reader between the truncation
    and the write was refused ("'id' is a required property"). The bytes go to a file in the
    git folder first (no reader lists it, git never tracks it) and are renamed into place;
    where that folder is on another file system, the file is written in place as before.
    """
    spare = git_folder(root)
    if spare is not None:
        tmp = spare / f"opsledger-write-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            with os.fdopen(fd, "wb" if isinstance(content, bytes) else "w") as out:
                out.write(content)
            os.replace(tmp, path)
            return
        except OSError:
            tmp.unlink(missing_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def nul_paths(out: str) -> list[str]:
    r"""Paths from git's `-z` output (ls-files, ls-tree --name-only, diff --name-only).

    Without -z git quotes unusual names (`"z\303\251.yml"` for zé.yml) and a split on
    whitespace cuts a name with a space in two: a path read that way is not the file git means.
    """
    return [p for p in out.split("\0") if p]


def log_paths(out: str) -> list[tuple[str, list[str]]]:
    """(header, paths) per commit of `git log -z --name-only --format=%x1e<header>`."""
    found = []
    for record in out.split("\x1e")[1:]:
        header, _, rest = record.partition("\0")
        found.append((header, nul_paths(rest[1:] if rest.startswith("\n") else rest)))
    return found


def commit_paths(
    root: Path,
    paths: list[Path],
    message: str,
    *,
    name: str,
    email: str,
    signing_key: Path | None = None,
) -> str:
    """Commit exactly these paths as this person (author and committer); returns the sha.

    With a key the commit is SSH-signed, so git itself can later verify who approved. A commit
    that fails after `git add` (a key git cannot sign with, a full disk) takes the paths out of
    the index again: a record left staged would be committed by the next plain `git commit`,
    and a write-ahead record committed that way is a run that never started.
    """
    relative = [str(p.resolve().relative_to(root.resolve())) for p in paths]
    with commit_lock(root):  # one opsledger writer of the index at a time (commitlock.py)
        _waiting_for_git(lambda: git(root, "add", "--", *relative))
        try:
            return _waiting_for_git(
                lambda: _commit_staged(root, relative, message, name, email, signing_key)
            )
        except OpsledgerError:
            git(root, "reset", "-q", "--", *relative, check=False)
            raise


# What git says when a lock it needs is held by another git process for a moment (a user's
# `git status` refreshing the index, an editor's git, a `git gc`): the step waits and tries
# again instead of failing. Both are said before git wrote anything, or (a moved HEAD) with
# the new commit left unreferenced, so trying again commits once.
_GIT_BUSY = ("index.lock': File exists", "cannot lock ref 'HEAD'")
_GIT_BUSY_WAIT_S = 2.0  # git holds them for milliseconds; a stale one is reported after this


def _waiting_for_git(step: Callable[[], str | subprocess.CompletedProcess]) -> Any:
    deadline = time.monotonic() + _GIT_BUSY_WAIT_S
    while True:
        try:
            return step()
        except OpsledgerError as err:
            said = " ".join(p.message for p in err.problems)
            if not any(busy in said for busy in _GIT_BUSY) or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def _commit_staged(
    root: Path,
    relative: list[str],
    message: str,
    name: str,
    email: str,
    signing_key: Path | None,
) -> str:
    identity = {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }
    sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={signing_key}"] if signing_key else []
    args = [*sign, "commit", "--quiet", "--no-verify", "-m", message]
    if signing_key:
        args.append("-S")
    git(root, *args, "--", *relative, env=identity)
    return head(root)


# An object named by its id, or by a commit id and a path: the same bytes for ever.
_IMMUTABLE = re.compile(r"(?:[0-9a-f]{40}|[0-9a-f]{64})(?::.*)?", re.DOTALL)
# A commit id and a path: the commit's tree never changes, so a path it lacks it lacks for ever
# (an object id that is missing may still arrive by a fetch).
_IN_COMMIT = re.compile(r"(?:[0-9a-f]{40}|[0-9a-f]{64}):.*", re.DOTALL)


def blob_contents(root: Path, shas: list[str], *, keep: bool = True) -> dict[str, bytes]:
    """Object contents by sha from one `git cat-file --batch` (missing objects are left out).

    Inside `steady_tree()` what was read by an immutable name (an object id, or a commit id
    and a path) is kept for the scope: an audit reads the blobs of the branch ahead, while
    git lists the history, and its rules then ask for most of them again. A commit and path
    found missing is kept as missing too: a change's request is asked for under each spelling
    its path may have (layout.change_pathspecs), and the one the branch lacks would otherwise
    start a `cat-file` again after git has listed the history, when nothing overlaps it.
    `keep=False`: bytes the caller parses into a memo of its own (by object id) are not kept
    here as well (an audit's memory would hold every statement and record twice).
    """
    memo = steady_memo()
    if memo is None or not keep:
        return _cat_file(root, shas)
    where = str(root)
    known = {s: memo[("blob", where, s)] for s in shas if ("blob", where, s) in memo}
    asked = [s for s in dict.fromkeys(shas) if s not in known]
    fresh = _cat_file(root, asked)
    for name in asked:
        if name in fresh and _IMMUTABLE.fullmatch(name):
            memo[("blob", where, name)] = fresh[name]
        elif name not in fresh and _IN_COMMIT.fullmatch(name):
            memo[("blob", where, name)] = None  # missing in that commit, for ever
    found = {s: data for s, data in known.items() if isinstance(data, bytes)}
    return {**found, **fresh}


def _cat_file(root: Path, shas: list[str]) -> dict[str, bytes]:
    if not shas:
        return {}
    proc = subprocess.run(
        ["git", "-C", str(root), "cat-file", "--batch"],
        # `<commit>:<path>` names a path as git printed it: any bytes, kept as surrogates
        input="".join(f"{s}\n" for s in shas).encode("utf-8", "surrogateescape"),
        capture_output=True,
        check=True,
        env=git_env(),
    )
    out, found, at = proc.stdout, {}, 0
    for sha in shas:
        end = out.index(b"\n", at)
        header = out[at:end].split()
        at = end + 1
        if len(header) < 3 or header[1] == b"missing":
            continue
        size = int(header[2])
        found[sha] = out[at : at + size]
        at += size + 1
    return found
