"""The one record format: what happened, when, by whom, judged by what, with what result.

Runs of changes (`changes/<block>/<ID>/runs/<UTC timestamp>.json`), inspections, drift checks, DR
drills and alert intakes (`records/<folder>/`) all write this one model, so audit and reports
read them alike. Records are JSON (stable key order), written once and committed; audit treats any
later edit of one as a finding.

A change run is written ahead: `runs/<stamp>.started.json` (result `started`) is committed
before the first task, and the final record `runs/<stamp>.json` is a second file, so both stay
write-once. Only what git has committed counts (`read_runs` reads HEAD, not the working tree):
a record whose commit failed is reported as uncommitted, never taken for a run that happened.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from opsledger.errors import EXIT_INVALID, OpsledgerError, Problem
from opsledger.gitrepo import git_env
from opsledger.identity import commit_evidence
from opsledger.layout import (
    CHANGES,
    RECORDS,
    RUNS,
    change_file_pattern,
    change_folder,
    change_pathspecs,
    changes_root,
    flat_form,
    is_block,
)
from opsledger.project import Project
from opsledger.yamlio import load_json, unique_pairs

KINDS = ("run", "inspection", "drift", "drill")
# Where each kind of evidence record lives under `records/`: the one place that knows it.
EVIDENCE_FOLDERS = {
    "inspection": "inspections",
    "drift": "drift",
    "drill": "drills",
    "alerts": "alerts",
}


class RunResult(StrEnum):
    """How a recorded run (change, inspection, drift check, drill, alert intake) ended.

    A StrEnum: a member is its string, so record files stay byte-identical and a result read
    back from a file (a plain str) compares equal to the member.
    """

    STARTED = "started"  # the write-ahead record's result: the run began and has not ended yet
    SUCCESS = "success"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    CANCELED = "canceled"
    INTERRUPTED = "interrupted"


class Verified(StrEnum):
    """The status of one test, or of a whole verification in a record's `verification` block.

    A StrEnum: a member is its string, so records stay byte-identical and a status read back
    from a record compares equal to its member. NOT_RUN is only a record's: no test ran.
    """

    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    SKIPPED = "skipped"
    NOT_RUN = "not run"


class DriftState(StrEnum):
    """What a drift check found on one host (a drift record's `hosts` and findings)."""

    IN_SYNC = "in sync"
    DRIFTED = "drifted"
    UNREACHABLE = "unreachable"
    CANNOT_CHECK = "cannot check"


STARTED_SUFFIX = ".started.json"
_RUN_FILE = change_file_pattern("CHG-[0-9]+", r"runs/([0-9TZ]+)(\.started)?\.json")
FORMAT_VERSION = 1


@dataclass
class Record:
    kind: str
    environment: str
    result: str  # a RunResult; read back from a file, its plain string
    started_at: str
    finished_at: str
    change: str | None = None
    runbook: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    targets: str = ""
    hosts: list[str] = field(default_factory=list)
    runner: dict[str, Any] = field(default_factory=dict)  # person, machine, ci
    git_commit: str = ""
    content_sha256: str = ""
    policy_sha256: str = ""
    decision: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, dict[str, int]] = field(default_factory=dict)  # per host counts
    changed_tasks: list[dict[str, Any]] = field(default_factory=list)
    verification: dict[str, Any] = field(default_factory=dict)
    rollback: dict[str, Any] | None = None
    findings: list[dict[str, Any]] = field(default_factory=list)  # inspections, drills
    measurements: dict[str, Any] = field(default_factory=dict)  # e.g. RTO, RPO
    # Upgrades: the backup taken first, each host's package difference, what a rollback
    # restored (maintenance.py; what the playbook handed back as opsledger_maintenance).
    maintenance: dict[str, Any] = field(default_factory=dict)
    # Locks: backends, stale holders taken over, interrupted runs reconciled before this one.
    lock: dict[str, Any] = field(default_factory=dict)
    # interrupted runs: how it was found (by whom, when, why) and what its journal showed.
    interruption: dict[str, Any] | None = None
    # the run's job log next to it (joblog.py): file, sha256, tasks, hosts
    log: dict[str, Any] | None = None
    # who was told (notify.py): one entry per channel, sent / failed (why) / skipped
    notifications: list[dict[str, Any]] = field(default_factory=list)
    version: int = FORMAT_VERSION

    @property
    def finished(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.finished_at)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        known = _FIELDS.get(cls)
        if known is None:
            known = _FIELDS[cls] = frozenset(f.name for f in fields(cls))
        return cls(**{k: v for k, v in data.items() if k in known})


_FIELDS: dict[type, frozenset[str]] = {}  # a record class's field names, computed once

_SHAPES: dict[str, tuple[type, ...]] = {
    "change": (str, type(None)),
    "runbook": (str, type(None)),
    "params": (dict,),
    "hosts": (list,),
    "runner": (dict,),
    "decision": (dict,),
    "stats": (dict,),
    "changed_tasks": (list,),
    "verification": (dict,),
    "rollback": (dict, type(None)),
    "findings": (list,),
    "measurements": (dict,),
    "maintenance": (dict,),
    "version": (int,),
}


def read_record(path: Path) -> Record | None:
    """A record file as a Record, or None when it is not one (wrong shape, bad times, not JSON).

    Records sort by time and feed decisions (promotion, "already applied"), so a hand-made
    file with `finished_at: 5` must be ignored like any unreadable one, not crash them.
    """
    try:
        data = load_json(path, what="record")
    except OpsledgerError:
        return None
    return record_from_data(data)


def record_from_data(data: Any) -> Record | None:
    """Parsed JSON as a Record, or None when its shape is not a record's (see read_record).

    A write-ahead record (`result: started`) has no finished_at yet; every other time must
    carry its zone.
    """
    if not isinstance(data, dict):
        return None
    for name, kinds in _SHAPES.items():
        if name in data and not isinstance(data[name], kinds):
            return None
    for name in ("findings", "changed_tasks"):  # read entry by entry with .get()
        if not all(isinstance(entry, dict) for entry in data.get(name) or []):
            return None
    approvers = (data.get("decision") or {}).get("approvers", [])
    if not isinstance(approvers, list) or not all(isinstance(a, str) for a in approvers):
        return None
    for key, value in (data.get("measurements") or {}).items():
        if key.endswith("_s") and (isinstance(value, bool) or not isinstance(value, int | float)):
            return None
    try:
        record = Record.from_dict(data)
        texts = (record.kind, record.environment, record.result, record.targets)
        if not all(isinstance(t, str) for t in texts):
            return None
        for moment in (record.started_at, record.finished_at):
            if moment == "" and moment is record.finished_at and record.result == RunResult.STARTED:
                continue
            if not isinstance(moment, str) or dt.datetime.fromisoformat(moment).tzinfo is None:
                return None
    except (ValueError, TypeError):
        return None
    return record


def stamp(moment: dt.datetime) -> str:
    """File-name timestamp in UTC, sortable: 20261201T203000Z."""
    return moment.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def run_record_path(project: Project, change_id: str, started: dt.datetime) -> Path:
    return change_folder(project.root, change_id, RUNS, f"{stamp(started)}.json")


def started_record_path(project: Project, change_id: str, started: dt.datetime) -> Path:
    """The write-ahead record of a run, committed before its first task."""
    return change_folder(project.root, change_id, RUNS, f"{stamp(started)}{STARTED_SUFFIX}")


def final_path_of(started_path: str) -> str:
    """`runs/<stamp>.started.json` -> `runs/<stamp>.json` (paths relative to the project)."""
    return started_path[: -len(STARTED_SUFFIX)] + ".json"


def write_record(path: Path, record: Record) -> Path:
    """Write a record once; an existing record is never overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x") as handle:
        handle.write(record.to_json())
    return path


def write_evidence(folder: Path, started: dt.datetime, name: str, record: Record) -> Path:
    """Write an evidence record named `<stamp>-<name>.json` under `folder`, never overwriting.

    Names are sortable seconds; two records of one kind in the same second (two inspections
    run back to back, two CI runners) take the next free second rather than fail.
    """
    for offset in range(60):
        moment = started + dt.timedelta(seconds=offset)
        try:
            return write_record(folder / f"{stamp(moment)}-{name}.json", record)
        except FileExistsError:
            continue
    return write_record(folder / f"{stamp(started)}-{name}.json", record)  # names the clash


def save_record(project: Project, path: Path, record: Record, message: str) -> str:
    """Write a record once at `path` and commit it as the committer identity; the commit.

    The one way a record becomes evidence: written (never over another) and committed alone,
    signed when a key is configured. A commit git refuses raises OpsledgerError and leaves the
    file for the caller to deal with (apply removes a write-ahead record it could not commit).
    """
    write_record(path, record)
    return commit_evidence(project, [path], message)


def evidence_folder(project: Project, kind: str) -> Path:
    """`records/<folder>/` of an evidence kind (inspection, drift, drill, alerts)."""
    return project.root / RECORDS / EVIDENCE_FOLDERS[kind]


@dataclass
class SavedEvidence:
    path: Path
    commit: str  # "" when not committed (commit=False: the caller commits it with its own)


def save_evidence(
    project: Project,
    record: Record,
    *,
    started: dt.datetime,
    name: str,
    message: str,
    commit: bool = True,
) -> SavedEvidence:
    """Write an evidence record where its kind lives, `<stamp>-<name>.json`, and commit it.

    Inspections, drift checks, drills and alert intakes all save through here, so where a
    record lives and how it is committed is decided once. commit=False only writes it: apply
    commits a drill record together with the run that drilled.

    Example:
        saved = save_evidence(project, record, started=started, name="daily-lab",
                              message="Inspection daily lab: ok")
        saved.path, saved.commit
    """
    path = write_evidence(evidence_folder(project, record.kind), started, name, record)
    return SavedEvidence(path, commit_evidence(project, [path], message) if commit else "")


@dataclass
class RunFile:
    """A run record file (path relative to the project root) and its content."""

    path: str
    record: Record


@dataclass
class RunLedger:
    """The change run records as git has them, and what the working tree holds besides."""

    committed: list[Record]  # final records in HEAD, oldest first
    started: list[RunFile]  # write-ahead records in HEAD whose run has no final record in HEAD
    uncommitted: list[RunFile]  # record files in the working tree that HEAD does not have
    committed_files: list[RunFile] = field(default_factory=list)  # `committed`, with paths

    def committed_at(self, path: str) -> Record | None:
        """The final record HEAD holds at `path` (relative to the project), if any."""
        return next((f.record for f in self.committed_files if f.path == path), None)


def _git_out(root: Path, *args: str, stdin: bytes | None = None) -> bytes | None:
    proc = subprocess.run(
        ["git", "-C", str(root), *args],
        input=stdin,
        capture_output=True,
        check=False,
        env=git_env(),
    )
    return proc.stdout if proc.returncode == 0 else None


def is_final_run_path(path: str) -> bool:
    """`<change folder>/runs/<stamp>.json` (relative, either layout), not a write-ahead one."""
    match = _RUN_FILE.fullmatch(path)
    return bool(match) and not match.group(3)


def parse_record(data: bytes) -> Record | None:
    """A record file's bytes as a Record: duplicate keys refused, shape checked (read_record).

    The one parser of run record bytes, whether read from HEAD, the working tree or history.
    """
    return _parse(data)


def _parse(data: bytes) -> Record | None:
    """A record file's bytes as a Record: duplicate keys refused, shape checked (read_record)."""
    try:
        parsed = json.loads(data, object_pairs_hook=unique_pairs)
    except (ValueError, TypeError, RecursionError):
        return None
    return record_from_data(parsed)


def _unreadable(root: Path, why: str) -> OpsledgerError:
    return OpsledgerError(
        Problem(
            f"cannot read the committed run records ({why})",
            str(root),
            "git",
            "the repository is damaged: `git fsck` names what is missing; fetch it again from "
            "the origin (or re-clone) before applying anything",
        ),
        EXIT_INVALID,
    )


# (project root, blob id) -> the blob's JSON, parsed once per process. The blob id alone would
# name the bytes, but the memo also answers "has this project's cache file got it?": keyed by
# blob only, a blob another project of the same process had parsed (same bytes, same id) made
# this project's cache look complete, so it was never loaded, nor written.
_PARSED: dict[tuple[str, str], Any] = {}
_NOT_JSON = object()
RUNS_CACHE = "runs-v1"


def _json_of(data: bytes) -> Any:
    try:
        return json.loads(data, object_pairs_hook=unique_pairs)
    except (ValueError, TypeError, RecursionError):
        return _NOT_JSON


def _committed_records(project: Project) -> dict[str, Record | None]:
    """Every run record file of HEAD, parsed (None: not a record).

    Fails closed (exit 2) when HEAD exists but git cannot list or read its records: counting
    no runs there would make an applied change pending again.

    A record's JSON depends only on its blob, so it is parsed once and kept by blob id
    (localcache.py: in an authenticated cache file; an edited one is ignored): a decision reads
    git's listing of HEAD and only the records it has not seen before.
    """
    from opsledger.localcache import load_cache, save_cache

    wanted = _record_blobs(project.root)
    if not wanted:
        return {}
    _require_objects(project.root, wanted)  # a damaged clone stops here, cached or not
    where = str(project.root)
    unseen = any((where, o) not in _PARSED for _, o in wanted)  # else this project has them all
    cached = load_cache(project, RUNS_CACHE) if unseen else {}
    for oid, entry in cached.items():  # authenticated by load_cache: an edited file is {}
        if isinstance(entry, dict):
            _PARSED.setdefault((where, oid), entry.get("json", _NOT_JSON))
    missing = [(p, o) for p, o in wanted if (where, o) not in _PARSED]
    blob_of = dict(missing)
    for path, data in _read_blobs(project.root, missing).items():
        _PARSED[(where, blob_of[path])] = _json_of(data)
    found: dict[str, Record | None] = {}
    kept: dict[str, Any] = {}
    for path, oid in wanted:
        parsed = _PARSED[(where, oid)]
        kept[oid] = {} if parsed is _NOT_JSON else {"json": parsed}
        found[path] = None if parsed is _NOT_JSON else record_from_data(parsed)
    if unseen and kept.keys() != cached.keys():
        save_cache(project, RUNS_CACHE, kept)
    return found


def _record_blobs(root: Path, folders: tuple[str, ...] = (CHANGES,)) -> list[tuple[str, str]]:
    """(path, blob id) of every run record file of HEAD under `folders`: one ls-tree process."""
    listing = _git_out(root, "ls-tree", "-r", "-z", "--full-tree", "HEAD", "--", *folders)
    if listing is None:
        if _git_out(root, "rev-parse", "--verify", "-q", "HEAD^{commit}") is None:
            return []  # no repository, or no commit yet: no runs
        raise _unreadable(root, "git ls-tree HEAD failed")
    wanted = []
    for entry in listing.split(b"\0"):
        meta, _, path = entry.decode("utf-8", "surrogateescape").partition("\t")
        if path and _RUN_FILE.fullmatch(path) and meta.split()[1] == "blob":
            wanted.append((path, meta.split()[2]))
    return wanted


def _require_objects(root: Path, wanted: list[tuple[str, str]]) -> None:
    """Exit 2 unless git has every listed blob (one cat-file --batch-check process)."""
    out = _git_out(
        root, "cat-file", "--batch-check", stdin="".join(f"{o}\n" for _, o in wanted).encode()
    )
    if out is None:
        raise _unreadable(root, "git cat-file failed")
    lines = out.decode(errors="replace").splitlines()
    for (path, oid), line in zip(wanted, lines + [""] * len(wanted), strict=False):
        if line.split()[:2] != [oid, "blob"]:
            raise _unreadable(root, f"{path}: object {oid} is missing")


def _read_blobs(root: Path, wanted: list[tuple[str, str]]) -> dict[str, bytes]:
    """The bytes of (path, blob id) pairs through one cat-file process; missing: exit 2."""
    if not wanted:
        return {}
    out = _git_out(root, "cat-file", "--batch", stdin="".join(f"{o}\n" for _, o in wanted).encode())
    if out is None:
        raise _unreadable(root, "git cat-file failed")
    files: dict[str, bytes] = {}
    position = 0
    for path, oid in wanted:
        header_end = out.find(b"\n", position)
        header = out[position:header_end].split() if header_end >= 0 else []
        if len(header) != 3 or header[0].decode() != oid or header[1] != b"blob":
            raise _unreadable(root, f"{path}: object {oid} is missing")
        size = int(header[2])
        files[path] = out[header_end + 1 : header_end + 1 + size]
        position = header_end + 1 + size + 1
    return files


# {"tree": id of HEAD:changes, "files": {path: entry}}; v2: a record lying in another change's
# folder is indexed as no record (v1 kept the change it names, which apply --pending skipped).
RUN_INDEX_CACHE = "run-index-v2"


def _changes_tree(root: Path) -> str | None:
    """The id of HEAD's `changes/` tree; "" when HEAD has none (no commit, no folder).

    Fails closed (exit 2) like `_record_blobs` when HEAD exists but git cannot read it.
    """
    listing = _git_out(root, "ls-tree", "-z", "--full-tree", "HEAD", "--", CHANGES)
    if listing is None:
        if _git_out(root, "rev-parse", "--verify", "-q", "HEAD^{commit}") is None:
            return ""
        raise _unreadable(root, "git ls-tree HEAD failed")
    meta, _, path = listing.decode(errors="replace").rstrip("\0").partition("\t")
    parts = meta.split()
    return parts[2] if path == CHANGES and len(parts) == 3 and parts[1] == "tree" else ""


def head_runs(project: Project) -> dict[str, list]:
    """path -> [blob id, change, result] of every run record file HEAD holds under changes/.

    `change` and `result` are what the record says (`read_runs` counts it by them), both None
    for a file that is not a record. What `apply --pending` needs to know which changes are
    applied, without parsing 10,000 records per command: the index is kept by the id of HEAD's
    `changes/` tree (authenticated, localcache.py), and a new tree is read from the last one by
    `git diff-tree`, so only the record files a commit added or changed are read and parsed
    (a merge of one change reads one record, not the history). Fails closed (exit 2) when git
    cannot read HEAD or a new record.

    Example:
        {e[1] for p, e in head_runs(project).items() if e[2] == "success"}
    """
    from opsledger.localcache import load_cache, save_cache

    tree = _changes_tree(project.root)
    if not tree:
        return {}
    kept = load_cache(project, RUN_INDEX_CACHE)
    files = kept.get("files")
    if kept.get("tree") == tree and isinstance(files, dict):
        return files
    wanted = None
    if isinstance(kept.get("tree"), str) and isinstance(files, dict):
        files = dict(files)  # brought up to date here, never in the loaded (or held) entries
        wanted = _changed_since(project.root, kept["tree"], tree, files)
    if wanted is None:  # nothing kept, or git cannot compare: every record file of HEAD
        files, wanted = {}, _record_blobs(project.root)
    if wanted:
        _require_objects(project.root, wanted)  # a damaged clone stops here
    parsed = _parsed(project, wanted)
    for path, oid in wanted:
        record = None if parsed[oid] is _NOT_JSON else record_from_data(parsed[oid])
        files[path] = _entry(path, oid, record)
    save_cache(project, RUN_INDEX_CACHE, {"tree": tree, "files": files})
    return files


def _entry(path: str, oid: str, record: Record | None) -> list:
    """The index entry of one run record file: [blob id, change, result].

    A record counts only in its own change's folder, as `runs_of` (apply's reader) counts it:
    a success that says it is CHG-0001's but lies in CHG-0002's runs/ (a reviewed merge can
    bring any file) is no run of either, or `apply --pending` would skip CHG-0001 while
    `apply CHG-0001` runs it.
    """
    match = _RUN_FILE.fullmatch(path)
    if record is None or match is None or record.change != match.group(1):
        return [oid, None, None]
    return [oid, record.change, record.result]


def _changed_since(
    root: Path, old: str, new: str, files: dict[str, list]
) -> list[tuple[str, str]] | None:
    """Run record files tree `new` added or changed since tree `old`, or None.

    Removed ones are dropped from `files`. None when git cannot compare the two (then every
    record file is read again).
    """
    out = _git_out(root, "diff-tree", "-r", "-z", "--no-renames", old, new)
    if out is None:
        return None
    tokens = out.decode(errors="surrogateescape").split("\0")
    wanted = []
    for meta, path in zip(tokens[0::2], tokens[1::2], strict=False):
        parts = meta.split()
        if not meta.startswith(":") or len(parts) != 5:
            return None
        full = f"{CHANGES}/{path}"
        files.pop(full, None)
        new_mode, new_oid, status = parts[1], parts[3], parts[4]
        if status != "D" and new_mode not in ("040000", "160000") and _RUN_FILE.fullmatch(full):
            wanted.append((full, new_oid))
    return wanted


def _parsed(project: Project, wanted: list[tuple[str, str]]) -> dict[str, Any]:
    """blob id -> its JSON (or _NOT_JSON) for (path, blob id) pairs.

    This process's reads first, then the authenticated runs cache when many are new, then git
    (a missing object: exit 2).
    """
    from opsledger.localcache import load_cache

    where = str(project.root)  # keyed as every reader of run records keys the memo
    missing = [(p, o) for p, o in wanted if (where, o) not in _PARSED]
    if len(missing) > 64:  # a first index: the kept JSON of each blob spares 10,000 reads
        cached = load_cache(project, RUNS_CACHE)
        for _, oid in missing:
            entry = cached.get(oid)
            if isinstance(entry, dict):
                _PARSED[(where, oid)] = entry.get("json", _NOT_JSON)
        missing = [(p, o) for p, o in missing if (where, o) not in _PARSED]
    blob_of = dict(missing)
    for path, data in _read_blobs(project.root, missing).items():
        _PARSED[(where, blob_of[path])] = _json_of(data)
    return {o: _PARSED[(where, o)] for _, o in wanted}


def committed_runs_of(
    project: Project, files: dict[str, list], ids: set[str]
) -> dict[str, list[Record]]:
    """The committed final records that say they are of `ids`, oldest first, by id.

    As `read_runs(...).committed` groups them, read from the blobs `head_runs` names: only
    those records are parsed, whatever the history.
    """
    wanted = [(p, e[0]) for p, e in files.items() if e[1] in ids and not p.endswith(STARTED_SUFFIX)]
    parsed = _parsed(project, wanted)
    found: dict[str, list[Record]] = {i: [] for i in ids}
    for _, oid in wanted:
        record = None if parsed[oid] is _NOT_JSON else record_from_data(parsed[oid])
        if record is not None and record.change in found:
            found[record.change].append(record)
    for runs in found.values():
        runs.sort(key=lambda r: r.finished_at)
    return found


@dataclass
class OpenRuns:
    """What `read_runs` lists besides the committed runs: runs started and files not in HEAD."""

    started: list[RunFile]
    uncommitted: list[RunFile]


def open_runs(
    project: Project, files: dict[str, list] | None = None, *, on_disk: bool = True
) -> OpenRuns:
    """`read_runs(project).started` and `.uncommitted`, without parsing every committed record.

    `files`: head_runs' answer when the caller has it; `on_disk=False` leaves `uncommitted`
    empty (a walk of every change's runs folder) for a caller that only asks what started.

    Example:
        [f.path for f in open_runs(find_project()).uncommitted]
    """
    files = head_runs(project) if files is None else files
    wanted = [
        (p, e[0])
        for p, e in files.items()
        if p.endswith(STARTED_SUFFIX) and e[1] is not None and final_path_of(p) not in files
    ]
    parsed = _parsed(project, wanted)
    started = []
    for path, oid in sorted(wanted):
        record = None if parsed[oid] is _NOT_JSON else record_from_data(parsed[oid])
        if record is not None:
            started.append(RunFile(path, record))
    return OpenRuns(started, _uncommitted(project, files) if on_disk else [])


def read_runs(project: Project) -> RunLedger:
    """Every change run record that counts — committed in HEAD — and what is still open.

    This is the one reader of run records: decide, apply, pending, change show, audit and the
    report all ask it, so a record whose commit failed never counts as a run that happened
    (it is listed under `uncommitted`, and the next apply commits it).

    Example:
        ledger = read_runs(find_project())
        [r.result for r in ledger.committed], [f.path for f in ledger.uncommitted]
    """
    committed_files = _committed_records(project)
    committed, started = [], []
    for path, record in committed_files.items():
        if record is None:
            continue
        if path.endswith(STARTED_SUFFIX):
            if final_path_of(path) not in committed_files:
                started.append(RunFile(path, record))
        else:
            committed.append(RunFile(path, record))
    uncommitted = _uncommitted(project, committed_files)
    committed.sort(key=lambda f: f.record.finished_at)
    return RunLedger(
        [f.record for f in committed],
        sorted(started, key=lambda f: f.path),
        uncommitted,
        committed,
    )


def _uncommitted(project: Project, in_head: Collection[str]) -> list[RunFile]:
    """Run record files of the working tree that HEAD does not hold, parsed (sorted by path).

    HEAD holds a file under its key (layout.flat_form) in either layout: a change moved on
    disk and not yet committed (`git mv` staged) has its records in HEAD, and committing them
    again alone would leave the change in both layouts.
    """
    uncommitted = []
    root = str(project.root)
    held: set[str] | None = None  # HEAD's keys, made at the first file HEAD lacks (rare)
    for file in _run_paths_on_disk(str(changes_root(project.root))):
        path = file[len(root) + 1 :]
        if path in in_head or not _RUN_FILE.fullmatch(path):
            continue
        if held is None:
            held = {flat_form(p) for p in in_head}
        if flat_form(path) in held:
            continue
        try:
            with open(file, "rb") as handle:
                record = _parse(handle.read())
        except OSError:
            continue
        if record is not None:
            uncommitted.append(RunFile(path, record))
    return uncommitted


def _run_files_on_disk(folder: Path) -> list[Path]:
    """Every `<change>/runs/*.json` under changes/ (either layout), sorted.

    Listed with scandir and plain strings: pathlib's glob, then a Path per file, cost seconds
    at 10,000 changes.
    """
    return [Path(p) for p in _run_paths_on_disk(str(folder))]


def _run_paths_on_disk(folder: str) -> list[str]:
    """`_run_files_on_disk`, as strings (`<folder>/<change>/runs/<name>.json`), sorted."""
    found: list[str] = []
    try:
        with os.scandir(folder) as changes:
            names = [c.name for c in changes]
    except OSError:
        return []
    changes: list[str] = []
    for name in names:
        if not is_block(name):
            changes.append(f"{folder}/{name}")
            continue
        try:  # a block folder (changes/CHG-00xx/): its changes one level down
            with os.scandir(f"{folder}/{name}") as inner:
                changes += [f"{folder}/{name}/{c.name}" for c in inner]
        except OSError:
            continue
    for change in changes:
        runs = f"{change}/{RUNS}"
        try:
            with os.scandir(runs) as files:
                found += [f"{runs}/{f.name}" for f in files if f.name.endswith(".json")]
        except OSError:  # no runs folder (or not a folder): nothing there
            continue
    return sorted(found)


def change_runs(project: Project) -> list[Record]:
    """Every committed change run record, oldest first (unreadable ones are skipped)."""
    return read_runs(project).committed


def runs_of(project: Project, change_ids: list[str]) -> dict[str, list[Record]]:
    """The committed final run records of just these changes, oldest first, by change id.

    What `read_runs(...).committed` says of them, read without listing every change's runs:
    decide's conflicts rule asks only about the few requests whose slot overlaps, so its cost
    does not grow with the history. Same rules as `read_runs`: HEAD only, a damaged clone
    fails closed (exit 2), a blob that is not a record is skipped.

    Example:
        runs_of(find_project(), ["CHG-0007"])["CHG-0007"][-1].result
    """
    found: dict[str, list[Record]] = {cid: [] for cid in change_ids}
    if not change_ids:
        return found
    wanted = _record_blobs(
        project.root, tuple(p for cid in change_ids for p in change_pathspecs(cid, RUNS))
    )
    wanted = [(p, o) for p, o in wanted if not p.endswith(STARTED_SUFFIX)]
    if not wanted:
        return found
    _require_objects(project.root, wanted)
    where = str(project.root)
    unseen = [(p, o) for p, o in wanted if (where, o) not in _PARSED]
    blob_of = dict(unseen)
    for path, data in _read_blobs(project.root, unseen).items():
        _PARSED[(where, blob_of[path])] = _json_of(data)
    for path, oid in wanted:
        parsed = _PARSED[(where, oid)]
        match = _RUN_FILE.fullmatch(path)
        if parsed is _NOT_JSON or match is None or match.group(1) not in found:
            continue
        record = record_from_data(parsed)
        if record is not None and record.change == match.group(1):  # a record of its folder
            found[match.group(1)].append(record)
    for records in found.values():
        records.sort(key=lambda r: r.finished_at)
    return found


def load_records(project: Project, kind: str | None = None) -> list[Record]:
    """Inspection, drift, drill and alert records (`records/<folder>/*.json`), oldest first."""
    records = []
    for path in (project.root / RECORDS).glob("*/*.json"):
        record = read_record(path)
        if record is None:
            continue
        if kind is None or record.kind == kind:
            records.append(record)
    return sorted(records, key=lambda r: r.finished_at)
