"""Change requests: `changes/<block>/<ID>/change.yml`, created and validated before anything runs.

Validation reports every problem at once, each with the file, the field and what to do:
the schema (src/opsledger/schemas/change.schema.json), the window, that the runbook exists and
accepts the params and the change type, and that the targets resolve to at least one host of
that environment's inventory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import subprocess
from collections.abc import Container, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from opsledger.commitlock import under_commit_lock
from opsledger.errors import EXIT_DENIED, EXIT_INVALID, EXIT_LOCKED, OpsledgerError, Problem, shown
from opsledger.gitrepo import blob_contents, git, git_env, log_paths
from opsledger.inventory import load_inventory
from opsledger.layout import (
    REQUEST,
    WITHDRAWN,
    block_folder,
    change_file,
    change_folder,
    change_id_of,
    change_pathspecs,
    changes_root,
    every_change_glob,
    flat_folder,
    flat_form,
    folders_on_disk,
    policy_file,
)
from opsledger.localcache import path_walk, schema_passes
from opsledger.project import Project
from opsledger.runbooks import Runbook, load_runbook
from opsledger.schema import named_problems
from opsledger.timespec import YEARS
from opsledger.yamlio import load_yaml, parse_yaml, plain

# fullmatch: no trailing newline, no path. [0-9], not \d: \d is any script's digit (Arabic-Indic,
# fullwidth), which the schema and every path pattern (layout.py) refuse: one reader took it.
_ID = re.compile(r"CHG-([0-9]{4,9})")
MAX_PARAMS_BYTES = 16 * 1024  # params as JSON; the schema bounds each value
RISKS = ("low", "medium", "high")


@dataclass(frozen=True)
class Change:
    id: str
    path: Path  # the change's folder
    title: str
    type: str
    runbook: str
    environment: str
    targets: str
    params: dict[str, Any]
    impact: str
    urgency: str
    window_start: dt.datetime
    window_end: dt.datetime
    requested_by: str
    reason: str
    rollback: str | None
    risk: str | None

    @property
    def file(self) -> Path:
        return self.path / REQUEST


# What a run record must share with its change request (evidence.judge_record), and who asked.
RUN_FIELDS = ("environment", "runbook", "params", "requested_by")


@dataclass
class ValidationResult:
    id: str
    change: Change | None
    runbook: Runbook | None
    hosts: list[str]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems


def changes_dir(project: Project) -> Path:
    return changes_root(project.root)


def change_ids(project: Project, *, skip: Container[str] = ()) -> list[str]:
    """Every change folder holding a change.yml, flat (`changes/<ID>/`) or in its block.

    One directory listing of changes/ and of each block, a stat per folder: pathlib's glob
    listed every folder's files. An id in both layouts, or a change in the wrong block, is
    invalid input (exit 2, one line each naming the paths): which folder is the change?
    Ids named in `skip` are left out (apply --pending: the applied ones).
    """
    found, wrong = folders_on_disk(project.root, REQUEST)
    if wrong:
        raise OpsledgerError(
            [
                Problem(
                    why,
                    path,
                    "layout",
                    "move the folder to where layout.block_file puts it, or remove the copy "
                    "(`opsledger change migrate-layout` moves flat folders)",
                )
                for path, why in wrong
            ]
        )
    return in_id_order(i for i in found if i not in skip)


def in_id_order(ids: Iterable[str]) -> list[str]:
    """Change ids in `change_ids`' order: by number, any folder not named CHG-<n> first."""
    return sorted(ids, key=lambda i: int(m.group(1)) if (m := _ID.fullmatch(i)) else -1)


def check_change_id(change_id: str) -> None:
    """Refuse an id that is not CHG-NNNN before it becomes a path (`../x`, 300 digits)."""
    if not isinstance(change_id, str) or not _ID.fullmatch(change_id):
        raise OpsledgerError(
            Problem(
                f"{shown(change_id, 40)} is not a change id",
                field="change id",
                fix="write CHG- and four to nine digits, e.g. CHG-0001",
            )
        )


def ids_in_history(project: Project, request_file: str = REQUEST) -> set[str]:
    """Every id whose `changes/<ID>/<request_file>` any branch of this clone ever added.

    Deleted folders included: an id once used is never handed out again.
    """
    proc = subprocess.run(
        [
            "git",
            "-C",
            str(project.root),
            "log",
            "--all",
            "--diff-filter=A",
            "--no-renames",
            "--name-only",
            "-z",
            "--format=%x1e",
            "--",
            *every_change_glob(request_file),
        ],
        capture_output=True,
        encoding="utf-8",
        errors="surrogateescape",  # a path git prints may be any bytes
        check=False,
        env=git_env(),
    )
    if proc.returncode != 0:
        refs = git(project.root, "for-each-ref", "--count=1", check=False).stdout.strip()
        if refs:  # history exists but git cannot read it: an id could be handed out twice
            fatal = next(
                (line for line in proc.stderr.splitlines() if line.startswith("fatal:")),
                proc.stderr.strip()[-200:],
            )
            raise OpsledgerError(
                Problem(
                    f"cannot read which ids the history used ({fatal})",
                    str(project.root),
                    "git",
                    "repair the repository (git fsck) before requesting a change",
                )
            )
    paths = [p for _, touched in log_paths(proc.stdout) for p in touched]
    return {
        i for p in paths if (i := change_id_of(p)) and flat_form(p) == change_file(i, request_file)
    }


def _drop_if_empty(block: Path, top: Path) -> None:
    """Remove a block folder a refused request made and left empty (nothing written)."""
    if block != top:
        with contextlib.suppress(OSError):  # not empty: other changes live in the block
            block.rmdir()


def next_change_id(project: Project) -> str:
    """One more than the highest id ever used: in the tree, or in any branch's history.

    An id names the change in approvals, run records, audit findings and the rollback base, so
    it is never handed out twice, not even after its folder was deleted (withdraw a change
    instead: `opsledger change withdraw`).
    """
    used = set(change_ids(project)) | ids_in_history(project)
    numbers = [int(m.group(1)) for i in used if (m := _ID.fullmatch(i))]
    return f"CHG-{(max(numbers, default=0) + 1):04d}"


def parse_window(
    window: dict[str, Any], file: str
) -> tuple[dt.datetime | None, dt.datetime | None, list[Problem]]:
    """Aware start/end datetimes: from offsets, or naive times plus an IANA timezone."""
    problems: list[Problem] = []
    zone = None
    if window.get("timezone"):
        try:
            zone = ZoneInfo(window["timezone"])
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a folder
            problems.append(
                Problem(
                    f"unknown timezone {shown(window['timezone'], 40)}",
                    file,
                    "window.timezone",
                    "use an IANA name like Europe/Berlin",
                )
            )
    times: dict[str, dt.datetime | None] = {}
    for key in ("start", "end"):
        try:
            value = dt.datetime.fromisoformat(str(window[key]))
            if not YEARS[0] <= value.year <= YEARS[1]:
                raise ValueError("year out of range")
        except ValueError:
            problems.append(
                Problem(
                    f"{shown(window[key], 40)} is not an ISO 8601 date-time "
                    f"(years {YEARS[0]} to {YEARS[1]})",
                    file,
                    f"window.{key}",
                    "write e.g. 2026-11-21T20:00:00+01:00",
                )
            )
            times[key] = None
            continue
        if value.tzinfo is None:
            if zone is None:
                if not window.get("timezone"):
                    problems.append(
                        Problem(
                            "no timezone",
                            file,
                            f"window.{key}",
                            "add an offset (+01:00) or window.timezone",
                        )
                    )
                times[key] = None
                continue
            value = value.replace(tzinfo=zone)
        times[key] = value
    start, end = times.get("start"), times.get("end")
    if start and end and end <= start:
        problems.append(
            Problem(
                "the window ends before it starts", file, "window.end", "make end later than start"
            )
        )
    return start, end, problems


def _read(project: Project, change_id: str) -> tuple[dict[str, Any], Path]:
    """The change file's data: a real file in a real folder (no symlink), safely parsed.

    A symlinked change (to another change, or outside the repository) would let what is
    approved and run differ from what git records, so it is refused.
    """
    check_change_id(change_id)
    # change_folder's choice (flat if it exists, else its block), each folder built and
    # looked up once: an audit reads every change this way
    flat, block = flat_folder(project.root, change_id), block_folder(project.root, change_id)
    flat_there = os.path.lexists(flat)
    if flat_there and os.path.lexists(block):
        raise OpsledgerError(
            Problem(
                f"{change_id} is in both layouts ({flat} and {block})",
                str(block),
                "layout",
                "keep one folder (`opsledger change migrate-layout` moves flat folders)",
            )
        )
    folder = flat if flat_there else block
    file = folder / REQUEST
    for path in dict.fromkeys((changes_dir(project), folder.parent, folder, file)):
        if path.is_symlink():
            raise OpsledgerError(
                Problem(
                    "is a symlink",
                    str(path),
                    "path",
                    "replace it by a real folder and file: git must record what is approved",
                )
            )
    if not file.is_file():
        known = ", ".join(change_ids(project)[-5:]) or "none yet"
        raise OpsledgerError(
            Problem(
                f"no change {change_id}",
                str(file),
                fix=f"create it with `opsledger change new` (latest: {known})",
            )
        )
    # audits check a run against these fields of the committed blob's same text (evidence.py).
    # No `root`: its check (yamlio.outside_problem: no symlink from changes/ down to the file,
    # nothing outside the repository) is the loop above, on a path built from a checked id.
    data = load_yaml(file, what="change request", dates=False, fields=RUN_FIELDS)
    return data, file


def _schema_problems(data: dict[str, Any], change_id: str, file: Path) -> list[Problem]:
    """The schema's problems with `data`, plain already (`_validate` made it so)."""
    problems = named_problems(data, "change", str(file))
    params = data.get("params")
    if isinstance(params, dict) and len(json.dumps(params)) > MAX_PARAMS_BYTES:
        problems.append(
            Problem(
                f"params take more than {MAX_PARAMS_BYTES} bytes as JSON",
                str(file),
                "params",
                "pass less data: params name what to do, not the data itself",
            )
        )
    if data.get("id") not in (None, change_id):
        problems.append(
            Problem(
                f"id {shown(data.get('id'), 40)} differs from its folder {change_id}",
                str(file),
                "id",
                f"set id: {change_id}",
            )
        )
    return problems


def validate_change(project: Project, change_id: str) -> ValidationResult:
    """Check one change request completely; problems come back, nothing is raised for them.

    An unreadable file (syntax, duplicate keys, symlink, size) raises OpsledgerError instead.

    Example:
        result = validate_change(find_project(), "CHG-0001")
        result.ok, [str(p) for p in result.problems]
    """
    data, file = _read(project, change_id)
    with schema_passes(project):  # a change, runbook and policies that passed: no jsonschema
        return _validate(project, change_id, data, file)


def _validate(
    project: Project, change_id: str, data: dict[str, Any], file: Path
) -> ValidationResult:
    data = plain(data)
    problems = _schema_problems(data, change_id, file)
    result = ValidationResult(change_id, None, None, [], problems)
    fields_ok = {p.field.split(".")[0].split("[")[0] for p in problems}
    start = end = None
    if "window" not in fields_ok and "window" in data:
        start, end, window_problems = parse_window(data["window"], str(file))
        problems += window_problems
    runbook = None
    if "runbook" not in fields_ok and data.get("runbook"):
        try:
            runbook = load_runbook(project, data["runbook"])
        except OpsledgerError as exc:
            problems += [
                Problem(p.message, str(file), "runbook", p.fix) if p.field == "runbook" else p
                for p in exc.problems
            ]
    if runbook is not None:
        result.runbook = runbook
        if "params" not in fields_ok:
            problems += runbook.param_problems(data.get("params", {}), str(file))
        if (
            data.get("type") in ("standard", "normal", "emergency")
            and data["type"] not in runbook.change_types
        ):
            problems.append(
                Problem(
                    f"runbook {runbook.name} does not allow {data['type']} changes",
                    str(file),
                    "type",
                    f"use one of: {', '.join(runbook.change_types)}",
                )
            )
        if data.get("type") == "standard" and not runbook.standard:
            problems.append(
                Problem(
                    f"runbook {runbook.name} is not pre-approved for standard changes",
                    str(file),
                    "type",
                    "make it a normal change",
                )
            )
        rollback = data.get("rollback")
        if rollback:
            try:
                load_runbook(project, rollback)
            except OpsledgerError as exc:
                problems += [Problem(p.message, str(file), "rollback", p.fix) for p in exc.problems]
    env = data.get("environment")
    if "environment" not in fields_ok and env:
        inventory = project.inventory_file(env)
        if not inventory.is_file():
            envs = sorted(p.parent.name for p in (project.root / "inventories").glob("*/hosts.yml"))
            problems.append(
                Problem(
                    f"no environment {env!r}",
                    str(file),
                    "environment",
                    f"use one of: {', '.join(envs)}",
                )
            )
        elif "targets" not in fields_ok and data.get("targets"):
            inv = load_inventory(inventory)
            try:
                result.hosts = [h.name for h in inv.match(str(data["targets"]))]
            except OpsledgerError as exc:
                problems += [Problem(p.message, str(file), "targets", p.fix) for p in exc.problems]
            if not result.hosts and not any(p.field == "targets" for p in problems):
                names = sorted(inv.names - {"ungrouped"})
                problems.append(
                    Problem(
                        f"targets {shown(data['targets'], 60)} match no host of {env}",
                        str(file),
                        "targets",
                        f"use a group or host of {env}: {', '.join(names)}",
                    )
                )
    if not problems:
        result.change = Change(
            id=change_id,
            path=file.parent,
            title=data["title"],
            type=data["type"],
            runbook=data["runbook"],
            environment=data["environment"],
            targets=data["targets"],
            params=data.get("params", {}),
            impact=data["impact"],
            urgency=data["urgency"],
            window_start=start,
            window_end=end,
            requested_by=data["requested_by"],
            reason=data["reason"].strip(),
            rollback=data.get("rollback", runbook.rollback),
            risk=data.get("risk"),
        )
    return result


def load_change(project: Project, change_id: str) -> Change:
    """A valid change, or OpsledgerError (exit 2) listing every problem."""
    result = validate_change(project, change_id)
    if result.problems:
        raise OpsledgerError(result.problems)
    assert result.change is not None
    return result.change


def _claim_folder(project: Project) -> tuple[str, Path]:
    """The next id and its new, empty folder; two `change new` at once get two ids.

    A folder of a higher id made by someone else meanwhile (its change.yml written, or still
    empty while that command validates) is skipped; one that holds files but no change.yml is
    refused: approvals or records waiting for an id that does not exist yet are nobody's.
    """
    changes_dir(project).mkdir(parents=True, exist_ok=True)
    number = int(next_change_id(project).removeprefix("CHG-"))
    while True:
        change_id = f"CHG-{number:04d}"
        folder = change_folder(project.root, change_id)
        folder.parent.mkdir(exist_ok=True)  # the id's block (layout.block_of), shared
        try:
            folder.mkdir()
        except FileExistsError:
            if not (folder / REQUEST).exists() and any(folder.iterdir()):
                raise OpsledgerError(
                    Problem(
                        "the folder exists without a change.yml",
                        str(folder),
                        "id",
                        "remove the folder (git status shows what is in it) and try again",
                    )
                ) from None
            number += 1
            continue
        return change_id, folder


@dataclass
class NewChange:
    id: str
    file: Path
    note: str = ""  # e.g. which maintenance window was chosen for it


def new_change(
    project: Project,
    *,
    title: str,
    runbook: str,
    requested_by: str,
    reason: str,
    change_type: str = "normal",
    environment: str = "lab",
    targets: str = "all",
    params: dict[str, Any] | None = None,
    impact: str = "low",
    urgency: str = "low",
    window_start: dt.datetime,
    window_end: dt.datetime,
    rollback: str | None = None,
    risk: str | None = None,
    also_invalid: list[Problem] | tuple = (),
    denials: list[Problem] | tuple = (),
) -> NewChange:
    """Write a new change request with the next free id; nothing is written if it is invalid.

    `also_invalid` and `denials` are the caller's own findings (policy facts: an unknown
    requester; a window decide would deny), refused together with the schema's in one error:
    exit 2 when anything is invalid, else 3 (policy denial).

    Example:
        new_change(project, title="Raise work_mem", runbook="converge", requested_by="alice",
                   reason="Sorts spill to disk", targets="db", params={"tags": ["postgresql"]},
                   window_start=start, window_end=start + timedelta(hours=2))
    """
    change_id, folder = _claim_folder(project)
    data: dict[str, Any] = {
        "id": change_id,
        "title": title,
        "type": change_type,
        "runbook": runbook,
        "environment": environment,
        "targets": targets,
        "params": params or {},
        "impact": impact,
        "urgency": urgency,
        "window": {"start": window_start.isoformat(), "end": window_end.isoformat()},
        "requested_by": requested_by,
        "reason": reason,
    }
    if rollback:
        data["rollback"] = rollback
    if risk:
        data["risk"] = risk
    file = folder / REQUEST
    try:
        try:
            text = "---\n" + yaml.safe_dump(data, sort_keys=False, width=100)
        except yaml.YAMLError:
            raise OpsledgerError(
                Problem(
                    "params must be plain data", field="params", fix="pass text, numbers, lists"
                )
            ) from None
        # Judge exactly what will be read back, before anything but the claimed id exists.
        written = parse_yaml(text, source=str(file), dates=False)
        result = _validate(project, change_id, written, file)
        invalid = [*result.problems, *also_invalid]
        if invalid or denials:
            raise OpsledgerError(
                [*invalid, *denials], exit_code=EXIT_INVALID if invalid else EXIT_DENIED
            )
        file.write_text(text)
    except BaseException:
        file.unlink(missing_ok=True)
        folder.rmdir()  # nothing half-written: the claimed id is free again
        _drop_if_empty(folder.parent, changes_dir(project))
        raise
    return NewChange(change_id, file)


@dataclass(frozen=True)
class Withdrawal:
    change_id: str
    person: str
    at: str
    reason: str
    path: Path


def withdrawal_path(project: Project, change_id: str) -> Path:
    return change_folder(project.root, change_id, WITHDRAWN)


def load_withdrawal(
    project: Project, change_id: str, revs: tuple[str, ...] | list[str] = ("HEAD",)
) -> Withdrawal | None:
    """The change's withdrawal, when one was ever committed in the history of `revs`.

    A withdrawal is final: deleting `withdrawn.yml` on a branch does not revive the change, so
    the history is read (every commit, merges against each parent), not the tree, and the
    version first added counts. An uncommitted file does not count.
    """
    path = withdrawal_path(project, change_id)
    revs = [r for r in dict.fromkeys(revs) if r]
    if not revs:
        return None
    # Both layouts: a withdrawal committed in the flat folder and deleted there before
    # `change migrate-layout` moved the rest never reached the block folder; read in the block
    # alone, its history revived the change.
    stored = change_pathspecs(change_id, WITHDRAWN)
    # What git answers for these commit ids never changes: kept (localcache.path_walk).
    out = path_walk(
        project,
        ["--full-history", "-m", "--reverse", "--diff-filter=A", "--no-renames", "--format=%H"],
        revs,
        list(stored),
    )
    added = out.decode(errors="replace").split() if out is not None else []
    if not added:
        return None
    shown = _shown_at(project, added[0], stored)  # the layout that commit added it in
    try:
        data = parse_yaml(shown) if shown is not None else None
    except OpsledgerError:
        data = None
    if not isinstance(data, dict):  # unreadable, yet committed: still withdrawn (fail closed)
        data = {"reason": "unreadable withdrawal"}
    return Withdrawal(
        change_id,
        str(data.get("withdrawn_by", "")),
        str(data.get("withdrawn_at", "")),
        str(data.get("reason", "")),
        path,
    )


def _shown_at(project: Project, commit: str, paths: tuple[str, ...]) -> str | None:
    """The text of the first of `paths` that `commit` holds, else None (one `cat-file`)."""
    found = blob_contents(project.root, [f"{commit}:{rel}" for rel in paths])
    data = next((found[f"{commit}:{rel}"] for rel in paths if f"{commit}:{rel}" in found), None)
    return None if data is None else data.decode(errors="replace")


@under_commit_lock  # its check (no run started) and its commit, with no apply's commit between
def withdraw_change(
    project: Project,
    change_id: str,
    *,
    person: str,
    reason: str,
    now: dt.datetime | None = None,
    signing_key: Path | None = None,
) -> Withdrawal:
    """Withdraw a change that has not succeeded: it never runs, holds no host, keeps its id.

    Writes `changes/<block>/<ID>/withdrawn.yml` (who, when, why) and commits it as that person; the
    folder and its history stay, so approvals, run records and audit keep their meaning.

    Example:
        withdraw_change(find_project(), "CHG-0004", person="alice",
                        reason="Superseded by CHG-0006")
    """
    from opsledger.gitrepo import write_and_commit
    from opsledger.policy.bundle import load_policies
    from opsledger.reconcile import reconcile_runs
    from opsledger.records import read_runs

    check_change_id(change_id)  # before it becomes a path: no `..`, no overlong file name
    file = change_folder(project.root, change_id, REQUEST)
    problems = []
    if not file.is_file():
        known = ", ".join(change_ids(project)[-5:]) or "none yet"
        problems.append(Problem(f"no change {change_id}", str(file), fix=f"latest: {known}"))
    if not reason.strip():
        problems.append(Problem("a reason is required", field="--reason", fix="say why"))
    policies, _ = load_policies(project)
    who = policies.people.get(person)
    if who is None:
        problems.append(
            Problem(
                f"{person!r} is not in people.yml",
                policy_file("people.yml"),
                "--as",
                "withdraw as a person of policies/people.yml",
            )
        )
    if problems:
        raise OpsledgerError(problems)
    previous = load_withdrawal(project, change_id)
    if previous is not None:
        raise OpsledgerError(
            Problem(
                f"already withdrawn by {previous.person} at {previous.at}",
                str(previous.path),
                fix="nothing to do",
            )
        )
    # Settle earlier runs first, like apply: a run whose record git refused may have succeeded
    # (withdrawing it would leave a change both withdrawn and applied once the record lands),
    # and a dead run is recorded as interrupted rather than blocking the withdrawal.
    reconcile_runs(project).raise_problems()
    ledger = read_runs(project)
    applied = [r for r in ledger.committed if r.change == change_id and r.result == "success"]
    if applied:
        raise OpsledgerError(
            Problem(
                f"applied successfully at {applied[-1].finished_at}: a change that ran cannot "
                "be withdrawn",
                str(file),
                fix="undo it with a new change (e.g. a converge of the previous desired state)",
            )
        )
    running = [f.path for f in ledger.started if f.record.change == change_id]
    if running:
        raise OpsledgerError(
            Problem(
                f"a run of {change_id} has started and has no final record ({running[-1]})",
                running[-1],
                fix="wait for it to end (or for the next apply to record it as interrupted), "
                "then withdraw",
            ),
            EXIT_LOCKED,
        )
    moment = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    path = withdrawal_path(project, change_id)
    data = {
        "change": change_id,
        "withdrawn_by": person,
        "withdrawn_at": moment.isoformat(),
        "reason": reason.strip(),
    }
    write_and_commit(  # a failed commit leaves no withdrawn.yml that git never recorded
        project.root,
        path,
        "---\n# This change was withdrawn: it never runs again; its id is never reused.\n"
        + yaml.safe_dump(data, sort_keys=False, width=100),
        f"Withdraw {change_id}: {reason.strip()}",
        name=who.name,
        email=who.email,
        signing_key=signing_key,
    )
    return Withdrawal(change_id, person, moment.isoformat(), reason.strip(), path)
