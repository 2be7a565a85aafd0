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
else), a flat folder that is a symlink, an id already in its block folder. Run twice, the
second run finds nothing to move.

Example:
    plan = migrate_layout(find_project(), dry_run=True)
    print(len(plan.moves), plan.commit)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from opsledger.errors import OpsledgerError, Problem
from opsledger.gitrepo import git, require_history
from opsledger.layout import (
    block_dir,
    block_file,
    block_folder,
    block_of,
    change_file,
    changes_root,
    flat_folder,
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


def _refusals(project: Project, names: list[str]) -> list[Problem]:
    problems = []
    status = git(project.root, "status", "--porcelain", "-z", "-uall").stdout
    dirty = [entry[3:] for entry in status.split("\0") if entry][:5]
    problems += [
        Problem("not committed (the tree must be clean to migrate)", path, "git", FIX_DIRTY)
        for path in dirty
    ]
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
        elif os.path.lexists(block):
            problems.append(
                Problem(
                    f"{name} is in both layouts ({change_file(name)} and {block_file(name)})",
                    block_file(name),
                    "layout",
                    "keep one folder and commit, then migrate",
                )
            )
    return problems


def migrate_layout(project: Project, *, dry_run: bool = False) -> Migration:
    """Move every flat `changes/<ID>/` to `changes/<block>/<ID>/` in one commit (see above).

    The commit is made with git's own identity and signing settings, like any commit of a
    branch that goes through review: on a protected main it lands by a pull request.
    """
    require_history(project.root, "change migrate-layout")
    names = _flat_folders(project)
    problems = _refusals(project, names)
    if problems:
        raise OpsledgerError(problems)
    done = Migration([(change_file(n), block_file(n)) for n in names])
    if dry_run or not names:
        return done
    by_block: dict[str, list[str]] = {}
    for name in names:
        by_block.setdefault(block_of(name), []).append(name)
    try:
        for block, members in by_block.items():
            (changes_root(project.root) / block).mkdir(exist_ok=True)
            # one git process per block (~100 at 10,000 changes), not one per change
            git(project.root, "mv", *[change_file(n) for n in members], block_dir(members[0]) + "/")
        git(project.root, "commit", "-q", "-m", done.message())
    except OpsledgerError:
        # leave the tree as it was: a half-moved repository is two layouts of one change
        git(project.root, "reset", "-q", "--hard", "HEAD", check=False)
        git(project.root, "clean", "-q", "-fd", "--", changes_root(project.root).name, check=False)
        raise
    done.commit = git(project.root, "rev-parse", "HEAD").stdout.strip()
    return done
