"""Running a change's runbook: the playbook run, its cancellation, its verification, its events.

What apply and rollback share: the runbook runs through ansible-runner (playbook_runs.py) with the
run's marker (the guard finds its processes by it), Ctrl-C and SIGTERM become a cancel
ansible-runner polls, and the runbook's Testinfra suites verify the result.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opsledger import procs
from opsledger.changes import Change
from opsledger.lock import HeldLocks
from opsledger.maintenance import run_vars
from opsledger.playbook_runs import PlaybookRun, run_playbook
from opsledger.project import Project
from opsledger.records import RunResult, Verified
from opsledger.runbooks import Runbook
from opsledger.verify import VerifyResult, verify

Events = Callable[[dict[str, Any]], None]


def verification(result: VerifyResult | None) -> dict[str, Any]:
    if result is None:
        return {"status": Verified.SKIPPED}
    return {
        "status": Verified.PASSED if result.ok else Verified.FAILED,
        "environment": result.environment,
        "targets": result.targets,
        "suites": list(result.suites),
        "passed": result.count(Verified.PASSED),
        "failed": result.count(Verified.FAILED) + result.count(Verified.ERROR),
        "skipped": result.count(Verified.SKIPPED),
        "duration_s": result.duration_s,
        "failures": [
            {"test": o.test, "host": o.host, "message": o.message} for o in result.failures
        ],
    }


def verification_entry(
    checked: VerifyResult | None, skipped: bool, result: str, failure: str
) -> dict[str, Any]:
    if checked is not None or skipped:
        return verification(checked)
    if failure.startswith("verification could not run"):
        return {"status": Verified.ERROR, "why": failure}
    why = "the run was canceled" if result == RunResult.CANCELED else "the run did not succeed"
    return {"status": Verified.NOT_RUN, "why": why}


class Interrupt:
    """Turns Ctrl-C (SIGINT) and SIGTERM into a cancel request the runner polls.

    ansible-playbook runs in its own session, so a terminal's Ctrl-C reaches only us. We pass
    it on as SIGINT, which ansible-playbook handles by stopping after its running tasks and
    cleaning up its workers; only if it has not ended within GRACE seconds does ansible-runner
    kill it.
    """

    GRACE = 60.0

    def __init__(self) -> None:
        self.requested = False
        self.runner_pid: int | None = None
        self._signaled_at: float | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupt:
        if _main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        if not self.requested:
            return False
        if self.runner_pid is None:
            return True
        if self._signaled_at is None:
            self._signaled_at = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.runner_pid, signal.SIGINT)
        return time.monotonic() - self._signaled_at > self.GRACE


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def phase(events: Events | None, phase: str, message: str, **extra: Any) -> None:
    if events:
        events({"event": "opsledger_phase", "phase": phase, "message": message, **extra})


def noting_runner(held: HeldLocks, interrupt: Interrupt, events: Events | None) -> Events:
    """Pass events on, noting the ansible-playbook pid (locks, cancel) when it first shows."""
    seen: set[int] = set()

    def handle(event: dict[str, Any]) -> None:
        pid = event.get("pid")
        if isinstance(pid, int) and pid not in seen:
            seen.add(pid)
            held.note_runner(pid)
            interrupt.runner_pid = pid
        if events:
            events(event)

    return handle


def run_runbook(
    project: Project,
    change: Change,
    runbook: Runbook,
    events: Events | None,
    interrupt: Interrupt,
    marker: str,
    journal: Path | None = None,
    env: dict[str, str] | None = None,
    verbosity: int = 0,
) -> PlaybookRun:
    return run_playbook(
        project,
        playbook=runbook.playbook,
        inventory=project.inventory_file(change.environment),
        limit=change.targets,
        params=change.params,
        tags=change.params.get("tags"),
        timeout=runbook.timeout,
        event_handler=events,
        cancel=interrupt,
        private_dir=journal,
        # The guard finds the run's processes by the marker; `env` adds the read watch.
        extra_env={**(env or {}), **procs.run_env(marker)},
        extravars=run_vars(project, change.environment),  # backup-first hosts (dr.yml)
        verbosity=verbosity,
        diff=True,  # the job log keeps a summary of each diff (joblog.py)
    )


def verify_run(
    project: Project, change: Change, runbook: Runbook, events: Events | None
) -> VerifyResult:
    targets = runbook.verify_targets or change.targets
    phase(
        events, "verify", f"verifying {change.environment}:{targets} with {runbook.name}'s suites"
    )
    return verify(
        project, environment=change.environment, targets=targets, suites=runbook.verify_suites
    )
