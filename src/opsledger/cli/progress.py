"""Showing a run as it happens: a live hosts x counts table, or one JSON object per event.

ansible-runner hands every Ansible event to the apply pipeline, which passes them here along
with its own phase events (decide, lock, run, verify, rollback, record). The terminal view is a
rich table (one row per host: ok / changed / failed / unreachable / skipped and the task it is
on); `--json` prints each event as one JSON line for CI logs and other tools.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

COUNTS = ("ok", "changed", "failed", "unreachable", "skipped")
_RUNNER = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}


def summary(event: dict[str, Any]) -> dict[str, Any] | None:
    """The part of an event worth a log line, or None for noise (verbose output, includes)."""
    kind = event.get("event", "")
    if kind == "opsledger_phase":
        return {k: v for k, v in event.items() if k != "stdout"}
    data = event.get("event_data") or {}
    if kind == "verbose" and str(event.get("stdout", "")).startswith("... still running"):
        # the opsledger_heartbeat callback: a long task is alive, and on which hosts it waits
        return {"event": "heartbeat", "message": str(event["stdout"]).strip()}
    if kind == "playbook_on_play_start":
        return {"event": "play", "play": data.get("play", "")}
    if kind == "playbook_on_task_start":
        return {"event": "task", "task": data.get("task", ""), "role": data.get("role", "")}
    if kind in _RUNNER:
        if kind == "runner_on_failed" and data.get("ignore_errors"):
            status = "failed (ignored)"
        else:
            status = _RUNNER[kind]
        res = data.get("res") or {}
        out = {
            "event": "host",
            "host": data.get("host", ""),
            "task": data.get("task", ""),
            "status": status,
            "changed": bool(res.get("changed")),
        }
        if status in ("failed", "unreachable"):
            out["msg"] = str(res.get("msg", ""))[:500]
        return out
    if kind == "playbook_on_stats":
        return {
            "event": "stats",
            "changed": data.get("changed", {}),
            "failures": data.get("failures", {}),
        }
    return None


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class JsonEvents:
    """Prints one JSON object per line (stdout), flushing so a CI log shows it at once."""

    def __call__(self, event: dict[str, Any]) -> None:
        line = summary(event)
        if line is not None:
            sys.stdout.write(json.dumps(line, default=str) + "\n")
            sys.stdout.flush()


class LiveProgress:
    """A live table of hosts x counts with the current task; phase messages scroll above it."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.rows: dict[str, dict[str, int]] = {}
        self.task = ""
        self.task_started = 0.0
        self.play = ""
        self.live: Live | None = None  # started with the first play: a denial shows no table

    def __enter__(self) -> LiveProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.stop()
            self.live = None
            if not self.console.is_terminal:
                self.console.line()  # a non-terminal Live leaves the cursor after the table

    def _caption(self) -> str | None:
        if not self.task:
            return None
        seconds = int(time.monotonic() - self.task_started)
        elapsed = f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
        return f"{_clip(f'task: {self.task}', 70)} ({elapsed})"

    def _table(self) -> Table:
        table = Table(
            "host",
            *COUNTS,
            title=_clip(self.play, 70),
            caption=self._caption(),
            title_justify="left",
            caption_justify="left",
        )
        styles = {"changed": "yellow", "failed": "red", "unreachable": "red"}
        for host, counts in sorted(self.rows.items()):
            cells = []
            for name in COUNTS:
                value = counts.get(name, 0)
                style = styles.get(name) if value else None
                cells.append(f"[{style}]{value}[/{style}]" if style else str(value))
            table.add_row(host, *cells)
        return table

    def __call__(self, event: dict[str, Any]) -> None:
        line = summary(event)
        if line is None:
            return
        kind = line["event"]
        if kind == "opsledger_phase":
            self._stop()  # one table per playbook run (the change, then a rollback)
            self.console.print(f"[bold]{line['phase']}[/bold]: {line['message']}")
            return
        if kind == "heartbeat":
            # a terminal sees the task's elapsed time tick in the table; a CI log gets the line
            if not self.console.is_terminal:
                self.console.print(line["message"], markup=False)
            return
        if self.live is None:
            self.rows = {}
            # get_renderable: the table is redrawn on every refresh, so the elapsed time ticks
            self.live = Live(get_renderable=self._table, console=self.console, refresh_per_second=4)
            self.live.start()
        if kind == "play":
            self.play = line["play"]
        elif kind == "task":
            self.task = line["task"]
            self.task_started = time.monotonic()
        elif kind == "host":
            counts = self.rows.setdefault(line["host"], dict.fromkeys(COUNTS, 0))
            status = line["status"]
            if status in counts:
                counts[status] += 1
            if line["changed"]:
                counts["changed"] += 1
            if status in ("failed", "unreachable"):
                self.console.print(
                    f"[red]{status}[/red] {line['host']}: {line['task']}: {line.get('msg', '')}"
                )
        self.live.update(self._table())
