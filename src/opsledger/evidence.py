"""Run records as evidence: only what the CI identity committed on the protected branch.

A run record is a JSON file anyone can write, so a file that *says* "staging success" proves
nothing. A record counts as evidence — for the promotion rule, and for audit — only when:

- the commit that added it is on the protected base's first-parent line, not a merge (CI
  commits records straight onto the branch; a merge can only bring what others wrote);
- that commit's author and committer are both the CI identity (`records.committed_by` in
  policies/changes.yml, a person of people.yml) and, where the record's environment requires
  signatures, git verifies its SSH signature as that person's key;
- it is read as it was added: later edits (even inside a merge) change nothing but are
  reported by audit check as `evidence-edited`;
- its change exists on the base, and the record's environment, runbook and params are the
  change's, and the content it ran is content the change's requester provably requested.

Everything else is reported by audit check as `evidence-forged`.

Which records there are is `records.read_runs`' answer (final records committed in HEAD, the
one reader of run records): `run_evidence` judges those, each as the base's first-parent line
added it, so a record counts only when both hold. Audit check judges every record the history
ever added (`judge_record`), deleted ones included.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from opsledger.approvals import Found, allowed_signers, requested_contents
from opsledger.base import Base
from opsledger.changes import RUN_FIELDS
from opsledger.errors import OpsledgerError
from opsledger.gitlog import Commit
from opsledger.gitrepo import blob_contents, git_env
from opsledger.layout import (
    CHANGES,
    REQUEST,
    change_folder_name,
    change_pathspecs,
    flat_form,
    within_change,
)
from opsledger.project import Project
from opsledger.records import Record, RunLedger, is_final_run_path, parse_record, read_runs
from opsledger.steady import remembered, steady_memo
from opsledger.yamlio import parse_yaml_fields


@dataclass(frozen=True, slots=True)
class Added:
    """The commit that added a record, as git tells it."""

    path: str
    blob: str
    commit: str
    parents: int
    author: str
    committer: str
    signature: str  # git's %G?
    signer: str

    @classmethod
    def of(cls, commit: Commit, path: str, blob: str) -> Added:
        """What `commit` says of the record it added at `path` (blob `blob`)."""
        return cls(
            path,
            blob,
            commit.sha,
            len(commit.parents),
            commit.author_email,
            commit.committer_email,
            commit.signature,
            commit.signer,
        )


@dataclass(slots=True)  # an audit holds one per run record: no __dict__ each
class Evidence:
    path: str
    commit: str
    record: Record | None
    trusted: bool
    reasons: list[str] = field(default_factory=list)


def added_on_line(project: Project, base: Base) -> list[Added]:
    """Every run record added by a commit of the base's first-parent line, oldest first."""
    with tempfile.TemporaryDirectory(prefix="opsledger-evidence-") as tmp:
        signers = Path(tmp) / "allowed_signers"
        signers.write_text(allowed_signers(base.policies))
        out = subprocess.run(
            [
                "git",
                "-C",
                str(project.root),
                "-c",
                f"gpg.ssh.allowedSignersFile={signers}",
                "log",
                "--first-parent",
                "--diff-merges=first-parent",
                "--reverse",
                "--diff-filter=AD",  # D: to tell a move between layouts from an addition
                "--raw",
                "--no-abbrev",
                "--no-renames",
                "-z",
                "--format=%x1e%H%x1f%P%x1f%ae%x1f%ce%x1f%G?%x1f%GS",
                base.sha,
                "--",
                CHANGES,  # a plain prefix: git prunes by it (a glob costs 5x on big histories)
            ],
            capture_output=True,
            encoding="utf-8",
            errors="surrogateescape",  # a path git prints may be any bytes
            check=True,
            env=git_env(),
        ).stdout
    found = []
    for record in out.split("\x1e"):
        header, _, rest = record.partition("\0")
        if not header:
            continue
        sha, parents, author, committer, signature, signer = header.split("\x1f")
        tokens = rest.lstrip("\0\n").split("\0")
        entries = [
            (flat_form(path), *meta[1:].split()[2:])  # key, old blob, new blob, status
            for meta, path in zip(tokens[::2], tokens[1::2], strict=False)
            if meta.startswith(":") and is_final_run_path(path)
        ]
        moved = {(key, old) for key, old, _, status in entries if status.startswith("D")}
        for key, _, blob, status in entries:
            if status.startswith("A") and (key, blob) not in moved:  # a move adds nothing
                found.append(
                    Added(
                        key, blob, sha, len(parents.split()), author, committer, signature, signer
                    )
                )
    return found


def record_of(blob: str, raw: bytes) -> Record | None:
    """`parse_record(raw)` of a record version, once per blob inside `steady_tree()`.

    Audits parse the records a branch holds while git lists its history. Shared: never
    change it.
    """
    return remembered(("record", blob), lambda: parse_record(raw))


def unparsed_records(blobs: Iterable[str]) -> list[str]:
    """The record versions `record_of` has not parsed in this scope: only those need reading."""
    memo = steady_memo()
    return [b for b in blobs if memo is None or ("record", b) not in memo]


def added_in(commits: Iterable[Commit], base: Base) -> list[Added]:
    """`added_on_line`'s answer from a history already read, oldest first.

    gitlog lists what a merge brought relative to its first parent, as `--first-parent` does.

    An audit reads the whole history once; a second `git log` for the records would read it
    again (as long again as git itself takes to list the history).
    """
    commits = list(commits)
    base.position.want(commit.sha for commit in commits)  # one pass for them all
    return [
        Added.of(commit, f.path, f.blob)
        for commit in commits
        if commit.sha in base.position
        for f in commit.files
        if f.status == "A" and is_final_run_path(f.path)
    ]


def changes_on(project: Project, base: Base, change_ids: list[str]) -> dict[str, bytes]:
    """The change.yml of each change as the base holds it (missing ones are left out)."""
    wanted = sorted(set(change_ids))
    names = {c: [f"{base.sha}:{p}" for p in change_pathspecs(c, REQUEST)] for c in wanted}
    found = blob_contents(project.root, [n for both in names.values() for n in both])
    return {c: found[name] for c in wanted for name in names[c] if name in found}


def judge_record(
    project: Project,
    base: Base,
    added: Added,
    raw: bytes,
    statements: list[Found] | None = None,
    request: bytes | None = None,
) -> Evidence:
    """Whether one added record is evidence, and every reason it is not.

    `statements`: the change's statement versions when already read (audits), else they are
    read from the base's history; `request`: its change.yml on the base when already read
    (b"" when it has none).
    """
    evidence = Evidence(added.path, added.commit, None, False)
    reasons = evidence.reasons
    inside = within_change(added.path)  # changes/<ID>/runs/<file>
    change_id = inside[0] if inside and inside[1].count("/") == 1 else ""
    evidence.record = record_of(added.blob, raw)
    if evidence.record is None:
        reasons.append("not a run record")
        return evidence
    record = evidence.record
    policies = base.policies_at(added.commit)
    ci = policies.people.get(policies.records_by or "")
    if added.commit not in base.position:
        reasons.append(f"not committed on {base.ref}'s first-parent line")
    elif added.parents > 1:
        reasons.append("brought by a merge, not committed on the branch by the CI identity")
    if ci is None:
        reasons.append("policies name no CI identity (records.committed_by)")
    else:
        if added.author != ci.email or added.committer != ci.email:
            reasons.append(
                f"committed by {added.committer} (author {added.author}), not the CI identity "
                f"{ci.email}"
            )
        if record.environment in policies.signature_environments and (
            added.signature != "G" or added.signer != ci.email
        ):
            reasons.append(f"not signed with the CI identity's key (git says {added.signature})")
    if record.change != change_id:
        reasons.append(f"names change {record.change!r}, filed under {change_id}")
    if request is None:
        request = changes_on(project, base, [change_id]).get(change_id, b"")
    if not request:
        reasons.append(f"no change {change_id} on {base.ref}")
        return evidence
    try:  # only the fields it is checked against (read only)
        change = parse_yaml_fields(request.decode(errors="replace"), RUN_FIELDS, dates=False)
    except OpsledgerError:
        change = None
    if not isinstance(change, dict):
        reasons.append(f"change {change_id} on {base.ref} is unreadable")
        return evidence
    for key in ("environment", "runbook", "params"):
        if getattr(record, key) != change.get(key, {} if key == "params" else None):
            reasons.append(f"its {key} is not the change's")
    requested = requested_contents(
        project,
        change_id=change_id,
        requester=str(change.get("requested_by", "")),
        policies=base.policies,
        signatures_required=record.environment in base.policies.signature_environments,
        revs=[base.sha],
        found=statements,
    )
    if record.content_sha256 not in requested:
        reasons.append("the content it ran is not content its requester requested")
    evidence.trusted = not reasons
    return evidence


def run_evidence(
    project: Project,
    base: Base,
    *,
    only: Callable[[Record], bool] | None = None,
    statements: dict[str, list[Found]] | None = None,
    history: list[Commit] | None = None,
    ledger: RunLedger | None = None,
) -> list[Evidence]:
    """The run records that count (`read_runs`: committed in HEAD), judged, oldest first.

    Each is judged as the base's first-parent line added it (a record HEAD holds that the line
    never added is no evidence). `only` picks the records worth judging by what they say, as
    HEAD holds them and as they were added (judging reads statements). `history`: the base's
    whole history when already read (every commit adding a record, see `added_in`);
    `ledger`: `read_runs(project)` when already read (an audit reads it while git walks).

    Example:
        [e.record.change for e in run_evidence(project, base) if e.trusted]
    """
    ledger = ledger if ledger is not None else read_runs(project)
    held = {flat_form(f.path): f.record for f in ledger.committed_files}  # keys, as gitlog
    if only is not None:
        held = {path: record for path, record in held.items() if only(record)}
    line = added_in(history, base) if history is not None else added_on_line(project, base)
    added = [a for a in line if a.path in held]
    base.position.want(a.commit for a in added)  # one pass places them all (judge_record)
    asked = [a.blob for a in added]
    contents = blob_contents(project.root, unparsed_records(asked) if only is None else asked)
    requests = changes_on(project, base, [change_folder_name(a.path) for a in added])
    judged, found = [], set()
    for entry in added:
        found.add(entry.path)
        raw = contents.get(entry.blob, b"")
        if only is not None:
            as_added = parse_record(raw)
            if as_added is None or not only(as_added):
                continue
        change_id = change_folder_name(entry.path)
        known = statements.get(change_id, []) if statements is not None else None
        judged.append(judge_record(project, base, entry, raw, known, requests.get(change_id, b"")))
    for path, record in held.items():
        if path not in found:
            reason = f"not committed on {base.ref}'s first-parent line"
            judged.append(Evidence(path, "", record, False, [reason]))
    return sorted(judged, key=lambda e: e.record.finished_at if e.record else "")
