"""Running a runbook's playbook with ansible-runner and summarising what happened per host.

One place builds the run (inventory, limit, tags, params as `opsledger_params`, check mode) and
turns ansible-runner's events into per-host results: ok / changed / failed / unreachable
counts, the tasks that changed with their diffs, and the failures with their messages.

Params come from change files and the command line, so they reach Ansible as data it never
templates: every text is written with Ansible's `!unsafe` tag into an extra-vars file. Passed
as ordinary extra vars, `"{{ lookup('pipe', ...) }}"` in a param would run on the controller
during `plan` (check mode does not stop lookups), before anyone approved anything.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opsledger.errors import EXIT_FAILED, OpsledgerError, Problem
from opsledger.hostpattern import pattern_problems
from opsledger.inventory import environment_vault_id, load_inventory
from opsledger.joblog import LOGGED_EVENTS
from opsledger.project import Project
from opsledger.runsettings import run_settings

EventHandler = Callable[[dict[str, Any]], None]

# The events a kept journal holds: what a killed run's record (replay_journal) and job log
# (joblog.journal_log) are rebuilt from. The rest (each host's task start, verbose lines, play
# and include starts) ansible-runner would write as one JSON file each, read by nobody.
TASK_STARTS = frozenset({"playbook_on_task_start", "playbook_on_handler_task_start"})
JOURNALED = LOGGED_EVENTS | TASK_STARTS | {"playbook_on_stats"}


@dataclass
class TaskChange:
    task: str
    role: str
    diff: str = ""


@dataclass
class HostRun:
    host: str
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    changes: list[TaskChange] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    # how many tasks had changed (or, in check mode, would have) when the first failure came
    changed_before_failure: int | None = None


@dataclass
class PlaybookRun:
    status: str  # successful | failed | timeout | canceled
    rc: int
    hosts: dict[str, HostRun]
    data: dict[str, Any] = field(default_factory=dict)  # what the playbook handed back (set_stats)

    def host_stats(self) -> dict[str, dict[str, int]]:
        """Per host ok / changed / failed / unreachable / skipped, as records keep them."""
        return {
            name: {
                "ok": h.ok,
                "changed": h.changed,
                "failed": h.failed,
                "unreachable": h.unreachable,
                "skipped": h.skipped,
            }
            for name, h in sorted(self.hosts.items())
        }


def _diff_text(result: dict[str, Any]) -> str:
    """Render Ansible's structured diffs (before/after, or prepared text) as unified-ish text."""
    import difflib

    diffs = result.get("diff") or []
    if isinstance(diffs, dict):
        diffs = [diffs]
    chunks = []
    for diff in diffs:
        if not isinstance(diff, dict):
            continue
        if diff.get("prepared"):
            chunks.append(str(diff["prepared"]))
            continue
        before, after = diff.get("before", ""), diff.get("after", "")
        if isinstance(before, dict) or isinstance(after, dict):
            chunks.append(f"- {before}\n+ {after}")
            continue
        lines = difflib.unified_diff(
            str(before).splitlines(),
            str(after).splitlines(),
            diff.get("before_header", "before"),
            diff.get("after_header", "after"),
            lineterm="",
        )
        chunks.append("\n".join(lines))
    return "\n".join(c for c in chunks if c.strip())


class _Unsafe(dict):
    """The params mapping, to be written with Ansible's `!unsafe` tag."""


class _UnsafeDumper(yaml.SafeDumper):
    """YAML for Ansible's loader with the params mapping tagged `!unsafe`.

    Ansible builds everything under an `!unsafe` node (keys, nested lists and mappings) as
    untrusted, while each value keeps its own type: `"5"` stays text, `5` a number. Tagging
    each string instead would re-resolve it, turning the text "true" into a boolean.
    """


_UnsafeDumper.add_representer(
    _Unsafe, lambda dumper, data: dumper.represent_mapping("!unsafe", data)
)


def unsafe_extravars(params: dict[str, Any]) -> str:
    """`opsledger_params` as an extra-vars YAML document Ansible reads but never templates.

    Example:
        unsafe_extravars({"word": "{{ 1 + 1 }}"})  # opsledger_params: !unsafe {word: ...}
    """
    return yaml.dump(
        {"opsledger_params": _Unsafe(params)}, Dumper=_UnsafeDumper, width=10_000, sort_keys=False
    )


_TAG = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _run_problems(inventory: Path, limit: str, tags: Any) -> list[Problem]:
    """The limit and tags as ansible-playbook will read them, checked before it starts."""
    problems = [
        Problem(message, str(inventory), "limit", fix)
        for message, fix in pattern_problems(limit, load_inventory(inventory).names)
    ]
    if tags is not None and (
        not isinstance(tags, list)
        or not all(isinstance(t, str) and _TAG.fullmatch(t) for t in tags)
    ):
        problems.append(
            Problem(
                "tags must be a list of tag names",
                str(inventory),
                "params.tags",
                "write e.g. tags: [postgresql]",
            )
        )
    return problems


def run_playbook(
    project: Project,
    *,
    playbook: Path,
    inventory: Path,
    limit: str,
    params: dict[str, Any],
    tags: list[str] | None = None,
    check: bool = False,
    timeout: int | None = None,
    event_handler: EventHandler | None = None,
    artifact_dir: Path | None = None,
    cancel: Callable[[], bool] | None = None,
    private_dir: Path | None = None,
    extra_env: dict[str, str] | None = None,
    extravars: dict[str, Any] | None = None,
    verbosity: int = 0,
    diff: bool = False,
) -> PlaybookRun:
    """Run one playbook through ansible-runner and collect per-host results.

    `diff` passes --diff, for callers that keep what changed (plan and drift show it, apply's
    job log summarises it): a changed file's diff costs Ansible an extra read of the old
    content, paid for nothing where the result is thrown away.

    `verbosity` (-v, -vv, ...) reaches ansible-playbook, and its output is copied to stderr
    as it comes, so stdout stays the plan or the result a pipeline parses.

    `private_dir` keeps ansible-runner's folder (its event journal) where the caller can find
    it after a crash (only the events that rebuild the run, `JOURNALED`; without it no
    event is written at all); the environment's forks and strategy (runsettings.py) and
    `extra_env` reach ansible-playbook and everything it starts (the run
    marker the guard looks for, apply's read watch); `extravars` are plain variables from
    reviewed files (policies), never a change's params.

    Example:
        run_playbook(project, playbook=rb.playbook, inventory=project.inventory_file("lab"),
                     limit="db", params={}, check=True)
    """
    import ansible_runner

    problems = _run_problems(inventory, limit, tags)
    if problems:
        raise OpsledgerError(problems)
    tally = Tally()

    settings = run_settings(inventory, limit)

    def on_event(event: dict[str, Any]) -> bool:
        tally.add(event)
        if verbosity and event.get("stdout"):
            print(event["stdout"], file=sys.stderr, flush=True)
        if event_handler:
            event_handler(event)
        # ansible-runner writes the event to disk when this says so.
        return private_dir is not None and event.get("event") in JOURNALED

    cmdline = " ".join(
        (["--diff"] if diff else []) + (["--check"] if check else [])
    ) + ansible_verbosity(verbosity)
    # The environment's vault password CI wrote (ansible.cfg names only the lab's).
    vault_id = environment_vault_id(inventory)
    if vault_id:
        cmdline += f" --vault-id {shlex.quote(vault_id)}"
    # ansible-playbook lives next to this interpreter (the venv), which may not be on PATH;
    # ansible-runner finds it through this process's PATH.
    venv_bin = str(Path(sys.executable).parent)
    if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"
    with contextlib.ExitStack() as stack:
        if private_dir is None:
            private = stack.enter_context(tempfile.TemporaryDirectory(prefix="opsledger-run-"))
        else:
            private_dir.mkdir(parents=True, exist_ok=True)
            private = str(private_dir)
        # Params reach Ansible as data Ansible never templates (`!unsafe`), from a file.
        extravars_file = Path(private) / "opsledger-params.yml"
        extravars_file.write_text(
            unsafe_extravars(params)
            + (yaml.safe_dump(extravars, sort_keys=True) if extravars else "")
        )
        env = project.ansible_env()
        run = ansible_runner.run(
            private_data_dir=private,
            project_dir=str(project.root),
            playbook=str(playbook.resolve()),
            inventory=str(inventory.resolve()),
            limit=limit,
            tags=",".join(tags) if tags else None,
            cmdline=f"{cmdline} -e @{shlex.quote(str(extravars_file))}",
            # ansible-runner would otherwise turn host key checking off (it sets
            # ANSIBLE_HOST_KEY_CHECKING=False when unset) and move the fact cache into its
            # per-run artifacts (every run regathering facts): keep ansible.cfg's choices.
            envvars={
                "ANSIBLE_CONFIG": env["ANSIBLE_CONFIG"],
                "ANSIBLE_HOST_KEY_CHECKING": "True",
                **settings.env(),
                **(extra_env or {}),
            },
            fact_cache_type="ansible.cfg",
            quiet=True,
            event_handler=on_event,
            timeout=timeout,
            artifact_dir=str(artifact_dir) if artifact_dir else None,
            cancel_callback=cancel,
        )
        hosts = tally.hosts
        if run.status not in ("successful", "canceled") and not hosts:
            tail = (run.stdout.read() if run.stdout else "").strip().splitlines()[-3:]
            raise OpsledgerError(
                Problem(
                    f"ansible-playbook {run.status} (rc={run.rc}) before reaching any host: "
                    + " | ".join(tail),
                    str(playbook),
                    "playbook",
                    "run it with ansible-playbook to see the details",
                ),
                EXIT_FAILED,
            )
        return PlaybookRun(run.status, run.rc, hosts, tally.handed_back)


def ansible_verbosity(level: int) -> str:
    """ansible-playbook's flag for a verbosity level: 0 none, 1 " -v", 2 " -vv" (at most 4)."""
    level = max(0, min(level, 4))
    return f" -{'v' * level}" if level else ""


class Tally:
    """Per-host results built from ansible-runner events, live or replayed from a journal."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostRun] = {}
        self.handed_back: dict[str, Any] = {}  # set_stats data
        self.last_task = ""

    def add(self, event: dict[str, Any]) -> None:
        data = event.get("event_data") or {}
        host = data.get("host")
        kind = event.get("event", "")
        if (kind in TASK_STARTS or kind == "runner_on_start") and data.get("task"):
            self.last_task = data["task"]
        if host and kind.startswith("runner_on_"):
            entry = self.hosts.setdefault(host, HostRun(host))
            result = data.get("res") or {}
            task = data.get("task", "")
            if kind == "runner_on_ok":
                entry.ok += 1
                if result.get("changed"):
                    entry.changed += 1
                    entry.changes.append(TaskChange(task, data.get("role", ""), _diff_text(result)))
            elif kind == "runner_on_failed" and not data.get("ignore_errors"):
                if entry.changed_before_failure is None:
                    entry.changed_before_failure = entry.changed
                entry.failed += 1
                entry.failures.append(
                    f"{task}: {result.get('msg', '') or result.get('stderr', '')}".strip()
                )
            elif kind == "runner_on_unreachable":
                entry.unreachable += 1
                entry.failures.append(f"unreachable: {result.get('msg', '') or ''}".strip())
            elif kind == "runner_on_skipped":
                entry.skipped += 1
        elif kind == "playbook_on_stats":
            self.handed_back.update(data_of(event))


def replay_journal(private_dir: Path) -> Tally:
    """What a run got to, read back from the events ansible-runner wrote to its private folder.

    A killed apply leaves them behind; the interrupted run's record is built from them.
    """
    import json

    tally = Tally()
    events = []
    for path in private_dir.glob("artifacts/*/job_events/*.json"):
        try:
            events.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    for event in sorted(events, key=lambda e: e.get("counter", 0)):
        tally.add(event)
    return tally


def data_of(event: dict[str, Any]) -> dict[str, Any]:
    """The set_stats data (per_host: false) a playbook_on_stats event carries."""
    return dict((event.get("event_data") or {}).get("artifact_data") or {})
