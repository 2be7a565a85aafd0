"""The protected base: the branch whose history and policies every decision trusts.

A pull request cannot be judged by rules, keys or evidence it brings itself, so decide reads
them from the protected branch (`--base REF`, `$OPSLEDGER_BASE`, default `main`; CI passes
`origin/main` for a pull request and judges the branch itself after a merge):

- **policies** — the policies in effect at the base: not simply its `policies/` folder, but the
  newest version of it that was *approved* (its Markdown docs are not policy). Walking the
  base's first-parent line from its first commit, each new version of `policies/` takes effect
  only when a policy change (POL-<n>) in that commit's tree requests exactly that content and
  is approved under the version in effect before it (`policy_changes` in changes.yml: owner
  teams, quorum, signatures). An unapproved edit — even one pushed straight to the branch —
  has no effect, and audit check reports it. Before `policy_changes` is first in effect,
  versions are taken as they come (history from before this control existed).
- **people and keys** — from those policies;
- **evidence** — run records committed on the base's first-parent line (see evidence.py).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from opsledger.approvals import quorum, standing
from opsledger.errors import EXIT_INVALID, OpsledgerError, Problem
from opsledger.gitrepo import blob_contents, git, git_env, log_paths, nul_paths
from opsledger.layout import (
    CHANGES_PREFIX,
    POLICIES,
    POLICIES_PREFIX,
    POLICY_REQUEST,
    change_folder_name,
    change_pathspecs,
    folder_of_kind,
    in_policies,
    is_block,
)
from opsledger.localcache import history_stamp, load_cache, save_cache
from opsledger.policy.bundle import Policies, Rule, load_policies
from opsledger.policy.changes import POLICY_DOCS, is_policy_change, policy_content_at
from opsledger.project import Project
from opsledger.yamlio import parse_yaml

DEFAULT_BASE = "main"


@dataclass
class PolicyVersion:
    """One version of policies/ on the base's first-parent line."""

    commit: str  # the first-parent commit that brought this version
    tree: str
    accepted_at: str = ""  # the commit from which it is in effect ("" = never)
    change: str = ""  # the policy change that approved it
    why: str = ""  # why it is (not) in effect


class FirstParentLine:
    """Where commits stand on a base's first-parent line (0 = its first commit), as asked.

    A line of 100,000 commits held whole (every id and its index) cost 0.3 KB a commit, an
    audit's memory growing with the history. This holds only the answers for the commits
    asked: `want` queues ids, and the first question after it answers every queued id in
    one pass of `git rev-list --first-parent` (nothing kept of the ids not asked). A
    commit's place on the line a tip names never changes, so the answers are kept with the
    base's walks (`base-walks`, keyed by the tip, localcache: authenticated) and a later
    command asking the same commits starts no git at all.

    Example:
        line = resolve_base(find_project()).position
        line.want(shas); [sha for sha in shas if sha in line]  # one pass for them all
    """

    def __init__(
        self, project: Project, sha: str, key: str, known: dict[str, int], absent: set[str]
    ):
        self._project, self._sha, self._key = project, sha, key
        self._known, self._absent = known, absent
        self._queued: set[str] = set()

    def want(self, shas: Iterable[str]) -> None:
        """Queue ids to be answered by the next pass (one pass for a batch, not one each)."""
        self._queued.update(s for s in shas if s not in self._known and s not in self._absent)

    def __contains__(self, sha: object) -> bool:
        return isinstance(sha, str) and self.get(sha) is not None

    def __getitem__(self, sha: str) -> int:
        at = self.get(sha)
        if at is None:
            raise KeyError(sha)
        return at

    def get(self, sha: str, default: int | None = None) -> int | None:
        if sha not in self._known and sha not in self._absent:
            self._queued.add(sha)
            self._pass()
        return self._known.get(sha, default)

    def _pass(self) -> None:
        """Answer every queued id with one streamed `rev-list` (memory: the answers only)."""
        wanted = {s.encode(): s for s in self._queued}
        self._queued = set()
        root, tip = str(self._project.root), self._sha
        proc = subprocess.Popen(
            ["git", "-C", root, "rev-list", "--first-parent", "--reverse", tip],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=git_env(),
        )
        assert proc.stdout is not None
        found: dict[str, int] = {}
        with proc.stdout:
            for index, line in enumerate(proc.stdout):
                sha = wanted.get(line.rstrip())
                if sha is not None:
                    found[sha] = index
        if proc.wait() != 0:  # the tip was resolved a moment ago: git itself failed
            raise OpsledgerError(
                Problem(
                    f"git rev-list --first-parent {self._sha[:10]} failed",
                    str(self._project.root),
                    "git",
                    "run it inside a git checkout with its full history",
                )
            )
        self._known.update(found)
        self._absent.update(s for s in wanted.values() if s not in found)
        kept = load_cache(self._project, _WALKS)
        entry = kept.get(self._key)
        if isinstance(entry, dict) and isinstance(entry.get("log"), str):
            entry = {**entry, "positions": self._known, "absent": sorted(self._absent)}
            save_cache(self._project, _WALKS, {**kept, self._key: entry})


@dataclass
class Base:
    ref: str
    sha: str
    versions: list[PolicyVersion]
    _effective: list[tuple[str, PolicyVersion, Policies]] = field(repr=False)
    # Where commits stand on the base's own line (sha -> index, oldest first), as asked.
    position: FirstParentLine = field(repr=False)

    @property
    def policies(self) -> Policies:
        """The policies in effect at the tip of the base."""
        return self._effective[-1][2]

    @property
    def policy_version(self) -> PolicyVersion:
        return self._effective[-1][1]

    def policies_at(self, commit: str) -> Policies:
        """The policies in effect at a first-parent commit (the tip's for any other commit)."""
        at = self.position.get(commit)
        if at is None:
            return self.policies
        chosen = self._effective[0][2]
        for start, _, policies in self._effective:
            if self.position[start] <= at:
                chosen = policies
        return chosen

    def pending(self) -> list[PolicyVersion]:
        """Versions after the one in effect that are not approved (they have no effect)."""
        current = self.policy_version
        later = self.versions[self.versions.index(current) + 1 :]
        return [v for v in later if not v.accepted_at]


def _rev(project: Project, ref: str) -> str:
    proc = git(project.root, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
    if proc.returncode != 0:
        raise OpsledgerError(
            Problem(
                f"the protected branch {ref!r} is not in this repository",
                str(project.root),
                "--base",
                "fetch it (git fetch origin), or name it with --base or $OPSLEDGER_BASE",
            ),
            EXIT_INVALID,
        )
    return proc.stdout.strip()


_POLICIES: dict[tuple[str, str], tuple[Policies | None, list[Problem]]] = {}


def policies_at(project: Project, commit: str) -> tuple[Policies | None, list[Problem]]:
    """The policy files as committed in `commit`, loaded and checked as on disk.

    The files are written to a scratch folder (plain files only: a symlink is a problem), with
    the environment and runbook names of that commit, and loaded with the usual loader.
    """
    listing = git(
        project.root, "ls-tree", "-r", "-z", commit, "--", POLICIES, "inventories", "runbooks"
    ).stdout
    entries = []
    for line in listing.split("\0"):
        if line:
            meta, _, path = line.partition("\t")
            mode, kind, blob = meta.split()
            entries.append((path, mode, kind, blob))
    key = (str(project.root), "\n".join(f"{p} {b}" for p, _, _, b in entries))
    if key in _POLICIES:
        return _POLICIES[key]
    problems = []
    policy_files = [(p, b) for p, m, k, b in entries if in_policies(p) and k == "blob"]
    for path, mode, _, _ in entries:
        if in_policies(path) and mode == "120000":
            problems.append(
                Problem("a symlink in policies/", f"{commit[:10]}:{path}", "symlink", "")
            )
    contents = blob_contents(project.root, [b for _, b in policy_files])
    with tempfile.TemporaryDirectory(prefix="opsledger-policies-") as tmp:
        root = Path(tmp)
        for path, mode, _, blob in entries:
            target = root / path
            if in_policies(path) and mode != "120000":
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(contents.get(blob, b""))
            elif path.endswith(("/hosts.yml", "/runbook.yml")) and path.count("/") == 2:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("")  # only the names matter to the policy checks
        try:
            policies, found = load_policies(Project(root), strict=False)
        except OpsledgerError as err:  # e.g. no people.yml: nothing to judge by
            policies, found = None, err.problems
    for problem in found:
        where = (problem.file or "").replace(str(root) + "/", f"{commit[:10]}:")
        problems.append(Problem(problem.message, where, problem.field, problem.fix))
    _POLICIES[key] = (policies, problems)
    return policies, problems


def _approval_of(
    project: Project, commit: str, candidates: list[str], accepted: Policies
) -> tuple[str, str]:
    """The policy change in `commit` that approves its policies/ version: (id, "") or ("", why)."""
    rule = accepted.policy_changes
    assert rule is not None
    reasons = []
    for change_id in candidates:
        content = policy_content_at(project, commit, change_id)
        if content is None:
            continue
        for stored in change_pathspecs(change_id, POLICY_REQUEST):  # whichever layout holds it
            shown = git(project.root, "show", f"{commit}:{stored}", check=False)
            if shown.returncode == 0:
                break
        try:
            request = parse_yaml(shown.stdout)
        except OpsledgerError:  # unreadable: nobody provably requested it
            request = None
        requester = str(request.get("requested_by", "")) if isinstance(request, dict) else ""
        judged = standing(
            project,
            change_id=change_id,
            requester=requester,
            content=content,
            policies=accepted,
            signatures_required=rule.signed,
            revs=[commit],
        )
        if not judged.requester_proven:
            reasons.append(f"{change_id}: {judged.requester_why}")
            continue
        passed, why, _ = quorum(
            judged,
            Rule("policy changes", (), (), None, rule.approvals, (), rule.owners),
            accepted,
        )
        if passed:
            return change_id, ""
        reasons.append(f"{change_id}: {why}")
    if not reasons:
        reasons.append(f"no policy change (POL-<n>) requests policies/ as of {commit[:10]}")
    return "", "; ".join(reasons)


_BASES: dict[tuple[str, str], Base] = {}
_WALKS = "base-walks"
_WALKS_KEPT = 2  # bases remembered (the policy log, and the places on the line asked)


def _walks(project: Project, sha: str) -> tuple[FirstParentLine, str]:
    """Where commits stand on the base's first-parent line, and the log of its policy commits.

    Both are what git answers for one commit id, which names its whole history: the same
    for every later command, so they are kept in `.opsledger/cache/base-walks.json`
    (localcache: authenticated, ignored by git) by that id, the policy paths walked and
    the clone's shallow boundary and grafts. At 30,000 commits the walks and the listing of
    changes/ cost a decision about 0.4 s. Of the line only the commits asked are kept
    (FirstParentLine), never the whole line: its memory would grow with the history.
    """
    key = f"{sha} {','.join(POLICY_DOCS)} {history_stamp(project.root)}"
    kept = load_cache(project, _WALKS)
    entry = kept.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("log"), str):
        positions, absent = entry.get("positions"), entry.get("absent")
        if (
            isinstance(positions, dict)
            and isinstance(absent, list)
            and all(isinstance(c, str) and type(i) is int for c, i in positions.items())
            and all(isinstance(c, str) for c in absent)
        ):
            line = FirstParentLine(project, sha, key, dict(positions), set(absent))
            return line, entry["log"]
    # Literal folders, not a wildcard: git prunes by path only for those (10x on big histories).
    folders = nul_paths(
        git(project.root, "ls-tree", "--name-only", "-z", sha, CHANGES_PREFIX).stdout
    )
    blocks = [f"{f}/" for f in folders if is_block(f.removeprefix(CHANGES_PREFIX))]
    blocks = [b for b in blocks if b.startswith(f"{CHANGES_PREFIX}POL-")]
    if blocks:  # the block layout: policy changes one level down (changes/POL-00xx/POL-0001)
        folders += nul_paths(git(project.root, "ls-tree", "--name-only", "-z", sha, *blocks).stdout)
    ids = dict.fromkeys(n for f in folders if is_policy_change(n := change_folder_name(f) or ""))
    # both layouts of each: a commit before `change migrate-layout` named the flat folder
    requests = [p for i in ids for p in change_pathspecs(i)]
    log = subprocess.run(
        [
            "git",
            "-C",
            str(project.root),
            "log",
            "--first-parent",
            "--reverse",
            "--name-only",
            "-z",
            "--format=%x1e%H",
            sha,
            "--",
            POLICIES,
            *POLICY_DOCS,
            *requests,
        ],
        capture_output=True,
        encoding="utf-8",
        errors="surrogateescape",  # a path git prints may be any bytes
        check=True,
        env=git_env(),
    ).stdout
    others = list({k: v for k, v in kept.items() if k != key}.items())[-(_WALKS_KEPT - 1) :]
    entry = {"log": log, "positions": {}, "absent": []}
    save_cache(project, _WALKS, {**dict(others), key: entry})
    return FirstParentLine(project, sha, key, {}, set()), log


def resolve_base(project: Project, ref: str | None = None) -> Base:
    """The protected base and the policies in effect on it (see the module docstring).

    Raises OpsledgerError (exit 2) when the base is missing or its policies cannot be read.

    Example:
        base = resolve_base(find_project(), "origin/main")
        base.policies.rule_for("normal", "high", "production"), base.pending()
    """
    name = ref or os.environ.get("OPSLEDGER_BASE") or DEFAULT_BASE
    sha = _rev(project, name)
    if (str(project.root), sha) in _BASES:
        cached = _BASES[(str(project.root), sha)]
        return Base(name, sha, cached.versions, cached._effective, cached.position)
    line, log = _walks(project, sha)
    touched = log_paths(log)
    trees = _trees(project, [c for c, _ in touched])
    versions: list[PolicyVersion] = []
    effective: list[tuple[int, PolicyVersion, Policies]] = []
    candidates: list[str] = []  # policy changes touched since the version in effect
    broken: list[Problem] = []  # problems of the version in effect
    for commit, paths in touched:
        candidates += [n for p in paths if (n := folder_of_kind(p, ("POL",)))]
        tree = trees.get(commit)
        if tree is None:
            continue
        current = effective[-1][1] if effective else None
        if current is not None and tree == current.tree:
            continue
        version = versions[-1] if versions and versions[-1].tree == tree else None
        if version is None:
            version = PolicyVersion(commit, tree)
            versions.append(version)
        policies, problems = policies_at(project, commit)
        accepted = effective[-1][2] if effective else None
        if policies is None:
            version.why = "unreadable: " + "; ".join(str(p) for p in problems[:3])
            continue
        if accepted is None or accepted.policy_changes is None:
            # Before policy changes were under change control, versions count as they come
            # (a broken one too: it fails below only if it is the one in effect at the tip).
            version.accepted_at = commit
            version.why = (
                "the first policies of the branch"
                if accepted is None
                else "policy changes were not under change control yet"
            )
        elif problems:
            version.why = "invalid: " + "; ".join(str(p) for p in problems[:3])
            continue
        else:
            wanted = sorted({c for c in candidates if is_policy_change(c)})
            version.change, version.why = _approval_of(project, commit, wanted, accepted)
            if not version.change:
                continue
            version.accepted_at = commit
            version.why = f"approved in {version.change}"
        broken = problems
        effective.append((commit, version, policies))
        candidates = []
    if not effective:
        raise OpsledgerError(
            Problem(
                f"no policies on {name}",
                POLICIES_PREFIX,
                "--base",
                "name the branch that holds the project's policies",
            )
        )
    if broken:  # fail closed: nothing is decided on rules that do not check
        refusal = Problem(
            f"policy check fails on {name} ({sha[:10]}): nothing is decided on these rules",
            POLICIES_PREFIX,
            fix=f"fix the problems above on {name} (opsledger policy check there)",
        )
        raise OpsledgerError([*broken, refusal])
    line.want(start for start, _, _ in effective)  # one pass answers them (policies_at)
    base = Base(name, sha, versions, effective, line)
    _BASES[(str(project.root), sha)] = base
    return base


def _trees(project: Project, commits: list[str]) -> dict[str, str]:
    """An id of each commit's policy files (docs left out); commits without any are left out."""
    found = {}
    for commit in commits:
        listing = git(project.root, "ls-tree", "-r", "-z", commit, "--", POLICIES).stdout
        rules = [entry for entry in nul_paths(listing) if not entry.endswith(".md")]
        if rules:
            found[commit] = hashlib.sha256("\n".join(rules).encode()).hexdigest()
    return found


def policies_for(project: Project) -> Policies:
    """The base's policies, or the working tree's in a repository without a base yet.

    Example:
        policies_for(find_project()).priority("high", "low")  # 'P2'
    """
    try:
        return resolve_base(project).policies
    except OpsledgerError:  # no base yet (a new repository): the working tree's rules
        return load_policies(project)[0]
