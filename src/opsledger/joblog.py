"""Job logs: every task of a run on every host, kept with its record for auditors.

A run record keeps counts and the tasks that changed; an auditor asking months later "what
exactly ran on lab-db1, and what did the failing task say?" needs every task result. The
Ansible output of a CI job is gone with the job (and its text is not meant for machines), so
apply keeps the task-level events ansible-runner hands it — host, task, role, status,
changed, a diff summary, the message, start, end and duration — as compressed JSON lines next
to the record (`runs/<stamp>.log.jsonl.gz`), committed with it and named by the record's
`log` entry with its sha256, so it is as much evidence as the record (a later edit shows in
git). Rollback runs and opsledger's own phases (verify, rollback) are in the same log, in order.

Diffs are summarised (files and lines added/removed), not kept whole: a diff may carry
content the role writes (configuration, keys) that belongs in the vault, not in a log.

Example:
    log = JobLog()
    run_playbook(..., event_handler=log)
    log.write(path)
    entries = read_job_log(project, "CHG-0001")
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsledger.errors import EXIT_INVALID, OpsledgerError, Problem
from opsledger.gitrepo import blob_contents
from opsledger.layout import RUNS, change_pathspecs, stored_file
from opsledger.project import Project

LOG_SUFFIX = ".log.jsonl.gz"
MESSAGE_LIMIT = 2000  # characters of a task's message kept: enough for any error, no dumps
_STATUS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
    # a loop's items, each with its own result, before the task's summary entry
    "runner_item_on_ok": "ok",
    "runner_item_on_failed": "failed",
    "runner_item_on_skipped": "skipped",
}
# What a job log is built from: all a run's journal must keep to rebuild it (journal_log).
LOGGED_EVENTS = frozenset(_STATUS)


def _diff_summary(result: dict[str, Any]) -> str:
    diffs = result.get("diff") or []
    if isinstance(diffs, dict):
        diffs = [diffs]
    parts = []
    for diff in diffs:
        if not isinstance(diff, dict):
            continue
        name = diff.get("after_header") or diff.get("before_header") or ""
        before, after = diff.get("before", ""), diff.get("after", "")
        if diff.get("prepared"):
            lines = str(diff["prepared"]).splitlines()
            added = sum(1 for line in lines if line.startswith("+"))
            removed = sum(1 for line in lines if line.startswith("-"))
        elif isinstance(before, str) and isinstance(after, str):
            old, new = before.splitlines(), after.splitlines()
            added, removed = len(set(new) - set(old)), len(set(old) - set(new))
        else:
            added = removed = 0
            name = name or "state"
        parts.append(f"{name or 'content'}: +{added} -{removed}")
    return "; ".join(parts)


def _message(result: dict[str, Any]) -> str:
    text = result.get("msg") or result.get("stderr") or ""
    if not isinstance(text, str):
        text = json.dumps(text, default=str)
    return text[:MESSAGE_LIMIT]


@dataclass
class JobLog:
    """Collects task-level entries from ansible-runner events (and opsledger's phases)."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    then: Callable[[dict[str, Any]], None] | None = None  # the next handler in the chain

    def __call__(self, event: dict[str, Any]) -> None:
        entry = self.entry(event)
        if entry:
            self.entries.append(entry)
        if self.then:
            self.then(event)

    @staticmethod
    def entry(event: dict[str, Any]) -> dict[str, Any] | None:
        """The log line of one event, or None for events that are not task results."""
        kind = event.get("event", "")
        if kind == "opsledger_phase":
            return {"phase": event.get("phase"), "message": event.get("message", "")}
        status = _STATUS.get(kind)
        data = event.get("event_data") or {}
        if status is None or not data.get("host"):
            return None
        result = data.get("res") or {}
        entry: dict[str, Any] = {
            "host": data["host"],
            "play": data.get("play", ""),
            "task": data.get("task", ""),
            "role": data.get("role", ""),
            "action": data.get("task_action", ""),
            "status": status,
            "changed": bool(result.get("changed")),
            "start": data.get("start") or event.get("created", ""),  # items: when reported
            "end": data.get("end", ""),
            "duration_s": data.get("duration"),
        }
        if data.get("ignore_errors") and status == "failed":
            entry["ignored"] = True
        if result.get("item") is not None:
            entry["item"] = str(result["item"])[:200]
        if summary := _diff_summary(result):
            entry["diff"] = summary
        if message := _message(result):
            entry["message"] = message
        if "rc" in result:
            entry["rc"] = result["rc"]
        return entry

    def write(self, path: Path) -> dict[str, Any]:
        """Write the log once (gzip, deterministic); the record's `log` entry."""
        body = "".join(json.dumps(e, sort_keys=True, default=str) + "\n" for e in self.entries)
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as handle:
            handle.write(body.encode())
        data = buffer.getvalue()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as handle:
            handle.write(data)
        tasks = [e for e in self.entries if "host" in e]
        return {
            "file": path.name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "tasks": len(tasks),
            "hosts": sorted({e["host"] for e in tasks}),
        }


def log_path_of(record_path: Path) -> Path:
    """`runs/<stamp>.json` -> `runs/<stamp>.log.jsonl.gz`."""
    return record_path.with_name(record_path.name[: -len(".json")] + LOG_SUFFIX)


@dataclass
class RunLog:
    record: str  # the run record's path
    log: str  # the log's path
    entries: list[dict[str, Any]]
    verified: bool  # the bytes match the sha256 the record names


def read_job_log(project: Project, change_id: str, run: str | None = None) -> list[RunLog]:
    """The committed job logs of a change's runs (or of the run whose stamp is `run`).

    Read from git (HEAD), like the records: a log git does not have is no evidence. Exit 2
    when the change has no run with a log.

    Example:
        for log in read_job_log(find_project(), "CHG-0001"):
            [(e["host"], e["task"], e["status"]) for e in log.entries if "host" in e]
    """
    from opsledger.records import read_runs  # records imports nothing of ours: no cycle

    found = []
    for record in read_runs(project).committed:
        if record.change != change_id or not record.log:
            continue
        stamp = record.runner.get("run", "").rsplit("/", 1)[-1]
        if run and run != stamp:
            continue
        folder = stored_file(project.root, change_id, RUNS)  # where a person finds it now
        log = f"{folder}/{record.log['file']}"
        data = _in_head(project, change_id, record.log["file"])
        if data is None:
            continue
        entries: list[dict[str, Any]] = []
        try:
            for line in gzip.decompress(data).decode().splitlines():
                entry = json.loads(line) if line.strip() else None
                if isinstance(entry, dict):
                    entries.append(entry)
        except (OSError, EOFError, ValueError):  # not gzip, cut short, not JSON: shown as such
            entries.append({"phase": "unreadable", "message": "the log does not decompress"})
        found.append(
            RunLog(
                f"{folder}/{stamp}.json",
                log,
                entries,
                hashlib.sha256(data).hexdigest() == record.log.get("sha256"),
            )
        )
    if not found:
        raise OpsledgerError(
            Problem(
                f"{change_id} has no committed run with a job log"
                + (f" started at {run}" if run else ""),
                stored_file(project.root, change_id, RUNS),
                "log",
                "runs recorded before job logs were kept have none; `opsledger change show "
                f"{change_id}` lists its runs",
            ),
            EXIT_INVALID,
        )
    return found


def _in_head(project: Project, change_id: str, name: str) -> bytes | None:
    """The bytes HEAD holds of `runs/<name>` of a change, in either layout, else None.

    HEAD may hold the change in the other layout than the working tree shows (a move staged,
    not committed): asked only at the folder on disk, a committed log read as missing.
    """
    names = [f"HEAD:{folder}/{name}" for folder in change_pathspecs(change_id, RUNS)]
    found = blob_contents(project.root, names)
    return next((found[n] for n in names if n in found), None)


def render_log(logs: list[RunLog]) -> str:
    """The logs as text: one line per task result, phases marked."""
    out = []
    for log in logs:
        seal = "sha256 matches the record" if log.verified else "SHA256 DIFFERS FROM THE RECORD"
        out.append(f"== {log.record} ({log.log}, {seal})")
        for e in log.entries:
            if "phase" in e:
                out.append(f"   -- {e['phase']}: {e.get('message', '')}")
                continue
            took = f"{e['duration_s']:.1f}s" if isinstance(e.get("duration_s"), float) else ""
            flag = "changed" if e.get("changed") else str(e.get("status", "?"))
            start = str(e.get("start", ""))[:19]
            line = f"{start:19} {e.get('host', '?'):<14} {flag:<11} {e.get('task', '')}"
            if e.get("item"):
                line += f" [{e['item']}]"
            out.append(f"{line} {took}".rstrip())
            if e.get("diff"):
                out.append(f"{'':35}diff {e['diff']}")
            if e.get("message") and e.get("status") != "ok":
                out.append(f"{'':35}{str(e['message']).splitlines()[0][:200]}")
    return "\n".join(out) + "\n"


def journal_log(private_dir: Path) -> JobLog | None:
    """The job log of a run whose apply died, from the events ansible-runner journaled.

    Example:
        journal_log(project.root / ".opsledger/runs/CHG-0001-20261201T203000Z")
    """
    events = []
    for path in private_dir.glob("artifacts/*/job_events/*.json"):
        try:
            events.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    if not events:
        return None
    log = JobLog()
    for event in sorted(events, key=lambda e: e.get("counter", 0)):
        log(event)
    return log
