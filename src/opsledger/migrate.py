"""`opsledger change migrate-layout`: move every legacy flat change folder into its id block.

Issue 16: with every change in one flat `changes/` folder, each change commit rewrites a tree
of 10,000 entries and git's history reads grow superlinearly. New changes already go to
`changes/<KIND>-<block>/<ID>/` (layout.py); this moves the old ones there with `git mv`, in one
commit, so a repository ends with one layout.

Why a move voids nothing: hashes, statements, manifests and audits key a change's files by
their flat form (`changes/<ID>/<rest>`, layout.flat_form), so the same bytes in the block
hash the same, an approval stays valid, and the history reader sees the commit's delete + add
of the same bytes as no change at all (gitlog._moves_collapsed): no "evidence deleted".

Refused (exit 2, nothing moved): a dirty tree (the commit must hold the moves and nothing
else), a flat folder that is a symlink, a file or empty, an id already in its block folder, a
file where a block folder goes, git's index lock held, another opsledger command committing
(the checkout's commit lock). Run twice, the second run finds nothing to move; a run killed
half-way (moves staged, or made on disk by a killed `git mv`) is finished by the next.

Example:
    plan = migrate_layout(find_project(), dry_run=True)
    print(len(plan.moves), plan.commit)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from opsledger.commitlock import lock_path
from opsledger.errors import OpsledgerError, Problem
from opsledger.gitrepo import git, require_history
from opsledger.layout import (
    CHANGES,
    block_dir,
    block_file,
    block_folder,
    block_of,
    change_file,
    change_id_of,
    changes_root,
    flat_folder,
    flat_form,
    is_flat_change_folder,
)
from opsledger.project import Project

FIX_DIRTY = "commit or stash these first: the migration's commit holds the moves and nothing else"


@dataclass
class Migration:
    moves: list[tuple[str, str]] = field(default_factory=list)  # (flat folder, block folder)
    commit: str = ""  # the commit that moved them ("" on a dry run or when nothing moved)

    def message(self) -> str:
        """The commit message: what moved and why nothing it moved loses its meaning."""
        blocks = {block.rsplit("/", 1)[0] for _, block in self.moves}
        return (
            f"Move {len(self.moves)} change folders into their id blocks "
            "(opsledger change migrate-layout)\n\n"
            "changes/<ID>/ -> changes/<KIND>-<block>/<ID>/, the block being the id with its "
            "last two digits as xx\n"
            f"({len(blocks)} blocks): git's history reads no longer rewrite one flat folder of "
            "every change.\n"
            "Same bytes, same keys (changes/<ID>/<file>): approvals, content hashes and run "
            "evidence stay valid.\n"
        )


def _flat_folders(project: Project) -> list[str]:
    """Every id-shaped folder right under changes/ (the legacy layout), by id."""
    try:
        with os.scandir(changes_root(project.root)) as entries:
            names = [e.name for e in entries if is_flat_change_folder(e.name)]
    except OSError:
        return []
    kind_number = [(n.partition("-")[0], int(n.partition("-")[2]), n) for n in names]
    return [n for _, _, n in sorted(kind_number)]


def _status(project: Project) -> list[tuple[str, str]]:
    """(XY, path) of every path that differs from HEAD, renames as a delete and an add.

    `--no-renames`: with renames, `-z` gives a rename's old path as an entry of its own with
    no status in front, which reading each entry as `XY path` cut to a wrong path. The
    checkout's own machine-local folder (`.opsledger/`, where the commit lock lies) is no
    edit even where the project's .gitignore does not name it.
    """
    state = project.state_dir.relative_to(project.root).as_posix()
    out = git(
        project.root, "status", "--porcelain=v1", "-z", "-uall", "--no-renames", "--",
        ".", f":(exclude){state}",
    ).stdout  # fmt: skip
    return [(entry[:2], entry[3:]) for entry in out.split("\0") if len(entry) > 3]


def _moves_under_way(project: Project, status: list[tuple[str, str]]) -> tuple[set[str], list[str]]:
    """(ids an interrupted migration moved, the dirty paths that are no such move).

    A migration killed between two blocks' `git mv` leaves moves staged; one killed inside a
    `git mv` leaves folders moved on disk and the index unwritten. Either way each dirty path
    is one half of a move of a flat file to its block with the same bytes as HEAD's: such a
    tree is a migration to finish (the next run commits those moves with the rest), anything
    else is an edit the migration's commit must not carry.
    """
    if not status:
        return set(), []
    listing = git(
        project.root, "ls-tree", "-r", "-z", "HEAD", "--", changes_root(project.root).name
    )
    head: dict[str, str] = {}
    for entry in listing.stdout.split("\0"):
        meta, _, path = entry.partition("\t")
        if path and meta.split()[0] in ("100644", "100755"):
            head[path] = meta.split()[2]
    pairs: dict[str, tuple[str, str]] = {}  # dirty path -> (flat path in HEAD, block path on disk)
    for _, path in status:
        key = flat_form(path)
        if key != path:  # a path in its block: the flat file of HEAD moved here
            pairs[path] = (key, path)
        elif (cid := change_id_of(path)) and path.count("/") >= 2:  # a flat change's file
            pairs[path] = (path, block_file(cid, path.split("/", 2)[2]))
    disk = [b for f, b in set(pairs.values()) if f in head and _regular(project, b)]
    hashed = dict(zip(disk, _blob_ids(project, disk), strict=True))
    moved: set[str] = set()
    others: list[str] = []
    for _, path in status:
        flat, block = pairs.get(path, ("", ""))
        if (
            flat
            and head.get(flat) == hashed.get(block)
            and not os.path.lexists(project.root / flat)
        ):
            moved.add(change_id_of(flat))
        else:
            others.append(path)
    return moved, others


def _regular(project: Project, path: str) -> bool:
    full = project.root / path
    return full.is_file() and not full.is_symlink()


def _blob_ids(project: Project, paths: list[str]) -> list[str]:
    """git's blob id of each file on disk (its filters applied, as `git add` would)."""
    if not paths:
        return []
    return git(project.root, "hash-object", "--", *paths).stdout.split()


def _refusals(
    project: Project, names: list[str], others: list[str], under_way: set[str]
) -> list[Problem]:
    """What would stop the migration half-way, or make its commit more than moves.

    Checked before anything moves, so a refusal leaves the tree as it was.
    """
    problems = [
        Problem("not committed (the tree must be clean to migrate)", path, "git", FIX_DIRTY)
        for path in others[:5]
    ]
    lock = git(project.root, "rev-parse", "--git-path", "index.lock").stdout.strip()
    if lock and os.path.lexists(project.root / lock):
        problems.append(
            Problem(
                "exists: another git process is running in this checkout, or one was killed",
                lock,
                "git",
                "wait for it to end; if no git process runs, remove the file, then migrate",
            )
        )
    for block in sorted({block_of(n) for n in names}):
        folder = changes_root(project.root) / block
        if os.path.lexists(folder) and (folder.is_symlink() or not folder.is_dir()):
            problems.append(
                Problem(
                    "is not a folder: the changes of this block are moved into it",
                    f"{CHANGES}/{block}",
                    "layout",
                    "remove or rename it and commit, then migrate",
                )
            )
    for name in names:
        flat, block = flat_folder(project.root, name), block_folder(project.root, name)
        if flat.is_symlink():
            problems.append(
                Problem(
                    "is a symlink, not a change folder",
                    change_file(name),
                    "layout",
                    "replace it by the folder it points at (git must record the change)",
                )
            )
        elif not flat.is_dir():
            problems.append(
                Problem(
                    "is a file, not a change folder",
                    change_file(name),
                    "layout",
                    "remove it or make it the change folder it names, commit, then migrate",
                )
            )
        elif name not in under_way and not any(not p.is_dir() for p in flat.rglob("*")):
            problems.append(
                Problem(
                    "holds no file: git records no empty folder, so `git mv` cannot move it",
                    change_file(name),
                    "layout",
                    "remove the empty folder, then migrate",
                )
            )
        elif os.path.lexists(block) and (name not in under_way or _tracked(project, block)):
            problems.append(
                Problem(
                    f"{name} is in both layouts ({change_file(name)} and {block_file(name)})",
                    block_file(name),
                    "layout",
                    "keep one folder and commit, then migrate",
                )
            )
    return problems


def _tracked(project: Project, folder: Path) -> bool:
    """Whether HEAD holds any file under `folder` (absolute)."""
    rel = folder.relative_to(project.root).as_posix()
    return bool(git(project.root, "ls-tree", "-z", "--name-only", "HEAD", "--", f"{rel}/").stdout)


def migrate_layout(project: Project, *, dry_run: bool = False) -> Migration:
    """Move every flat `changes/<ID>/` to `changes/<block>/<ID>/` in one commit (see above).

    The commit is made with git's own identity and signing settings, like any commit of a
    branch that goes through review: on a protected main it lands by a pull request. Run
    under the checkout's commit lock (a second migration, or an evidence commit, would read
    the first one's moves as edits, or commit them half-way). A migration killed half-way is
    finished by the next run; one that fails is undone (`git reset --hard`), and when even
    that fails the message says how to finish or undo it.
    """
    require_history(project.root, "change migrate-layout")
    with _migration_lock(project):
        status = _status(project)
        under_way, others = _moves_under_way(project, status)
        names = _flat_folders(project)
        problems = _refusals(project, names, others, under_way)
        if problems:
            raise OpsledgerError(problems)
        done = Migration([(change_file(n), block_file(n)) for n in names])
        done.moves += [(change_file(n), block_file(n)) for n in sorted(under_way - set(names))]
        if dry_run or not done.moves:
            return done
        try:
            _move(project, names, under_way)
            git(project.root, "commit", "-q", "-m", done.message())
        except (OpsledgerError, OSError) as exc:
            raise OpsledgerError(_undo(project, exc)) from exc
    done.commit = git(project.root, "rev-parse", "HEAD").stdout.strip()
    return done


def _move(project: Project, names: list[str], under_way: set[str]) -> None:
    """Move and stage: one `git mv` per block; what a killed run left half-moved, file by file."""
    by_block: dict[str, list[str]] = {}
    for name in names:
        if name in under_way:  # its block folder holds what the killed run moved already
            _move_files(project, name)
        else:
            by_block.setdefault(block_of(name), []).append(name)
    for block, members in by_block.items():
        (changes_root(project.root) / block).mkdir(exist_ok=True)
        # one git process per block (~100 at 10,000 changes), not one per change
        git(project.root, "mv", *[change_file(n) for n in members], block_dir(members[0]) + "/")
    if under_way:  # moves made on disk (by a killed `git mv`, or here) staged as such; every
        # other path under changes/ was checked clean (_moves_under_way)
        git(project.root, "add", "-A", "--", CHANGES)


def _move_files(project: Project, name: str) -> None:
    flat, block = flat_folder(project.root, name), block_folder(project.root, name)
    for path in sorted(p for p in flat.rglob("*") if not p.is_dir() or p.is_symlink()):
        target = block / path.relative_to(flat)
        if os.path.lexists(target):
            raise OpsledgerError(
                Problem(
                    "is in both layouts with other bytes",
                    target.relative_to(project.root).as_posix(),
                    "layout",
                    "keep one of the two files, then migrate again",
                )
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, target)
    shutil.rmtree(flat)


def _undo(project: Project, exc: Exception) -> list[Problem]:
    """Put the tree back as HEAD has it; say what failed, and how to finish if undoing failed.

    Only under the commit lock and after the tree was checked clean (but for moves), so what
    is reset is the migration's own work.
    """
    said = exc.problems if isinstance(exc, OpsledgerError) else [Problem(f"{exc}", None, "layout")]
    git(project.root, "reset", "-q", "--hard", "HEAD", check=False)
    git(project.root, "clean", "-q", "-fd", "--", changes_root(project.root).name, check=False)
    if not _status(project):
        return said
    return [
        *said,
        Problem(
            "the migration stopped half-way and could not be undone",
            CHANGES,
            "layout",
            "run `opsledger change migrate-layout` again to finish it "
            "(or `git reset --hard HEAD && git clean -fd changes` to undo it)",
        ),
    ]


@contextlib.contextmanager
def _migration_lock(project: Project) -> Iterator[None]:
    """The checkout's commit lock (commitlock.py), or a refusal if it is held.

    Its own descriptor, never the process's re-entrant hold: a migration refuses rather than
    waits, even inside a command that is committing.
    """
    path = lock_path(project.root)
    if path is None:  # no git folder: require_history refused already
        yield
        return
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OpsledgerError(
                Problem(
                    "another opsledger command is committing in this checkout "
                    "(a migration, or a run's evidence)",
                    str(path),
                    "git",
                    "run the migration again once it has ended",
                )
            ) from None
        yield
