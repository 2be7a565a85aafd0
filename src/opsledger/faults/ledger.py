"""Git as the ledger of incidents and problems: who committed each timeline step, and when.

Every step of an incident is a commit: a person's step as that person (author and committer
from people.yml, signed with their key when given), a detection's as the runner identity that
commits evidence. The commit that first added a timeline entry dates it — not the `at` written
in the file, which anyone could type — so SLA clocks run on git time. Reading every version of
every incident costs one `git log` and one `git cat-file --batch` process, whatever the count.

An entry changed or removed after its commit breaks the append-only rule; `edits` lists the
commits that did it, for `audit check`.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsledger.faults.store import stringify
from opsledger.gitlog import read_history
from opsledger.gitrepo import commit_paths, git_env, write_files_and_commit
from opsledger.identity import commit_evidence, signing_key
from opsledger.policy.bundle import Person
from opsledger.project import Project
from opsledger.yamlio import parse_yaml


def commit_step(
    project: Project,
    paths: list[Path],
    message: str,
    *,
    person: Person | None,
    key: Path | None = None,
) -> str:
    """Commit a step's files as the person who took it, or as the runner for a detection."""
    if person is None:
        return commit_evidence(project, paths, message)
    return commit_paths(
        project.root,
        paths,
        message,
        name=person.name,
        email=person.email,
        signing_key=key or signing_key(),
    )


def record_step(
    project: Project,
    files: Mapping[Path, str],
    message: str,
    *,
    person: Person | None,
    key: Path | None = None,
) -> str:
    """Write a step's files and commit them (`commit_step`), or leave the tree as it was.

    Every incident and problem step goes through here: a commit git refuses (a held index
    lock, no repository, a key it cannot sign with) must not leave a file that says the step
    happened — the next command would read it as done (already acknowledged) though git, the
    ledger, has no such step.
    """
    return write_files_and_commit(
        project.root,
        files,
        lambda paths: commit_step(project, paths, message, person=person, key=key),
    )


@dataclass(frozen=True)
class Stamp:
    """The commit that added a timeline entry."""

    commit: str
    at: dt.datetime
    author_email: str


@dataclass
class FileHistory:
    """A file's timeline as git saw it: a stamp per current entry, and append-only breaches."""

    path: str
    stamps: list[Stamp | None] = field(default_factory=list)  # None: not committed
    edits: list[tuple[str, str]] = field(default_factory=list)  # (commit, what happened)
    first_commit: Stamp | None = None


def _key(entry: Any) -> str:
    return json.dumps(entry, sort_keys=True, default=str)


def _blobs(project: Project, specs: list[str]) -> dict[str, str]:
    """`sha:path` -> file text, all in one `git cat-file --batch`."""
    if not specs:
        return {}
    proc = subprocess.run(
        ["git", "-C", str(project.root), "cat-file", "--batch"],
        input="".join(f"{s}\n" for s in specs).encode(),
        capture_output=True,
        check=True,
        env=git_env(),
    )
    out, texts, pos = proc.stdout, {}, 0
    for spec in specs:
        end = out.index(b"\n", pos)
        header = out[pos:end].decode().split()
        pos = end + 1
        if len(header) < 3 or header[1] == "missing":
            continue
        size = int(header[2])
        texts[spec] = out[pos : pos + size].decode(errors="replace")
        pos += size + 1
    return texts


def _timeline(text: str | None) -> list[Any] | None:
    try:
        data = parse_yaml(text or "")
    except Exception:  # an unparsable version: the audit's business, not the clock's
        return None
    if not isinstance(data, dict) or not isinstance(data.get("timeline"), list):
        return None
    return stringify(data["timeline"])


def timeline_history(
    project: Project, folder: str, current: dict[str, list[dict[str, Any]]]
) -> dict[str, FileHistory]:
    """Stamps for the current timeline of each file under `folder` (incidents/ or problems/).

    `current` maps a file's path (relative to the project) to its timeline on disk now.

    Example:
        history = timeline_history(project, "incidents/", {"incidents/INC-0001/incident.yml":
                                                           incident.timeline})
        history["incidents/INC-0001/incident.yml"].stamps[0].at  # when it was opened
    """
    commits = [c for c in read_history(project, paths=(folder,)) if not c.merge]
    versions: dict[str, list[tuple[Stamp, str | None]]] = {}
    specs = []
    for commit in commits:
        stamp = Stamp(commit.sha, commit.committed_at, commit.author_email)
        for change in commit.files:
            if not change.path.endswith(".yml") or change.path.count("/") != 2:
                continue
            spec = f"{commit.sha}:{change.path}" if change.status != "D" else None
            versions.setdefault(change.path, []).append((stamp, spec))
            if spec:
                specs.append(spec)
    texts = _blobs(project, specs)
    result: dict[str, FileHistory] = {}
    for path in sorted(set(versions) | set(current)):
        history = FileHistory(path)
        first_seen: dict[str, Stamp] = {}
        previous: list[Any] = []
        for stamp, spec in versions.get(path, []):
            history.first_commit = history.first_commit or stamp
            if spec is None:
                history.edits.append((stamp.commit, "deleted"))
                previous = []
                continue
            timeline = _timeline(texts.get(spec))
            if timeline is None:
                history.edits.append((stamp.commit, "timeline unreadable"))
                continue
            if timeline[: len(previous)] != previous:
                changed = next(
                    (i for i, (a, b) in enumerate(zip(previous, timeline, strict=False)) if a != b),
                    min(len(previous), len(timeline)),
                )
                history.edits.append(
                    (stamp.commit, f"timeline entry {changed + 1} changed or removed")
                )
            for entry in timeline:
                first_seen.setdefault(_key(entry), stamp)
            previous = timeline
        history.stamps = [first_seen.get(_key(e)) for e in current.get(path, [])]
        result[path] = history
    return result
