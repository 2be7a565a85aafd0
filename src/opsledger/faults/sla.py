"""An incident's two SLA clocks, read from its timeline as git dated it.

Response runs from the commit that opened the incident to the first commit that acknowledged it
(resolving or closing it unacknowledged also answers it). Resolution runs from the same start
to the commit that resolved it, minus the intervals it was paused waiting on the customer where
sla.yml lets that priority pause; a reopened incident's resolution clock resumes at the
reopening and stops at the resolution that stands (the time between a withdrawn resolution and
its reopening is not counted). Each clock counts every hour (24x7) or only business hours,
as sla.yml says for the priority. `detected_at` may be earlier than the opening commit (when the
evidence says the fault was found) and is reported, but the clocks start when the incident was
recorded: that is the moment git can vouch for.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from opsledger.faults.clock import Clock, Interval, measure
from opsledger.faults.ledger import Stamp
from opsledger.faults.policy import FaultPolicy
from opsledger.faults.store import Incident


class SlaState(StrEnum):
    """Where an incident stands against its SLA (the worse of its two clocks)."""

    MET = "met"
    RUNNING = "running"
    NEAR_BREACH = "near_breach"
    PAUSED = "paused"
    BREACHED = "breached"
    UNKNOWN = "unknown"  # not committed yet, or a priority without terms


_WORST = (SlaState.MET, SlaState.RUNNING, SlaState.PAUSED, SlaState.NEAR_BREACH, SlaState.BREACHED)


@dataclass
class IncidentClocks:
    incident: str
    priority: str
    opened_at: dt.datetime | None
    acknowledged_at: dt.datetime | None
    resolved_at: dt.datetime | None
    closed_at: dt.datetime | None
    response: Clock | None
    resolution: Clock | None
    state: SlaState
    near: float

    @property
    def next_due(self) -> dt.datetime | None:
        """The deadline that matters now: response until acknowledged, then resolution."""
        for clock in (self.response, self.resolution):
            if clock is not None and clock.stopped is None:
                return clock.due
        return None

    def as_dict(self) -> dict[str, object]:
        def clock(c: Clock | None) -> dict[str, object] | None:
            if c is None:
                return None
            return {
                "target_minutes": round(c.target.total_seconds() / 60, 1),
                "due": c.due.isoformat() if c.due else None,
                "stopped": c.stopped.isoformat() if c.stopped else None,
                "used_minutes": round(c.used.total_seconds() / 60, 1),
                "state": c.state(self.near),
            }

        return {
            "state": self.state.value,
            "opened_at": self.opened_at.isoformat() if self.opened_at else None,
            "acknowledged_at": self.acknowledged_at.isoformat() if self.acknowledged_at else None,
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
            "response": clock(self.response),
            "resolution": clock(self.resolution),
        }


def _first(incident: Incident, stamps: list[Stamp | None], *actions: str) -> dt.datetime | None:
    for entry, stamp in zip(incident.timeline, stamps, strict=False):
        if entry.get("action") in actions and stamp is not None:
            return stamp.at
    return None


def resolutions(
    incident: Incident, stamps: list[Stamp | None]
) -> tuple[dt.datetime | None, list[Interval]]:
    """When the resolution that stands was made (None: reopened since, or never resolved).

    Also the (resolved, reopened) intervals: the service was believed back, nobody worked it.
    """
    resolved: dt.datetime | None = None
    gaps: list[Interval] = []
    for entry, stamp in zip(incident.timeline, stamps, strict=False):
        if stamp is None:
            continue
        if entry.get("action") == "resolved" and resolved is None:
            resolved = stamp.at
        elif entry.get("action") == "reopened" and resolved is not None:
            gaps.append((resolved, stamp.at))
            resolved = None
    return resolved, gaps


def pauses(incident: Incident, stamps: list[Stamp | None]) -> list[Interval]:
    """(paused, resumed) intervals as git dated them; an unresumed pause has no end."""
    found: list[Interval] = []
    for entry, stamp in zip(incident.timeline, stamps, strict=False):
        if stamp is None:
            continue
        if entry.get("action") == "paused" and (not found or found[-1][1] is not None):
            found.append((stamp.at, None))
        elif (
            entry.get("action") in ("resumed", "resolved", "closed")
            and found
            and found[-1][1] is None
        ):  # resolving ends a pause, as `incidents.paused` reads it: a reopening runs again
            found[-1] = (found[-1][0], stamp.at)
    return found


def incident_clocks(
    incident: Incident, stamps: list[Stamp | None], policy: FaultPolicy, now: dt.datetime
) -> IncidentClocks:
    """Both clocks of one incident at `now`.

    Example:
        c = incident_clocks(incident, history.stamps, policy, datetime.now(UTC))
        c.state, c.response.due, c.resolution.used
    """
    terms = policy.terms.get(incident.priority)
    opened = _first(incident, stamps, "opened")
    acknowledged = _first(incident, stamps, "acknowledged", "resolved", "closed")
    resolved, reopenings = resolutions(incident, stamps)
    closed = _first(incident, stamps, "closed")
    result = IncidentClocks(
        incident.id,
        incident.priority,
        opened,
        acknowledged,
        resolved,
        closed,
        None,
        None,
        SlaState.UNKNOWN,
        policy.near_breach,
    )
    if terms is None or opened is None:
        return result
    calendar = policy.calendar if terms.business_hours else None
    # waiting on the customer (where sla.yml allows it), and the time between a resolution
    # and its reopening: the resolution clock resumes where the withdrawn resolution stopped it
    stopped_by = (pauses(incident, stamps) if terms.pausable else []) + reopenings
    result.response = measure(
        "response",
        target=terms.response,
        started=opened,
        stopped=acknowledged,
        now=now,
        calendar=calendar,
        pauses=[],
        near=policy.near_breach,
    )
    result.resolution = measure(
        "resolution",
        target=terms.resolution,
        started=opened,
        stopped=resolved,
        now=now,
        calendar=calendar,
        pauses=stopped_by,
        near=policy.near_breach,
    )
    states = [SlaState(c.state(policy.near_breach)) for c in (result.response, result.resolution)]
    result.state = max(states, key=_WORST.index)
    return result
