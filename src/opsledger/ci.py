"""What the pipelines run, as use cases, so a laptop and any CI run the same steps.

- `pr_check`: which changes (CHG-<n>) and policy changes (POL-<n>) a pull request touches;
  each validated, decided under the *base's* policies and (optionally) planned; desired-state
  and policy edits that no change of the PR covers; one markdown summary for the PR. Exit 2
  when something is invalid or uncovered, 3 while a change lacks valid approvals (so a
  required status check blocks the merge), else 0.
- `ci_apply`: after a merge, `apply --pending` on the protected branch itself, then push the
  run records back.
- `codeowners`: the forge's required reviewers generated from policies, so they match.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from opsledger.apply import Events
from opsledger.changes import validate_change
from opsledger.compliance import is_desired_state
from opsledger.content import change_content
from opsledger.decide import Decision, decide
from opsledger.errors import EXIT_DENIED, EXIT_FAILED, EXIT_INVALID, OpsledgerError, Problem
from opsledger.gitrepo import git, require_history
from opsledger.identity import committer, signing_key
from opsledger.pending import PendingResult, apply_pending
from opsledger.plan import Plan, plan, render
from opsledger.policy import load_policies, policy_check
from opsledger.policy_changes import is_policy_change, policy_content
from opsledger.project import Project


@dataclass
class PrScope:
    base: str
    files: list[str]
    changes: list[str]
    desired_state: list[str]


@dataclass
class PrChange:
    change_id: str
    problems: list[str] = field(default_factory=list)
    decision: Decision | None = None
    plan: Plan | None = None
    covers: set[str] = field(default_factory=set)


@dataclass
class PrReport:
    scope: PrScope
    items: list[PrChange]
    uncovered: list[str]
    policy_problems: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.uncovered or self.policy_problems or any(i.problems for i in self.items):
            return EXIT_INVALID
        for item in self.items:
            if item.decision and any(
                c.rule in ("approvals", "requester") and not c.passed for c in item.decision.checks
            ):
                return EXIT_DENIED
        return 0

    def markdown(self) -> str:
        verdict = {0: "ready to merge", EXIT_INVALID: "invalid", EXIT_DENIED: "needs approvals"}
        out = [
            f"## opsledger: {verdict[self.exit_code]}",
            "",
            f"{len(self.scope.files)} file(s) changed against `{self.scope.base}`; "
            f"change request(s): {', '.join(self.scope.changes) or 'none'}.",
            "",
        ]
        if self.policy_problems:
            out += ["### Policies do not pass `opsledger policy check`", ""]
            out += [f"- {p}" for p in self.policy_problems]
            out.append("")
        if self.uncovered:
            out += ["### Desired state or policies changed without a change covering it", ""]
            out += [f"- `{path}`" for path in self.uncovered]
            out += [
                "",
                "Add a change request (`opsledger change new`) whose runbook, roles or targets' "
                "inventory include these files; for `policies/`, a policy change "
                "(`opsledger policy propose`).",
                "",
            ]
        for item in self.items:
            if item.problems:
                out += [f"### {item.change_id}: invalid", ""]
                out += [f"- {p}" for p in item.problems]
                out.append("")
            elif item.plan is not None:
                out.append(render(item.plan, "md"))
            elif item.decision is not None:
                out += [f"### {item.change_id}", "", "| rule | result | why |", "|---|---|---|"]
                out += [
                    f"| {c.rule} | {'✅' if c.passed else '❌'} | {c.why.replace('|', '/')} |"
                    for c in item.decision.checks
                ]
                out.append("")
        return "\n".join(out) + "\n"


def pr_scope(project: Project, base: str) -> PrScope:
    """The files a branch changes since it left `base`, and the change requests among them."""
    require_history(project.root, "ci pr")
    if (
        not base
        or base.startswith("-")
        or not base.isprintable()
        or git(
            project.root, "rev-parse", "--verify", "-q", f"{base}^{{commit}}", check=False
        ).returncode
    ):
        raise OpsledgerError(
            Problem(
                f"unknown base {base!r}",
                field="--base",
                fix="name the PR's target branch or commit (git fetch origin first in CI)",
            ),
            EXIT_INVALID,
        )
    merge_base = git(project.root, "merge-base", base, "HEAD").stdout.strip()
    # -z: NUL-separated and never quoted, so `zé.yml` or a name with spaces is one path.
    out = git(project.root, "diff", "--name-only", "-z", "--no-renames", merge_base, "HEAD")
    files = [p for p in out.stdout.split("\0") if p]
    changes = sorted(
        {p.split("/")[1] for p in files if p.startswith(("changes/CHG-", "changes/POL-"))}
    )
    policy = [p for p in files if p.startswith("policies/") and not p.endswith(".md")]
    desired = [p for p in files if is_desired_state(p)] + policy
    return PrScope(base, files, changes, desired)


def pr_check(
    project: Project, *, base: str, now: dt.datetime | None = None, with_plan: bool = True
) -> PrReport:
    """Validate, decide and plan every change a pull request touches; find uncovered edits.

    Example:
        report = pr_check(find_project(), base="origin/main", with_plan=False)
        print(report.markdown()); raise SystemExit(report.exit_code)
    """
    scope = pr_scope(project, base)
    policy_problems = [str(p) for p in policy_check(project).problems]
    items = []
    for change_id in scope.changes:
        item = PrChange(change_id)
        items.append(item)
        if is_policy_change(change_id):
            try:
                item.decision = decide(project, change_id, now=now, base=base)
                item.covers = set(policy_content(project, change_id).files)
            except OpsledgerError as err:
                item.problems = [str(p) for p in err.problems]
            continue
        file = project.root / "changes" / change_id / "change.yml"
        if not (file.exists() or file.is_symlink()):
            continue  # removed by the PR
        try:
            result = validate_change(project, change_id)
        except OpsledgerError as err:
            item.problems = [str(p) for p in err.problems]
            continue
        if result.problems:
            item.problems = [str(p) for p in result.problems]
            continue
        try:
            item.covers = set(
                change_content(project, result.change, result.runbook, result.hosts).files
            )
            item.plan = plan(project, change_id, now=now, base=base) if with_plan else None
            item.decision = (
                item.plan.decision if item.plan else decide(project, change_id, now=now, base=base)
            )
        except OpsledgerError as err:
            item.problems = [str(p) for p in err.problems]
    covered = set().union(*(i.covers for i in items)) if items else set()
    uncovered = [p for p in scope.desired_state if p not in covered]
    return PrReport(scope, items, uncovered, policy_problems)


def codeowners(project: Project) -> str:
    """CODEOWNERS generated from policies, so the forge's required reviewers match them.

    The CAB owns everything by default; the policy owners (`policy_changes`) own policies/;
    each runbook's owning teams own its folder. Emails identify people (GitHub and GitLab
    accept verified emails).
    """
    policies, _ = load_policies(project)
    owners = policies.policy_changes.owners if policies.policy_changes else ("cab",)

    def members(teams) -> str:
        emails = sorted(p.email for p in policies.people.values() if set(p.teams) & set(teams))
        return " ".join(emails)

    lines = [
        "# Generated by `opsledger ci codeowners` from policies/; do not edit by hand.",
        f"* {members(['cab'])}",
        f"/policies/ {members(owners)}",
    ]
    for runbook, teams in sorted(policies.runbook_teams.items()):
        lines.append(f"/runbooks/{runbook}/ {members(teams)}")
    return "\n".join(lines) + "\n"


def push_records(project: Project, remote: str, branch: str) -> bool:
    """Push the branch; when it moved meanwhile, rebase the records onto it and retry.

    The rebase re-commits the records, so it commits them as the CI identity again (and signs
    them with its key when one is set): a record committed by anyone else is no evidence.
    """
    key = signing_key()
    sign = (
        ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "-c", "commit.gpgsign=true"]
        if key
        else []
    )
    name, email = committer(project)
    identity = {"GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
    for _ in range(3):
        if git(project.root, "push", "-q", remote, f"HEAD:{branch}", check=False).returncode == 0:
            return True
        git(project.root, *sign, "pull", "-q", "--rebase", remote, branch, env=identity)
    raise OpsledgerError(
        Problem(
            f"could not push the run records to {remote}/{branch}",
            field="git push",
            fix="push them by hand: the records are committed locally",
        ),
        EXIT_FAILED,
    )


@dataclass
class CiApplyResult:
    pending: PendingResult
    pushed: bool
    branch: str


def ci_apply(
    project: Project,
    *,
    remote: str | None = None,
    now: dt.datetime | None = None,
    wait: float = 0,
    events: Events | None = None,
    environment: str | None = None,
) -> CiApplyResult:
    """After a merge: apply every pending change, then push the run records to `remote`.

    A push rejected because the branch moved meanwhile is retried after a rebase (records are
    new files, so they never conflict), committed again as the CI identity and, with
    $OPSLEDGER_SIGNING_KEY, signed again.

    Example:
        result = ci_apply(find_project(), remote="origin")
        result.pending.ok, result.pushed
    """
    if remote is not None and (not remote or remote.startswith("-") or not remote.isprintable()):
        raise OpsledgerError(  # `--receive-pack=...` would be an option of git push
            Problem(f"{remote!r} is not a remote name", field="--push", fix="e.g. origin")
        )
    before = git(project.root, "rev-parse", "HEAD").stdout.strip()
    # This runs on the protected branch after a merge: the branch itself is the base.
    outcome = apply_pending(
        project, now=now, wait=wait, events=events, environment=environment, base="HEAD"
    )
    branch = git(project.root, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    # Push whatever was committed: run records, and records of earlier runs committed late or
    # recorded as interrupted while settling the evidence.
    moved = git(project.root, "rev-parse", "HEAD").stdout.strip() != before
    pushed = bool(remote and moved) and push_records(project, remote or "", branch)
    return CiApplyResult(outcome, pushed, branch)
