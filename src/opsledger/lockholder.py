"""Who holds a host's lock: the record both lock backends write and every refusal reads.

Apart from `lock` so the origin backend (`origin_lock`, `origin_queue`) can read and write
holders while `lock`, which chooses the backend, imports it in turn: no cycle.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from opsledger import procs


@dataclass(frozen=True)
class Holder:
    """Who holds a host: written by the holder, read by whoever is refused."""

    host: str
    change: str
    owner: str
    pid: int
    machine: str
    since: str
    environment: str = ""
    run: str = ""  # <change>/<stamp>#<token>: the OPSLEDGER_RUN_MARKER of its processes
    pid_start: int | None = None
    guard_pid: int | None = None  # the run's guard, which outlives a killed apply (guard.py)
    guard_start: int | None = None
    runner_pid: int | None = None  # ansible-playbook, once it started
    expires: str = ""  # origin locks only: renewed by the holder's heartbeat
    machine_key: str = ""  # procs.machine_key(): where its pids can be looked at
    runner: str = ""  # the CI job holding it (procs.ci_runner()): which runner to look at
    renewed: str = ""  # the heartbeat that last pushed `expires`
    ticket: int | None = None  # a waiter's place in the origin queue (origin_queue.py)

    @classmethod
    def parse(cls, text: str | bytes) -> Holder | None:
        try:
            data = json.loads(text)
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError):
            return None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        runner = f", runner {self.runner}" if self.runner else ""
        return (
            f"{self.change} ({self.owner}, pid {self.pid} on {self.machine}{runner} "
            f"since {self.since})"
        )

    def gone(self) -> str | None:
        """Why this holder's run is over, when this machine can tell; None if it may run on."""
        return procs.run_gone(
            machine_name=self.machine,
            key=self.machine_key,
            pid=self.pid,
            pid_start=self.pid_start,
            guard_pid=self.guard_pid,
            guard_start=self.guard_start,
            run=self.run,
        )
