"""Approvals: the statements about a change, read from git and judged against people.yml.

Every statement ever committed under `changes/<ID>/approvals/` counts, in the version it was
added with: the history reachable from HEAD and from the protected base is read whole, merges
included (`git log --full-history -c`), so deleting, editing or merging away a statement
cannot hide it — an edited statement no longer verifies and the original still stands. A
statement proves who made it by

- its SSH signature, verified with the person's key from people.yml *of the protected base*
  (so a pull request cannot bring its own keys), whatever commits carry it; or
- where policy allows unsigned statements (the lab), the commit that added it, whose author
  and committer must both be the person.

Each person's newest valid statement is their standing: a rejection stands until its author
says otherwise, an approval counts only for the content it names, and the requester's
`requested` statement on the current content is what makes them the requester.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from opsledger.content import Content
from opsledger.errors import OpsledgerError, Problem
from opsledger.gitlog import Commit
from opsledger.gitrepo import blob_contents, git
from opsledger.layout import (
    APPROVALS,
    change_file_pattern,
    change_folder,
    change_folder_name,
    change_pathspecs,
    flat_form,
    shown_path,
)
from opsledger.localcache import path_walk
from opsledger.policy.bundle import Person, Policies, Rule
from opsledger.project import Project
from opsledger.statements import NotAStatement, Statement, parse_statement, verify

if TYPE_CHECKING:
    from opsledger.changes import Change

_IN_APPROVALS = change_file_pattern("[^/]+", r"approvals/[\s\S]*")
_FILE = change_file_pattern("[A-Z]+-[0-9]+", r"approvals/([a-z][a-z0-9_.-]*)/(\d{8}T\d{6}Z)\.yml")


@dataclass(frozen=True, slots=True)
class Introduction:
    """A commit that brought a file's version into the history (not inherited from a parent)."""

    sha: str
    author: str  # email
    committer: str  # email


@dataclass(slots=True)  # an audit holds one per statement version: no __dict__ each
class Found:
    """One version of a file under approvals/ somewhere in the history."""

    path: str
    blob: str
    mode: str
    raw: bytes = b""
    introduced_by: list[Introduction] = field(default_factory=list)


@dataclass
class Judged:
    """One statement, judged: whose it provably is, or why it is not."""

    path: str
    person: str
    statement: Statement | None
    valid: bool
    reasons: list[str]
    proof: str = ""  # "signed" or "committed by <email>"
    commit: str = ""  # the commit that brought it (first one found)


@dataclass
class ApprovalState:
    """A person's standing on the change: their newest valid statement, and whether it counts."""

    person: str
    decision: str
    valid: bool  # an approval of the current content (or a standing rejection)
    reasons: list[str] = field(default_factory=list)
    commit: str = ""
    signed_by: str = ""
    at: str = ""


@dataclass
class Standing:
    """Everything the statements say about a change's current content."""

    states: list[ApprovalState]
    judged: list[Judged]
    requester: str
    requester_proven: bool
    requester_why: str
    rejected_by: list[str]
    approvers: list[str]  # people whose newest statement approves the current content
    notes: list[str]


def approvals_dir(project: Project, change_id: str) -> Path:
    return change_folder(project.root, change_id, APPROVALS)


def allowed_signers(policies: Policies) -> str:
    """git's allowed-signers format for commit signatures: principal = email."""
    lines = [
        f'{p.email} namespaces="git" {p.signing_key}'
        for p in policies.people.values()
        if p.signing_key
    ]
    return "\n".join(lines) + "\n"


def _prefixes(change_id: str, *parts: str) -> tuple[str, ...]:
    """A change's folder `parts` in both layouts, as git path prefixes (`.../`)."""
    return tuple(f"{p}/" for p in change_pathspecs(change_id, *parts))


def collect(project: Project, prefixes: tuple[str, ...], revs: list[str]) -> list[Found]:
    """Every version of every file under `prefixes` in the history of `revs`.

    Each comes with the commits that introduced it; a merge counts for what it brought that
    no parent had (an "evil merge"), never for what it inherited. Paths are keys
    (`layout.flat_form`): a file is one file in either layout, and a commit moving it between
    the layouts with the same bytes introduces nothing (the mover never attributes it).
    """
    revs = [r for r in dict.fromkeys(revs) if r]
    if not revs:
        return []
    # What git answers for these commit ids never changes: kept (localcache.path_walk).
    out = path_walk(
        project,
        ["--full-history", "-c", "--raw", "--no-abbrev", "--no-renames", "-z",
         "--format=%x1e%H%x1f%ae%x1f%ce"],
        revs,
        list(prefixes),
    )  # fmt: skip
    if out is None:
        return []
    versions: dict[tuple[str, str], Found] = {}
    for record in out.decode(errors="replace").split("\x1e"):
        header, _, rest = record.partition("\0")
        if not header:
            continue
        sha, author, committer = header.split("\x1f")
        tokens = rest.lstrip("\0\n").split("\0")
        entries = []
        for meta, stored in zip(tokens[::2], tokens[1::2], strict=False):
            if not meta.startswith(":"):
                continue
            parents = len(meta) - len(meta.lstrip(":"))
            parts = meta.lstrip(":").split()
            before = tuple(parts[parents + 1 : 2 * parents + 1])
            key = flat_form(stored)
            entries.append((key, parts[parents], parts[2 * parents + 1], before, parts[-1]))
        # a move between layouts: the key deleted with these bytes in the same commit
        gone = {(p, b) for p, _, blob, before, _ in entries if set(blob) == {"0"} for b in before}
        for path, mode, blob, _, status in entries:
            if set(status) == {"D"} or set(blob) == {"0"} or (path, blob) in gone:
                continue
            entry = versions.setdefault((path, blob), Found(path, blob, mode))
            entry.introduced_by.append(Introduction(sha, author, committer))
    for rev in revs:  # what is in the tree now (normally already found above)
        listing = git(project.root, "ls-tree", "-r", "-z", rev, "--", *prefixes, check=False)
        for line in listing.stdout.split("\0"):
            if line:
                meta, _, stored = line.partition("\t")
                mode, _, blob = meta.split()
                path = flat_form(stored)
                versions.setdefault((path, blob), Found(path, blob, mode))
    contents = blob_contents(project.root, sorted({f.blob for f in versions.values()}))
    for found in versions.values():
        found.raw = contents.get(found.blob, b"")
    return sorted(versions.values(), key=lambda f: (f.path, f.blob))


def statements_in(project: Project, commits: list[Commit]) -> dict[str, list[Found]]:
    """Every statement file version in an already-read history, by change id.

    For audits over many changes: one `git log` stream (gitlog.read_history, merges listing
    what they brought) instead of one per change. The commits a version is listed under are
    the ones that brought it; any of them may attribute it.
    """
    versions: dict[tuple[str, str], Found] = {}
    for commit in commits:
        for f in commit.files:
            if f.status == "D" or not _IN_APPROVALS.match(f.path):
                continue
            entry = versions.setdefault((f.path, f.blob), Found(f.path, f.blob, f.mode))
            entry.introduced_by.append(
                Introduction(commit.sha, commit.author_email, commit.committer_email)
            )
    unparsed = sorted({f.blob for f in versions.values() if f.blob not in _PARSED})
    contents = blob_contents(project.root, unparsed)  # the others are read already
    found: dict[str, list[Found]] = {}
    for entry in sorted(versions.values(), key=lambda f: (f.path, f.blob)):
        entry.raw = contents.get(entry.blob, b"")
        found.setdefault(change_folder_name(entry.path), []).append(entry)
    return found


def worktree_problems(project: Project, change_id: str) -> list[Problem]:
    """Files under the change's approvals/ that cannot be statements: invalid input (exit 2).

    A symlink, or a file outside the `<person>/<stamp>.yml` layout, is refused rather than
    followed or skipped: it can only be a mistake or an attempt to confuse the judge.
    """
    folder = approvals_dir(project, change_id)
    if folder.is_symlink():
        return [
            Problem(
                "approvals/ is a symlink",
                str(folder),
                "symlink",
                "replace it by a folder of statement files",
            )
        ]
    problems = []
    for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
        relative = path.relative_to(project.root).as_posix()
        if path.is_symlink():
            problems.append(
                Problem(
                    "a symlink where a statement belongs",
                    relative,
                    "symlink",
                    "remove it: statements are plain files written by opsledger approve",
                )
            )
        elif path.is_file() and not _FILE.fullmatch(relative):
            problems.append(
                Problem(
                    "not a statement file (approvals/<person>/<UTC stamp>.yml)",
                    relative,
                    "path",
                    "remove it and approve again with opsledger approve",
                )
            )
    return problems


_PARSED: dict[str, Statement | NotAStatement] = {}


def _parse_once(blob: str, raw: bytes) -> Statement | NotAStatement:
    if blob not in _PARSED:
        try:
            _PARSED[blob] = parse_statement(raw)
        except NotAStatement as exc:
            _PARSED[blob] = exc
    return _PARSED[blob]


def _parsed(found: Found) -> Statement:
    """A file version's statement, parsed once per process (audits judge it several times)."""
    outcome = _parse_once(found.blob, found.raw)
    if isinstance(outcome, NotAStatement):
        raise outcome
    return outcome


def parse_ahead(contents: dict[str, bytes]) -> None:
    """Parse statement versions (blob id -> bytes) ahead of judging a history of them.

    Kept by blob id (the very bytes git holds), whoever reads them later. Audits parse the
    statements the branch holds while git lists the history: most they judge are these.
    """
    for blob, raw in contents.items():
        _parse_once(blob, raw)


def judge(
    found: Found,
    change_id: str,
    people: dict[str, Person],
    *,
    signatures_required: bool,
    excluded: frozenset[str] = frozenset(),
) -> Judged:
    """Whose statement this version of a file provably is, or why it is nobody's."""
    match = _FILE.fullmatch(found.path)
    person = match.group(2) if match else ""
    commit = found.introduced_by[0].sha if found.introduced_by else ""
    judged = Judged(found.path, person, None, False, [], commit=commit)
    if found.mode == "120000":
        judged.reasons.append("is a symlink")
        return judged
    if not match or match.group(1) != change_id:
        judged.reasons.append("not a statement file of this change")
        return judged
    try:
        statement = _parsed(found)
    except NotAStatement as exc:
        judged.reasons.append(f"not a statement: {exc}")
        return judged
    judged.statement = statement
    if statement.change != change_id or statement.person != person:
        judged.reasons.append("names another person or change than its place")
    who = people.get(person)
    if who is None or person in excluded:
        judged.reasons.append(f"{person} is not a person who may sign statements in people.yml")
    elif statement.signature:
        if verify(statement, who.signing_key or ""):
            judged.proof = "signed"
        else:
            judged.reasons.append(
                f"its signature is not {person}'s (key from people.yml of the protected base)"
            )
    elif signatures_required:
        judged.reasons.append("not signed, and signatures are required here")
    else:
        mine = [i for i in found.introduced_by if i.author == who.email == i.committer]
        if mine:
            judged.proof = f"committed by {who.email}"
            judged.commit = mine[0].sha
        elif found.introduced_by:
            others = {f"{i.author} (committed by {i.committer})" for i in found.introduced_by}
            judged.reasons.append(
                "unsigned, and not authored and committed by "
                f"{who.email}: {', '.join(sorted(others))}"
            )
        else:
            judged.reasons.append("not committed")
    judged.valid = not judged.reasons
    return judged


def change_standing(
    project: Project, change: Change, content: Content, policies: Policies, revs: list[str]
) -> Standing:
    """`standing` of a change's statements, its requester and signature rule taken from it.

    The one call decide, `change show` and the next-step hints share.
    """
    return standing(
        project,
        change_id=change.id,
        requester=change.requested_by,
        content=content,
        policies=policies,
        signatures_required=change.environment in policies.signature_environments,
        revs=revs,
    )


def standing(
    project: Project,
    *,
    change_id: str,
    requester: str,
    content: Content,
    policies: Policies,
    signatures_required: bool,
    revs: list[str] | None = None,
    found: list[Found] | None = None,
) -> Standing:
    """Judge every statement of a change (history of `revs`, or `found`) for a content.

    Example:
        s = standing(project, change_id="CHG-0001", requester="alice", content=content,
                     policies=base.policies, signatures_required=False, revs=["HEAD", base.sha])
        s.requester_proven, s.approvers, s.rejected_by
    """
    excluded = frozenset({policies.records_by} if policies.records_by else ())
    judged = [
        judge(
            f,
            change_id,
            policies.people,
            signatures_required=signatures_required,
            excluded=excluded,
        )
        for f in (
            found
            if found is not None
            else collect(project, _prefixes(change_id, APPROVALS), revs or [])
        )
    ]
    notes = [
        f"{shown_path(project.root, j.path)} does not count: {'; '.join(j.reasons)}"
        for j in judged
        if not j.valid
    ]
    ordered = sorted(
        (j for j in judged if j.valid and j.statement), key=lambda j: (j.statement.at, j.path)
    )
    # A person's stance is their newest approval or rejection; the requester's request is
    # their newest request or rejection (a rejection by the requester withdraws it).
    stance = {j.person: j for j in ordered if j.statement.decision != "requested"}
    request = None
    for j in ordered:
        if j.person == requester and j.statement.decision in ("requested", "rejected"):
            request = j
    states, approvers, rejected = [], [], []
    for person, j in sorted(stance.items()):
        s = j.statement
        state = ApprovalState(
            person,
            s.decision,
            False,
            commit=j.commit,
            signed_by=person if j.proof == "signed" else "",
            at=s.at.isoformat(),
        )
        states.append(state)
        if s.decision == "rejected":
            state.valid = True
            rejected.append(person)
        elif s.content_sha256 != content.sha256:
            state.reasons.append(_changed(project.root, content, s))
        else:
            state.valid = True
            approvers.append(person)
    proven, why = False, f"{requester} has not requested this content (opsledger change submit)"
    if request is not None and request.statement.decision == "requested":
        if request.statement.content_sha256 == content.sha256:
            proven, why = True, f"{requester} requested this content ({request.proof})"
        else:
            changed = _changed(project.root, content, request.statement)
            why = f"{requester}'s request names other content: {changed}"
    elif request is None:
        unproven = [j for j in judged if j.person == requester and not j.valid]
        if unproven:
            why = f"{requester}'s request does not count: " + "; ".join(unproven[-1].reasons)
    return Standing(states, judged, requester, proven, why, rejected, approvers, notes)


def _changed(root: Path, content: Content, statement: Statement) -> str:
    """Which files changed since the statement, named where they lie.

    The manifest's keys are the flat form, which names no folder once the change lives in its
    block: a person told to look at it would find nothing.
    """
    changed = [shown_path(root, p) for p in content.changed_since(statement.content_files)]
    shown = ", ".join(changed[:5]) or "unknown files"
    return "the content changed since: " + shown + (" ..." if len(changed) > 5 else "")


def not_counted(person: str, requester: str, rule: Rule | None, policies: Policies) -> str:
    """Why a person's approval would not count under a rule; "" when it would.

    One wording for the three places that judge it: `approve` refuses at the moment of the
    mistake, `decide` does not count it, and `change show` labels it.
    """
    if person == policies.records_by or person not in policies.people:
        return f"{person} is not a person who may sign statements in people.yml"
    if policies.four_eyes and person == requester:
        return f"{person} requested the change and cannot approve it (four eyes)"
    teams = policies.people[person].teams
    if policies.approves_nothing(person):
        return (
            f"{person} is only in {', '.join(teams)}, which approves nothing "
            "(observers in policies/changes.yml)"
        )
    if rule is not None and rule.any_of_teams and not set(teams) & set(rule.any_of_teams):
        return f"{person} is not in {' or '.join(rule.any_of_teams)}"
    return ""


def quorum(
    standing: Standing,
    rule: Rule,
    policies: Policies,
    owners: tuple[str, ...] = (),
    owned: str = "",
) -> tuple[bool, str, list[str]]:
    """Whether the approvals meet a rule: count, teams, four eyes, owners; no rejection.

    Returns (passed, why, counted approvers).
    """
    notes, counted = [], []
    rejecters = []
    for person in standing.rejected_by:
        if policies.approves_nothing(person):  # an observer's "no" is an opinion, not a veto
            notes.append(f"{person}'s rejection does not count: {person} approves nothing")
        else:
            rejecters.append(person)
    if rejecters:
        who = ", ".join(rejecters)
        return False, f"rejected by {who} (a rejection stands until its author approves)", []
    for person in standing.approvers:
        why = not_counted(person, standing.requester, rule, policies)
        if why:
            notes.append(why)
            continue
        counted.append(person)
    for state in standing.states:
        if state.decision == "approved" and not state.valid:
            notes.append(f"{state.person}'s approval does not count: " + "; ".join(state.reasons))
    notes += standing.notes
    missing = []
    if len(counted) < rule.approvals:
        missing.append(f"{len(counted)} of {rule.approvals} approval(s)")
    member_teams = {t for p in counted for t in policies.people[p].teams}
    for team in rule.required_teams:
        if team not in member_teams:
            missing.append(f"no approver from {team}")
    if rule.approvals and owners and not member_teams & set(owners):
        missing.append(f"no approver from {' or '.join(owners)} (owners of {owned})")
    if missing:
        return False, "; ".join(missing + notes), counted
    why = ", ".join(counted) if counted else "pre-approved"
    if notes:
        why += " (" + "; ".join(notes) + ")"
    return True, why, counted


def require_clean_worktree(project: Project, change_id: str) -> None:
    """Raise (exit 2) when the approvals folder holds something that cannot be a statement."""
    problems = worktree_problems(project, change_id)
    if problems:
        raise OpsledgerError(problems)


def requested_contents(
    project: Project,
    *,
    change_id: str,
    requester: str,
    policies: Policies,
    signatures_required: bool,
    revs: list[str] | None = None,
    found: list[Found] | None = None,
) -> set[str]:
    """The content hashes the requester has provably requested for a change, ever."""
    if found is None:
        found = collect(project, _prefixes(change_id, APPROVALS, requester), revs or [])
    return {
        j.statement.content_sha256
        for f in found
        if (
            j := judge(
                f,
                change_id,
                policies.people,
                signatures_required=signatures_required,
                excluded=frozenset({policies.records_by} if policies.records_by else ()),
            )
        ).valid
        and j.statement is not None
        and j.statement.decision == "requested"
    }
