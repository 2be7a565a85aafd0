"""What the pipelines run, as use cases, so a laptop and any CI run the same steps.

- `pr_check`: which changes (CHG-<n>) and policy changes (POL-<n>) a pull request touches;
  each validated, decided under the *base's* policies and (optionally) planned; desired-state
  and policy edits that no change of the PR covers; one markdown summary for the PR. Exit 2
  when something is invalid or uncovered, 3 while a change lacks valid approvals (so a
  required status check blocks the merge), else 0.
- `ci_apply`: after a merge and on a schedule, `apply --pending` on the protected branch
  itself (its policies decide); with a remote, the run records on it decide who runs, and the
  records are pushed back.
- `ci_push`: push other evidence (drift, inspections, drills) with the right identity.
- `codeowners`: the forge's required reviewers generated from policies, so they match.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import os
from dataclasses import dataclass, field

from opsledger.apply import apply_change
from opsledger.changes import validate_change
from opsledger.compliance import is_desired_state
from opsledger.decide import Decision, decide
from opsledger.errors import EXIT_DENIED, EXIT_FAILED, EXIT_INVALID, OpsledgerError, Problem
from opsledger.execution import Events
from opsledger.gitrepo import git, require_history
from opsledger.layout import (
    CHANGES_PREFIX,
    block_folder,
    change_file,
    change_id_of,
    flat_folder,
    flat_form,
    folder_of_kind,
    in_policies,
    misplaced,
    stored_file,
)
from opsledger.origin_records import OriginRecords
from opsledger.pending import PendingResult, apply_pending
from opsledger.plan import Plan, plan
from opsledger.policy.bundle import load_policies
from opsledger.policy.changes import is_policy_change, policy_content
from opsledger.policycheck import policy_check
from opsledger.prcomment import plan_markdown
from opsledger.prjob import isolated_connections, refuse_secrets
from opsledger.project import Project
from opsledger.reach import reached_files
from opsledger.sharded import shard_runner
from opsledger.shards import Shard


@dataclass
class PrScope:
    base: str
    files: list[str]
    changes: list[str]
    desired_state: list[str]
    # under changes/ but in no change folder (changes/2026/CHG-0001/..., changes/junk/...): no
    # reader sees such a file, so nothing would judge it; refused rather than waved through
    stray: list[str] = field(default_factory=list)


STRAY = "not inside a change folder"
STRAY_FIX = (
    "a change's files live in changes/CHG-<block>/CHG-<n>/ (opsledger change new; "
    "legacy: changes/CHG-<n>/), a policy change's in changes/POL-<block>/POL-<n>/"
)
CHANGES_README = "README.md"


@dataclass
class PrChange:
    change_id: str
    folder: str  # where it is stored (layout.stored_file): what its problem lines name
    problems: list[str] = field(default_factory=list)
    decision: Decision | None = None
    plan: Plan | None = None
    covers: set[str] = field(default_factory=set)
    environment: str = ""
    deferred: str = ""  # why it is not planned in this job

    @property
    def approved(self) -> bool:
        return self.decision is not None and all(
            c.passed for c in self.decision.checks if c.rule in ("approvals", "requester")
        )


@dataclass
class PrReport:
    scope: PrScope
    items: list[PrChange]
    uncovered: list[str]
    policy_problems: list[str] = field(default_factory=list)
    commit: str = ""  # the commit the report (and its plans) was made from

    @property
    def protected_plans(self) -> list[str]:
        """Environments of deferred changes whose approvals are in: the protected job's plans."""
        return sorted({i.environment for i in self.items if i.deferred and i.approved})

    @property
    def exit_code(self) -> int:
        if (
            self.uncovered
            or self.scope.stray
            or self.policy_problems
            or any(i.problems for i in self.items)
        ):
            return EXIT_INVALID
        if any(i.plan is not None and i.plan.errors for i in self.items):
            return EXIT_FAILED  # a plan that failed for real would fail the apply too
        for item in self.items:
            if item.decision and any(
                c.rule in ("approvals", "requester") and not c.passed for c in item.decision.checks
            ):
                return EXIT_DENIED
        return 0

    def problem_lines(self) -> list[str]:
        """One line per input problem, as every command says them on stderr (exit 2)."""
        lines = [
            f"{path}: a desired-state edit no change in this PR covers" for path in self.uncovered
        ]
        lines += [f"{path}: {misplaced(path) or STRAY}; {STRAY_FIX}" for path in self.scope.stray]
        lines += list(self.policy_problems)
        lines += [f"{i.folder}: {p}" for i in self.items for p in i.problems]
        return lines

    def markdown(self) -> str:
        verdict = {
            0: "ready to merge",
            EXIT_FAILED: "plan failed",
            EXIT_INVALID: "invalid",
            EXIT_DENIED: "needs approvals",
        }
        out = [
            f"## opsledger: {verdict[self.exit_code]}",
            "",
            f"Made from commit `{self.commit}`. "
            f"{len(self.scope.files)} file(s) changed against `{self.scope.base}`; "
            f"change request(s): {', '.join(self.scope.changes) or 'none'}.",
            "",
        ]
        if self.policy_problems:
            out += ["### Policies do not pass `opsledger policy check`", ""]
            out += [f"- {p}" for p in self.policy_problems]
            out.append("")
        if self.scope.stray:
            out += [f"### Files under `changes/` that no change holds ({STRAY})", ""]
            out += [f"- `{path}`" for path in self.scope.stray]
            out += ["", STRAY_FIX[0].upper() + STRAY_FIX[1:] + ".", ""]
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
                out.append(plan_markdown(item.plan))
            elif item.decision is not None:
                out += [f"### {item.change_id}", "", "| rule | result | why |", "|---|---|---|"]
                out += [
                    f"| {c.rule} | {'✅' if c.passed else '❌'} | {c.why.replace('|', '/')} |"
                    for c in item.decision.checks
                ]
                if item.deferred:
                    out += ["", f"Plan: not made here — {item.deferred}."]
                out.append("")
        return "\n".join(out) + "\n"


def _not_moved(raw: str) -> list[str]:
    """The paths of `git diff --raw -z`, less each move between the layouts of changes/.

    `change migrate-layout` deletes `changes/<ID>/x` and adds the same bytes at its block
    path: the same key (layout.flat_form), nothing changed, so nothing for the PR check to
    validate, decide and plan again. A move that changes the bytes, or lands anywhere but
    the id's own block (a different key), is listed as before.
    """
    tokens = raw.lstrip("\0").split("\0")
    entries = [
        (meta[1:].split(), path)
        for meta, path in zip(tokens[::2], tokens[1::2], strict=False)
        if meta.startswith(":")
    ]
    gone = {(flat_form(p), m[0], m[2]) for m, p in entries if m[4].startswith("D")}
    came = {(flat_form(p), m[1], m[3]) for m, p in entries if m[4].startswith("A")}
    moved = {key for key, _, _ in gone & came}
    return [p for m, p in entries if not (m[4][0] in "AD" and flat_form(p) in moved)]


def _split(project: Project, raw: str) -> set[str]:
    """Ids the branch touches (moves too) whose folder now lies in both layouts.

    A move of part of a change (its approvals alone) is the same bytes under the same keys,
    so `_not_moved` drops it, yet it leaves the id in two folders, which every reader refuses
    once merged: such a change is judged (and refused, exit 2), never skipped as a move.
    """
    ids = {change_id_of(p) for p in raw.split("\0") if p.startswith(CHANGES_PREFIX)}
    root = project.root
    return {
        i
        for i in ids
        if i and os.path.lexists(flat_folder(root, i)) and os.path.lexists(block_folder(root, i))
    }


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
    out = git(
        project.root, "diff", "--raw", "--no-abbrev", "-z", "--no-renames", merge_base, "HEAD"
    )
    files = _not_moved(out.stdout)
    changes = sorted(
        {name for p in files if (name := folder_of_kind(p))} | _split(project, out.stdout)
    )
    stray = [p for p in files if p.startswith(CHANGES_PREFIX) and not folder_of_kind(p)]
    stray = [p for p in stray if p != change_file(CHANGES_README)]
    policy = [p for p in files if in_policies(p) and not p.endswith(".md")]
    desired = [p for p in files if is_desired_state(p)] + policy
    return PrScope(base, files, changes, desired, stray)


def pr_check(
    project: Project,
    *,
    base: str,
    now: dt.datetime | None = None,
    with_plan: bool = True,
    plan_environments: set[str] | None = None,
    approved_only: bool = False,
    untrusted: bool = False,
) -> PrReport:
    """Validate, decide and plan every change a pull request touches; find uncovered edits.

    `plan_environments` limits the check-mode plans to those environments (the PR job plans
    the unprotected ones; the others are deferred to the protected plan job); `approved_only`
    plans only changes whose approvals are in (the protected plan job). `untrusted` is the PR
    job: it refuses to run while it holds a secret (prjob.py) and plans with SSH connections
    of its own that end with it.

    Example:
        report = pr_check(find_project(), base="origin/main", with_plan=False)
        print(report.markdown()); raise SystemExit(report.exit_code)
    """
    if untrusted:
        refuse_secrets(project)
    with isolated_connections() if untrusted else contextlib.nullcontext():
        return _pr_check(project, base, now, with_plan, plan_environments, approved_only)


def _pr_check(
    project: Project,
    base: str,
    now: dt.datetime | None,
    with_plan: bool,
    plan_environments: set[str] | None,
    approved_only: bool,
) -> PrReport:
    scope = pr_scope(project, base)
    policy_problems = [str(p) for p in policy_check(project).problems]
    items = []
    for change_id in scope.changes:
        item = PrChange(change_id, stored_file(project.root, change_id))
        items.append(item)
        if is_policy_change(change_id):
            try:
                item.decision = decide(project, change_id, now=now, base=base)
                item.covers = set(policy_content(project, change_id).files)
            except OpsledgerError as err:
                item.problems = [str(p) for p in err.problems]
            continue
        folders = (flat_folder(project.root, change_id), block_folder(project.root, change_id))
        if not any(os.path.lexists(f) for f in folders):
            # removed by the PR. A folder left without its request (runs planted for an id
            # not yet handed out, which `change new` would then write into), beside the
            # other layout's, or named like no id (CHG-00XX) is validated: refused.
            continue
        try:
            result = validate_change(project, change_id)
        except OpsledgerError as err:
            item.problems = [str(p) for p in err.problems]
            continue
        if result.problems:
            item.problems = [str(p) for p in result.problems]
            continue
        item.environment = result.change.environment
        try:
            # what the change is seen to reach, not what its approvals bind (the whole
            # repository): a PR's edit of a role no change runs is still shown as uncovered
            item.covers = set(reached_files(project, result.change, result.runbook).files)
            item.decision = decide(project, change_id, now=now, base=base)
            if plan_environments is not None and item.environment not in plan_environments:
                item.deferred = (
                    f"{item.environment} is planned by the protected plan job once the "
                    "approvals are in"
                )
            elif approved_only and not item.approved:
                item.deferred = "the plan waits for the approvals"
            elif with_plan:
                item.plan = plan(project, change_id, now=now, base=base)
                item.decision = item.plan.decision
        except OpsledgerError as err:
            item.problems = [str(p) for p in err.problems]
    covered = set().union(*(i.covers for i in items)) if items else set()
    uncovered = [p for p in scope.desired_state if p not in covered]
    commit = git(project.root, "rev-parse", "HEAD").stdout.strip()
    return PrReport(scope, items, uncovered, policy_problems, commit)


# What judges and runs changes — the tool, the pipelines, the verification suites, controller
# settings — is reviewed by the CAB: a pull request changing the judge cannot pass as a change.
JUDGE_PATHS = (
    "/src/",
    "/scripts/",
    "/plugins/",
    "/tests/infra/",
    "/.github/",
    "/.gitlab/",
    "/.gitlab-ci.yml",
    "/.ci/",
    "/pyproject.toml",
    "/requirements.lock",
    "/ansible.cfg",
    "/.pre-commit-config.yaml",
    "/.secrets.baseline",
)


def codeowners(project: Project) -> str:
    """CODEOWNERS generated from policies, so the forge asks exactly whom the policy needs.

    No catch-all owner: change requests, desired state (roles, inventories, site.yml) and
    evidence need the quorum `policies/changes.yml` sets per change — none for a standard
    change, one on-call or CAB member for an emergency, two for production —, which the
    required `changes` check (`opsledger ci pr`) enforces from the signed approvals; a
    catch-all owner would make the CAB review every pull request. Code owners review what the
    policy gives an owner: `policies/` (the policy owners, `policy_changes`), what judges and
    runs changes (the CAB), and each runbook whose changes need an approver of its team
    (`runbook_teams`). Emails identify people (GitHub and GitLab accept verified emails).
    """
    policies, _ = load_policies(project)
    owners = policies.policy_changes.owners if policies.policy_changes else ("cab",)

    def members(teams) -> str:
        emails = sorted(p.email for p in policies.people.values() if set(p.teams) & set(teams))
        return " ".join(emails)

    cab = members(["cab"])
    lines = [
        "# Generated by `opsledger ci codeowners` from policies/; do not edit by hand.",
        "# No catch-all owner: changes and desired state need the quorum of",
        "# policies/changes.yml, enforced by the required `changes` check (opsledger ci pr).",
        f"/policies/ {members(owners)}",
        *(f"{path} {cab}" for path in JUDGE_PATHS),
    ]
    for runbook, teams in sorted(policies.runbook_teams.items()):
        lines.append(f"/runbooks/{runbook}/ {members(teams)}")
    return "\n".join(lines) + "\n"


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
    shard: Shard | None = None,
) -> CiApplyResult:
    """Apply every pending change; with `remote`, the records on it decide who runs.

    With `shard` (`--shard I/N`, one job of the pipeline's matrix), only that shard of each
    change runs (sharded.py); the last shard to report merges them into the run record.

    The push-triggered apply after a merge and the scheduled apply (every few minutes, for
    changes whose window opened since) run this same step, possibly at once from different
    clones. With `remote`: the branch is first brought up to the origin (its merges and
    records); each run is claimed by pushing its write-ahead record and its final record is
    pushed before its hosts are unlocked (origin_records.py), so of two pipelines exactly one
    runs a change and the other lists it as `running` or `already run`. Whatever else was
    committed (records of earlier runs committed late or recorded as interrupted) is pushed at
    the end, rebasing as the evidence identity when the branch moved.
    The protected branch itself is the base: its policies and evidence decide. A remote name
    that git could read as an option is refused.

    Example:
        result = ci_apply(find_project(), remote="origin", environment="production")
        result.pending.ok, result.pushed
    """
    origin = origin_of(project, remote)
    if origin is not None:
        origin.pull()
    before = git(project.root, "rev-parse", "HEAD").stdout.strip()
    outcome = apply_pending(
        project,
        now=now,
        wait=wait,
        events=events,
        environment=environment,
        origin=origin,
        base="HEAD",  # the protected branch itself is the base after a merge
        run_change=apply_change if shard is None else shard_runner(shard),
    )
    branch = git(project.root, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    pushed = False
    if origin is not None:
        unpublished = git(
            project.root, "rev-list", "--count", f"{origin.fetch()}..HEAD"
        ).stdout.strip()
        moved = git(project.root, "rev-parse", "HEAD").stdout.strip() != before
        pushed = origin.publish() if unpublished != "0" else moved
    return CiApplyResult(outcome, pushed, branch)


def origin_of(project: Project, remote: str | None) -> OriginRecords | None:
    """The origin whose records decide (`--push REMOTE`), or None; exit 2 for a bad name.

    Example:
        origin_of(find_project(), "origin")
    """
    if remote is not None and (not remote or remote.startswith("-") or not remote.isprintable()):
        raise OpsledgerError(  # `--receive-pack=...` would be an option of git push
            Problem(f"{remote!r} is not a remote name", field="--push", fix="e.g. origin")
        )
    return OriginRecords.of(project, remote) if remote else None


class PushStatus(enum.StrEnum):
    PUSHED = "pushed"
    NOTHING = "nothing to push"


@dataclass
class CiPushResult:
    status: PushStatus
    remote: str
    branch: str
    commits: int


def ci_push(project: Project, *, remote: str = "origin") -> CiPushResult:
    """Push the evidence this clone committed (drift, inspections, drills, incidents).

    Rebases onto the origin when the branch moved, committing as the evidence identity
    ($OPSLEDGER_COMMITTER_NAME/EMAIL) — a fresh runner has no git identity of its own — and
    signing with $OPSLEDGER_SIGNING_KEY when set. Exit 1 when the push keeps being refused.

    Example:
        ci_push(find_project(), remote="origin").status
    """
    origin = OriginRecords.of(project, remote)
    origin.pull()
    count = int(git(project.root, "rev-list", "--count", f"{origin.fetch()}..HEAD").stdout)
    if count == 0:
        return CiPushResult(PushStatus.NOTHING, remote, origin.branch, 0)
    origin.publish()
    return CiPushResult(PushStatus.PUSHED, remote, origin.branch, count)
