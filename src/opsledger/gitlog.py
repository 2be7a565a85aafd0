"""The repository's history read once: every commit with its people, times, signature and files.

Audit and reports ask many questions of the same history (who requested, who approved, when
it ran, what else changed). Asking git once per commit or per file is what makes audits slow
on big repositories, so this module runs one `git log` process and parses its stream:
commits oldest first, each with parents, author and committer, signature status, subject and
the paths it added, modified or deleted with their object ids (renames are reported as
delete + add, so a file's life is never lost across a move). Paths under changes/ are keys
(`layout.flat_form`): a change's file reads the same in either layout, and a move between
the layouts keeping its bytes is no change at all (`_moves_collapsed`).
"""

from __future__ import annotations

import datetime as dt
import locale
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from opsledger.errors import OpsledgerError, Problem
from opsledger.layout import flat_form, folder_of_kind
from opsledger.project import Project

_FIELDS = "%H%x1f%P%x1f%an%x1f%ae%x1f%aI%x1f%cn%x1f%ce%x1f%cI%x1f{sig}%x1f%s"


@dataclass(frozen=True, slots=True)
class FileChange:
    status: str  # A added | M modified | D deleted | T type changed
    path: str
    blob: str = ""  # the file's object id after the commit (zeros when deleted)
    mode: str = ""  # its mode after the commit (120000: a symlink)
    before: str = ""  # its object id before the commit (zeros when added)
    mode_before: str = ""


def _moves_collapsed(files: list[FileChange]) -> list[FileChange]:
    """A commit's files with each move between the two layouts of changes/ judged by its bytes.

    Paths are keys (layout.flat_form), so moving `changes/<ID>/x` to its block folder reads
    as a delete and an add of the same key. The same bytes and mode: nothing happened (no
    "evidence deleted", no statement introduced twice); other bytes: an edit (M), as an edit
    in place would read.
    """
    deleted = {f.path: f for f in files if f.status == "D"}
    added = {f.path: f for f in files if f.status == "A"}
    both = deleted.keys() & added.keys()
    if not both:
        return files
    kept: list[FileChange] = []
    for f in files:
        if f.path not in both:
            kept.append(f)
        elif f.status == "A":
            old = deleted[f.path]
            if (old.before, old.mode_before) != (f.blob, f.mode):
                kept.append(FileChange("M", f.path, f.blob, f.mode, old.before, old.mode_before))
    return kept


@dataclass(slots=True)
class Commit:
    sha: str
    parents: tuple[str, ...]
    author_name: str
    author_email: str
    authored_at: dt.datetime
    committer_name: str
    committer_email: str
    committed_at: dt.datetime
    signature: str  # git's %G?: G good, B bad, U good but unknown validity, N none, E can't check
    signer: str
    subject: str
    files: list[FileChange] = field(default_factory=list)

    @property
    def merge(self) -> bool:
        return len(self.parents) > 1

    def touches(self, prefix: str) -> list[FileChange]:
        return [f for f in self.files if f.path == prefix or f.path.startswith(prefix)]


# Which commits a reader keeps, asked before a commit is built: (sha, committer email, paths).
# Building one (dates, file entries) is most of what reading a history costs in Python, and an
# audit of 100,000 commits judges a few thousand.
Keep = Callable[[str, str, list[str]], bool]


def _parse(stream: Iterator[str], signed: bool, keep: Keep | None = None) -> Iterator[Commit]:
    buffer = ""
    for chunk in stream:
        buffer += chunk
        *complete, buffer = buffer.split("\x1e")
        for record in complete:
            if record and (commit := _commit(record, signed, keep)) is not None:
                yield commit
    if buffer and (commit := _commit(buffer, signed, keep)) is not None:
        yield commit


def _commit(record: str, signed: bool, keep: Keep | None = None) -> Commit | None:
    header, _, rest = record.partition("\0")
    parts = header.split("\x1f")
    tokens = rest.lstrip("\0\n").split("\0")
    if keep is not None and not keep(parts[0], parts[6], [flat_form(p) for p in tokens[1::2]]):
        return None
    sha, parents, an, ae, ai, cn, ce, ci, sig, subject = parts
    sig_status, _, signer = sig.partition("\x1d") if signed else ("N", "", "")
    files = []
    moved = False
    for meta, path in zip(tokens[::2], tokens[1::2], strict=False):
        if meta.startswith(":"):  # ":old_mode new_mode old_blob new_blob status"
            old_mode, mode, old_blob, blob, status = meta[1:].split()
            key = flat_form(path)
            moved = moved or key != path
            files.append(
                FileChange(status[:1], key, _id(blob), _one(mode), _id(old_blob), _one(old_mode))
            )
    return Commit(
        sha,
        tuple(parents.split()),
        _one(an),
        _one(ae),
        dt.datetime.fromisoformat(ai),
        _one(cn),
        _one(ce),
        dt.datetime.fromisoformat(ci),
        sig_status or "N",
        _one(signer),
        subject,
        _moves_collapsed(files) if moved else files,
    )


def _one(text: str) -> str:
    """One copy of a string commits repeat (names, emails, modes): audits keep thousands."""
    return sys.intern(text)


_ZEROS = {"0" * 40, "0" * 64}


def _id(blob: str) -> str:
    """A file's object id; the all-zero id (nothing before an add, after a delete) once."""
    return sys.intern(blob) if blob in _ZEROS else blob


def read_history(
    project: Project,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    paths: tuple[str, ...] = (),
    allowed_signers: str | None = None,
    rev: str = "HEAD",
) -> list[Commit]:
    """Every commit reachable from `rev`, parents before children, from one `git log` process.

    The whole history in memory: for small histories and path-limited reads. Audits of a
    whole repository stream it instead (`iter_history`) and keep only what they judge.

    Example:
        commits = read_history(find_project(), paths=("changes/",))
        [(c.sha[:10], c.author_email, [f.path for f in c.files]) for c in commits]
    """
    return list(
        iter_history(
            project,
            since=since,
            until=until,
            paths=paths,
            allowed_signers=allowed_signers,
            rev=rev,
        )
    )


def iter_history(
    project: Project,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    paths: tuple[str, ...] = (),
    allowed_signers: str | None = None,
    rev: str = "HEAD",
    keep: Keep | None = None,
) -> Iterator[Commit]:
    """`read_history`'s commits one at a time, as git writes them.

    Memory does not grow with the history, only with what the caller keeps.

    Merges list the files they changed relative to their first parent (what the merged branch
    brought), so the first-parent line alone tells what reached the branch and how.

    With `allowed_signers` (the text of an allowed-signers file) git verifies each signed
    commit's SSH signature; without it signatures are not checked (and read as N), which is
    much faster on large histories.

    With `keep`, only the commits it accepts are built and yielded; it is asked for every
    commit (so it can count them) with the commit's id, committer email and paths.

    Example:
        sum(1 for c in iter_history(find_project()) if c.merge)
    """
    with tempfile.TemporaryDirectory(prefix="opsledger-log-") as tmp:
        argv = _argv(project, Path(tmp), allowed_signers, since, until, paths, rev)
        # stderr to a file, not a pipe: git's warnings must not block it while we read stdout
        with open(Path(tmp) / "stderr", "w+") as errors:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                errors="surrogateescape",  # a path git prints may be any bytes
                bufsize=1 << 16,
            )
            assert proc.stdout is not None
            try:
                yield from _parse(
                    iter(lambda: proc.stdout.read(1 << 16), ""), allowed_signers is not None, keep
                )
            finally:
                proc.stdout.close()  # a reader that stops early ends git (broken pipe)
                proc.wait()
            errors.seek(0)
            _check(proc.returncode, errors.read(), project)


@contextmanager
def history_in_background(
    project: Project,
    *,
    allowed_signers: str | None = None,
    rev: str = "HEAD",
    keep: Keep | None = None,
) -> Iterator[Callable[[], Iterator[Commit]]]:
    """`iter_history` of the whole branch, git started now, its commits read when asked.

    git writes its listing to a scratch file (about 350 bytes a commit) at its own pace while
    the caller does other work, so git's walk and the caller's work overlap instead of adding
    up; reading parses the file in chunks as git writes it (memory does not grow with the
    history), and raises at the end if git failed. Leaving the scope ends git if it still
    runs.

    git lists the commits newest first (`--topo-order` without `--reverse`: reversing costs
    git ≈ 0.5 s of CPU at 100,000 commits, a tenth of its walk) and the commits kept are
    yielded reversed, once git has ended: the same order as `iter_history`'s, exactly.

    Example:
        with history_in_background(project) as history:
            changes = [load_change(project, c) for c in change_ids(project)]
            commits = [c for c in history() if c.merge]
    """
    with tempfile.TemporaryDirectory(prefix="opsledger-log-") as tmp:
        argv = _argv(project, Path(tmp), allowed_signers, None, None, (), rev, reverse=False)
        listing = Path(tmp) / "stdout"
        with open(listing, "wb") as out, open(Path(tmp) / "stderr", "w+") as errors:
            proc = subprocess.Popen(argv, stdout=out, stderr=errors)

            def commits() -> Iterator[Commit]:
                # decoded as a text-mode pipe from git is (the locale's encoding, newlines);
                # read as git writes it, so parsing overlaps git's walk too
                def ended() -> None:  # raises unless git succeeded
                    errors.seek(0)
                    _check(proc.returncode or 0, errors.read(), project)

                with open(
                    listing, encoding=locale.getpreferredencoding(False), errors="surrogateescape"
                ) as text:
                    chunks = _follow(text, proc, ended)
                    newest_first = list(_parse(chunks, allowed_signers is not None, keep))
                yield from reversed(newest_first)

            try:
                yield commits
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()


def _follow(
    text: TextIO, proc: subprocess.Popen[bytes], ended: Callable[[], None]
) -> Iterator[str]:
    """The listing in chunks as git writes it, to its end once git has exited (`tail -f`).

    `ended` is called once git has exited, before its last chunk: it raises if git failed,
    so a record git left half written is never parsed.
    """
    while True:
        chunk = text.read(1 << 16)
        if chunk:
            yield chunk
        elif proc.poll() is None:
            time.sleep(0.01)  # git is still walking: more will come
        else:
            rest = text.read()  # what git wrote between the last read and its exit
            ended()
            yield rest
            return


def _argv(
    project: Project,
    tmp: Path,
    allowed_signers: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    paths: tuple[str, ...],
    rev: str,
    *,
    reverse: bool = True,
) -> list[str]:
    signed = allowed_signers is not None
    fmt = _FIELDS.format(sig="%G?%x1d%GS" if signed else "")
    config = []
    if signed:
        signers_file = tmp / "allowed_signers"
        signers_file.write_text(allowed_signers or "")
        config = ["-c", f"gpg.ssh.allowedSignersFile={signers_file}"]
    argv = [
        "git",
        "-C",
        str(project.root),
        *config,
        "log",
        *(["--reverse"] if reverse else []),  # oldest first: parents before children
        "--topo-order",  # never a parent before its children (or, reversed, after them)
        "--diff-merges=first-parent",  # a merge lists what it brought to its branch
        "--no-renames",
        "--no-color",
        f"--format=%x1e{fmt}",
        "--raw",  # with object ids: a record rewritten with the same name is still seen
        "--no-abbrev",
        "-z",
    ]
    if since:
        argv.append(f"--since={since.isoformat()}")
    if until:
        argv.append(f"--until={until.isoformat()}")
    return [*argv, rev, "--", *paths]


def _check(returncode: int, err: str, project: Project) -> None:
    """Raise unless git log succeeded (an empty repository lists nothing, and that is fine)."""
    if returncode == 0 or "does not have any commits" in err:
        return
    raise OpsledgerError(
        Problem(
            f"git log failed: {err.strip().splitlines()[-1] if err.strip() else '?'}",
            str(project.root),
            "git",
            "run the audit inside a git checkout with history (not a shallow clone)",
        ),
        1,
    )


def by_change(commits: list[Commit]) -> dict[str, list[Commit]]:
    """The commits touching each `changes/<ID>/` folder, oldest first.

    Merges are left out: they list what their branch brought (authored by whoever merged),
    while the branch's own commits say who wrote each file.
    """
    found: dict[str, list[Commit]] = {}
    for commit in commits:
        if commit.merge:
            continue
        for change_id in sorted(
            {n for f in commit.files if (n := folder_of_kind(f.path, ("CHG",)))}
        ):
            found.setdefault(change_id, []).append(commit)
    return found
