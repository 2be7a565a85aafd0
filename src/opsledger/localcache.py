"""Machine-local caches of what opsledger derives from git objects, and git's own commit-graph.

Deciding one change used to read every other request in full (conflicts), so its cost grew
with the history. What a request's bytes say about where and when it runs never changes for
those bytes, so it is kept under `.opsledger/cache/<name>.json`, keyed by the git blob id of
the bytes it was derived from.

A cache must never change an answer, and `.opsledger/` is only as trusted as the machine
(a CI cache restored into it could come from a pull request's job). Every cache file is
therefore authenticated: its first line is an HMAC-SHA256 of the JSON below it, with a
random key kept in the git directory (`opsledger-cache.key`, 0600), which no cache restore,
pull request or commit can write. A file that does not verify — edited, copied from another
clone, truncated — is ignored and rebuilt from git; a missing or unwritable cache only costs
time. The folder ignores itself (a `.gitignore` of `*`): git never tracks a cache, even in a
project whose .gitignore does not name `.opsledger/`.

`ensure_commit_graph` writes git's commit-graph with changed-path (Bloom) filters when the
clone has none: a `git log -- <path>` walk then skips commits that do not touch the path
(2.2 s to 0.02 s at 29,000 commits). Only where it is safe: a full local clone whose object
folder is writable; any failure is ignored (git works the same without it, only slower).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from opsledger.gitrepo import git, git_env
from opsledger.project import Project
from opsledger.steady import remembered

KEY_FILE = "opsledger-cache.key"
_KEYS: dict[str, bytes | None] = {}
_GRAPHS: set[str] = set()


def _git_common_dir(root: Path) -> Path | None:
    if str(root) not in _COMMON:
        proc = git(root, "rev-parse", "--path-format=absolute", "--git-common-dir", check=False)
        found = proc.stdout.strip() if proc.returncode == 0 else ""
        _COMMON[str(root)] = Path(found) if found else None
    return _COMMON[str(root)]


_COMMON: dict[str, Path | None] = {}


def history_stamp(root: Path) -> str:
    """What besides a commit id decides the history git walks from it (cached walks' key).

    A shallow clone's boundary (a fetch deepens it) and grafts.

    Example:
        history_stamp(project.root)  # '' in a full clone without grafts
    """
    common = _git_common_dir(root)
    if common is None:
        return "no repository"
    parts = []
    for name in ("shallow", "info/grafts"):
        with contextlib.suppress(OSError):
            parts.append(name + ":" + hashlib.sha256((common / name).read_bytes()).hexdigest())
    return " ".join(parts)


PATH_WALKS = "path-walks"
_INDEX_PATHS: dict[str, Path | None] = {}  # root -> where its git index lives, per process


def index_identity(root: Path) -> str:
    """Which git index the work tree has now: its path, size and trailing checksum, or "".

    git ends the index with a checksum of everything before it and rewrites it on every
    change (`git add`, commit, checkout, merge, a flag set with update-index): the same
    identity is the same entries, so what is derived from the index alone can be kept by it
    (an edit to the index is a miss, never a stale answer). An index written without a
    checksum (`index.skipHash`) has no identity: "" (nothing is kept for it).

    Example:
        index_identity(project.root)  # "/repo/.git/index 6056368 9f2c…"
    """
    if str(root) not in _INDEX_PATHS:
        proc = git(root, "rev-parse", "--git-path", "index", check=False)
        found = proc.stdout.strip() if proc.returncode == 0 else ""
        _INDEX_PATHS[str(root)] = (root / found).resolve() if found else None
    path = _INDEX_PATHS[str(root)]
    if path is None:
        return ""
    try:
        with open(path, "rb") as index:
            size = os.fstat(index.fileno()).st_size
            if size < 64:
                return ""
            index.seek(size - 32)
            tail = index.read(32)
    except OSError:
        return ""
    if not tail[-20:].strip(b"\0"):
        return ""
    return f"{path} {size} {tail.hex()}"


_PATH_WALKS_KEPT = 512  # walks remembered (a few hundred bytes each)


def path_walk(
    project: Project, options: list[str], revs: list[str], paths: list[str]
) -> bytes | None:
    """`git log OPTIONS REVS -- PATHS`'s output, kept by commit id; None when git fails.

    What git answers for commit ids never changes (given the clone's shallow boundary and
    grafts, which are in the key; replace refs no git process of opsledger follows, see
    git_env), so a decision does not walk 30,000 commits again for the same statements or
    withdrawal (0.07 s each at 30,000 commits, even with changed-path filters). The
    revisions are resolved to commit ids first and the walk runs from those ids: a branch
    that moves is a new key, never a stale answer. Kept in `.opsledger/cache/path-walks.json`
    (authenticated, see above).

    Example:
        out = path_walk(project, ["--full-history", "--format=%H"], ["HEAD"], ["changes/X/"])
    """
    ids = _commit_ids(project.root, revs)
    if ids is None:
        return _log(project.root, [*options, *revs], paths)
    key = hashlib.sha256(
        json.dumps([options, ids, paths, history_stamp(project.root)]).encode()
    ).hexdigest()
    kept = load_cache(project, PATH_WALKS)
    entry = kept.get(key)
    if isinstance(entry, str):
        with contextlib.suppress(ValueError):
            return base64.b64decode(entry, validate=True)
    out = _log(project.root, [*options, *ids], paths)
    if out is not None:
        others = [(k, v) for k, v in kept.items() if k != key][-(_PATH_WALKS_KEPT - 1) :]
        save_cache(project, PATH_WALKS, {**dict(others), key: base64.b64encode(out).decode()})
    return out


def _commit_ids(root: Path, revs: list[str]) -> list[str] | None:
    """The commit id of each revision (one rev-parse), or None when any does not resolve.

    Resolved once per steady scope (steady.py: nothing is committed inside one), not once per
    walk: decide's conflicts walk two paths for each change they judge.
    """
    if not revs or any(r.startswith("-") for r in revs):
        return None
    return remembered(("commit-ids", str(root), tuple(revs)), lambda: _rev_parse(root, revs))


def _rev_parse(root: Path, revs: list[str]) -> list[str] | None:
    proc = git(root, "rev-parse", *(f"{r}^{{commit}}" for r in revs), check=False)
    ids = proc.stdout.split()
    hexes = all(len(i) in (40, 64) and not i.strip("0123456789abcdef") for i in ids)
    return ids if proc.returncode == 0 and len(ids) == len(revs) and hexes else None


def _log(root: Path, args: list[str], paths: list[str]) -> bytes | None:
    proc = subprocess.run(
        ["git", "-C", str(root), "log", *args, "--", *paths],
        capture_output=True,
        env=git_env(),
        check=False,
    )
    return proc.stdout if proc.returncode == 0 else None


def _key(project: Project) -> bytes | None:
    """The clone's cache key (made on first use), or None: then nothing is cached."""
    where = str(project.root)
    if where not in _KEYS:
        _KEYS[where] = None
        common = _git_common_dir(project.root)
        if common is not None:
            path = common / KEY_FILE
            try:
                if not path.exists():
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as out:
                        out.write(secrets.token_bytes(32))
                key = path.read_bytes()
                _KEYS[where] = key if len(key) == 32 else None
            except OSError:
                pass
    return _KEYS[where]


def _mac(key: bytes, name: str, body: bytes) -> str:
    """The authentication of a cache file's body (its JSON bytes, as written) under `name`."""
    return hmac.new(key, name.encode() + b"\0" + body, hashlib.sha256).hexdigest()


def cache_file(project: Project, name: str) -> Path:
    return project.state_dir / "cache" / f"{name}.json"


# Writes held for the command under way (hold_writes): path -> (project, name, entries).
_HELD: dict[Path, tuple[Project, str, dict[str, Any]]] = {}
_HOLDING: list[bool] = []  # one entry per hold_writes open; False once discarded


@contextlib.contextmanager
def hold_writes() -> Iterator[Callable[[], None]]:
    """Hold every cache write of a command until it ends; `discard()` drops them all.

    A refused command (bad input, a denial) writes nothing, caches included: the CLI discards
    what it held when a command ends with exit 2 or 3. Reads inside see what was held. Nested
    holds write (or drop) once, when the outermost ends; a discard anywhere drops everything.

    Example:
        with hold_writes() as discard:
            ...; discard()  # when the command was refused
    """

    def discard() -> None:
        _HOLDING[:] = [False] * len(_HOLDING)
        _HELD.clear()

    _HOLDING.append(all(_HOLDING))
    try:
        yield discard
    finally:
        kept = _HOLDING.pop()
        if not _HOLDING:
            held = list(_HELD.values())
            _HELD.clear()
            for project, name, entries in held if kept else ():
                _write(project, name, entries)


def load_cache(project: Project, name: str) -> dict[str, Any]:
    """The entries of cache `name` when the file verifies under this clone's key, else {}.

    Example:
        slots = load_cache(project, "slots")  # {blob id: what it says}
    """
    held = _HELD.get(cache_file(project, name))
    if held is not None:
        return held[2]
    key = _key(project)
    if key is None:
        return {}
    try:
        mac, _, body = cache_file(project, name).read_bytes().partition(b"\n")
    except OSError:
        return {}
    if not hmac.compare_digest(mac, _mac(key, name, body).encode()):
        return {}  # edited, or another clone's: rebuilt from git
    try:
        entries = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return entries if isinstance(entries, dict) else {}


def strings(value: Any) -> list[str]:
    """The strings of a list read from a cache, else []: any other shape is a miss.

    A file that verifies was written by opsledger under this clone's key, but maybe by another
    release in another format (`"passed": 5`, a string where a list was): a reader must not
    crash on it, and must not find a digest as a substring of one string.

    Example:
        if digest in strings(load_cache(project, "policycheck").get("passed")): ...
    """
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def save_cache(project: Project, name: str, entries: dict[str, Any]) -> None:
    """Write cache `name` authenticated (atomically); never fails, it only costs time.

    Example:
        save_cache(project, "slots", slots)
    """
    if _HOLDING:
        if all(_HOLDING):  # a discarded command keeps nothing more either
            _HELD[cache_file(project, name)] = (project, name, entries)
        return
    _write(project, name, entries)


def _write(project: Project, name: str, entries: dict[str, Any]) -> None:
    key = _key(project)
    if key is None:
        return
    path = cache_file(project, name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ignore = path.parent / ".gitignore"
        if not ignore.exists():  # never tracked, even where .opsledger/ is not ignored
            ignore.write_text("*\n")
        body = json.dumps(entries, separators=(",", ":")).encode()
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as out:
            out.write(_mac(key, name, body).encode() + b"\n" + body)
        os.replace(out.name, path)
    except OSError:
        pass


def _has_changed_paths(common: Path) -> bool:
    """Whether a commit-graph with changed-path filters (a BIDX chunk) is there."""
    info = common / "objects" / "info"
    files = [info / "commit-graph"]
    chain = info / "commit-graphs" / "commit-graph-chain"
    try:
        if chain.is_file():
            files = [info / "commit-graphs" / f"graph-{h}.graph" for h in chain.read_text().split()]
        for file in files:
            with file.open("rb") as graph:
                head = graph.read(8)
                if len(head) < 8 or head[:4] != b"CGPH":
                    return False
                table = graph.read(12 * (head[6] + 1))
                ids = {table[i : i + 4] for i in range(0, len(table), 12)}
                if b"BIDX" not in ids:
                    return False
    except OSError:
        return False
    return True


def ensure_commit_graph(root: Path) -> None:
    """Write the commit-graph with changed-path filters when this clone has none (see above).

    Skipped for a shallow clone, a repository whose objects live elsewhere (alternates) or an
    unwritable object folder; never raises. Once per repository and process.

    Example:
        ensure_commit_graph(project.root)  # `git log -- changes/CHG-00xx/CHG-0001/` prunes fast
    """
    if str(root) in _GRAPHS:
        return
    _GRAPHS.add(str(root))
    common = _git_common_dir(root)
    if common is None or _has_changed_paths(common):
        return
    objects = common / "objects"
    shallow = git(root, "rev-parse", "--is-shallow-repository", check=False).stdout.strip()
    if (
        shallow != "false"
        or (objects / "info" / "alternates").exists()
        or not os.access(objects, os.W_OK)
    ):
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["git", "-C", str(root), "commit-graph", "write", "--reachable", "--changed-paths"],
            capture_output=True,
            check=False,
            env=git_env(),
            timeout=600,
        )


_SCHEMA_PASSES = "schema-passes"
_PASSES_KEPT = 4096


def _validator_code() -> str:
    """What decides a validation besides schema and data: schema.py and jsonschema's release."""
    import importlib.util

    from opsledger import schema

    digest = hashlib.sha256(Path(schema.__file__).read_bytes())
    spec = importlib.util.find_spec("jsonschema")
    if spec is not None and spec.origin:
        packages = Path(spec.origin).parent.parent
        digest.update(
            " ".join(sorted(p.name for p in packages.glob("jsonschema*.dist-info"))).encode()
        )
    return digest.hexdigest()


@contextlib.contextmanager
def schema_passes(project: Project) -> Iterator[None]:
    """Schema validations that passed in earlier commands pass again without jsonschema.

    Kept in `.opsledger/cache/schema-passes.json` by the digest of schema and data as
    validated (schema.passes_remembered), for this schema.py and jsonschema release; only
    passes are kept. Re-entrant: an inner use adds to the outer one.

    Example:
        with schema_passes(project):
            result = validate_change(project, "CHG-0001")
    """
    from opsledger.schema import passes_active, passes_remembered

    if passes_active():  # an outer use loads and saves: once per command, not per file
        yield
        return
    code = _validator_code()
    kept = load_cache(project, _SCHEMA_PASSES)
    before = set(strings(kept.get("passes"))) if kept.get("code") == code else set()
    with passes_remembered(set(before)) as passes:
        yield
    if passes is not None and not passes <= before:
        newest = [*(p for p in passes if p not in before), *before][:_PASSES_KEPT]
        save_cache(project, _SCHEMA_PASSES, {"code": code, "passes": sorted(newest)})
