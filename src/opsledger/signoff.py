"""Signing off on a change as a person: request it, approve it or reject it.

Each use case writes one new statement file (statements.py) about the change's current
content — signed with the person's SSH key when one is given — and, for approvals and
rejections, commits just that file as the person (author and committer). Nothing is ever
rewritten: a second thought is a newer statement.

A change's request statement is written by `change new` (and `policy propose`) next to the
request and committed with it by its requester; `change submit` writes a fresh one after the
requester amends the change (any edit of the content needs a new request and new approvals).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsledger.approvals import not_counted, require_clean_worktree
from opsledger.base import resolve_base
from opsledger.changes import NewChange, new_change, validate_change
from opsledger.commitlock import under_commit_lock
from opsledger.content import Content, change_content
from opsledger.errors import OpsledgerError, Problem
from opsledger.gitrepo import require_history, write_and_commit
from opsledger.layout import is_block, policy_file, stored_file
from opsledger.policy.bundle import Policies, load_policies
from opsledger.policy.changes import (
    PolicyRequest,
    is_policy_change,
    load_policy_request,
    new_policy_request,
    policy_content,
)
from opsledger.project import Project
from opsledger.statements import Statement, sign, statement_path
from opsledger.yamlio import outside_problem

VERBS = {"requested": "Request", "approved": "Approve", "rejected": "Reject"}
MAX_COMMENT = 2000  # characters: a statement says why, the discussion lives in the PR


@dataclass
class SignOff:
    change_id: str
    person: str
    decision: str
    path: Path
    commit: str  # "" when the statement is left for the requester to commit
    content_sha256: str
    signed: bool


def _drop_folder(folder: Path) -> None:
    """Remove a refused request's new folder, and its block when nothing else is in it.

    Nothing is written when a request is refused: an empty `changes/CHG-00xx/` left behind
    would be the one trace of it.
    """
    shutil.rmtree(folder)
    if is_block(folder.parent.name):
        with contextlib.suppress(OSError):  # other changes live in the block
            folder.parent.rmdir()


def subject(project: Project, change_id: str) -> tuple[str, Content]:
    """A valid change's (CHG or POL) requester and current content; exit 2 when invalid."""
    if is_policy_change(change_id):
        request = load_policy_request(project, change_id)
        return request.requested_by, policy_content(project, change_id)
    result = validate_change(project, change_id)
    if result.problems:
        raise OpsledgerError(result.problems)
    assert result.change is not None and result.runbook is not None
    content = change_content(project, result.change, result.runbook, result.hosts)
    return result.change.requested_by, content


def _policies(project: Project, base: str | None) -> Policies:
    """The base's policies; the working tree's when there is no base yet (a new repository).

    Only who may sign and the policy hash the statement names come from here: whether the
    statement counts is judged later, always against the base.
    """
    try:
        return resolve_base(project, base).policies
    except OpsledgerError:
        if base:
            raise
        return load_policies(project)[0]


@under_commit_lock  # the statement's free second is chosen and committed with no peer between
def sign_off(
    project: Project,
    change_id: str,
    *,
    person: str,
    decision: str = "approved",
    comment: str = "",
    signing_key: Path | None = None,
    now: dt.datetime | None = None,
    base: str | None = None,
    commit: bool = True,
    must_count: bool = False,
) -> SignOff:
    """Write (and commit) one person's statement on a change's current content.

    `must_count` (what `approve` asks for) refuses a statement that could never count: an
    approval by the requester, by someone outside the rule's teams, or by an observer (who may
    not reject either). Refused now, with who *can* approve, instead of committed silently and
    ignored by `decide` later.

    Example:
        sign_off(find_project(), "CHG-0001", person="bob",
                 signing_key=Path("~/.ssh/id_ed25519").expanduser())
    """
    if decision not in VERBS:
        raise OpsledgerError(
            Problem(f"unknown decision {decision!r}", field="decision", fix="approved or rejected")
        )
    if len(comment) > MAX_COMMENT:
        raise OpsledgerError(
            Problem(
                f"the comment has {len(comment)} characters; at most {MAX_COMMENT}",
                field="--comment",
                fix="keep it short and link to the details",
            )
        )
    if commit:  # statements are read from history: there must be one to commit to
        require_history(project.root, VERBS[decision].lower())
    policies = _policies(project, base)
    who = policies.people.get(person)
    if who is None or person == policies.records_by:
        raise OpsledgerError(
            Problem(
                f"{person!r} is not a person who may sign statements in policies/people.yml",
                policy_file("people.yml"),
                "people",
                "sign as a listed person (--as ID)",
            )
        )
    if signing_key is not None and not _is_file(Path(signing_key)):
        raise OpsledgerError(
            Problem(
                "signing key not found", str(signing_key), "--key", "point at your SSH private key"
            )
        )
    requester, content = subject(project, change_id)
    if must_count:
        _refuse_uncounted(project, change_id, person, decision, policies)
        unsigned = unsigned_problem(
            signatures_needed(project, change_id, policies),
            person,
            signing_key,
            policies,
            "an approval" if decision == "approved" else "a rejection",
            stored_file(project.root, change_id),
        )
        if unsigned:
            raise OpsledgerError(unsigned)
    if decision == "requested" and person != requester:
        raise OpsledgerError(
            Problem(
                f"only the requester ({requester}) submits the change",
                stored_file(project.root, change_id),
                "--as",
                f"submit as {requester}, or approve it instead",
            )
        )
    require_clean_worktree(project, change_id)
    moment = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    folder = statement_path(project.root, change_id, person, moment).parent
    while statement_path(project.root, change_id, person, moment).exists():
        moment += dt.timedelta(seconds=1)  # one statement per person and second: the next one
    statement = Statement(
        change_id,
        person,
        decision,
        content.sha256,
        policies.hash,
        moment,
        comment,
        content_files=content.files,
    )
    if signing_key is not None:
        statement = dataclasses.replace(statement, signature=sign(statement.text(), signing_key))
    path = statement_path(project.root, change_id, person, moment)
    if refused := outside_problem(path, project.root):  # a symlinked folder writes elsewhere
        raise OpsledgerError(refused)
    sha = ""
    if commit:
        # Written and committed as the person, or nothing is left behind (write_and_commit).
        sha = write_and_commit(
            project.root,
            path,
            statement.to_yaml(),
            f"{VERBS[decision]} {change_id} ({content.sha256[:12]})",
            name=who.name,
            email=who.email,
        )
    else:
        folder.mkdir(parents=True, exist_ok=True)
        with open(path, "x") as handle:  # written once, never overwritten
            handle.write(statement.to_yaml())
    return SignOff(change_id, person, decision, path, sha, content.sha256, bool(signing_key))


def signatures_needed(project: Project, change_id: str, policies: Policies) -> str:
    """Where a statement on this change must be signed to count: the reason, or "".

    A change's environment listed under `signatures:` in changes.yml, or a policy change
    while `policy_changes.signed` is on.
    """
    if is_policy_change(change_id):
        rule = policies.policy_changes
        return "for policy changes (policy_changes.signed)" if rule and rule.signed else ""
    from opsledger.changes import load_change

    environment = load_change(project, change_id).environment
    if environment in policies.signature_environments:
        return f"in {environment} (signatures in policies/changes.yml)"
    return ""


def unsigned_problem(
    where: str, person: str, signing_key: Path | None, policies: Policies, what: str, file: str
) -> Problem | None:
    """Why a statement made now could never count for want of a signature; None when it can.

    An unsigned statement where signatures are required, or one by a person without a
    signing_key in people.yml (nothing to verify it with), was committed and then ignored:
    `decide` denied later, and the next-step hint kept naming the approver who had just
    approved. `approve` and `change new` refuse it where it is typed instead. `where`: what
    signatures_needed says ("" = nothing to refuse).
    """
    if not where:
        return None
    who = policies.people.get(person)
    if who is not None and not who.signing_key:
        return Problem(
            f"{what} must be signed {where}, and {person} has no signing_key in "
            "policies/people.yml of the protected branch, so it could never count",
            policy_file("people.yml"),
            f"people.{person}.signing_key",
            "register your SSH public key there (a policy change), then sign with --key",
        )
    if signing_key is None:
        return Problem(
            f"{what} must be signed {where}: unsigned, it would never count",
            file,
            "--key",
            "sign it: --key ~/.ssh/id_ed25519 (or set OPSLEDGER_SIGNING_KEY), the key whose "
            f"public half is {person}'s signing_key in policies/people.yml",
        )
    return None


def _refuse_uncounted(
    project: Project, change_id: str, person: str, decision: str, policies: Policies
) -> None:
    from opsledger.approval_rules import approval_rule, eligible

    governing = approval_rule(project, change_id, policies)
    if decision == "rejected":
        if policies.approves_nothing(person):
            raise OpsledgerError(
                Problem(
                    f"{person} approves nothing (observers in policies/changes.yml), so "
                    "cannot reject either",
                    stored_file(project.root, change_id),
                    "--as",
                    "say why in the pull request; an approver can reject it",
                )
            )
        return
    why = not_counted(person, governing.requester, governing.rule, policies)
    if why:
        who = ", ".join(eligible(governing, policies)) or "nobody in people.yml"
        raise OpsledgerError(
            Problem(
                f"{why}: the approval would not count",
                stored_file(project.root, change_id),
                "--as",
                f"ask someone whose approval counts: {who}",
            )
        )


def approve_change(
    project: Project,
    change_id: str,
    *,
    person: str,
    decision: str = "approved",
    comment: str = "",
    signing_key: Path | None = None,
    now: dt.datetime | None = None,
    base: str | None = None,
) -> SignOff:
    """Approve (or reject) a change's current content as a person, and commit it.

    Example:
        approve_change(find_project(), "CHG-0001", person="bob", decision="rejected")
    """
    if decision not in ("approved", "rejected"):
        raise OpsledgerError(
            Problem(f"unknown decision {decision!r}", field="decision", fix="approved or rejected")
        )
    return sign_off(
        project,
        change_id,
        person=person,
        decision=decision,
        comment=comment,
        signing_key=signing_key,
        now=now,
        base=base,
        must_count=True,
    )


def submit_change(
    project: Project,
    change_id: str,
    *,
    person: str,
    signing_key: Path | None = None,
    now: dt.datetime | None = None,
    base: str | None = None,
    commit: bool = True,
) -> SignOff:
    """The requester states they request the change's current content (after amending it).

    Committed (`change submit`), an unsigned request where statements must be signed is
    refused: it could never count. (`change new` checks its uncommitted one itself.)

    Example:
        submit_change(find_project(), "CHG-0001", person="alice")
    """
    if commit:
        policies = _policies(project, base)
        unsigned = unsigned_problem(
            signatures_needed(project, change_id, policies),
            person,
            signing_key,
            policies,
            "the request",
            stored_file(project.root, change_id),
        )
        if unsigned:
            raise OpsledgerError(unsigned)
    return sign_off(
        project,
        change_id,
        person=person,
        decision="requested",
        signing_key=signing_key,
        now=now,
        base=base,
        commit=commit,
    )


def request_change(
    project: Project,
    *,
    signing_key: Path | None = None,
    now: dt.datetime | None = None,
    check_policy: bool = False,
    window_length: dt.timedelta = dt.timedelta(hours=2),
    **fields: Any,
) -> tuple[NewChange, SignOff]:
    """Write a new change request and its requester's statement, not committed.

    The requester commits both together with the desired-state edits the change covers;
    nothing is written when the change is invalid. `check_policy` (what `change new` asks for)
    also refuses what decide would deny whatever anyone approves: an unknown requester (exit 2,
    with any schema problem), a window outside every maintenance window or overlapping a freeze
    (exit 3, a policy denial); without a window_start it takes the next start that fits the
    environment's maintenance windows outside its freezes (now when it does).

    Example:
        change, statement = request_change(project, title="Raise work_mem", runbook="converge",
            requested_by="alice", reason="Sorts spill to disk", targets="db",
            params={"tags": ["postgresql"]}, window_start=start, window_end=end)
    """
    note = ""
    invalid: list[Problem] = []
    denials: list[Problem] = []
    if check_policy:
        from opsledger.policy.windows import next_allowed, shown_opening
        from opsledger.prechecks import request_problems

        policies = _policies(project, None)
        environment = fields.get("environment", "lab")
        change_type = fields.get("change_type", "normal")
        if fields.get("window_start") is None:
            begin = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
            windows = policies.windows.get(environment, [])
            emergency = change_type == "emergency"
            fit = (
                next_allowed(
                    windows,
                    policies.freezes,
                    environment,
                    begin,
                    window_length,
                    bypass_windows=emergency and bool(policies.emergency.get("bypass_windows")),
                    bypass_freezes=emergency and bool(policies.emergency.get("bypass_freezes")),
                )
                if windows
                else None
            )
            if fit is not None and fit != begin:
                note = f"window: the next maintenance window, {shown_opening(windows, fit)}"
                begin = fit
            fields["window_start"], fields["window_end"] = begin, begin + window_length
        for problem in request_problems(
            policies,
            requested_by=fields["requested_by"],
            change_type=change_type,
            environment=environment,
            window_start=fields["window_start"],
            window_end=fields["window_end"],
            cli=True,
        ):
            (denials if problem.field == "--start" else invalid).append(problem)
        if environment in policies.signature_environments:
            unsigned = unsigned_problem(
                f"in {environment} (signatures in policies/changes.yml)",
                fields["requested_by"],
                signing_key,
                policies,
                "the request",
                "",
            )
            invalid += [unsigned] if unsigned else []
    change = new_change(project, also_invalid=invalid, denials=denials, **fields)
    change.note = note
    try:
        statement = submit_change(
            project,
            change.id,
            person=fields["requested_by"],
            signing_key=signing_key,
            now=now,
            commit=False,
        )
    except OpsledgerError:
        _drop_folder(change.file.parent)
        raise
    return change, statement


def propose_policy_change(
    project: Project,
    *,
    title: str,
    requested_by: str,
    reason: str,
    signing_key: Path | None = None,
    now: dt.datetime | None = None,
) -> tuple[PolicyRequest, SignOff]:
    """Request a change of policies/ as it is on disk now (commit both with the edit).

    Example:
        request, statement = propose_policy_change(project, title="Two approvals in staging",
            requested_by="alice", reason="Staging now carries customer data")
    """
    request = new_policy_request(project, title=title, requested_by=requested_by, reason=reason)
    try:
        statement = submit_change(
            project,
            request.id,
            person=requested_by,
            signing_key=signing_key,
            now=now,
            commit=False,
        )
    except OpsledgerError:
        _drop_folder(request.file.parent)
        raise
    return request, statement


def _is_file(path: Path) -> bool:
    """Path.is_file, and False where the name cannot be a file.

    A name longer than the system allows makes Python raise instead of answering.
    """
    try:
        return path.is_file()
    except OSError:
        return False
