"""Where a change's folder, its files and the policy files live in the repository.

The one place that knows a path under `changes/` or `policies/` (ARCHITECTURE.md: "one place
that knows a path"). Every module that reads, writes, lists or asks git about one of them asks
here, so moving the layout (e.g. `changes/<year>/<ID>/`, issue 16) is a change to this module
and its tests, not a hunt through forty hand-built strings, any one of which, missed, would be
a reader that no longer finds a change, or a guard that no longer sees what it guards.

Two forms of every path:
- *relative* (`changes/CHG-0001/change.yml`, POSIX, as git names it): pathspecs, `git show
  REV:PATH`, the file named in a Problem, paths matched in a diff or a log;
- *absolute* (`Path`, under the project's root): what is read and written on disk.

Example:
    change_file("CHG-0001", REQUEST)          # "changes/CHG-0001/change.yml"
    change_folder(root, "CHG-0001", RUNS)     # root / "changes" / "CHG-0001" / "runs"
    change_id_of("changes/CHG-0001/runs/x")   # "CHG-0001"
    policy_file("people.yml")                 # "policies/people.yml"
    policies_folder(root, "people.yml")       # root / "policies" / "people.yml"
"""

from __future__ import annotations

import re
from pathlib import Path

CHANGES = "changes"  # every change folder lives under it (CHG-<n> and POL-<n>)
POLICIES = "policies"
RECORDS = "records"  # evidence of inspections, drift, drills, alerts (records.evidence_folder)
CHANGES_PREFIX = f"{CHANGES}/"  # what a relative path under changes/ starts with (a git prefix)
POLICIES_PREFIX = f"{POLICIES}/"

# What a change folder holds.
REQUEST = "change.yml"  # a change request (CHG-<n>)
POLICY_REQUEST = "policy.yml"  # a policy change request (POL-<n>)
APPROVALS = "approvals"  # statements: approvals/<person>/<UTC stamp>.yml
RUNS = "runs"  # run records: runs/<UTC stamp>.json (and .started.json, .log.jsonl.gz)
SHARDS = "shards"  # shard records of a sharded apply
REVIEW = "review.yml"  # the post-implementation review of an emergency change
WITHDRAWN = "withdrawn.yml"

# A change id as a path segment may hold: CHG-<n> or POL-<n> (any upper-case kind, so a folder
# of an unknown kind is still recognised as a change folder, never as something else).
_ANY_ID = r"[A-Z]+-[0-9]+"
_FOLDER = re.compile(rf"^{CHANGES}/({_ANY_ID})(?:/|\Z)")


def change_file(change_id: str, *parts: str) -> str:
    """`changes/<ID>[/<part>...]`, relative and POSIX: what git and a Problem name."""
    return "/".join((CHANGES, change_id, *parts))


def change_folder(root: Path, change_id: str, *parts: str) -> Path:
    """`<root>/changes/<ID>[/<part>...]` on disk."""
    return root.joinpath(CHANGES, change_id, *parts)


def changes_root(root: Path) -> Path:
    """`<root>/changes`, where change folders are listed and created."""
    return root / CHANGES


def change_folder_name(path: str) -> str:
    """The name of the folder under `changes/` a relative path lies in (any name), else "".

    `changes/CHG-0001/runs/x` -> "CHG-0001", `changes/junk/x` -> "junk", `policies/x` -> "".
    Guards use it: a folder that is not id-shaped is still a folder under `changes/` and must
    be judged (refused), never waved through as "not a change".
    """
    parts = path.split("/", 2)
    return parts[1] if len(parts) >= 2 and parts[0] == CHANGES else ""


def within_change(path: str) -> tuple[str, str] | None:
    """(folder name, rest) for a file inside a change folder, `changes/<name>/<rest>`, else None.

    None for a path outside `changes/` and for a file right under it (`changes/README.md`).
    """
    parts = path.split("/", 2)
    if len(parts) < 3 or parts[0] != CHANGES:
        return None
    return parts[1], parts[2]


def change_id_of(path: str) -> str:
    """The change id a relative path lies in (`changes/<ID>/...` or the folder itself), else "".

    Only an id-shaped folder counts: `changes/README.md` lies in no change.
    """
    m = _FOLDER.match(path)
    return m.group(1) if m else ""


def folder_of_kind(path: str, kinds: tuple[str, ...] = ("CHG", "POL")) -> str:
    """The folder name under `changes/` when it starts with `<kind>-` of `kinds`, else "".

    Any such name, id-shaped or not (`CHG-abc` too): what a pull request touches is judged
    by the change's own validation, which refuses a malformed id.
    """
    name = change_folder_name(path)
    return name if name.startswith(tuple(f"{k}-" for k in kinds)) else ""


def change_file_pattern(id_pattern: str, rest: str) -> re.Pattern[str]:
    r"""A regex matching `changes/<ID>/<rest>` exactly, the id as group 1.

    `id_pattern` and `rest` are regex fragments (e.g. `CHG-[0-9]+`, `runs/([0-9TZ]+)\.json`);
    the returned pattern is anchored at both ends (`\Z`: no trailing newline slips through
    `.match`). A prefix test writes `rest` as `approvals/[\s\S]*`.
    """
    return re.compile(rf"^{CHANGES}/({id_pattern})/{rest}\Z")


def any_change_id_pattern() -> str:
    """The regex fragment of any change id as a folder name (CHG-<n>, POL-<n>, ...)."""
    return _ANY_ID


def every_change_glob(*parts: str) -> str:
    """A git pathspec for `<parts>` in every change folder: `:(glob)changes/*/<parts>`."""
    return ":(glob)" + "/".join((CHANGES, "*", *parts))


def other_changes_pathspec() -> str:
    """A git pathspec excluding every file inside a change folder (`changes/*/**`)."""
    return f":(exclude,glob){CHANGES}/*/**"


def policy_file(name: str = "") -> str:
    """`policies/<name>` relative and POSIX (`policies` itself without a name)."""
    return f"{POLICIES}/{name}" if name else POLICIES


def policies_folder(root: Path, name: str = "") -> Path:
    """`<root>/policies/<name>` on disk (the folder itself without a name)."""
    return root / POLICIES / name if name else root / POLICIES


def in_policies(path: str) -> bool:
    """True for a relative path under `policies/`."""
    return path.startswith(POLICIES_PREFIX)
