"""The content of a change: every file git tracks in the repository but bookkeeping, and its hash.

An approval signs this hash; editing, adding or removing any content file afterwards voids it.

Why the whole repository: an earlier version hashed what static reading guessed Ansible would
load (the runbook, its roles, the inventory, literally named files). A hostile review found
some 25 ways to make Ansible load a file that guess missed — a role named by a computed
string, a lookup of a templated path, a vars plugin, a group created by `group_by`, a symlinked
folder, `include_*` with variables, a module on a collections path. Any file in the repository
can be reached somehow, so every file is bound. The guess survives in reach.py, only to show
reviewers what a change reaches.

What is content: every path git tracks (`git ls-files -s`), with its mode and git blob id — a
symlink is bound as git stores it (mode 120000, its target as the blob). Including `policies/`
(a policy edit merged to main voids pending approvals: the requester re-submits with
`opsledger change submit`), the tool itself, tests, CI files and documentation.

What is not content — bookkeeping, which must be writable without voiding approvals:

- other changes' folders `changes/<OTHER-ID>/` (CHG and POL alike);
- this change's own bookkeeping: `changes/<ID>/approvals/` (statements), `runs/` (run
  records), `shards/` (a sharded apply's shard records), `review.yml` (post-implementation
  review) and `withdrawn.yml`; its own `changes/<ID>/change.yml` *is* content;
- `records/` (inspections, drift, drills), `incidents/`, `problems/`: operational records;
- `.opsledger/` (machine-local state) and whatever git ignores (never tracked).

The one rule for a working tree that differs from git: the content is the tree `git commit -a` would
record now — tracked files as they are on disk (a modified file is hashed by `git hash-object`, so
with git's filters; a deleted one is absent), untracked files left out — plus the change's own
`change.yml` while it is still untracked (`change new` writes it for the requester to commit with
the request statement; outside a repository it is all there is). So plan, decide and approve read a
dirty tree, and an edit shows at once; apply refuses to run unless git holds exactly that content
(`require_committed`): nothing untracked, modified or staged may sit in the content area.

Still refused (exit 2) because they are real risks: git tracking machine-local state that
Ansible or ansible-runner loads (`.opsledger/`, the fact cache ansible.cfg names), and a tracked
symlink that leads outside the repository, dangles, or points at what is not content (an
ignored file, bookkeeping) — through it a run would load files no approval covers. A play that
reads bookkeeping through a path computed at run time is caught by apply's read watch
(readguard.py): the run fails.

The hash is sha256 over the sorted `path NUL mode blob` lines, so the manifest also says *which*
file changed when an approval is void. It is built from git's own blob ids: one `git ls-files`
and one `git diff` per call; only files modified since the index are hashed again.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from opsledger.ansiblecfg import read_ansible_cfg_file
from opsledger.changes import Change
from opsledger.errors import OpsledgerError, Problem
from opsledger.gitrepo import git, git_env
from opsledger.layout import (
    APPROVALS,
    CHANGES_PREFIX,
    RECORDS,
    REQUEST,
    REVIEW,
    RUNS,
    SHARDS,
    WITHDRAWN,
    change_pathspecs,
    flat_form,
    is_block_folder,
    other_changes_pathspec,
    stored_file,
    within_change,
)
from opsledger.localcache import index_identity, load_cache, save_cache
from opsledger.project import Project
from opsledger.runbooks import Runbook
from opsledger.steady import remembered

# Operational records and machine-local state: never content (see the module docstring).
BOOKKEEPING_ROOTS = (f"{RECORDS}/", "incidents/", "problems/", ".opsledger/")
# A change's own bookkeeping under changes/<ID>/.
OWN_BOOKKEEPING_DIRS = (f"{APPROVALS}/", f"{RUNS}/", f"{SHARDS}/")
OWN_BOOKKEEPING_FILES = (REVIEW, WITHDRAWN)
SYMLINK_MODE = "120000"
# Read-only git commands must not take the index lock: a concurrent git may hold it.
_NO_LOCKS = {"GIT_OPTIONAL_LOCKS": "0"}


@dataclass(frozen=True)
class Content:
    sha256: str
    files: dict[str, str]  # project-relative path -> "mode blob-id" (git's, see the docstring)

    def changed_since(self, other: dict[str, str]) -> list[str]:
        """Paths added, removed or edited compared with an earlier manifest."""
        paths = set(self.files) | set(other)
        return sorted(p for p in paths if self.files.get(p) != other.get(p))


def manifest(files: dict[str, str]) -> Content:
    """The content of a manifest: sha256 over the sorted (key, digest) lines.

    Paths are keyed by `layout.flat_form`: the same bytes in either layout of changes/ hash
    the same, so moving a change to its block folder voids no approval.
    """
    files = {flat_form(p): d for p, d in files.items()}
    digest = hashlib.sha256()
    for relative in sorted(files):
        digest.update(f"{relative}\0{files[relative]}\n".encode())
    return Content(digest.hexdigest(), dict(sorted(files.items())))


def is_content(path: str, change_id: str) -> bool:
    """True when `path` (relative, as git names it) is bound by an approval of `change_id`."""
    if path.startswith(BOOKKEEPING_ROOTS):
        return False
    inside = within_change(path)
    if inside is None:
        return True  # outside changes/, or a file right under it (changes/README.md)
    folder, rest = inside
    if folder != change_id:
        return False  # another change's folder: its own bookkeeping
    return not (rest.startswith(OWN_BOOKKEEPING_DIRS) or rest in OWN_BOOKKEEPING_FILES)


def ignored_paths(project: Project, paths: list[str]) -> set[str]:
    """The paths git ignores (never tracked): machine-local files a change cannot carry."""
    if not paths:
        return set()
    proc = subprocess.run(
        ["git", "-C", str(project.root), "check-ignore", "--stdin", "-z"],
        input="\0".join(paths) + "\0",
        capture_output=True,
        encoding="utf-8",
        errors="surrogateescape",  # a path git prints may be any bytes
        env=git_env(),
    )
    if proc.returncode > 1:  # not a git repository: only Python's caches are machine-local
        return {p for p in paths if "__pycache__" in p.split("/") or p.endswith(".pyc")}
    return {p for p in proc.stdout.split("\0") if p}


def blob_id(data: bytes) -> str:
    """git's object id of a blob (`git hash-object` without filters), in-process."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _is_repository(project: Project) -> bool:
    """True when the project is the top of a git work tree (its files can be tracked).

    Asked once per steady scope (decide's conflicts judge many changes' content in one).
    """
    return remembered(("is-repository", str(project.root)), lambda: _asks_git(project))


def _asks_git(project: Project) -> bool:
    top = git(project.root, "rev-parse", "--show-toplevel", check=False)
    return top.returncode == 0 and Path(top.stdout.strip()).resolve() == project.root.resolve()


def _content_specs(change_id: str) -> list[list[str]]:
    """git pathspecs that together hold every path `is_content` can accept for a change.

    Other changes' folders and the operational records grow with the history; listing them
    only to drop them made every decision cost more as changes piled up. Two listings (git
    cannot say "every change folder but this one" in one): the repository without changes'
    folders and records, and this change's own folder. `.opsledger/` stays listed:
    `_refuse_tracked_state` looks for it.
    """
    outside = [other_changes_pathspec()] + [
        f":(exclude){root.rstrip('/')}" for root in BOOKKEEPING_ROOTS if root != ".opsledger/"
    ]
    return [outside, list(change_pathspecs(change_id))]


def _listed(project: Project, change_id: str, *args: str) -> str:
    """git's NUL-separated output of `args` over the content's pathspecs (see _content_specs)."""
    return "".join(
        git(project.root, *args, "--", *spec, env=_NO_LOCKS).stdout
        for spec in _content_specs(change_id)
    )


INDEX_CACHE = "content-index-v1"  # {"index": identity, "lists": {pathspecs: ls-files output}}
_LISTINGS: dict[str, tuple[str, dict[str, str]]] = {}  # root -> (identity, lists), per process
_LISTINGS_KEPT = 64


def _index_listing(project: Project, change_id: str) -> str:
    """`git ls-files -s -v -z` over the content's pathspecs, kept by the index's identity.

    It depends on the index alone (entries, stages, assume-unchanged and skip-worktree
    flags, all in the index), so it is kept under the index's identity (localcache: its
    checksum, rewritten with any change to it), per process and in an authenticated cache:
    each listing read the whole index again, 10,000 changes' files in it. What the working
    tree says is asked every time (`_worktree_changes`).
    """
    # -v tags each entry too (lower case: assume-unchanged, S: skip-worktree): one listing.
    args = ("ls-files", "-s", "-v", "-z")
    identity = index_identity(project.root)
    if not identity:
        return _listed(project, change_id, *args)
    here = _LISTINGS.get(str(project.root))
    if here is None or here[0] != identity:
        kept = load_cache(project, INDEX_CACHE)
        lists = kept.get("lists") if kept.get("index") == identity else None
        here = (identity, dict(lists) if isinstance(lists, dict) else {})
        _LISTINGS[str(project.root)] = here
    lists, new = here[1], False
    out = []
    for spec in _content_specs(change_id):
        key = "\0".join(spec)
        listed = lists.get(key)
        if not isinstance(listed, str):
            listed = git(project.root, *args, "--", *spec, env=_NO_LOCKS).stdout
            lists[key], new = listed, True
        out.append(listed)
    if new and index_identity(project.root) == identity:  # unchanged while listed
        kept_lists = dict(list(lists.items())[-_LISTINGS_KEPT:])
        save_cache(project, INDEX_CACHE, {"index": identity, "lists": kept_lists})
    elif new:
        _LISTINGS.pop(str(project.root), None)
        return _listed(project, change_id, *args)
    return "".join(out)


def _index(project: Project, change_id: str) -> dict[str, str]:
    """Every tracked path that may be content -> "mode blob" as the index has it.

    An unmerged path: exit 2.
    """
    out = _index_listing(project, change_id)
    files: dict[str, str] = {}
    hidden: list[str] = []
    for entry in out.split("\0"):
        if not entry:
            continue
        info, _, path = entry.partition("\t")
        tag, mode, blob, stage = info.split()
        if tag.islower() or tag == "S":
            hidden.append(path)
        if stage != "0":
            raise OpsledgerError(
                Problem(
                    "git has an unresolved merge conflict here",
                    path,
                    "git",
                    "resolve the conflict and commit (or `git merge --abort`)",
                )
            )
        if not _utf8(path):
            if is_content(path, change_id):
                raise OpsledgerError(
                    Problem(
                        "a tracked file name is not UTF-8: an approval cannot name it",
                        path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"),
                        "path",
                        "rename it (git mv) to a UTF-8 name",
                    )
                )
            continue  # bookkeeping: not content, whatever its name
        files[path] = f"{mode} {blob}"
    _refuse_hidden_edits(change_id, [p for p in hidden if p in files])
    return files


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes kept as surrogates by gitrepo.git
        return False
    return True


def _refuse_hidden_edits(change_id: str, hidden: list[str]) -> None:
    """Exit 2 when git is told not to look at a content file (assume-unchanged, skip-worktree).

    `git diff` and `git status` then hide any edit of it, so decide and apply would run bytes
    no approval names.
    """
    for path in hidden:
        if is_content(path, change_id):
            raise OpsledgerError(
                Problem(
                    "git is told to ignore edits of this file (assume-unchanged or "
                    "skip-worktree), so an edit would run unseen",
                    path,
                    "git",
                    f"git update-index --no-assume-unchanged --no-skip-worktree -- {path}",
                )
            )


def _worktree_changes(project: Project, change_id: str) -> tuple[list[str], list[str]]:
    """Tracked paths that may be content, edited in the working tree: (modified, deleted)."""
    out = _listed(
        project,
        change_id,
        "-c",
        "core.quotepath=off",
        "diff",
        "--no-ext-diff",
        "--no-renames",
        "--ignore-submodules=all",
        "--name-status",
        "-z",
    ).split("\0")
    modified, deleted = [], []
    for status, path in zip(out[0::2], out[1::2], strict=False):
        (deleted if status.startswith("D") else modified).append(path)
    return modified, deleted


def _on_disk(project: Project, paths: list[str]) -> dict[str, str]:
    """Each working-tree file's "mode blob", as `git add` would record it."""
    root = project.root
    links = [p for p in paths if (root / p).is_symlink()]
    files = [p for p in paths if p not in links and (root / p).is_file()]
    found = {p: f"{SYMLINK_MODE} {blob_id(os.fsencode(os.readlink(root / p)))}" for p in links}
    blobs = {p: blob_id((root / p).read_bytes()) for p in files if "\n" in p}  # stdin can't
    listed = [p for p in files if p not in blobs]
    if listed:  # git's own hashing applies its filters (eol, clean), as `git add` would
        proc = subprocess.run(
            ["git", "-C", str(root), "hash-object", "--stdin-paths"],
            input="".join(f"{p}\n" for p in listed),
            capture_output=True,
            encoding="utf-8",
            errors="surrogateescape",  # a path git prints may be any bytes
            env=git_env(),
        )
        if proc.returncode != 0 or len(proc.stdout.split()) != len(listed):
            raise OpsledgerError(
                Problem(
                    f"git hash-object failed: {proc.stderr.strip()[:200]}",
                    listed[0],
                    "git",
                    "run `git hash-object` on the file yourself to see more",
                )
            )
        blobs |= dict(zip(listed, proc.stdout.split(), strict=True))
    for path, blob in blobs.items():
        executable = (root / path).stat().st_mode & 0o100  # git's core.fileMode
        found[path] = f"{'100755' if executable else '100644'} {blob}"
    return found


def read_ansible_cfg(project: Project) -> configparser.ConfigParser:
    """The project's ansible.cfg as Ansible reads it (no interpolation); unreadable: exit 2."""
    return read_ansible_cfg_file(project.ansible_cfg)


def _fact_cache(project: Project) -> Path | None:
    """The jsonfile/yaml fact cache folder ansible.cfg names (machine-local state), if any."""
    parser = read_ansible_cfg(project)
    cache = parser.get("defaults", "fact_caching_connection", fallback="").strip()
    if not cache or "://" in cache:
        return None
    return project.ansible_cfg.parent / os.path.expanduser(cache)


def _refuse_tracked_state(project: Project, tracked: list[str]) -> None:
    """Machine-local state in git is invalid (exit 2): Ansible and ansible-runner read it.

    `.opsledger/` holds each run's ansible-runner folder (whose env/ files set variables,
    options and extra vars) and, like the fact cache ansible.cfg names, facts Ansible loads
    as host variables. git ignores them, yet `git add -f` commits them, and a checkout then
    brings them to the machine that runs the change, outside any approved content.
    """
    folders = [project.state_dir]
    cache = _fact_cache(project)
    if cache is not None:
        folders.append(cache)
    inside = [os.path.relpath(os.path.abspath(f), os.path.abspath(project.root)) for f in folders]
    prefixes = tuple(Path(p).as_posix() + "/" for p in inside if p != "." and ".." not in p)
    files = [p for p in tracked if prefixes and p.startswith(prefixes)]
    if files:
        raise OpsledgerError(
            Problem(
                f"git tracks machine-local state Ansible would load: {', '.join(files[:3])}"
                + (" ..." if len(files) > 3 else ""),
                files[0],
                "path",
                "git rm --cached these files: a change cannot carry run state or cached facts",
            )
        )


def _symlink_problem(link: str, why: str) -> OpsledgerError:
    return OpsledgerError(
        Problem(
            f"a symlink {why}",
            link,
            "symlink",
            "replace the symlink by the files themselves, or point it at files the repository "
            "carries",
        )
    )


def _holds_bookkeeping(folder: str, change_id: str) -> bool:
    """True for a folder that is, lies in or contains bookkeeping (`.`, `changes/`, `records/`)."""
    if folder == "." or is_block_folder(folder) or not is_content(folder + "/", change_id):
        return True  # a block folder holds change folders: never in a change of its own
    own = [
        stored
        for name in OWN_BOOKKEEPING_DIRS + OWN_BOOKKEEPING_FILES
        for stored in change_pathspecs(change_id, name)
    ]
    return any(root.startswith(folder + "/") for root in (*BOOKKEEPING_ROOTS, CHANGES_PREFIX, *own))


def _ignored_inside(project: Project, folder: str) -> str:
    """The first file git ignores under `folder` (Python's caches aside), or ""."""
    out = git(
        project.root,
        "ls-files",
        "-z",
        "-o",
        "-i",
        "--exclude-standard",
        "--",
        folder,
        env=_NO_LOCKS,
        check=False,
    ).stdout
    found = (p for p in out.split("\0") if p and "__pycache__" not in p.split("/"))
    return next(found, "")


def _refuse_symlinks(project: Project, links: list[str], change_id: str) -> None:
    """A content symlink must lead to content: inside the repository, existing, not ignored.

    Otherwise a run loads, through the bound link, bytes no approval covers (exit 2).
    """
    real_root = Path(os.path.realpath(project.root))
    targets: dict[str, str] = {}
    for link in links:
        real = Path(os.path.realpath(project.root / link))
        if not real.is_relative_to(real_root):
            raise _symlink_problem(link, f"leads outside the repository (to {real})")
        if not real.exists():
            absent = real.relative_to(real_root).as_posix()
            raise _symlink_problem(link, f"points at {absent}, which does not exist")
        target = real.relative_to(real_root).as_posix()
        folder = real.is_dir()
        if (folder and _holds_bookkeeping(target, change_id)) or (
            not folder and not is_content(target, change_id)
        ):
            raise _symlink_problem(link, f"points at {target}, which is bookkeeping, not content")
        targets[link] = target
    ignored = ignored_paths(project, sorted(set(targets.values())))
    for link, target in targets.items():
        if target in ignored:
            raise _symlink_problem(link, f"points at {target}, which git ignores (machine-local)")
        inside = _ignored_inside(project, target) if (real_root / target).is_dir() else ""
        if inside:
            raise _symlink_problem(
                link, f"points at {target}, which holds {inside}, a file git ignores"
            )


def repository_content(project: Project, change_id: str) -> Content:
    """The content bound by approvals of `change_id` (see the module docstring).

    Outside a git repository (or below its top) nothing is tracked: the content is the request
    file alone. `change new` may run there; decide, approve and apply need history and refuse.
    """
    tracked = _is_repository(project)
    index = _index(project, change_id) if tracked else {}
    _refuse_tracked_state(project, list(index))
    modified, deleted = _worktree_changes(project, change_id) if tracked else ([], [])
    files = {p: d for p, d in index.items() if is_content(p, change_id)}
    for path in deleted:
        files.pop(path, None)
    request = stored_file(project.root, change_id, REQUEST)
    pending = [p for p in modified if p in files]
    on_disk = _on_disk(project, pending)
    for path in pending:  # neither a file nor a symlink any more (a folder): not a blob
        files.pop(path, None)
    files |= on_disk
    file = project.root / request
    if request not in index and file.is_file() and not file.is_symlink():
        files[request] = f"100644 {blob_id(file.read_bytes())}"  # as `change new` wrote it
    links = [p for p, d in files.items() if d.startswith(SYMLINK_MODE + " ")]
    if links:
        _refuse_symlinks(project, links, change_id)
    return manifest(files)


def change_content(project: Project, change: Change, runbook: Runbook, hosts: list[str]) -> Content:
    """The content an approval of `change` binds: the whole repository but bookkeeping.

    Raises OpsledgerError (exit 2) for tracked machine-local state and for a symlink that
    leads out of the content. `runbook` and `hosts` do not narrow it:
    any file of the repository can be reached at run time.

    Example:
        result = validate_change(project, "CHG-0001")
        change_content(project, result.change, result.runbook, result.hosts).sha256
    """
    del runbook, hosts
    return repository_content(project, change.id)


def _status_entries(project: Project) -> list[tuple[str, str]]:
    """(XY status, path) of every path git status names, untracked ones each on its own."""
    out = git(
        project.root,
        "-c",
        "core.quotepath=off",
        "status",
        "--porcelain=v1",
        "-z",
        "--untracked-files=all",
        "--no-renames",
        "--ignore-submodules=none",
        env=_NO_LOCKS,
    ).stdout
    return [(e[:2], e[3:]) for e in out.split("\0") if len(e) > 3]


def require_committed(project: Project, change_id: str) -> None:
    """Exit 2 unless git holds the content exactly: nothing untracked, modified or staged.

    Apply runs what is on disk, but approvals and the run record name what git holds; a file
    outside git would run unbound. Bookkeeping (this change's statements and run records,
    other changes, records/) may be dirty: it is not content.
    """
    for status, path in _status_entries(project):
        if not is_content(path, change_id):
            continue
        what = {"??": "untracked"}.get(status, "modified" if status[0] == " " else "staged")
        if "D" in status:
            what = "deleted"
        raise OpsledgerError(
            Problem(
                f"{what}, not committed: apply runs only what git holds",
                path,
                "git",
                "`git commit` it (then `opsledger change submit` if it changes the content), or "
                "`git stash -u` it",
            )
        )
