"""Diagnostics as evidence: read-only commands on the affected hosts, output kept with the incident.

`policies/incidents.yml` lists, per fault class (and `all`), what an engineer runs first on a
host in trouble: failed units, journal excerpts, disk and memory, PostgreSQL's log and
replication state, firewall rules and counters. `collect` runs them over SSH with Fabric on
every affected host at once (one thread per host, commands in order on each), reaching each
host the way Ansible does — its inventory address, port, user and key, and strict host-key
checking against the known_hosts file the inventory names (an unknown key is refused, never
added). Every command is proven read-only first (faults.readonly); one that could write stops
the whole collection before any host is contacted. Output is cut to the policy's size, secrets
are scrubbed, and each host's file carries the host's own name and clock next to the
controller's time, so the evidence says where and when it was taken.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from opsledger.errors import OpsledgerError, Problem
from opsledger.faults.incidents import ACTIVE, Step, StepResult, take_step
from opsledger.faults.policy import FaultPolicy, load_fault_policy
from opsledger.faults.readonly import Checked, NotReadOnly, check_command
from opsledger.faults.store import Incident, diagnostics_dir, load_incident
from opsledger.inventory import InventoryHost, load_inventory
from opsledger.layout import policy_file
from opsledger.project import Project
from opsledger.records import stamp

# Secrets that diagnostics output is known to carry: connection strings, key material,
# password hashes, tokens in logs. Replaced before anything is written.
SCRUB = [
    (
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
            re.S,
        ),
        "[private key scrubbed]",
    ),
    (re.compile(r"\$ANSIBLE_VAULT;[^\n]*(?:\n[0-9a-f]+)*"), "[vault data scrubbed]"),
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]+:)(?!\[)[^\s@/]+@", re.I), r"\1[scrubbed]@"),
    (re.compile(r"SCRAM-SHA-256\$[^\s'\"]+"), "[password hash scrubbed]"),
    (re.compile(r"\bmd5[0-9a-f]{32}\b"), "[password hash scrubbed]"),
    (re.compile(r"(?i)\b(authorization:\s*(?:bearer|basic|token)\s+)(?!\[)\S+"), r"\1[scrubbed]"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "[access key scrubbed]"),
    (
        re.compile(
            r"(?i)\b([\w.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)"
            r"[\w.-]*)(['\"]?\s*[=:]\s*)(['\"]?)(?!\[)[^\s'\",;]+\3"
        ),
        r"\1\2[scrubbed]",
    ),
]
_KNOWN_HOSTS = re.compile(r"UserKnownHostsFile[= ]\s*(\S+)")
PREAMBLE = ("uname -n", "date -u +%Y-%m-%dT%H:%M:%SZ")  # where and when, in the host's words


def scrub(text: str) -> tuple[str, int]:
    """Text with known secret shapes replaced, and how many were replaced.

    Example:
        text, replaced = scrub(Path("pg_hba-and-log-excerpt.txt").read_text())
    """
    count = 0
    for pattern, replacement in SCRUB:
        text, n = pattern.subn(replacement, text)
        count += n
    return text, count


def bounded(text: str, limit: int) -> tuple[str, bool]:
    """At most `limit` bytes of text (UTF-8), and whether it was cut."""
    data = text.encode()
    if len(data) <= limit:
        return text, False
    return data[:limit].decode(
        errors="ignore"
    ) + f"\n[... cut: {len(data) - limit} more bytes]", True


class CollectStatus(StrEnum):
    COLLECTED = "collected"  # every command ran on every host (some may have exited non-zero)
    PARTIAL = "partial"  # some host could not be reached or a command timed out
    FAILED = "failed"  # no host answered


@dataclass
class CommandOutput:
    command: str
    sent: str
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    truncated: bool = False
    scrubbed: int = 0
    error: str = ""


@dataclass
class HostDiagnostics:
    host: str
    address: str
    started_at: str
    finished_at: str = ""
    host_name: str = ""
    host_time: str = ""
    error: str = ""
    commands: list[CommandOutput] = field(default_factory=list)


@dataclass
class CollectResult:
    status: CollectStatus
    incident: Incident
    hosts: list[HostDiagnostics]
    files: list[Path]
    commit: str


def plan_commands(policy: FaultPolicy, klass: str, groups: tuple[str, ...]) -> list[Checked]:
    """The commands for a host of these groups and an incident of this class, each proven."""
    chosen = [*policy.diagnostics.get("all", []), *policy.diagnostics.get(klass, [])]
    commands: list[Checked] = []
    for diagnostic in chosen:
        if diagnostic.groups and not set(diagnostic.groups) & {"all", *groups}:
            continue
        if any(c.command == diagnostic.command for c in commands):
            continue
        commands.append(check_command(diagnostic.command))
    return commands


def _connection(host: InventoryHost, timeout: int) -> Any:
    """A Fabric connection reaching the host as Ansible does, host keys checked strictly."""
    import paramiko
    from fabric import Config, Connection

    address = str(host.get("ansible_host", host.name))
    args = " ".join(
        str(host.get(k, "")) for k in ("ansible_ssh_common_args", "ansible_ssh_extra_args")
    )
    found = _KNOWN_HOSTS.search(args)
    known = Path(found.group(1) if found else "~/.ssh/known_hosts").expanduser()
    if not known.is_file():
        raise FileNotFoundError(f"no known_hosts file {known}: host keys cannot be checked")
    key = host.get("ansible_ssh_private_key_file")
    connection = Connection(
        address,
        user=str(host.get("ansible_user")) if host.get("ansible_user") else None,
        port=int(host.get("ansible_port", 22)),
        config=Config(ssh_config=paramiko.SSHConfig()),  # ~/.ssh/config must not redirect us
        connect_timeout=timeout,
        connect_kwargs={
            **({"key_filename": str(Path(str(key)).expanduser())} if key else {}),
            "look_for_keys": not key,
            "allow_agent": not key,
        },
    )
    connection.client.load_host_keys(str(known))
    connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return connection


def _run(connection: Any, checked: Checked, policy: FaultPolicy) -> CommandOutput:
    from invoke.exceptions import CommandTimedOut

    limit = policy.diagnostics_max_bytes
    # head bounds what crosses the wire; pipefail keeps the command's own exit status
    pipeline = f"{checked.remote} | head -c {limit + 1}"
    sent = f"bash -o pipefail -c {shlex.quote(pipeline)}"
    started = time.monotonic()
    error, rc, out, err = "", None, "", ""
    try:
        result = connection.run(
            sent, hide=True, warn=True, in_stream=False, timeout=policy.diagnostics_timeout_s
        )
        rc, out, err = result.exited, result.stdout, result.stderr
    except CommandTimedOut as timed_out:
        error = f"timed out after {policy.diagnostics_timeout_s} s"
        out, err = timed_out.result.stdout, timed_out.result.stderr
    out, scrubbed_out = scrub(out)
    err, scrubbed_err = scrub(err)
    out, cut = bounded(out, limit)
    err, _ = bounded(err, 2048)
    return CommandOutput(
        checked.command,
        sent,
        rc,
        out,
        err,
        round(time.monotonic() - started, 3),
        cut,
        scrubbed_out + scrubbed_err,
        error,
    )


def _collect_host(
    host: InventoryHost, commands: list[Checked], policy: FaultPolicy
) -> HostDiagnostics:
    found = HostDiagnostics(
        str(host.name),  # inventory strings are Ansible's tagged type: plain ones for YAML
        str(host.get("ansible_host", host.name)),
        dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    try:
        connection = _connection(host, policy.diagnostics_timeout_s)
        try:
            name, clock = (_run(connection, check_command(c), policy) for c in PREAMBLE)
            found.host_name, found.host_time = name.stdout.strip(), clock.stdout.strip()
            for checked in commands:
                found.commands.append(_run(connection, checked, policy))
        finally:
            connection.close()
    except Exception as err:  # unreachable, refused key, auth: the host's part is the error
        found.error = f"{type(err).__name__}: {err}"[:500]
    found.finished_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return found


def collect(
    project: Project,
    incident_id: str,
    *,
    person: str,
    hosts: tuple[str, ...] = (),
    now: dt.datetime | None = None,
    signing_key: Path | None = None,
) -> CollectResult:
    """Run the class's read-only diagnostics on the affected hosts and attach the output.

    Writes `incidents/<ID>/diagnostics/<UTC time>-<host>.json` per host and a timeline entry,
    committed as the person. A command that is not provably read-only stops everything before
    any host is contacted (exit 2).

    Example:
        result = collect(find_project(), "INC-0001", person="bob")
        result.status, [(h.host, len(h.commands), h.error) for h in result.hosts]
    """
    policy = load_fault_policy(project)
    incident = load_incident(project, incident_id)
    file = str(incident.path)
    targets = list(hosts) or incident.hosts
    problems = []
    if not targets:
        problems.append(Problem("the incident names no host", file, "hosts", "give --host HOST"))
    if incident.status not in ACTIVE:
        problems.append(
            Problem(
                f"{incident_id} is {incident.status}",
                file,
                "status",
                "collect diagnostics while the fault is open",
            )
        )
    inventory = load_inventory(project.require_environment(incident.environment))
    unknown = [h for h in targets if h not in inventory.hosts]
    problems += [
        Problem(
            f"no host {h!r} in {incident.environment}",
            file,
            "--host",
            f"use one of: {', '.join(inventory.hosts)}",
        )
        for h in unknown
    ]
    plans: dict[str, list[Checked]] = {}
    for name in targets:
        if name in unknown:
            continue
        try:
            plans[name] = plan_commands(policy, incident.klass, inventory.hosts[name].groups)
        except NotReadOnly as why:  # policy check refuses these too: this is the second guard
            problems.append(
                Problem(
                    f"a diagnostic command is not read-only: {why}",
                    policy_file("incidents.yml"),
                    f"diagnostics.classes.{incident.klass}",
                    "fix the policy (opsledger policy check names the command)",
                )
            )
            break
    if problems:
        raise OpsledgerError(problems)
    started = dt.datetime.now(dt.UTC)
    with ThreadPoolExecutor(max_workers=min(16, len(plans))) as pool:
        gathered = list(
            pool.map(lambda name: _collect_host(inventory.hosts[name], plans[name], policy), plans)
        )
    folder = diagnostics_dir(project, incident_id)
    outputs = {  # written with the step's commit, or not at all (take_step)
        folder / f"{stamp(started)}-{found.host}.json": json.dumps(asdict(found), indent=2) + "\n"
        for found in gathered
    }
    files = list(outputs)
    reached = [h for h in gathered if not h.error]
    timed_out = any(c.error for h in gathered for c in h.commands)
    status = (
        CollectStatus.FAILED
        if not reached
        else CollectStatus.PARTIAL
        if len(reached) < len(gathered) or timed_out
        else CollectStatus.COLLECTED
    )
    summary = {
        "action": "diagnostics",
        "files": [str(p.relative_to(project.root)) for p in files],
        "result": status.value,
        "hosts": {h.host: h.error or f"{len(h.commands)} command(s)" for h in gathered},
    }

    def mutate(incident: Incident, policy: FaultPolicy, when: dt.datetime):
        return dict(summary), []

    step: StepResult = take_step(
        project,
        incident_id,
        person=person,
        step=Step.COLLECTED,
        allowed=ACTIVE,
        mutate=mutate,
        message=f"diagnostics from {', '.join(plans)} ({status.value}, {person})",
        now=now,
        signing_key=signing_key,
        policy=policy,
        extra_files=outputs,
    )
    return CollectResult(status, step.incident, gathered, files, step.commit)
