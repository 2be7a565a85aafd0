"""Ansible callback: say that a long task is still running, and on which hosts it waits.

Why: a task that waits on the network (a package download, a backup to a remote repository)
prints nothing until it ends, so a slow step and a hung one look the same. Every
`OPSLEDGER_HEARTBEAT_SECONDS` (default 30; 0 turns it off) this prints one line per running
task — its name, the hosts not finished yet and how long it has run — so a person or a CI log
can tell a slow step from a stuck one. Task timeouts (ansible.cfg and the roles) still bound
how long it may take.
"""

from __future__ import annotations

import os
import threading
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: opsledger_heartbeat
type: notification
short_description: print a line while a long task is still running
description:
  - Every OPSLEDGER_HEARTBEAT_SECONDS seconds (default 30, 0 disables) prints the running
    task, the hosts it still waits on and its elapsed time.
requirements:
  - enabled in callbacks_enabled (the project's ansible.cfg does it)
"""


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class CallbackModule(CallbackBase):
    """A ticker thread that reports the current task while hosts are still working on it."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "opsledger_heartbeat"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        try:
            self._interval = float(os.environ.get("OPSLEDGER_HEARTBEAT_SECONDS", "30"))
        except ValueError:
            self._interval = 30.0
        self._lock = threading.Lock()
        self._task = ""
        self._started = 0.0
        self._said = 0.0  # when the last line about the current task was printed
        self._pending: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _tick(self) -> None:
        # a line only once a task has run a whole interval, then once per interval
        while not self._stop.wait(min(1.0, self._interval)):
            with self._lock:
                now = time.monotonic()
                if not self._task or not self._pending or now - self._said < self._interval:
                    continue
                self._said = now
                hosts = ", ".join(sorted(self._pending)[:8])
                more = len(self._pending) - 8
                line = (
                    f"... still running: {self._task} on {hosts}"
                    f"{f' (+{more} more)' if more > 0 else ''}"
                    f" ({_elapsed(time.monotonic() - self._started)})"
                )
            self._display.display(line)

    def v2_playbook_on_start(self, playbook) -> None:
        if self._interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._tick, name="heartbeat", daemon=True)
            self._thread.start()

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        with self._lock:
            self._task = task.get_name().strip()
            self._started = self._said = time.monotonic()
            self._pending = set()

    v2_playbook_on_handler_task_start = v2_playbook_on_task_start

    def v2_runner_on_start(self, host, task) -> None:
        with self._lock:
            self._pending.add(host.get_name())

    def _done(self, result) -> None:
        with self._lock:
            self._pending.discard(result._host.get_name())

    def v2_runner_on_ok(self, result) -> None:
        self._done(result)

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        self._done(result)

    def v2_runner_on_skipped(self, result) -> None:
        self._done(result)

    def v2_runner_on_unreachable(self, result) -> None:
        self._done(result)

    def v2_playbook_on_stats(self, stats) -> None:
        self._stop.set()
        with self._lock:
            self._task = ""
