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
from dataclasses import dataclass

from opsledger.changes import change_ids, changes_dir, parse_window
from opsledger.errors import OpsledgerError
from opsledger.localcache import load_cache, save_cache
from opsledger.project import Project
from opsledger.yamlio import load_yaml

CACHE = "slots-v1"
_SEEN: dict[str, dict[str, list[str] | None]] = {}  # root -> blob id -> slot, per process


@dataclass(frozen=True)
class Slot:
    environment: str
    start: dt.datetime
    end: dt.datetime

    def overlaps(self, environment: str, start: dt.datetime, end: dt.datetime) -> bool:
        return self.environment == environment and self.start < end and start < self.end


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _derive(project: Project, change_id: str) -> list[str] | None:
    """[environment, start, end] as validation would read them, or None (validate in full).

    Reads the file the way `validate_change` does (load_yaml's bounds and checks); a file it
    refuses raises here as there.
    """
    file = changes_dir(project) / change_id / "change.yml"
    data = load_yaml(file, what="change request", root=project.root, dates=False)
    environment, window = data.get("environment"), data.get("window")
    if not isinstance(environment, str) or not isinstance(window, dict):
        return None
    if "start" not in window or "end" not in window:
        return None
    start, end, problems = parse_window(window, str(file))
    if problems or start is None or end is None:
        return None
    return [environment, start.isoformat(), end.isoformat()]


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
    seen: dict[str, list[str] | None] = {}
    found = []
    refused = False  # a request validation will refuse (exit 2): then nothing is written
    folder = changes_dir(project)
    for other_id in change_ids(project):
        if other_id == change_id:
            continue
        file = folder / other_id / "change.yml"
        if folder.is_symlink() or file.parent.is_symlink() or file.is_symlink():
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
        read = _slot(slot)
        if read is None or read.overlaps(environment, start, end):
            found.append(other_id)
    known.update(seen)
    if loaded and not refused and (seen.keys() - cached.keys() or len(seen) < len(cached)):
        save_cache(project, CACHE, seen)  # what the tree holds now: no stale entries kept
    return found


def _slot(entry: object) -> Slot | None:
    """A cached or derived entry as a Slot; None when there is none (validate in full)."""
    if not (isinstance(entry, list) and len(entry) == 3 and all(isinstance(p, str) for p in entry)):
        return None
    try:
        start, end = dt.datetime.fromisoformat(entry[1]), dt.datetime.fromisoformat(entry[2])
    except ValueError:
        return None
    if start.tzinfo is None or end.tzinfo is None:
        return None
    return Slot(entry[0], start, end)
