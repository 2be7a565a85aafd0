"""Policy changes are changes: `changes/POL-<block>/POL-<n>/policy.yml` and its statements.

Who may approve what, whose keys count, which windows open: an edit of `policies/` changes the
rules every other change is judged by, so it is requested and approved like a change — by the
owner teams that `policy_changes` in policies/changes.yml names, under the policy *as it was
before* (see base.py). Its content is the request file plus every file under `policies/` as the
change leaves them; approvals sign that hash, so any later edit of a policy file voids them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from opsledger.changes import ids_in_history
from opsledger.content import Content, ignored_paths, manifest
from opsledger.errors import OpsledgerError, Problem
from opsledger.gitrepo import blob_contents, git_env
from opsledger.layout import (
    POLICIES,
    POLICY_REQUEST,
    change_file,
    change_folder,
    change_pathspecs,
    changes_root,
    flat_form,
    folders_on_disk,
    policies_folder,
    policy_file,
)
from opsledger.project import Project
from opsledger.yamlio import load_yaml

_ID = re.compile(r"POL-([0-9]{4,9})")  # fullmatch: no trailing newline, no path; ASCII
# Markdown under policies/ documents the rules; it is not a rule (pathspec for git).
POLICY_DOCS = (f":(exclude,glob){policy_file()}/**/*.md",)
FIELDS = ("id", "title", "requested_by", "reason")


@dataclass(frozen=True)
class PolicyRequest:
    id: str
    title: str
    requested_by: str
    reason: str
    file: Path


def is_policy_change(change_id: str) -> bool:
    return isinstance(change_id, str) and bool(_ID.fullmatch(change_id))


def request_file(project: Project, change_id: str) -> Path:
    return change_folder(project.root, change_id, POLICY_REQUEST)


def policy_change_ids(project: Project) -> list[str]:
    found, wrong = folders_on_disk(project.root, POLICY_REQUEST)
    if wrong:  # in both layouts, or in the wrong block: which folder is the request?
        raise OpsledgerError(
            [
                Problem(
                    why, path, "layout", "keep one folder, in the block layout.block_file names"
                )
                for path, why in wrong
            ]
        )
    return sorted((i for i in found if _ID.fullmatch(i)), key=lambda i: int(i[4:]))


def load_policy_request(project: Project, change_id: str) -> PolicyRequest:
    """A policy change request, checked; every problem is reported at once (exit 2)."""
    file = request_file(project, change_id)
    if not is_policy_change(change_id) or not file.is_file() or file.is_symlink():
        raise OpsledgerError(
            Problem(
                f"no policy change {change_id}",
                str(file),
                fix="create one with `opsledger policy propose`",
            )
        )
    data = load_yaml(file, what="policy change request", root=project.root)
    problems = [
        Problem("missing or not text", str(file), key, f"add {key}")
        for key in FIELDS
        if not isinstance(data.get(key), str) or not data[key].strip()
    ]
    problems += [
        Problem(f"unknown field {key!r}", str(file), key, f"use: {', '.join(FIELDS)}")
        for key in sorted(set(data) - set(FIELDS))
    ]
    if data.get("id") != change_id:
        problems.append(Problem("differs from its folder", str(file), "id", f"set id: {change_id}"))
    if problems:
        raise OpsledgerError(problems)
    return PolicyRequest(
        change_id, data["title"], data["requested_by"], data["reason"].strip(), file
    )


def new_policy_request(
    project: Project, *, title: str, requested_by: str, reason: str
) -> PolicyRequest:
    """Write `changes/POL-<block>/POL-<next>/policy.yml` (not committed: commit it with the edit).

    Like change ids, policy change ids are never reused: the next is one more than the highest
    in the tree or in any branch's history, and its folder is claimed before it is written.
    """
    used = set(policy_change_ids(project)) | ids_in_history(project, POLICY_REQUEST)
    number = max((int(i[4:]) for i in used if is_policy_change(i)), default=0) + 1
    changes_root(project.root).mkdir(exist_ok=True)
    while True:
        change_id = f"POL-{number:04d}"
        file = request_file(project, change_id)
        file.parent.parent.mkdir(exist_ok=True)  # the id's block (layout.block_of), shared
        try:
            file.parent.mkdir()
        except FileExistsError:
            number += 1
            continue
        break
    data = {"id": change_id, "title": title, "requested_by": requested_by, "reason": reason}
    file.write_text("---\n" + yaml.safe_dump(data, sort_keys=False, width=100))
    try:
        return load_policy_request(project, change_id)
    except OpsledgerError:
        file.unlink()
        file.parent.rmdir()
        with contextlib.suppress(OSError):  # the block folder, when this request made it
            if file.parent.parent != changes_root(project.root):
                file.parent.parent.rmdir()
        raise


def policy_content(project: Project, change_id: str) -> Content:
    """The request file and every file under policies/ as they are on disk (symlinks: exit 2)."""
    files = {change_file(change_id, POLICY_REQUEST): request_file(project, change_id)}
    folder = policies_folder(project.root)
    for top, dirs, names in os.walk(folder):
        for name in [*dirs, *names]:
            path = Path(top) / name
            relative = path.relative_to(project.root).as_posix()
            if path.is_symlink():
                raise OpsledgerError(
                    Problem(
                        "a symlink in policies/",
                        relative,
                        "symlink",
                        "policy files must be plain files",
                    )
                )
            if path.is_file() and path.suffix != ".md":
                files[relative] = path
    ignored = ignored_paths(project, sorted(files))
    return manifest(
        {
            relative: hashlib.sha256(path.read_bytes()).hexdigest()
            for relative, path in files.items()
            if relative not in ignored
        }
    )


def policy_content_at(project: Project, commit: str, change_id: str) -> Content | None:
    """The same content as committed in `commit`.

    None when the request is missing there, or a policy file is not a plain file.
    """
    listing = subprocess.run(
        [
            "git",
            "-C",
            str(project.root),
            "ls-tree",
            "-r",
            "-z",
            commit,
            "--",
            POLICIES,
            *change_pathspecs(change_id, POLICY_REQUEST),
        ],
        capture_output=True,
        encoding="utf-8",
        errors="surrogateescape",  # a path git prints may be any bytes
        env=git_env(),
    )
    entries = []
    for line in listing.stdout.split("\0"):
        if line:
            meta, _, stored = line.partition("\t")
            mode, kind, blob = meta.split()
            path = flat_form(stored)  # the key: either layout hashes the same
            if path.endswith(".md"):
                continue  # documentation, not policy
            if kind != "blob" or mode == "120000":
                return None
            entries.append((path, blob))
    if change_file(change_id, POLICY_REQUEST) not in {p for p, _ in entries}:
        return None
    contents = blob_contents(project.root, [b for _, b in entries])
    return manifest({p: hashlib.sha256(contents[b]).hexdigest() for p, b in entries})
