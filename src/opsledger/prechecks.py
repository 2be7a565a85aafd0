"""Policy facts a change request can be checked against when it is typed, not when it runs.

The schema check (changes.py) says a change is well formed; `decide` says much later that its
requester is nobody or its window lies outside every maintenance window. These checks move
those two mistakes to `change new` and `change validate`, each with the fix: a person of
people.yml, or the next start that fits the environment's maintenance windows.
"""

from __future__ import annotations

import datetime as dt

from opsledger.changes import ValidationResult
from opsledger.errors import Problem
from opsledger.localcache import schema_passes
from opsledger.policy.bundle import Policies
from opsledger.policy.windows import (
    covered,
    freezes_over,
    next_allowed,
    shown_opening,
    shown_time,
    zone_of,
)
from opsledger.project import Project


def request_problems(
    policies: Policies,
    *,
    requested_by: str,
    change_type: str,
    environment: str,
    window_start: dt.datetime,
    window_end: dt.datetime,
    file: str = "",
    cli: bool = False,
) -> list[Problem]:
    """Why `decide` would refuse this request whatever anyone approves; [] when nothing.

    `cli` names the options (--requested-by, --start) instead of the file's fields.

    Example:
        request_problems(policies, requested_by="zed", change_type="normal",
                         environment="production", window_start=start, window_end=end)
    """
    problems = []
    if requested_by not in policies.people or requested_by == policies.records_by:
        people = ", ".join(p for p in sorted(policies.people) if p != policies.records_by)
        problems.append(
            Problem(
                f"{requested_by!r} is not a person of policies/people.yml",
                file,
                "--requested-by" if cli else "requested_by",
                f"request as one of: {people} (or add yourself to people.yml)",
            )
        )
    if environment not in policies.windows:  # an unknown environment: validation names it
        return problems
    emergency = change_type == "emergency"
    bypass_windows = emergency and bool(policies.emergency.get("bypass_windows"))
    bypass_freezes = emergency and bool(policies.emergency.get("bypass_freezes"))
    windows = policies.windows[environment]
    length = window_end - window_start

    def fix_at(after: dt.datetime, what: str) -> str:
        fit = next_allowed(
            windows,
            policies.freezes,
            environment,
            after,
            length,
            bypass_windows=bypass_windows,
            bypass_freezes=bypass_freezes,
        )
        if fit is None:
            return f"no maintenance window of {environment} fits {length}; shorten --duration"
        local = fit.astimezone(zone_of(windows)).isoformat()
        return f"{what} {shown_opening(windows, fit)}: --start {local}"

    if not bypass_windows and not covered(windows, window_start, window_end):
        problems.append(
            Problem(
                f"the window {shown_time(windows, window_start)} - "
                f"{shown_time(windows, window_end)} is outside every maintenance window of "
                f"{environment} (decide would deny it)",
                file,
                "--start" if cli else "window",
                fix_at(window_start, "next window opens"),
            )
        )
    frozen = (
        []
        if bypass_freezes
        else freezes_over(policies.freezes, environment, window_start, window_end)
    )
    if frozen:
        last = max(frozen, key=lambda f: f.end)
        names = ", ".join(repr(f.name) for f in frozen)
        fix = fix_at(last.end, "the first window after it opens")
        if emergency:
            fix += " (emergencies do not bypass freezes here)"
        else:
            fix += ", or --type emergency if it cannot wait"
        problems.append(
            Problem(
                f"the window overlaps the freeze {names} of {environment} "
                f"({shown_time(windows, last.start)} - {shown_time(windows, last.end)}): "
                "decide would deny it",
                file,
                "--start" if cli else "window",
                fix,
            )
        )
    return problems


def change_problems(
    project: Project, result: ValidationResult, now: dt.datetime | None = None
) -> list[Problem]:
    """`change validate`'s policy facts for a well-formed change: requester and window.

    A window that has already closed is not judged again: the change ran or never will, and
    its history is not rewritten.

    Example:
        change_problems(project, validate_change(project, "CHG-0001"))
    """
    change = result.change
    if change is None:
        return []
    from opsledger.base import policies_for

    moment = now or dt.datetime.now(dt.UTC)
    with schema_passes(project):  # policy files that passed their schemas: no jsonschema
        policies = policies_for(project)
    problems = request_problems(
        policies,
        requested_by=change.requested_by,
        change_type=change.type,
        environment=change.environment,
        window_start=change.window_start,
        window_end=change.window_end,
        file=str(change.file),
    )
    return [p for p in problems if p.field != "window" or moment <= change.window_end]
