"""Steps a runbook declares to follow its run, so apply knows none of them by name.

A runbook's `drill: <service>` says its run is a DR drill of a policies/dr.yml service: after
the run, the drill's measurements are judged and a drill record is written, which apply commits
with the run record and which opens incidents and notifies like `opsledger drill`'s own. A new
kind of step is one entry in STEPS, not an edit of apply.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from opsledger.changes import Change
from opsledger.drill import drill_record, load_services
from opsledger.playbook_runs import PlaybookRun
from opsledger.project import Project
from opsledger.runbooks import Runbook
from opsledger.verify import VerifyResult


@dataclass
class AfterRunStep:
    phase: str  # the event phase its line is shown under
    line: str  # one line for the operator
    evidence: Path | None  # a record it wrote, to commit with the run record


def _drill(
    project: Project,
    change: Change,
    runbook: Runbook,
    *,
    started: dt.datetime,
    run: PlaybookRun,
    checked: VerifyResult | None,
    hosts: list[str],
) -> AfterRunStep:
    """A DR drill runbook's run also leaves a drill record (written here, committed by apply)."""
    service_name = runbook.raw["drill"]
    service = load_services(project).get(service_name)
    if service is None:
        why = f"runbook drills {service_name!r}, not in policies/dr.yml: no drill record"
        return AfterRunStep("drill", why, None)
    result = drill_record(
        project,
        service,
        environment=change.environment,
        started=started,
        run=run,
        checked=checked,
        hosts=hosts,
        params=change.params,
        change=change.id,
        commit=False,
    )
    verdict = "passed" if result.passed else "FAILED: " + "; ".join(result.reasons)
    return AfterRunStep("drill", f"DR drill {service.name}: {verdict}", result.record_path)


# A runbook key -> the step it declares; run in this order.
STEPS: dict[str, Callable[..., AfterRunStep]] = {"drill": _drill}


def after_run(
    project: Project,
    change: Change,
    runbook: Runbook,
    *,
    started: dt.datetime,
    run: PlaybookRun,
    checked: VerifyResult | None,
    hosts: list[str],
) -> list[AfterRunStep]:
    """Every step the runbook declares, each with its line and the evidence it wrote.

    Example:
        steps = after_run(project, change, runbook, started=started, run=played,
                          checked=None, hosts=["lab-db1"])
    """
    return [
        step(project, change, runbook, started=started, run=run, checked=checked, hosts=hosts)
        for key, step in STEPS.items()
        if runbook.raw.get(key)
    ]
