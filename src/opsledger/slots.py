"""Where and when each change runs, read cheaply: the first cut of decide's conflicts rule.

Two changes conflict only in the same environment with overlapping windows (then hosts,
approvals and runs decide). Validating every other request in full to learn that (schema,
runbook, inventory) made one decision cost seconds at 10,000 changes. A request's slot — its
environment and window — is read from its bytes once and cached by their git blob id
(localcache.py: authenticated, so an edited cache is ignored, never believed); only requests
whose slot overlaps, or that do not read as a plain slot, are validated in full, exactly as
before.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

from opsledger.changes import change_ids, changes_dir, parse_window
from opsledger.errors import OpsledgerError
from opsledger.gitrepo import git
from opsledger.layout import (
    REQUEST,
    change_file,
    change_folder,
    every_change_glob,
    within_change,
)
from opsledger.localcache import load_cache, save_cache
from opsledger.project import Project
from opsledger.yamlio import load_yaml

CACHE = "slots-v2"  # blob id -> [environment, start, end] (seconds since the epoch)
_SEEN: dict[str, dict[str, list | None]] = {}  # root -> blob id -> slot, per process


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _linked_on_the_way(root: Path, folder: str) -> bool:
    """True when the change folder (relative) or a folder between it and changes/ is a symlink.

    A block-layout change lies two folders down (`changes/CHG-00xx/CHG-0001`): either may be
    a link that makes what git holds and what is read differ.
    """
    parts = folder.split("/")
    return any((root.joinpath(*parts[:n])).is_symlink() for n in range(2, len(parts) + 1))


def _derive(project: Project, change_id: str) -> list | None:
    """[environment, start, end] as validation would read them, or None (validate in full).

    Reads the file the way `validate_change` does (load_yaml's bounds and checks); a file it
    refuses raises here as there.
    """
    file = change_folder(project.root, change_id, REQUEST)
    data = load_yaml(file, what="change request", root=project.root, dates=False)
    environment, window = data.get("environment"), data.get("window")
    if not isinstance(environment, str) or not isinstance(window, dict):
        return None
    if "start" not in window or "end" not in window:
        return None
    start, end, problems = parse_window(window, str(file))
    if problems or start is None or end is None:
        return None
    return [environment, start.timestamp(), end.timestamp()]


def candidates(
    project: Project, change_id: str, environment: str, start: dt.datetime, end: dt.datetime
) -> list[str]:
    """Other changes that may overlap (environment, [start, end]): validate these in full.

    A change is left out only when its request, byte for byte, names another environment or
    a window that does not overlap; symlinked or unreadable ones stay in (validation refuses
    them as before).

    Example:
        for other_id in candidates(project, change.id, change.environment,
                                   change.window_start, change.window_end): ...
    """
    known = _SEEN.setdefault(str(project.root), {})  # this process's reads (apply --pending)
    cached: dict = {}
    loaded = False  # the cache file is read once, when a request is new to this process
    seen: dict[str, list | None] = {}
    found = []
    refused = False  # a request validation will refuse (exit 2): then nothing is written
    folder = changes_dir(project)
    indexed = _indexed_requests(project) if not folder.is_symlink() else {}
    low, high = start.timestamp(), end.timestamp()
    for other_id in change_ids(project):
        if other_id == change_id:
            continue
        blob = indexed.get(other_id)
        if blob is None:  # not tracked, or git sees its file changed: read the file itself
            file = change_folder(project.root, other_id, REQUEST)
            if (
                folder.is_symlink()
                or _linked_on_the_way(
                    project.root, file.parent.relative_to(project.root).as_posix()
                )
                or file.is_symlink()
            ):
                found.append(other_id)
                refused = True
                continue
            try:
                blob = _blob_id(file.read_bytes())
            except OSError:
                found.append(other_id)
                refused = True
                continue
        if blob not in known and not loaded:
            cached, loaded = load_cache(project, CACHE), True
        slot = known[blob] if blob in known else cached.get(blob, seen.get(blob, False))
        if slot is False:
            try:
                slot = _derive(project, other_id)
            except OpsledgerError:
                found.append(other_id)  # validation says why, as it always did
                refused = True
                continue
        seen[blob] = slot
        # A plain slot in another environment, or a window that does not overlap, is left out;
        # anything else (not a plain slot: validation says why) is a candidate.
        if not (
            isinstance(slot, list)
            and len(slot) == 3
            and isinstance(slot[0], str)
            and type(slot[1]) is float
            and type(slot[2]) is float
            and (slot[0] != environment or not (slot[1] < high and low < slot[2]))
        ):
            found.append(other_id)
    known.update(seen)
    if loaded and not refused and (seen.keys() - cached.keys() or len(seen) < len(cached)):
        save_cache(project, CACHE, seen)  # what the tree holds now: no stale entries kept
    return found


def _indexed_requests(project: Project) -> dict[str, str]:
    """Change id -> blob id of each request whose working-tree file holds the index's bytes.

    Two git processes instead of reading and hashing every `changes/<ID>/change.yml`.

    The index's entry counts only for a regular file (mode 100644) in a real folder that
    `git diff-files` does not name (git compares its stat cache and, where that is racy, the
    bytes); anything else (untracked, edited, deleted, a symlink, no repository) is left out,
    and `candidates` reads that file from disk as before.
    """
    spec = every_change_glob(REQUEST)
    env = {"GIT_OPTIONAL_LOCKS": "0"}
    listed = git(project.root, "ls-files", "-s", "-z", "--", *spec, env=env, check=False)
    changed = git(
        project.root, "diff-files", "--name-only", "-z", "--", *spec, env=env, check=False
    )
    if listed.returncode != 0 or changed.returncode != 0:
        return {}
    differs = set(changed.stdout.split("\0"))
    try:  # folders that are symlinks: read (and refused) as files, never taken from the index
        with os.scandir(changes_dir(project)) as entries:
            linked = {e.name for e in entries if e.is_symlink()}
    except OSError:
        return {}
    found: dict[str, str] = {}
    for entry in listed.stdout.split("\0"):
        info, _, path = entry.partition("\t")
        fields = info.split()
        if len(fields) != 3 or fields[0] != "100644" or fields[2] != "0" or path in differs:
            continue
        inside = within_change(path)
        if inside is None or inside[1] != REQUEST or inside[0] in linked:
            continue
        stored = path.removesuffix(f"/{REQUEST}")
        if stored != change_file(inside[0]) and _linked_on_the_way(project.root, stored):
            continue  # a block folder or a change folder in it that is a symlink
        found[inside[0]] = fields[1]
    return found
