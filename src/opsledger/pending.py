"""`apply --pending`: what can run now runs, in a fixed order; what never will fails loudly.

What CI runs after a merge. Each change without a successful (committed) run is classified:

- `applied` — it could run now and did (its result);
- `waiting` — it can still run later: its window has not opened, a freeze ends before its window
  does, an earlier change that can still run holds its hosts, or promotion is missing;
- `not approved` — approvals missing while its window is still open;
- `running` — a run of it has started (write-ahead record) and has not ended, here or (pulled
  from the origin) on another controller, or another controller claimed it first;
- `already run` — another run ran it while this one waited for its hosts (the run it
  waited for, or another controller's, found on the origin once the hosts were locked);
- `withdrawn` — listed, never run;
- `other shards` — a sharded apply (`ci apply --shard I/N`) whose shard holds none of its hosts;
- `cannot run` — it never will as it stands: its window has closed, its window lies outside
  every maintenance window or overlaps a freeze, or its current content already ended failed,
  rolled back or rollback failed. These fail the command (exit 1), so CI says so loudly: withdraw
  the change (`opsledger change withdraw`) or amend it (which needs new approvals).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from opsledger.apply import (
    RETRYABLE,
    ApplyResult,
    apply_change,
    clock_override,
    reconcile_first,
)
from opsledger.base import resolve_base
from opsledger.changes import Change, change_ids, load_change, load_withdrawal
from opsledger.decide import Decision, decide, run_order
from opsledger.errors import EXIT_INVALID, EXIT_LOCKED, OpsledgerError
from opsledger.execution import Events
from opsledger.gitrepo import require_history
from opsledger.localcache import ensure_commit_graph
from opsledger.origin_records import OriginRecords
from opsledger.policy.windows import freezes_over
from opsledger.policycheck import require_policies
from opsledger.project import Project
from opsledger.records import (
    STARTED_SUFFIX,
    Record,
    RunResult,
    committed_runs_of,
    head_runs,
    open_runs,
)

ACTIONS = (
    "applied",
    "waiting",
    "not approved",
    "running",
    "already run",
    "withdrawn",
    "cannot run",
    "other shards",
)


@dataclass
class PendingItem:
    change_id: str
    action: str  # one of ACTIONS
    why: str
    result: ApplyResult | None = None


@dataclass
class PendingResult:
    items: list[PendingItem]

    @property
    def applied(self) -> list[ApplyResult]:
        return [i.result for i in self.items if i.result]

    @property
    def stuck(self) -> list[PendingItem]:
        """Changes that can never run as they stand: the pipeline must fail on them."""
        return [i for i in self.items if i.action == "cannot run"]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.applied) and not self.stuck


def _never(
    change: Change, decision: Decision, runs: list[Record], project: Project, base: str | None
) -> str:
    """Why the change can never run as it stands, or "" when it still may."""
    failed_before = [
        r for r in runs if r.result not in RETRYABLE and r.content_sha256 == decision.content_sha256
    ]
    if failed_before:
        last = failed_before[-1]
        return f"its run at {last.finished_at} ended {last.result}"
    failing = {c.rule: c.why for c in decision.checks if not c.passed}
    if "change window" in failing and decision.at > change.window_end:
        return f"its window closed at {change.window_end.isoformat()} without a successful run"
    if "maintenance window" in failing:
        return failing["maintenance window"]
    if "freeze" in failing:
        policies = resolve_base(project, base).policies  # the ones that decided
        for freeze in freezes_over(
            policies.freezes, change.environment, change.window_start, change.window_end
        ):
            return f"its window overlaps the freeze '{freeze.name}'"
    return ""


def _lost_race(err: OpsledgerError) -> str | None:
    """The pending action of an apply another run got to first, or None for a real error."""
    field = err.problems[0].field if err.problems else None
    if err.exit_code == EXIT_LOCKED and field in ("runs", "shards"):
        return "running"
    if err.exit_code == EXIT_LOCKED and field == "shard":
        return "other shards"
    if err.exit_code == EXIT_INVALID and field == "result":
        return "already run"
    return None


def apply_pending(
    project: Project,
    *,
    now: dt.datetime | None = None,
    wait: float = 0,
    skip_verify: bool = False,
    events: Events | None = None,
    environment: str | None = None,
    origin: OriginRecords | None = None,
    base: str | None = None,
    verbosity: int = 0,
    run_change: Callable[..., ApplyResult] = apply_change,
) -> PendingResult:
    """Apply, in run order, every change of this branch that can run now; classify the rest.

    Run order is decide's: emergencies, then the earlier window, then the older request. A
    change that can never run is reported as `cannot run` and makes `ok` false. `environment`
    limits it to one environment (CI applies one environment at a time); `base` names the
    protected branch decide trusts. A chosen clock (`now`) is refused (exit 2, nothing run)
    when any pending change is outside the lab. With `origin`, the run records on the origin
    decide who runs (see apply_change): a race another controller won is listed as `running`
    or `already run`, not as a failure. `run_change` runs one change (default apply_change;
    sharded.shard_runner runs one shard of it).

    Example:
        outcome = apply_pending(find_project())
        [(i.change_id, i.action, i.why) for i in outcome.items]
    """
    require_history(project.root, "apply --pending")
    # Each pending change's withdrawal is a history walk by path, before any decision writes
    # the commit-graph: without changed-path filters, seconds per change at 30,000 commits.
    ensure_commit_graph(project.root)
    require_policies(project)  # fail closed, even when nothing is pending
    if environment is not None:
        project.require_environment(environment)
    if now is not None:  # refuse a chosen clock before anything is touched
        for change, _ in _candidates(project, head_runs(project), environment):
            if load_withdrawal(project, change.id) is None:
                clock_override(project, change.id, now)
    reconcile_first(project, events)
    files = head_runs(project)
    candidates = _candidates(project, files, environment)
    running = {f.record.change for f in open_runs(project, files, on_disk=False).started}
    items = []
    for change, runs in candidates:
        withdrawal = load_withdrawal(project, change.id)
        if withdrawal is not None:
            why = f"by {withdrawal.person} at {withdrawal.at}: {withdrawal.reason}"
            items.append(PendingItem(change.id, "withdrawn", why))
            continue
        if change.id in running:
            items.append(PendingItem(change.id, "running", "a run has started and not ended"))
            continue
        decision = decide(project, change.id, now=now, base=base)
        never = _never(change, decision, runs, project, base)
        if never:
            fix = (
                f"withdraw it (opsledger change withdraw {change.id} --reason ...) or amend it "
                "(new approvals)"
            )
            items.append(PendingItem(change.id, "cannot run", f"{never}; {fix}"))
            continue
        failing = [c for c in decision.checks if not c.passed]
        why = "; ".join(f"{c.rule}: {c.why}" for c in failing)
        if any(c.rule in ("approvals", "requester") for c in failing):
            items.append(PendingItem(change.id, "not approved", why))
            continue
        if failing:
            items.append(PendingItem(change.id, "waiting", why))
            continue
        try:
            result = run_change(
                project,
                change.id,
                now=now,
                wait=wait,
                skip_verify=skip_verify,
                events=events,
                origin=origin,
                base=base,
                verbosity=verbosity,
                decided=decision,
            )
        except OpsledgerError as err:
            lost = _lost_race(err)
            if lost is None:
                raise
            items.append(PendingItem(change.id, lost, str(err.problems[0])))
            continue
        items.append(PendingItem(change.id, "applied", result.result, result))
    return PendingResult(items)


def _candidates(
    project: Project, files: dict[str, list], environment: str | None
) -> list[tuple[Change, list[Record]]]:
    """Changes without a successful committed run (of `environment`), in run order.

    Which changes are applied comes from HEAD's index of run records (records.head_runs:
    kept by tree id, read from the last one by what a commit changed); only the records of
    the changes left are parsed, so the cost follows the pending changes, not the history.
    """
    applied = {
        entry[1]
        for path, entry in files.items()
        if entry[2] == RunResult.SUCCESS and not path.endswith(STARTED_SUFFIX)
    }
    pending = change_ids(project, skip=applied)
    runs = committed_runs_of(project, files, set(pending))
    candidates = []
    for change_id in pending:
        change = load_change(project, change_id)
        if environment is None or change.environment == environment:
            candidates.append((change, runs[change_id]))
    candidates.sort(key=lambda item: run_order(item[0]))
    return candidates
