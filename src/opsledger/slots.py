"""Where and when each change runs, read cheaply: the first cut of decide's conflicts rule.

Two changes conflict only in the same environment with overlapping windows (then hosts,
approvals and runs decide). Validating every other request in full to learn that (schema,
runbook, inventory) made one decision cost seconds at 10,000 changes. A request's slot — its
environment and window — is read from its bytes once and cached by their git blob id
(localcache.py: authenticated, so an edited cache is ignored, never believed); only requests
whose slot overlaps, or that do not read as a plain slot, are validated in full, exactly as
before.

Which requests there are, and which bytes each holds, is also kept: per command, listing git's
index of 10,000 requests and looking up each one's slot was most of what still grew with the
history. The slot of every request the index holds is kept under the identity of the index
itself (its trailing checksum, which git rewrites with every change to it: a `git add`,
commit, checkout or merge is a miss, never a stale answer). What the index cannot say is
asked every time, as before: `git diff-files` names each request whose file differs from the
index, a folder that is a symlink or a request git does not track is read from disk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
from bisect import bisect_right
from pathlib import Path

from opsledger.changes import change_ids, changes_dir, in_id_order, parse_window
from opsledger.errors import OpsledgerError, Problem
from opsledger.gitrepo import blob_contents, git
from opsledger.layout import (
    REQUEST,
    change_file,
    change_folder,
    every_change_glob,
    is_block,
    within_change,
)
from opsledger.localcache import index_identity, load_cache, save_cache
from opsledger.project import Project
from opsledger.yamlio import MAX_BYTES, load_yaml, parse_yaml

CACHE = "slots-v2"  # blob id -> [environment, start, end] (seconds since the epoch)
INDEX_CACHE = "slot-index-v1"  # {"index": identity, "rows": {id: [blob id, slot]}}
_SEEN: dict[str, dict[str, list | None]] = {}  # root -> blob id -> slot, per process
_ROWS: dict[str, tuple[str, dict[str, list]]] = {}  # root -> (index identity, rows), per process
_PLANS: dict[str, tuple[dict, dict]] = {}  # root -> (rows, their plan), per process
_NO_LOCKS = {"GIT_OPTIONAL_LOCKS": "0"}


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _linked_on_the_way(root: Path, folder: str) -> bool:
    """True when the change folder (relative) or a folder between it and changes/ is a symlink.

    A block-layout change lies two folders down (`changes/CHG-00xx/CHG-0001`): either may be
    a link that makes what git holds and what is read differ.
    """
    parts = folder.split("/")
    return any((root.joinpath(*parts[:n])).is_symlink() for n in range(2, len(parts) + 1))


def _folders(folder: Path) -> dict[str, bool] | None:
    """Every folder name under changes/, in either layout, and whether a symlink is on its way.

    One listing of changes/ and one of each block folder: a block that is a symlink marks
    every change in it as linked (what git holds and what is read may differ). None when
    changes/ cannot be listed.
    """
    try:
        with os.scandir(folder) as entries:
            top = {e.name: e.is_symlink() for e in entries}
    except OSError:
        return None
    names: dict[str, bool] = {}
    for name, is_link in top.items():
        if not is_block(name):
            names[name] = names.get(name, False) or is_link
            continue
        try:
            with os.scandir(folder / name) as inner:
                for entry in inner:
                    names[entry.name] = (
                        names.get(entry.name, False) or is_link or (entry.is_symlink())
                    )
        except OSError:
            continue
    return names


def _derive(project: Project, change_id: str) -> list | None:
    """[environment, start, end] as validation would read them, or None (validate in full).

    Reads the file the way `validate_change` does (load_yaml's bounds and checks); a file it
    refuses raises here as there.
    """
    file = change_folder(project.root, change_id, REQUEST)
    data = load_yaml(file, what="change request", root=project.root, dates=False)
    return _slot_of(data, str(file))


def _slot_of(data: object, source: str) -> list | None:
    """[environment, start, end] of a request's parsed YAML, or None (validate it in full)."""
    if not isinstance(data, dict):
        return None
    environment, window = data.get("environment"), data.get("window")
    if not isinstance(environment, str) or not isinstance(window, dict):
        return None
    if "start" not in window or "end" not in window:
        return None
    start, end, problems = parse_window(window, source)
    if problems or start is None or end is None:
        return None
    return [environment, start.timestamp(), end.timestamp()]


def _derive_blob(raw: bytes, source: str) -> list | None:
    """`_derive` of a request's bytes as git holds them: the same bounds, the same parser."""
    if len(raw) > MAX_BYTES:
        raise OpsledgerError(Problem(f"larger than {MAX_BYTES} bytes", source, "size"))
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise OpsledgerError(Problem("not UTF-8 text", source, "encoding")) from None
    return _slot_of(parse_yaml(text, source=source, dates=False), source)


def _plain(slot: object) -> bool:
    """A slot as `_derive` writes it (a cache entry of another shape is never believed)."""
    return (
        isinstance(slot, list)
        and len(slot) == 3
        and isinstance(slot[0], str)
        and type(slot[1]) is float
        and type(slot[2]) is float
    )


def candidates(
    project: Project, change_id: str, environment: str, start: dt.datetime, end: dt.datetime
) -> list[str]:
    """Other changes that may overlap (environment, [start, end]): validate these in full.

    A change is left out only when its request, byte for byte, names another environment or
    a window that does not overlap; symlinked or unreadable ones stay in (validation refuses
    them as before). In `change_ids` order.

    Example:
        for other_id in candidates(project, change.id, change.environment,
                                   change.window_start, change.window_end): ...
    """
    folder = changes_dir(project)
    if folder.is_symlink():  # every request lies behind it: validation refuses each one
        return [i for i in change_ids(project) if i != change_id]
    listed = _folders(folder)  # the folders there are, and which lie behind a symlink
    if listed is None:
        return []
    names = listed
    names.pop(change_id, None)
    rows, differs = _indexed(project)
    # A folder's request is read from disk unless the index holds it as a file, git sees no
    # change to it (diff-files) and the folder is no symlink; the index's are judged by plan.
    linked = {n for n, is_link in names.items() if is_link}
    on_disk = (names.keys() - rows.keys()) | (names.keys() & (differs | linked))
    plan = _plan(project, rows)
    low, high = start.timestamp(), end.timestamp()
    ends, entries = plan.get(environment, ((), ()))
    overlapping = {i for _, begins, i in entries[bisect_right(ends, low) :] if begins < high}
    found = [
        i
        for i in overlapping | plan[None]  # an overlap, or no plain slot: validation says why
        if i in names and i not in on_disk
    ]
    found += _read_from_disk(project, sorted(on_disk), environment, low, high)
    return in_id_order(found)


def _plan(project: Project, rows: dict[str, list]) -> dict:
    """The index's slots arranged for overlap queries, once per process and index.

    {environment: (ends, [(end, start, id)] sorted by end)}, and under None the ids without a
    plain slot (always candidates). A window overlaps [low, high] when it ends after low and
    starts before high: the rows ending after low are a bisection away.
    """
    here = _PLANS.get(str(project.root))
    if here is not None and here[0] is rows:
        return here[1]
    by_environment: dict[str, list[tuple[float, float, str]]] = {}
    odd: set[str] = set()
    for other_id, row in rows.items():
        # A row of another shape (never written so) counts as no plain slot: a candidate.
        slot = row[1] if isinstance(row, list) and len(row) == 2 else None
        if _plain(slot):
            by_environment.setdefault(slot[0], []).append((slot[2], slot[1], other_id))
        else:
            odd.add(other_id)
    plan: dict = {None: odd}
    for environment, listed in by_environment.items():
        listed.sort()
        plan[environment] = ([e for e, _, _ in listed], listed)
    _PLANS[str(project.root)] = (rows, plan)
    return plan


def _read_from_disk(
    project: Project, ids: list[str], environment: str, low: float, high: float
) -> list[str]:
    """Candidates among requests read from their files (untracked, edited, symlinked)."""
    known = _SEEN.setdefault(str(project.root), {})  # this process's reads (apply --pending)
    cached: dict = {}
    loaded = False  # the blob cache is read once, when a file read from disk is new
    seen: dict[str, list | None] = {}
    found = []
    refused = False  # a request validation will refuse (exit 2): then nothing is written
    for other_id in ids:
        file = change_folder(project.root, other_id, REQUEST)
        if not os.path.lexists(file):
            continue  # no request: not a change (change_ids)
        stored = file.parent.relative_to(project.root).as_posix()
        if _linked_on_the_way(project.root, stored) or file.is_symlink():
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
        elsewhere = _plain(slot) and (
            slot[0] != environment or not (slot[1] < high and low < slot[2])
        )
        if not elsewhere:
            found.append(other_id)
    known.update(seen)
    if loaded and not refused and seen.keys() - cached.keys():
        save_cache(project, CACHE, {**cached, **seen})
    return found


def _indexed(project: Project) -> tuple[dict[str, list], set[str]]:
    """(rows, differs): what the index holds, and where the working tree differs from it.

    rows: id -> [blob id, slot] of each request git's index holds as a file; differs: the ids
    whose working-tree file `git diff-files` says differs from the index.

    The rows depend on the index alone, so they are kept by its identity (per process and in
    an authenticated cache): the index's 10,000 requests are not listed, nor their slots looked
    up, again until it changes. `differs` is asked every time: an uncommitted edit is seen.
    Any git failure: no rows (every request is read from disk, as before).
    """
    changed = git(
        project.root,
        "diff-files",
        "--name-only",
        "-z",
        "--",
        *every_change_glob(REQUEST),
        env=_NO_LOCKS,
        check=False,
    )
    if changed.returncode != 0:
        return {}, set()
    differs = {inside[0] for p in changed.stdout.split("\0") if (inside := within_change(p))}
    identity = index_identity(project.root)
    here = _ROWS.get(str(project.root))
    if identity and here is not None and here[0] == identity:
        return here[1], differs
    kept = load_cache(project, INDEX_CACHE) if identity else {}
    rows = kept.get("rows") if kept.get("index") == identity else None
    if not identity or not isinstance(rows, dict):
        rows = _index_rows(project)
        if rows is None:
            return {}, differs
        if identity and index_identity(project.root) == identity:  # unchanged while listed
            save_cache(project, INDEX_CACHE, {"index": identity, "rows": rows})
    if identity:
        _ROWS[str(project.root)] = (identity, rows)
    return rows, differs


def _index_rows(project: Project) -> dict[str, list] | None:
    """id -> [blob id, slot] of each request the index holds as a regular file (stage 0).

    Slots come from the blob cache, else from the blob's bytes read from git (`_derive`'s
    parser and bounds); a blob that does not read as a plain slot gets None (a candidate:
    validation says why). None when git cannot list the index.
    """
    listed = git(
        project.root,
        "ls-files",
        "-s",
        "-z",
        "--",
        *every_change_glob(REQUEST),
        env=_NO_LOCKS,
        check=False,
    )
    if listed.returncode != 0:
        return None
    blobs: dict[str, str] = {}
    for entry in listed.stdout.split("\0"):
        info, _, path = entry.partition("\t")
        fields = info.split()
        if len(fields) != 3 or fields[0] != "100644" or fields[2] != "0":
            continue  # a symlink, an executable or a conflict: read from disk, as before
        inside = within_change(path)
        if inside is not None and inside[1] == REQUEST:
            blobs[inside[0]] = fields[1]
    known = _SEEN.setdefault(str(project.root), {})
    cached = load_cache(project, CACHE)
    slots = {b: known.get(b, cached.get(b, False)) for b in set(blobs.values())}
    new = sorted(b for b, s in slots.items() if s is False or (s is not None and not _plain(s)))
    try:
        read = blob_contents(project.root, new)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    source = {b: change_file(i, REQUEST) for i, b in blobs.items()}
    derived = {}
    for blob in new:
        try:
            derived[blob] = _derive_blob(read[blob], source[blob]) if blob in read else None
        except OpsledgerError:
            derived[blob] = None  # validation refuses it when it is asked: a candidate
    slots.update(derived)
    known.update(slots)
    kept = {b: s for b, s in slots.items() if s is not False}  # what the index holds now
    if kept != cached:
        save_cache(project, CACHE, kept)
    return {i: [b, slots[b] if slots[b] is not False else None] for i, b in blobs.items()}
