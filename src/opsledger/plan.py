"""What a change would do: the decision, then a check-mode run with diffs on its targets.

Per host: `would change` (with each changing task and its diff), `unchanged`, `unreachable`,
`cannot predict` or `error`. Check mode cannot see past a change it does not make (a package
not yet installed, a service not yet created): a host whose check run fails *after* a task that
would have changed something is `cannot predict`, with the reason. A failure with nothing
skipped before it saw the real state, and a failure on the controller (a file or template the
playbook names is missing, a lookup or a variable that fails) is no prediction problem: it is
an `error`, and the plan fails (exit 1) naming it — it would fail the apply the same way.
Runbooks whose metadata says check mode does not predict them are reported as not predictable
without running anything. The check run starts from an export of the decided content, as apply's
run does (export.py).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from opsledger.changes import load_change
from opsledger.decide import Decision, decide
from opsledger.export import exported
from opsledger.maintenance import run_vars
from opsledger.playbook_runs import TaskChange, run_playbook
from opsledger.project import Project
from opsledger.runbooks import load_runbook


@dataclass
class HostPlan:
    host: str
    status: str  # would change | unchanged | unreachable | cannot predict | error
    changes: list[TaskChange] = field(default_factory=list)
    note: str = ""


@dataclass
class Plan:
    change_id: str
    title: str
    runbook: str
    environment: str
    targets: str
    decision: Decision
    hosts: list[HostPlan]
    predicted: bool

    @property
    def errors(self) -> list[HostPlan]:
        """Hosts whose check run failed for a reason check mode does not explain."""
        return [h for h in self.hosts if h.status == "error"]

    def as_dict(self) -> dict:
        return {
            "change": self.change_id,
            "title": self.title,
            "runbook": self.runbook,
            "environment": self.environment,
            "targets": self.targets,
            "predicted": self.predicted,
            "decision": self.decision.as_dict(),
            "hosts": [
                {
                    "host": h.host,
                    "status": h.status,
                    "note": h.note,
                    "changes": [c.__dict__ for c in h.changes],
                }
                for h in self.hosts
            ],
        }


def plan(
    project: Project,
    change_id: str,
    *,
    now: dt.datetime | None = None,
    base: str | None = None,
    verbosity: int = 0,
) -> Plan:
    """Decide, then predict per host with check mode and diff.

    Example:
        p = plan(find_project(), "CHG-0001")
        [(h.host, h.status) for h in p.hosts]
    """
    decision = decide(project, change_id, now=now, base=base)
    change = load_change(project, change_id)
    runbook = load_runbook(project, change.runbook)

    def made(hosts: list[HostPlan], *, predicted: bool) -> Plan:
        return Plan(
            change_id,
            change.title,
            runbook.name,
            change.environment,
            change.targets,
            decision,
            hosts,
            predicted,
        )

    if not runbook.check_mode:
        hosts = [
            HostPlan(
                h,
                "cannot predict",
                note=f"runbook {runbook.name} is not predictable "
                "in check mode; it will run as described in its metadata",
            )
            for h in decision.hosts
        ]
        return made(hosts, predicted=False)
    # From an export of the content that was decided, as apply runs it (export.py): what a
    # reviewer sees predicted is what that content does, never bookkeeping read on the way.
    files = decision.content.files if decision.content is not None else {}
    with exported(project, files) as tree:
        run = run_playbook(
            tree,
            playbook=load_runbook(tree, runbook.name).playbook,
            inventory=tree.inventory_file(change.environment),
            limit=change.targets,
            params=change.params,
            tags=change.params.get("tags"),
            check=True,
            diff=True,  # the plan shows what would change
            timeout=runbook.timeout,
            extravars=run_vars(tree, change.environment),  # as apply passes them
            verbosity=verbosity,
        )
    hosts = []
    for name in decision.hosts:
        result = run.hosts.get(name)
        if result is None:
            hosts.append(HostPlan(name, "unchanged", note="no task applies to this host"))
        elif result.unreachable:
            hosts.append(HostPlan(name, "unreachable", note=result.failures[-1]))
        elif result.failed and _real_error(result.failures[0], result.changed_before_failure):
            hosts.append(HostPlan(name, "error", result.changes, result.failures[0]))
        elif result.failed:
            note = (
                "check mode cannot see past changes it does not make (e.g. a package not "
                f"yet installed): {result.failures[0]}"
            )
            hosts.append(HostPlan(name, "cannot predict", result.changes, note))
        elif result.changed:
            hosts.append(HostPlan(name, "would change", result.changes))
        else:
            hosts.append(HostPlan(name, "unchanged"))
    return made(hosts, predicted=True)


# Failures that happen on the controller, whatever check mode skipped on the host: the playbook
# names a file, template, lookup or variable that is not there. Ansible's own wording.
CONTROLLER_ERRORS = (
    "could not find or access",
    "could not locate file in lookup",
    "an unhandled exception occurred while running the lookup plugin",
    "an unhandled exception occurred while templating",
    "is undefined",
    "template error while templating string",
    "unable to look up a name or access an attribute in template string",
    "the conditional check",
    "error while resolving value for",
)


def _real_error(failure: str, changed_before: int | None) -> bool:
    """Whether a check-mode failure is an error rather than a limit of check mode."""
    text = failure.lower()
    if any(marker in text for marker in CONTROLLER_ERRORS):
        return True
    return not changed_before  # nothing was skipped before it: check mode saw the real state


# `plan --detailed-exitcode`, like `terraform plan -detailed-exitcode`: a pipeline tells "nothing
# to do" from "hosts would change" by the exit code alone. Terraform's 2 is taken here (invalid
# input), so hosts that would change exit 5; 1, 2, 3 and 4 keep their meaning across commands.
EXIT_WOULD_CHANGE = 5
# Statuses that mean a host may change: `cannot predict` counts, since nothing proves it won't.
CHANGING = ("would change", "cannot predict")


def exit_code(p: Plan, *, detailed: bool = False) -> int:
    """The plan's exit code: 1 a real error, 3 denied, 5 changes (`detailed` only), else 0.

    With `detailed`, 0 means no host would change and 5 that some would (or may).

    An error outranks a denial, and a denial outranks changes: a pipeline that treats 5 as
    "apply needed" must never see it for a change that may not run.

    Example:
        exit_code(plan(project, "CHG-0001"), detailed=True)  # 0 nothing to do, 5 changes
    """
    from opsledger.errors import EXIT_DENIED, EXIT_FAILED

    if p.errors:
        return EXIT_FAILED
    if not p.decision.allowed:
        return EXIT_DENIED
    if detailed and any(h.status in CHANGING for h in p.hosts):
        return EXIT_WOULD_CHANGE
    return 0


def render(p: Plan, fmt: str = "text") -> str:
    """The plan as text (terminal), md (a pull-request comment) or json."""
    if fmt == "json":
        return json.dumps(p.as_dict(), indent=2)
    verdict = "ALLOWED" if p.decision.allowed else "DENIED"
    md = fmt == "md"
    out = []
    head = (
        f"{p.change_id}: {p.title} — {p.runbook} on {p.environment}:{p.targets} "
        f"({p.decision.priority}, {p.decision.risk} risk) — {verdict}"
    )
    out.append(f"### {head}" if md else head)
    out.append("")
    if md:
        out += markdown_tables(p)
    else:
        for c in p.decision.checks:
            out.append(f"  {'pass' if c.passed else 'FAIL'}  {c.rule}: {c.why}")
        out.append("")
        for h in p.hosts:
            out.append(f"{h.host}: {h.status}" + (f" — {h.note}" if h.note else ""))
            for c in h.changes:
                out.append(f"  ~ {c.task}")
    diffs = [(h.host, c) for h in p.hosts for c in h.changes if c.diff]
    if diffs:
        out.append("")
        if md:
            out.append("<details><summary>Diffs</summary>\n")
        for host, c in diffs:
            out.append(f"{'#### ' if md else '--- '}{host}: {c.task}")
            out.append("```diff" if md else "")
            out.append(c.diff)
            out.append("```" if md else "")
        if md:
            out.append("</details>")
    if p.errors:
        out.append("")
        out += [f"ERROR on {h.host}: {h.note}" for h in p.errors]
    out.append("")
    out.append(f"policy {p.decision.policy_sha256[:12]} · content {p.decision.content_sha256[:12]}")
    return "\n".join(out) + "\n"


def markdown_tables(p: Plan) -> list[str]:
    """The decision's rules and the per-host plan as markdown tables (plan and PR comment)."""
    out = ["| rule | result | why |", "|---|---|---|"]
    out += [
        f"| {c.rule} | {'✅' if c.passed else '❌'} | {c.why.replace('|', '/')} |"
        for c in p.decision.checks
    ]
    out += ["", "| host | plan | tasks that would change |", "|---|---|---|"]
    for h in p.hosts:
        tasks = "<br>".join(c.task for c in h.changes) or h.note or "-"
        out.append(f"| {h.host} | {h.status} | {tasks.replace('|', '/')} |")
    return out
