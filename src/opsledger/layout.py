"""Where a change's folder, its files and the policy files live in the repository.

The one place that knows a path under `changes/` or `policies/` (ARCHITECTURE.md: "one place
that knows a path"). Every module that reads, writes, lists or asks git about one of them asks
here, so moving the layout (e.g. `changes/<year>/<ID>/`, issue 16) is a change to this module
and its tests, not a hunt through forty hand-built strings, any one of which, missed, would be
a reader that no longer finds a change, or a guard that no longer sees what it guards.

Two layouts of a change's folder (issue 16: one flat folder of 10,000 changes made every
change commit rewrite a 350 KB tree, and git's history reads grew superlinearly):
- *block* (`changes/CHG-00xx/CHG-0001/`), where every new change goes: the block is the id's
  number with its last two digits replaced by `xx` (CHG-0123 -> CHG-01xx, CHG-12345 ->
  CHG-123xx), a pure function of the id, so no reader ever searches and ids stay global;
- *flat* (`changes/CHG-0001/`), the legacy layout, still read until `opsledger change
  migrate-layout` moves it.

Two forms of every relative path, and why:
- the *key* (`changes/CHG-0001/change.yml`, the flat form whichever layout holds the file):
  what hashes, statements, manifests and audits name a file by, so the same bytes in either
  layout hash the same and a `git mv` voids no approval (`flat_form` maps a stored path to it);
- the *stored* path (`stored_file`, `change_pathspecs`): what is on disk and in a commit,
  for git pathspecs, `git show REV:PATH` and the file named in a Problem.
The absolute form (`Path`, under the project's root) is the stored path on disk.

Example:
    change_file("CHG-0001", REQUEST)          # "changes/CHG-0001/change.yml" (the key)
    block_file("CHG-0001", REQUEST)           # "changes/CHG-00xx/CHG-0001/change.yml"
    change_folder(root, "CHG-0001", RUNS)     # root/changes/CHG-00xx/CHG-0001/runs (or flat)
    flat_form("changes/CHG-00xx/CHG-0001/x")  # "changes/CHG-0001/x"
    change_id_of("changes/CHG-0001/runs/x")   # "CHG-0001"
    policy_file("people.yml")                 # "policies/people.yml"
    policies_folder(root, "people.yml")       # root / "policies" / "people.yml"
"""

from __future__ import annotations

import os
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
_ANY_ID_RE = re.compile(_ANY_ID)
_FOLDER = re.compile(rf"^{CHANGES}/({_ANY_ID})(?:/|\Z)")
# A block folder's name: <KIND>-<the id's digits but the last two>xx (CHG-00xx, CHG-123xx).
_BLOCK = re.compile(r"[A-Z]+-[0-9]*xx")


def block_of(change_id: str) -> str:
    """The block folder of an id: its number's last two digits replaced by `xx`.

    CHG-0001 -> CHG-00xx, CHG-0123 -> CHG-01xx, CHG-12345 -> CHG-123xx: at most 100 changes
    a block, so at 10,000 changes both tree levels hold ~100 entries.
    """
    kind, _, number = change_id.partition("-")
    return f"{kind}-{number[:-2]}xx"


def change_file(change_id: str, *parts: str) -> str:
    """`changes/<ID>[/<part>...]`: the key a file is known by, whichever layout stores it.

    Hashes, statements, manifests, audits and comparisons with `flat_form`ed git paths use
    it. To ask git or the disk, use `change_pathspecs` / `stored_file` / `change_folder`.
    """
    return "/".join((CHANGES, change_id, *parts))


def block_file(change_id: str, *parts: str) -> str:
    """`changes/<block>/<ID>[/<part>...]`: where the block layout stores it (relative)."""
    return "/".join((CHANGES, block_of(change_id), change_id, *parts))


def change_pathspecs(change_id: str, *parts: str) -> tuple[str, str]:
    """The path in both layouts (flat, block): git pathspecs that find it wherever it lies.

    A reader that asked git for one layout only would miss a migrated (or a legacy) change:
    an approval not found, a run record not counted, an id handed out twice.
    """
    return change_file(change_id, *parts), block_file(change_id, *parts)


def flat_folder(root: Path, change_id: str) -> Path:
    """`<root>/changes/<ID>`: the legacy flat folder on disk (it may not exist)."""
    return root.joinpath(CHANGES, change_id)


def block_folder(root: Path, change_id: str) -> Path:
    """`<root>/changes/<block>/<ID>`: the block folder on disk (it may not exist)."""
    return root.joinpath(CHANGES, block_of(change_id), change_id)


def change_folder(root: Path, change_id: str, *parts: str) -> Path:
    """The change's folder (or a file in it) on disk: the flat one if it exists, else the block.

    A change already in the flat layout keeps getting its files there until `change
    migrate-layout` moves it (a change split across two folders would be two changes); a new
    one is created in its block. An id in both is refused by `changes.change_ids`.
    """
    flat = flat_folder(root, change_id)
    folder = flat if os.path.lexists(flat) else block_folder(root, change_id)
    return folder.joinpath(*parts)


def stored_file(root: Path, change_id: str, *parts: str) -> str:
    """Where the change's file lies on disk, relative and POSIX (flat if the flat folder exists)."""
    if os.path.lexists(flat_folder(root, change_id)):
        return change_file(change_id, *parts)
    return block_file(change_id, *parts)


def shown_path(root: Path, path: str) -> str:
    """The path a message shows a person for a key or a stored path: where the file lies now.

    A key (`changes/CHG-0001/change.yml`) names a folder that does not exist once the change
    lives in its block; a person told to open or `git add` it would find nothing. Paths
    outside a change folder are returned as they are. Findings and hashes keep the key.
    """
    split = _split(path)
    if split is None or split[0] or not _ANY_ID_RE.fullmatch(split[1]):
        return path  # outside changes/, a block path already, or no change folder
    return stored_file(root, split[1], *([split[2]] if split[2] else []))


def _split(path: str) -> tuple[str, str, str | None] | None:
    """(block or "", folder, rest or None) of a path under `changes/`, else None.

    `changes/CHG-0001/x` -> ("", "CHG-0001", "x"); `changes/CHG-00xx/CHG-0001/x` ->
    ("CHG-00xx", "CHG-0001", "x"); `changes/CHG-00xx` -> ("CHG-00xx", "", None).
    """
    parts = path.split("/", 3)
    if len(parts) < 2 or parts[0] != CHANGES:
        return None
    if _BLOCK.fullmatch(parts[1]):
        folder = parts[2] if len(parts) > 2 else ""
        return parts[1], folder, parts[3] if len(parts) > 3 else None
    rest = "/".join(parts[2:]) if len(parts) > 2 else None
    return "", parts[1], rest


def misplaced(path: str) -> str:
    """Why a path under a block folder lies in no valid change folder, else "".

    `changes/CHG-05xx/CHG-0123/x` (the wrong block), `changes/CHG-00xx/README.md` (a file in
    a block but in no change), `changes/CHG-00xx/junk/x`: invalid input, refused by `ci pr`
    and by `changes.change_ids`, never read as the change it names.
    """
    split = _split(path)
    if split is None or not split[0]:
        return ""
    block, folder, _ = split
    if not folder:
        return f"{block} is a block folder, not a change"
    if not _ANY_ID_RE.fullmatch(folder):
        return f"{folder} in block {block} is not a change id"
    if block_of(folder) != block:
        return f"{folder} belongs in {block_file(folder)}, not in block {block}"
    return ""


def flat_form(path: str) -> str:
    """The key of a stored relative path: a block path in its own block loses the block.

    `changes/CHG-00xx/CHG-0001/x` -> `changes/CHG-0001/x`; every other path (flat, misplaced,
    outside changes/) is returned unchanged, so a misplaced file is never keyed as a change's.
    Called for every path of every commit an audit reads: the common cases return early.
    """
    if not path.startswith(CHANGES_PREFIX):
        return path
    parts = path.split("/", 3)
    if len(parts) < 3 or not parts[1].endswith("xx") or not _BLOCK.fullmatch(parts[1]):
        return path  # flat, or right under changes/
    folder = parts[2]
    if not _ANY_ID_RE.fullmatch(folder) or block_of(folder) != parts[1]:
        return path  # misplaced: keyed as itself, never as the change it names
    return change_file(folder) if len(parts) == 3 else change_file(folder, parts[3])


def changes_root(root: Path) -> Path:
    """`<root>/changes`, where change folders are listed and created."""
    return root / CHANGES


def change_folder_name(path: str) -> str:
    """The change folder's name a relative path lies in (any name, either layout), else "".

    `changes/CHG-0001/runs/x` and `changes/CHG-00xx/CHG-0001/runs/x` -> "CHG-0001",
    `changes/junk/x` -> "junk", `policies/x` -> "". A misplaced block path names its block
    and folder (`CHG-05xx/CHG-0123`), which is no id. Guards use it: a folder that is not
    id-shaped is still a folder under `changes/` and must be judged (refused), never waved
    through as "not a change".
    """
    split = _split(path)
    if split is None:
        return ""
    block, folder, _ = split
    if block and misplaced(path):
        return f"{block}/{folder}" if folder else block
    return folder


def within_change(path: str) -> tuple[str, str] | None:
    """(folder name, rest) for a file inside a change folder (either layout), else None.

    None for a path outside `changes/` and for a file right under it (`changes/README.md`).
    The folder is named as `change_folder_name` names it.
    """
    split = _split(path)
    if split is None or split[2] is None:
        return None
    return change_folder_name(path), split[2]


def change_id_of(path: str) -> str:
    """The change id a relative path lies in (either layout, or the folder itself), else "".

    Only an id-shaped folder in its own block counts: `changes/README.md` lies in no change.
    """
    m = _FOLDER.match(flat_form(path))
    return m.group(1) if m else ""


def folder_of_kind(path: str, kinds: tuple[str, ...] = ("CHG", "POL")) -> str:
    """The change folder's name when it starts with `<kind>-` of `kinds`, else "".

    Any such name, id-shaped or not (`CHG-abc` too): what a pull request touches is judged
    by the change's own validation, which refuses a malformed id. A block folder or a path
    misplaced in one is no change folder ("": `ci pr` refuses it as stray).
    """
    name = change_folder_name(path)
    if "/" in name or _BLOCK.fullmatch(name):
        return ""
    return name if name.startswith(tuple(f"{k}-" for k in kinds)) else ""


class ChangePattern:
    """A regex over keys (`changes/<ID>/<rest>`) that matches a stored path of either layout.

    The path is `flat_form`ed first, so group 1 is the id wherever the file lies and a
    misplaced block path never matches.
    """

    def __init__(self, regex: re.Pattern[str]) -> None:
        self.regex = regex

    def match(self, path: str) -> re.Match[str] | None:
        return self.regex.match(flat_form(path))

    def fullmatch(self, path: str) -> re.Match[str] | None:
        return self.regex.fullmatch(flat_form(path))


def change_file_pattern(id_pattern: str, rest: str) -> ChangePattern:
    r"""A pattern matching `changes/<ID>/<rest>` in either layout, the id as group 1.

    `id_pattern` and `rest` are regex fragments (e.g. `CHG-[0-9]+`, `runs/([0-9TZ]+)\.json`);
    the pattern is anchored at both ends (`\Z`: no trailing newline slips through `.match`).
    A prefix test writes `rest` as `approvals/[\s\S]*`.
    """
    return ChangePattern(re.compile(rf"^{CHANGES}/({id_pattern})/{rest}\Z"))


def any_change_id_pattern() -> str:
    """The regex fragment of any change id as a folder name (CHG-<n>, POL-<n>, ...)."""
    return _ANY_ID


def every_change_glob(*parts: str) -> tuple[str, str]:
    """git pathspecs for `<parts>` in every change folder of both layouts.

    `:(glob)changes/*/<parts>` and `:(glob)changes/*/*/<parts>`: `ids_in_history` must see
    both, or an id could be handed out twice.
    """
    return (
        ":(glob)" + "/".join((CHANGES, "*", *parts)),
        ":(glob)" + "/".join((CHANGES, "*", "*", *parts)),
    )


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


def folders_on_disk(root: Path, request: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Every change folder holding `request` in either layout, and what is wrong with the rest.

    Returns (name -> stored relative folder, [(path, why)]). One listing of `changes/` and
    one of each block folder (~100 of them at 10,000 changes). Refused (a problem, never
    read): an id present in both layouts (which folder is the change? a statement could count
    twice) and a folder holding `request` in the wrong block (no reader would find it).
    """
    top = changes_root(root)
    try:
        with os.scandir(top) as entries:
            names = [e.name for e in entries]
    except OSError:
        return {}, []
    found: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    blocks = [n for n in names if _BLOCK.fullmatch(n)]
    for name in names:
        if name not in blocks and os.path.lexists(f"{top}/{name}/{request}"):
            found[name] = change_file(name)
    for block in sorted(blocks):
        try:
            with os.scandir(top / block) as entries:
                inner = sorted(e.name for e in entries)
        except OSError:
            continue
        for name in inner:
            stored = f"{CHANGES}/{block}/{name}"
            if not os.path.lexists(f"{top}/{block}/{name}/{request}"):
                continue
            if why := misplaced(f"{stored}/{request}"):
                problems.append((stored, why))
            elif name in found:
                problems.append(
                    (stored, f"{name} is in both layouts ({found[name]} and {stored}): keep one")
                )
            else:
                found[name] = stored
    return found, problems


def is_block(name: str) -> bool:
    """True for a block folder's name under `changes/` (`CHG-00xx`), never a change's."""
    return bool(_BLOCK.fullmatch(name))


def is_block_folder(path: str) -> bool:
    """True for `changes/<block>` (relative, a trailing `/` allowed): a folder of changes.

    It holds change folders, bookkeeping of each (its own change's too), and nothing else:
    a folder no change's content may be or lead into (content._holds_bookkeeping).
    """
    parts = path.rstrip("/").split("/")
    return len(parts) == 2 and parts[0] == CHANGES and is_block(parts[1])


def block_dir(change_id: str) -> str:
    """`changes/<block>`, relative: the block folder an id's folder lies in."""
    return f"{CHANGES}/{block_of(change_id)}"


def is_flat_change_folder(name: str) -> bool:
    """True for a name under `changes/` that is an id (`CHG-0001`): a legacy flat folder."""
    return bool(_ANY_ID_RE.fullmatch(name))
