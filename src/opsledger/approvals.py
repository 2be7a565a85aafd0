"""Approvals bound to content, and their validity read from git.

`approve` writes `changes/<ID>/approvals/<person>.yml` — the decision and the sha256 of the
change's content (see content.py) — and commits just that file as that person, signed with
their SSH key when one is given. An approval counts only when git shows that:

- it is committed (a file only in the working tree is nobody's approval);
- every commit that touched it was authored by that person (nobody edited it for them);
- the content it names is the change's content now (editing what runs voids it);
- where policy requires signatures, its commit carries a good SSH signature made with that
  person's key from people.yml — checked by git itself against an allowed-signers file
  generated from people.yml.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from opsledger.content import Content
from opsledger.errors import OpsledgerError, Problem
from opsledger.gitrepo import git, require_history, write_and_commit
from opsledger.policy import Policies
from opsledger.project import Project
from opsledger.yamlio import load_yaml

DECISIONS = ("approved", "rejected")
MAX_COMMENT = 2000  # characters: an approval says why, the discussion lives in the PR


@dataclass
class ApprovalState:
    person: str
    decision: str
    valid: bool
    reasons: list[str] = field(default_factory=list)
    commit: str = ""
    signed_by: str = ""


def approvals_dir(project: Project, change_id: str) -> Path:
    return project.root / "changes" / change_id / "approvals"


def allowed_signers(policies: Policies) -> str:
    """git's allowed-signers format: one line per person with a key, principal = email."""
    lines = [
        f'{p.email} namespaces="git" {p.signing_key}'
        for p in policies.people.values()
        if p.signing_key
    ]
    return "\n".join(lines) + "\n"


@dataclass
class ApproveResult:
    path: Path
    commit: str
    content_sha256: str


def approve(
    project: Project,
    *,
    change_id: str,
    person: str,
    content: Content,
    policies: Policies,
    decision: str = "approved",
    comment: str = "",
    signing_key: Path | None = None,
    now: dt.datetime | None = None,
) -> ApproveResult:
    """Record and commit one person's decision on a change's current content.

    Example:
        approve(project, change_id="CHG-0001", person="bob", content=content,
                policies=policies, signing_key=Path("~/.ssh/id_ed25519").expanduser())
    """
    if decision not in DECISIONS:
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
    who = policies.people.get(person)
    if who is None:
        raise OpsledgerError(
            Problem(
                f"{person!r} is not in policies/people.yml",
                "policies/people.yml",
                "people",
                "approve as a listed person (--as ID)",
            )
        )
    if signing_key is not None and not Path(signing_key).is_file():
        raise OpsledgerError(
            Problem(
                "signing key not found", str(signing_key), "--key", "point at your SSH private key"
            )
        )
    moment = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    record = {
        "change": change_id,
        "person": person,
        "decision": decision,
        "content_sha256": content.sha256,
        "at": moment.isoformat(),
        "comment": comment,
        "content_files": content.files,
    }
    path = approvals_dir(project, change_id) / f"{person}.yml"
    verb = "Approve" if decision == "approved" else "Reject"
    sha = write_and_commit(
        project.root,
        path,
        "---\n" + yaml.safe_dump(record, sort_keys=False, width=100),
        f"{verb} {change_id} ({content.sha256[:12]})",
        name=who.name,
        email=who.email,
        signing_key=signing_key,
    )
    return ApproveResult(path, sha, content.sha256)


def _history(project: Project, path: Path, signers: str) -> list[tuple[str, str, str, str]]:
    """(sha, author email, signature status, signer) of every commit touching path."""
    with tempfile.NamedTemporaryFile("w", suffix=".allowed_signers", delete=False) as handle:
        handle.write(signers)
        signers_file = handle.name
    try:
        relative = str(path.resolve().relative_to(project.root.resolve()))
        out = git(
            project.root,
            "-c",
            f"gpg.ssh.allowedSignersFile={signers_file}",
            "log",
            "--format=%H%x00%ae%x00%G?%x00%GS",
            "--",
            relative,
        ).stdout
    finally:
        Path(signers_file).unlink(missing_ok=True)
    return [tuple(line.split("\0")) for line in out.splitlines() if line]  # type: ignore[misc]


def approval_states(
    project: Project,
    *,
    change_id: str,
    content: Content,
    policies: Policies,
    signatures_required: bool,
) -> list[ApprovalState]:
    """Every approval file of the change, judged from git history.

    Example:
        [(s.person, s.valid, s.reasons) for s in approval_states(...)]
    """
    folder = approvals_dir(project, change_id)
    signers = allowed_signers(policies)
    states = []
    for path in sorted(folder.glob("*.yml")):
        person = path.stem
        data = load_yaml(path, what="approval", root=project.root)
        state = ApprovalState(person, str(data.get("decision", "")), True)
        who = policies.people.get(person)
        if who is None:
            state.reasons.append(f"{person} is not in people.yml")
        if data.get("person") != person or data.get("change") != change_id:
            state.reasons.append("the file names another person or change than its place")
        if state.decision not in DECISIONS:
            state.reasons.append(f"unknown decision {state.decision!r}")
        status = git(
            project.root, "status", "--porcelain", "--", str(path.relative_to(project.root))
        ).stdout.strip()
        history = _history(project, path, signers)
        if status or not history:
            state.reasons.append("not committed (or edited since its commit)")
        if history and who is not None:
            state.commit = history[0][0]
            strangers = [(sha, email) for sha, email, _, _ in history if email != who.email]
            for sha, email in strangers:
                state.reasons.append(f"commit {sha[:10]} by {email} touched it")
            if signatures_required:
                _, _, verdict, signer = history[0]
                if verdict != "G" or signer != who.email:
                    state.reasons.append(
                        f"not signed with {person}'s key from people.yml (git says "
                        f"{verdict or 'N'}{' by ' + signer if signer else ''})"
                    )
                else:
                    state.signed_by = signer
        if data.get("content_sha256") != content.sha256:
            changed = content.changed_since(data.get("content_files") or {})
            state.reasons.append(
                "the change's content changed since: "
                + (", ".join(changed[:5]) or "unknown files")
                + (" ..." if len(changed) > 5 else "")
            )
        state.valid = not state.reasons
        states.append(state)
    return states


def approve_change(
    project: Project,
    change_id: str,
    *,
    person: str,
    decision: str = "approved",
    comment: str = "",
    signing_key: Path | None = None,
    now: dt.datetime | None = None,
) -> ApproveResult:
    """Approve (or reject) a valid change's current content as a person, and commit it.

    Example:
        approve_change(find_project(), "CHG-0001", person="bob")
    """
    from opsledger.changes import validate_change
    from opsledger.content import change_content
    from opsledger.policy import load_policies

    require_history(project.root, "approve")
    result = validate_change(project, change_id)
    if result.problems:
        raise OpsledgerError(result.problems)
    policies, _ = load_policies(project)
    content = change_content(project, result.change, result.runbook, result.hosts)
    return approve(
        project,
        change_id=change_id,
        person=person,
        content=content,
        policies=policies,
        decision=decision,
        comment=comment,
        signing_key=signing_key,
        now=now,
    )
