"""Routine inspections: scheduled, read-only checks of every host, written down as records.

`policies/inspections.yml` says which checks a schedule (daily, weekly, monthly, quarterly,
yearly, or an on-demand one like pre-holiday) runs, on which host groups, with which warning
and critical thresholds, and which SLA priority each severity gets. `inspect` runs a schedule
on every host in parallel over the same connections verification uses (Testinfra hosts, only
read commands), writes a record under `records/inspections/` and commits it, then opens or
resolves incidents from its findings and notifies. `due_states` says which periodic schedule's
period has passed and counts the periods that have no record (missed inspections), for
`inspect --due`, the calendar and reports.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from opsledger.errors import OpsledgerError, Problem
from opsledger.faults.detect import record_detection
from opsledger.gitrepo import head, is_repo
from opsledger.identity import runner_identity
from opsledger.layout import policies_folder, policy_file
from opsledger.notify import notify_records
from opsledger.policy.bundle import load_policies
from opsledger.policy.files import read_policy
from opsledger.project import Project
from opsledger.records import Record, RunResult, load_records, save_evidence
from opsledger.testinfra_hosts import Target, resolve_targets


class Severity(StrEnum):
    """How bad an inspection finding is; members are their strings, as records store them."""

    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"


SEVERITIES = tuple(Severity)  # in rising order: worst() and --fail-on compare by position
PSEUDO_FS = {
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "devtmpfs",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "autofs",
    "hugetlbfs",
    "fusectl",
    "configfs",
}


@dataclass(frozen=True)
class Finding:
    host: str
    check: str
    severity: Severity  # WARNING or CRITICAL
    message: str
    priority: str = ""


@dataclass
class Schedule:
    name: str
    every_hours: float | None
    checks: list[str]


@dataclass
class InspectionPlan:
    """policies/inspections.yml, loaded: what each schedule checks (not a change's plan.Plan)."""

    severities: dict[str, str]
    schedules: dict[str, Schedule]
    checks: dict[str, dict[str, Any]]


@dataclass
class InspectionResult:
    schedule: str
    environment: str
    hosts: list[str]
    findings: list[Finding] = field(default_factory=list)
    checks_run: int = 0
    record_path: Path | None = None
    commit: str | None = None
    incidents: str = ""  # what the record did to incidents (faults.detect), for the operator

    def worst(self) -> Severity:
        return Severity(
            max((f.severity for f in self.findings), key=SEVERITIES.index, default="ok")
        )


# --- the checks: each reads a host and returns (severity, message) pairs -------------------

Check = Callable[[Target, dict[str, Any]], list[tuple[str, str]]]


def _grade(value: float, spec: dict[str, Any], what: str) -> list[tuple[str, str]]:
    if "critical" in spec and value >= spec["critical"]:
        return [("critical", f"{what} (critical at {spec['critical']})")]
    if "warning" in spec and value >= spec["warning"]:
        return [("warning", f"{what} (warning at {spec['warning']})")]
    return []


def _run(target: Target, command: str) -> str:
    return target.host.run(command).stdout


def check_disk(target: Target, spec: dict[str, Any], column: str = "pcent") -> list:
    out = _run(
        target,
        f"df --output=target,fstype,{column} | tail -n +2 | "
        'while read -r t f p; do [ -d "$t" ] && echo "$t $f $p"; done',
    )
    if not out.strip():  # no file system listed: the check itself is broken, say so
        raise RuntimeError("df listed no file systems")
    found = []
    for line in out.splitlines():
        mount, fstype, used = line.rsplit(" ", 2)
        if fstype in PSEUDO_FS or mount.startswith(("/proc", "/sys")) or used == "-":
            continue
        what = "disk" if column == "pcent" else "inodes"
        found += _grade(int(used.rstrip("%")), spec, f"{mount} {what} {used} used")
    return found


def check_inodes(target: Target, spec: dict[str, Any]) -> list:
    return check_disk(target, spec, column="ipcent")


def _meminfo(target: Target) -> dict[str, int]:
    return {
        k: int(v.split()[0])
        for k, v in (line.split(":", 1) for line in _run(target, "cat /proc/meminfo").splitlines())
    }


def check_memory(target: Target, spec: dict[str, Any]) -> list:
    info = _meminfo(target)
    used = 100 * (1 - info["MemAvailable"] / info["MemTotal"])
    return _grade(used, spec, f"memory {used:.0f}% used")


def check_swap(target: Target, spec: dict[str, Any]) -> list:
    info = _meminfo(target)
    if not info.get("SwapTotal"):
        return []
    used = 100 * (1 - info["SwapFree"] / info["SwapTotal"])
    return _grade(used, spec, f"swap {used:.0f}% used")


# Read on the host in one round trip. A container shares the kernel, so /proc/loadavg there is
# the whole machine's load: every container of a busy machine was "critical" though idle. In a
# container the host's own load is what the load average counts, for its tasks only: threads
# running or waiting to run (R) or in uninterruptible sleep (D), sampled 10 times over a second
# (the probe itself left out). CPUs are what the host may use: its affinity, capped by a cgroup
# CPU quota (v2 cpu.max, v1 cfs_quota_us / cfs_period_us).
LOAD_PROBE = r"""
import glob, json, os, time
def quota():
    for path in ("/sys/fs/cgroup/cpu.max",):
        try:
            limit, period = open(path).read().split()[:2]
            return None if limit == "max" else int(limit) / int(period)
        except (OSError, ValueError):
            pass
    for base in ("/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"):
        try:
            limit = int(open(base + "/cpu.cfs_quota_us").read())
            period = int(open(base + "/cpu.cfs_period_us").read())
            return None if limit <= 0 else limit / period
        except (OSError, ValueError):
            pass
    return None
def runnable():
    me, count = str(os.getpid()), 0
    for path in glob.glob("/proc/[0-9]*/task/[0-9]*/stat"):
        if path.split("/")[2] == me:
            continue
        try:
            state = open(path).read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        count += state in ("R", "D")
    return count
container = any(os.path.exists(p) for p in ("/run/.containerenv", "/.dockerenv",
                                               "/run/systemd/container"))
samples = []
for _ in range(10):
    samples.append(runnable())
    time.sleep(0.1)
cpus = len(os.sched_getaffinity(0))
limit = quota()
print(json.dumps({"container": container, "load5": float(open("/proc/loadavg").read().split()[1]),
                  "runnable": sum(samples) / len(samples),
                  "cpus": min(cpus, limit) if limit else cpus}))
"""


def grade_load(measured: dict[str, Any], spec: dict[str, Any]) -> list[tuple[str, str]]:
    """Load per CPU of the host measured: its own load over the CPUs it may use.

    A container's own load is its runnable tasks, not the machine's load average it can read.
    """
    cpus = max(float(measured["cpus"]), 0.01)
    shown = f"{cpus:g} CPU(s)"
    if measured["container"]:
        own = float(measured["runnable"])
        return _grade(
            own / cpus,
            spec,
            f"load {own:.2f} per {shown} of this container (its own runnable tasks; the "
            f"machine's load average {float(measured['load5']):.2f} is not its own)",
        )
    load5 = float(measured["load5"])
    return _grade(load5 / cpus, spec, f"load {load5:.2f} on {shown}")


def check_load(target: Target, spec: dict[str, Any]) -> list:
    out = target.host.run("python3 -c %s", LOAD_PROBE)
    if out.rc != 0:
        return [("critical", f"load could not be read: {out.stderr.strip()[:200]}")]
    return grade_load(json.loads(out.stdout), spec)


def check_failed_units(target: Target, spec: dict[str, Any]) -> list:
    units = _run(target, "systemctl list-units --state=failed --plain --no-legend").split("\n")
    names = [u.split()[0] for u in units if u.strip()]
    graded = _grade(len(names), spec, f"failed units: {', '.join(names)}")
    return graded


def check_services(target: Target, spec: dict[str, Any]) -> list:
    units = [u for group in ("all", *target.groups) for u in spec.get("units", {}).get(group, [])]
    found = []
    for unit in units:
        state = _run(target, f"systemctl is-active {unit}").strip()
        if state != "active":
            found.append(("critical", f"service {unit} is {state or 'unknown'}"))
    return found


def check_time_sync(target: Target, spec: dict[str, Any]) -> list:
    out = _run(target, "chronyc -n tracking")
    match = re.search(r"System time\s*:\s*([\d.]+) seconds", out)
    leap = re.search(r"Leap status\s*:\s*(.+)", out)
    if not match:
        return [("critical", "chronyc tracking gives no system time offset (is chrony running?)")]
    found = _grade(float(match.group(1)), spec, f"clock {match.group(1)} s off")
    if leap and leap.group(1).strip() == "Not synchronised":
        found.append(("critical", "chrony is not synchronised"))
    return found


def check_firewall(target: Target, spec: dict[str, Any]) -> list:
    if _run(target, "systemctl is-active nftables").strip() != "active":
        return [("critical", "nftables is not active")]
    rules = target.host.run("nft list ruleset")
    if rules.rc != 0 or "chain input" not in rules.stdout:
        return [("critical", "no input chain in the live ruleset")]
    return []


_INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) ([^)]*)\)", re.M)


def pending_security(target: Target) -> dict[str, str]:
    """Security updates apt would install now: package -> candidate version (read-only)."""
    out = _run(target, "LC_ALL=C apt-get -s -o Debug::NoLocking=1 upgrade 2>/dev/null || true")
    return {
        name: version
        for name, version, origins in _INST.findall(out)
        if "security" in origins.lower()
    }


def pending_since(records: list[Record], now: dt.datetime) -> dict[str, dict[str, dt.datetime]]:
    """host -> {"package=version": since when inspections have seen it pending, unbroken}.

    Each inspection that ran security_updates keeps what it saw (`measurements.
    pending_security`); going back from the newest, a pending update's age runs from the
    first of the consecutive inspections that saw that very version pending on that host.
    """
    streaks: dict[str, dict[str, dt.datetime]] = {}
    ended: dict[str, set[str]] = {}
    for record in sorted(records, key=lambda r: r.started_at, reverse=True):
        seen = record.measurements.get("pending_security")
        if not isinstance(seen, dict):
            continue
        try:
            when = dt.datetime.fromisoformat(record.started_at)
        except ValueError:
            continue
        if when > now:
            continue
        for host, pending in seen.items():
            if not isinstance(pending, dict):
                continue
            keys = {f"{name}={version}" for name, version in pending.items()}
            if host not in streaks:  # the newest record of this host starts every streak
                streaks[host] = dict.fromkeys(keys, when)
                ended[host] = set()
                continue
            for key in list(streaks[host]):
                if key in ended[host]:
                    continue
                if key in keys:
                    streaks[host][key] = when
                else:
                    ended[host].add(key)
    return streaks


def grade_security_updates(
    pending: dict[str, str],
    since: dict[str, dt.datetime],
    spec: dict[str, Any],
    now: dt.datetime,
) -> list[tuple[str, str]]:
    """Count per host, severity from age: how long the oldest pending update has been seen.

    Severity is the worse of the count thresholds (warning, critical) and the age thresholds
    in days (warning_days, critical_days); an update no earlier inspection saw is 0 days old.
    """
    if not pending:
        return []
    firsts = {name: since.get(f"{name}={version}", now) for name, version in pending.items()}
    oldest_name = min(firsts, key=lambda n: (firsts[n], n))
    oldest = firsts[oldest_name]
    days = max(0.0, (now - oldest).total_seconds() / 86400)
    listed = ", ".join(f"{n} {v}" for n, v in sorted(pending.items())[:8])
    listed += f" and {len(pending) - 8} more" if len(pending) > 8 else ""
    age = (
        f"oldest ({oldest_name}) pending since {oldest.date().isoformat()}, {days:.0f} day(s), "
        "as first seen by an inspection"
        if oldest < now
        else "first seen by this inspection"
    )
    what = f"{len(pending)} pending security update(s): {listed}; {age}"
    by_count = _grade(len(pending), spec, what)
    by_age = _grade(
        days,
        {k.removesuffix("_days"): v for k, v in spec.items() if k.endswith("_days")},
        f"{what} (by age)",
    )
    return max([by_count, by_age], key=lambda f: SEVERITIES.index(f[0][0]) if f else -1)


def check_security_updates(target: Target, spec: dict[str, Any]) -> list:
    """Pending security updates, graded by count and by the age `spec["since"]` gives."""
    now = spec.get("now") or dt.datetime.now(dt.UTC)
    return grade_security_updates(pending_security(target), spec.get("since", {}), spec, now)


def check_certificates(target: Target, spec: dict[str, Any]) -> list:
    found = []
    for path in spec.get("paths", []):
        if not target.host.file(path).exists:
            continue
        end = _run(target, f"openssl x509 -enddate -noout -in {path}").strip().split("=", 1)[-1]
        try:
            expires = dt.datetime.strptime(end, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=dt.UTC)
        except ValueError:
            found.append(("warning", f"{path}: cannot read its expiry ({end!r})"))
            continue
        days = (expires - dt.datetime.now(dt.UTC)).days
        if days <= spec.get("critical", 7):
            found.append(("critical", f"{path} expires in {days} day(s)"))
        elif days <= spec.get("warning", 30):
            found.append(("warning", f"{path} expires in {days} day(s)"))
    return found


def _psql(target: Target, sql: str) -> Any:
    # From /tmp: the login user's home is closed to postgres (OS-ACC-04), and psql warns
    # "could not change directory" on every call made from there.
    return target.host.run(f'cd /tmp && sudo -u postgres psql -XAtc "{sql}"')


def check_postgres_up(target: Target, spec: dict[str, Any]) -> list:
    result = _psql(target, "SELECT 1")
    if result.rc != 0 or result.stdout.strip() != "1":
        return [("critical", f"PostgreSQL does not answer: {result.stderr.strip()[:200]}")]
    return []


def check_replication(target: Target, spec: dict[str, Any]) -> list:
    role = target.expect.get("postgresql_replication_role", "primary")
    if role == "standby":
        state = _psql(target, "SELECT status FROM pg_stat_wal_receiver").stdout.strip()
        return (
            []
            if state == "streaming"
            else [("critical", f"standby not streaming ({state or 'no receiver'})")]
        )
    return []


def check_backup_age(target: Target, spec: dict[str, Any]) -> list:
    if target.expect.get("postgresql_replication_role", "primary") != "primary":
        return []
    stanza = target.expect.get("postgresql_backup_stanza", "main")
    out = target.host.run(f"sudo -u postgres pgbackrest --stanza={stanza} --output=json info")
    try:
        backups = json.loads(out.stdout)[0].get("backup", [])
    except (ValueError, IndexError):
        return [("critical", f"pgbackrest info failed: {out.stderr.strip()[:200]}")]
    if not backups:
        return [("critical", "no pgBackRest backup exists")]
    newest = max(b["timestamp"]["stop"] for b in backups)
    hours = (dt.datetime.now(dt.UTC).timestamp() - newest) / 3600
    return _grade(hours, spec, f"newest backup {hours:.1f} h old")


def check_pgbackrest_check(target: Target, spec: dict[str, Any]) -> list:
    if target.expect.get("postgresql_replication_role", "primary") != "primary":
        return []
    stanza = target.expect.get("postgresql_backup_stanza", "main")
    result = target.host.run(f"sudo -u postgres pgbackrest --stanza={stanza} check")
    if result.rc != 0:
        return [
            (
                "critical",
                f"pgbackrest check failed: {(result.stderr or result.stdout).strip()[:200]}",
            )
        ]
    return []


def check_pgbackrest_verify(target: Target, spec: dict[str, Any]) -> list:
    """Every backup and archived WAL file read back against its checksum.

    The repository's answer to "would a restore work?", short of a DR drill.
    """
    if target.expect.get("postgresql_replication_role", "primary") != "primary":
        return []
    stanza = target.expect.get("postgresql_backup_stanza", "main")
    result = target.host.run(f"sudo -u postgres pgbackrest --stanza={stanza} verify")
    said = f"{result.stdout}\n{result.stderr}"
    if result.rc != 0 or re.search(r"(?i)status: error|invalid|missing", said):
        problem = next(
            (line.strip() for line in said.splitlines() if re.search(r"(?i)error|invalid", line)),
            said.strip()[:200],
        )
        return [("critical", f"pgbackrest verify failed: {problem[:200]}")]
    return []


def check_wal_archiving(target: Target, spec: dict[str, Any]) -> list:
    """WAL archived continuously up to now, on the current timeline (the primary).

    `pgbackrest check` only proves one segment can be pushed at the moment it runs; a dormant
    archive_timeout or a stuck archiver leaves acknowledged commits outside the repository
    while it still passes. The postgresql role's `pg-archive-status` measures the gap.
    """
    if target.expect.get("postgresql_replication_role", "primary") != "primary":
        return []
    stanza = target.expect.get("postgresql_backup_stanza", "main")
    port = target.expect.get("postgresql_port", 5432)
    margin = spec.get("margin", target.expect.get("postgresql_backup_archive_margin", 30))
    result = target.host.run(
        f"cd /tmp && sudo -u postgres pg-archive-status --stanza={stanza} --port={port} "
        f"--margin={int(margin)}"
    )
    try:
        report = json.loads(result.stdout)
    except ValueError:
        return [
            (
                "critical",
                "cannot read WAL archiving status (pg-archive-status missing? converge the "
                f"postgresql role): {(result.stderr or result.stdout).strip()[:150]}",
            )
        ]
    return [(severity, message) for severity, message in report.get("findings", [])]


def check_journal_errors(target: Target, spec: dict[str, Any]) -> list:
    hours = spec.get("hours", 24)
    out = _run(target, f"journalctl -q -p err --since '-{hours}h' --no-pager -o cat | wc -l")
    count = int(out.strip() or 0)
    return _grade(count, spec, f"{count} error line(s) in the journal in {hours} h")


# os_baseline's daily AIDE check (OS-AIDE-02) leaves its exit code and report here.
AIDE_RC = "/var/lib/aide/opsledger-check.rc"
AIDE_REPORT = "/var/log/aide/opsledger-check.log"
_AIDE_COUNT = re.compile(r"^\s*(Added|Removed|Changed) entries:\s*(\d+)", re.M)
_AIDE_ENTRY = re.compile(r"^[a-z!?][^:\n]{8,}: (/\S.*)$", re.M)


def grade_file_integrity(
    code: int, age_hours: float, report: str, spec: dict[str, Any]
) -> list[tuple[str, str]]:
    """Grade the last AIDE check: its age, then what it found against the converge baseline.

    AIDE's exit code is a bit mask (1 added, 2 removed, 4 changed entries); 14 and up mean
    the check itself failed.
    """
    found: list[tuple[str, str]] = []
    limit = spec.get("hours", 48)
    if age_hours > limit:
        found.append(("warning", f"last AIDE check {age_hours:.0f} h ago (older than {limit} h)"))
    if code == 0:
        return found
    if not 1 <= code <= 7:
        first = next((line.strip() for line in report.splitlines() if line.strip()), "")
        return [*found, ("critical", f"AIDE check failed (exit {code}): {first[:160]}")]
    counts = ", ".join(f"{n} {kind.lower()}" for kind, n in _AIDE_COUNT.findall(report))
    paths = list(dict.fromkeys(_AIDE_ENTRY.findall(report)))
    shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    message = f"AIDE: {counts or 'entries differ'} since the converge baseline"
    return [*found, ("critical", f"{message}: {shown}" if shown else message)]


def check_file_integrity(target: Target, spec: dict[str, Any]) -> list:
    """The daily AIDE check's result: files changed since the last converge's baseline."""
    if not target.expect.get("os_baseline_aide_enabled", True):
        return []
    result = target.host.run(f"stat -c %Y {AIDE_RC} && cat {AIDE_RC} && date +%s")
    fields = result.stdout.split()
    if result.rc != 0 or len(fields) != 3 or not all(f.isdigit() for f in fields):
        return [("warning", "no AIDE check has run yet (opsledger-aide-check.timer)")]
    written, code, now = (int(f) for f in fields)
    report = _run(target, f"cat {AIDE_REPORT}") if code else ""
    return grade_file_integrity(code, (now - written) / 3600, report, spec)


CHECKS: dict[str, Check] = {
    name.removeprefix("check_"): fn
    for name, fn in dict(globals()).items()
    if name.startswith("check_") and callable(fn)
}


# --- plan, running, records ------------------------------------------------------------------


def load_inspection_plan(project: Project) -> InspectionPlan:
    """Read and check policies/inspections.yml; every problem at once."""
    path = policies_folder(project.root, "inspections.yml")
    data, problems = read_policy(project, "inspections", "inspection plan")
    if data is None:
        raise OpsledgerError(problems)
    file = str(path)
    policies, _ = load_policies(project, strict=False)
    severities = data.get("severities") or {}
    for severity, priority in severities.items():
        if severity not in SEVERITIES[1:]:
            problems.append(
                Problem(
                    f"unknown severity {severity!r}", file, "severities", "use warning or critical"
                )
            )
        # No priorities at all: sla.yml failed to load, and policy check lists that once.
        if policies.priorities and priority not in policies.priorities:
            problems.append(
                Problem(
                    f"unknown priority {priority!r}",
                    file,
                    f"severities.{severity}",
                    f"use one of {', '.join(policies.priorities)}",
                )
            )
    checks = data.get("checks") or {}
    for name in checks:
        if name not in CHECKS:
            problems.append(
                Problem(
                    f"unknown check {name!r}",
                    file,
                    f"checks.{name}",
                    f"use one of {', '.join(sorted(CHECKS))}",
                )
            )
    schedules = {}
    for name, entry in (data.get("schedules") or {}).items():
        for check in entry.get("checks", []):
            if check not in checks:
                problems.append(
                    Problem(
                        f"check {check!r} is not configured",
                        file,
                        f"schedules.{name}.checks",
                        "add it under checks:",
                    )
                )
        every = entry.get("every_hours")
        if every is not None and (not isinstance(every, int | float) or every <= 0):
            problems.append(
                Problem(
                    f"every_hours must be a positive number, got {every!r}",
                    file,
                    f"schedules.{name}.every_hours",
                    "e.g. every_hours: 24",
                )
            )
        schedules[name] = Schedule(name, every, list(entry.get("checks", [])))
    if problems:
        raise OpsledgerError(problems)
    return InspectionPlan(severities, schedules, checks)


@dataclass
class _History:
    """What earlier inspections of the environment saw, for checks graded by age."""

    since: dict[str, dict[str, dt.datetime]]
    now: dt.datetime
    observed: dict[str, dict[str, str]] = field(default_factory=dict)  # host -> pending


def _security_updates(target: Target, spec: dict[str, Any], history: _History) -> list:
    pending = pending_security(target)
    history.observed[target.name] = pending
    since = history.since.get(target.name, {})
    return grade_security_updates(pending, since, spec, history.now)


def _inspect_host(
    target: Target, schedule: Schedule, plan: InspectionPlan, history: _History
) -> tuple[list[Finding], int]:
    findings, ran = [], 0
    for name in schedule.checks:
        spec = plan.checks[name]
        groups = spec.get("groups", ["all"])
        if "all" not in groups and not set(groups) & set(target.groups):
            continue
        ran += 1
        try:
            if name == "security_updates":  # kept in the record: the next one dates it
                graded = _security_updates(target, spec, history)
            else:
                graded = CHECKS[name](target, spec)
        except Exception as err:  # a check that cannot read the host is itself a finding
            graded = [("critical", f"check could not run: {type(err).__name__}: {err}"[:300])]
        findings += [
            Finding(target.name, name, severity, message, plan.severities.get(severity, ""))
            for severity, message in graded
        ]
    return findings, ran


def inspect(
    project: Project,
    *,
    schedule: str,
    environment: str = "lab",
    targets: str = "all",
    record: bool = True,
) -> InspectionResult:
    """Run one schedule's checks on every host in parallel; record and commit the result.

    Example:
        result = inspect(find_project(), schedule="daily", environment="lab")
        result.worst(), [(f.host, f.check, f.priority) for f in result.findings]
    """
    plan = load_inspection_plan(project)
    if schedule not in plan.schedules:
        raise OpsledgerError(
            Problem(
                f"no schedule {schedule!r}",
                policy_file("inspections.yml"),
                "schedules",
                f"use one of: {', '.join(plan.schedules)}",
            )
        )
    chosen = plan.schedules[schedule]
    hosts = resolve_targets(
        project.require_environment(environment),
        pattern=targets,
        roles_dir=project.root / "roles",
        environment=environment,
    )
    started = dt.datetime.now(dt.UTC)
    result = InspectionResult(schedule, environment, [h.name for h in hosts])
    earlier = [r for r in load_records(project, "inspection") if r.environment == environment]
    history = _History(pending_since(earlier, started), started)
    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        for findings, ran in pool.map(lambda t: _inspect_host(t, chosen, plan, history), hosts):
            result.findings += findings
            result.checks_run += ran
    result.findings.sort(key=lambda f: (f.host, f.check))
    if record and is_repo(project.root):
        finished = dt.datetime.now(dt.UTC)
        entry = Record(
            kind="inspection",
            environment=environment,
            result=RunResult.FAILED if result.findings else RunResult.SUCCESS,
            started_at=started.isoformat(),
            finished_at=finished.isoformat(),
            targets=targets,
            hosts=result.hosts,
            runner=runner_identity(),
            git_commit=head(project.root),
            findings=[f.__dict__ for f in result.findings],
            measurements={
                "schedule": schedule,
                "checks_run": result.checks_run,
                "worst": result.worst(),
                **(
                    {"pending_security": dict(sorted(history.observed.items()))}
                    if history.observed
                    else {}
                ),
            },
        )
        saved = save_evidence(
            project,
            entry,
            started=started,
            name=f"{schedule}-{environment}",
            message=f"Inspection {schedule} {environment}: {result.worst()}",
        )
        path = result.record_path = saved.path
        result.commit = saved.commit
        # critical findings open incidents; clean ones resolve
        result.incidents = record_detection(project, [path]).summary()
        notify_records(project, [path])  # policies/notifications.yml; never raises
    return result


@dataclass
class DueState:
    schedule: str
    last: dt.datetime | None
    due: bool
    missed: int  # whole periods without a record


def due_states(
    project: Project, *, environment: str = "lab", now: dt.datetime | None = None
) -> list[DueState]:
    """For each periodic schedule: its last record, whether it is due, missed periods.

    A run covers the period it starts; every later period that ended without a run of its own
    (between two records, or since the last one) is missed. Due means a period has passed.
    """
    moment = now or dt.datetime.now(dt.UTC)
    plan = load_inspection_plan(project)
    records = [r for r in load_records(project, "inspection") if r.environment == environment]
    states = []
    for schedule in plan.schedules.values():
        if schedule.every_hours is None:
            continue
        period = dt.timedelta(hours=schedule.every_hours)
        times = sorted(
            dt.datetime.fromisoformat(r.started_at)
            for r in records
            if r.measurements.get("schedule") == schedule.name
        )
        missed = 0
        for before, after in zip([*times], [*times[1:], moment], strict=False):
            # the run at `before` covers its period; each later period that ended before
            # `after` (the next run, or now) without a run of its own is missed
            missed += max(0, math.floor((after - before) / period) - 1)
        last = times[-1] if times else None
        states.append(
            DueState(schedule.name, last, last is None or moment - last >= period, missed)
        )
    return states


def render(result: InspectionResult, fmt: str = "text") -> str:
    """An inspection report as text, md, json or html."""
    rows = [(f.host, f.check, f.severity, f.priority, f.message) for f in result.findings]
    head = (
        f"Inspection {result.schedule} of {result.environment}: {len(result.hosts)} host(s), "
        f"{result.checks_run} check(s), {len(result.findings)} finding(s), worst {result.worst()}"
    )
    if fmt == "json":
        return (
            json.dumps(
                {
                    "schedule": result.schedule,
                    "environment": result.environment,
                    "hosts": result.hosts,
                    "checks_run": result.checks_run,
                    "worst": result.worst(),
                    "findings": [f.__dict__ for f in result.findings],
                    "record": str(result.record_path or ""),
                },
                indent=2,
            )
            + "\n"
        )
    if fmt == "md":
        lines = [
            f"### {head}",
            "",
            "| host | check | severity | priority | finding |",
            "|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    if fmt == "html":
        import html

        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
        )
        return (
            "<!doctype html><meta charset='utf-8'><title>inspection</title>"
            "<style>body{font:14px sans-serif}td,th{border:1px solid #ccc;padding:3px 6px}"
            "table{border-collapse:collapse}</style>"
            f"<h1>{html.escape(head)}</h1><table><tr><th>host</th><th>check</th>"
            f"<th>severity</th><th>priority</th><th>finding</th></tr>{body}</table>\n"
        )
    return "\n".join([head, *(f"  [{r[2]}/{r[3]}] {r[0]} {r[1]}: {r[4]}" for r in rows)]) + "\n"
