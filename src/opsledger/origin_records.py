"""Run records on the origin decide who runs: pull them in, claim a run, publish the result.

Two pipelines may apply the same environment at once — the push-triggered apply after a
merge and the scheduled apply every few minutes, on different runners and in different
clones. Host locks keep two runs off one host at one moment; they do not tell the second
controller that the first already applied the change, because each clone reads run records
from its own HEAD. So when a remote is given, apply:

1. **pulls** the origin's branch once the hosts are locked (fetch, rebase this clone's own
   evidence commits onto it) and decides again on what the origin knows;
2. **claims** the run by pushing its write-ahead record before the first task. A push is a
   compare-and-swap on the branch: it only fast-forwards. When it is rejected, the origin moved;
   if the move brought a run of the same change, the claim is lost — the local write-ahead
   commit is dropped (it was never published) and nothing runs; otherwise rebase and push again;
3. **publishes** the final record before the locks are released, so the next holder of the
   hosts finds it on the origin.

Rebasing re-commits local evidence, so it needs a committer: the evidence identity
($OPSLEDGER_COMMITTER_NAME/EMAIL, else git's user, else a machine identity), passed explicitly —
a fresh CI runner has no git identity and `git pull --rebase` would stop with "unable to
auto-detect email address". With $OPSLEDGER_SIGNING_KEY the rebased commits are signed again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from opsledger.commitlock import commit_lock
from opsledger.errors import EXIT_FAILED, EXIT_INVALID, EXIT_LOCKED, OpsledgerError, Problem
from opsledger.gitrepo import git, nul_paths
from opsledger.identity import committer, signing_key
from opsledger.layout import RUNS, change_pathspecs, flat_form, shown_path
from opsledger.project import Project
from opsledger.records import STARTED_SUFFIX, read_runs

ATTEMPTS = 5  # pushes rejected because the branch moved: other pipelines' records, merges


@dataclass
class OriginRecords:
    """The remote branch whose run records decide, and how this clone talks to it.

    Example:
        origin = OriginRecords.of(find_project(), "origin")
        origin.pull(); origin.publish()
    """

    project: Project
    remote: str
    branch: str
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, project: Project, remote: str, branch: str | None = None) -> OriginRecords:
        """The checked-out branch on `remote`; exit 2 when the remote is unknown or detached."""
        if git(project.root, "remote", "get-url", remote, check=False).returncode:
            raise OpsledgerError(
                Problem(f"no git remote {remote!r}", field="--push", fix="git remote -v"),
                EXIT_INVALID,
            )
        if branch is None:
            branch = git(project.root, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
        if branch == "HEAD":
            raise OpsledgerError(
                Problem(
                    "HEAD is detached: records can only be pushed from a branch",
                    field="git",
                    fix="git checkout -B main origin/main first (CI checkouts are detached)",
                ),
                EXIT_INVALID,
            )
        return cls(project, remote, branch)

    # -- git plumbing -------------------------------------------------------------------------

    def _identity_args(self) -> tuple[list[str], dict[str, str]]:
        name, email = committer(self.project)
        args = ["-c", f"user.name={name}", "-c", f"user.email={email}"]
        key = signing_key()
        if key:
            args += ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"]
            args += ["-c", "commit.gpgsign=true"]
        env = {"GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
        return args, env

    @property
    def _tracking(self) -> str:
        return f"refs/opsledger/origin/{self.remote}/{self.branch}"

    def fetch(self) -> str:
        """Fetch the remote branch into a private ref; its commit."""
        done = git(
            self.project.root,
            "fetch",
            "-q",
            "--no-tags",
            self.remote,
            f"+refs/heads/{self.branch}:{self._tracking}",
            check=False,
        )
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise OpsledgerError(
                Problem(
                    f"cannot fetch {self.remote}/{self.branch}: {last}",
                    field="git fetch",
                    fix="check the remote's URL and credentials (git remote -v)",
                ),
                EXIT_INVALID,
            )
        return git(self.project.root, "rev-parse", self._tracking).stdout.strip()

    def _rebase_onto(self, upstream: str) -> None:
        # Under the checkout's commit lock: a step committing meanwhile (an approval, an
        # inspection's evidence) left its file staged for the rebase to refuse, or committed
        # onto the detached HEAD the rebase then moved the branch away from.
        with commit_lock(self.project.root):
            self._rebase_locked(upstream)

    def _rebase_locked(self, upstream: str) -> None:
        root = self.project.root
        if git(root, "merge-base", "--is-ancestor", upstream, "HEAD", check=False).returncode == 0:
            return  # nothing new on the origin
        args, env = self._identity_args()
        # A change the origin moved to its block (`change migrate-layout`): this clone's new
        # records follow the folder there, never recreate the flat one beside it (git's
        # default stops on a file added to a renamed folder).
        args += ["-c", "merge.directoryRenames=true"]
        done = git(root, *args, "rebase", "-q", upstream, env=env, check=False)
        if done.returncode:
            git(root, "rebase", "--abort", check=False)
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise OpsledgerError(
                Problem(
                    f"cannot rebase this clone's records onto {self.remote}/{self.branch}: {last}",
                    field="git rebase",
                    fix="records are new files and never conflict: a local edit of a tracked "
                    "file does; reset the CI clone to the origin",
                ),
                EXIT_FAILED,
            )

    def pull(self) -> None:
        """Bring the origin's records (and merges) in; this clone's own commits go on top."""
        self._rebase_onto(self.fetch())

    def _push(self) -> bool:
        done = git(
            self.project.root, "push", "-q", self.remote, f"HEAD:refs/heads/{self.branch}",
            check=False,
        )  # fmt: skip
        if done.returncode == 0:
            git(self.project.root, "update-ref", self._tracking, "HEAD", check=False)
            return True
        lines = done.stderr.strip().splitlines()
        said = [
            line.removeprefix("remote:").strip() for line in lines if line.startswith("remote:")
        ]
        self.notes.append("; ".join(filter(None, said)) or (lines or ["push refused"])[-1])
        return False

    # -- the use cases ------------------------------------------------------------------------

    def publish(self) -> bool:
        """Push this clone's commits, rebasing when the branch moved; exit 1 when it cannot."""
        for _ in range(ATTEMPTS):
            if self._push():
                return True
            self.pull()
        raise OpsledgerError(
            Problem(
                f"could not push the records to {self.remote}/{self.branch}: "
                + (self.notes[-1] if self.notes else "refused"),
                field="git push",
                fix="the records are committed locally; push them by hand, and check the CI "
                "identity may push records to the protected branch (README, Pipelines)",
            ),
            EXIT_FAILED,
        )

    def claim(self, change_id: str, started: Path) -> None:
        """Publish the write-ahead record at HEAD, or drop it and raise: someone else runs it.

        Exit 4 when the origin already has another run of the change (the claim is lost; its
        record is named); exit 2 when the origin cannot be reached or refuses the push.
        Either way the local write-ahead commit is removed again: it was never published, and
        nothing has run.
        """
        root = self.project.root
        ours = started.resolve().relative_to(root.resolve()).as_posix()
        for _ in range(ATTEMPTS):
            if self._push():
                return
            try:
                upstream = self.fetch()
            except OpsledgerError:
                self._drop(ours)
                raise
            # Compared by blob, not by name: two controllers that start in the same second
            # write the same file name, and the origin's is then another run's record.
            known = _runs_of(root, change_id, "HEAD")
            other = sorted(
                stored  # as the origin stores it: the path a person finds there
                for key, (blob, stored) in _runs_of(root, change_id, upstream).items()
                if known.get(key, ("", ""))[0] != blob
            )
            if other:
                self._drop(ours)
                raise OpsledgerError(
                    Problem(
                        f"another controller claimed this run first: {other[0]} is on "
                        f"{self.remote}/{self.branch}; nothing was run here",
                        other[0],
                        "runs",
                        "nothing to do: that run's record says how it ended",
                    ),
                    EXIT_LOCKED,
                )
            try:
                self._rebase_onto(upstream)
            except OpsledgerError:
                self._drop(ours)
                raise
        self._drop(ours)
        raise OpsledgerError(
            Problem(
                f"cannot publish the run's write-ahead record to {self.remote}/{self.branch} "
                f"({self.notes[-1] if self.notes else 'refused'}); nothing was run",
                ours,
                "git push",
                "check the CI identity may push records to the protected branch (README, "
                "Pipelines) and the remote is reachable",
            ),
            EXIT_INVALID,
        )

    def _drop(self, started: str) -> None:
        """Remove the unpublished write-ahead commit at HEAD (and its file).

        Compared by key: a rebase may have moved it into the change's block folder.
        """
        root = self.project.root
        with commit_lock(root):  # HEAD is ours to look at and reset, no one commits meanwhile
            touched = nul_paths(git(root, "show", "--name-only", "-z", "--format=", "HEAD").stdout)
            key = flat_form(started)
            if [flat_form(p) for p in touched] == [key]:
                git(root, "reset", "-q", "--hard", "HEAD~1")
            for path in dict.fromkeys((started, shown_path(root, key))):
                (root / path).unlink(missing_ok=True)


def _runs_of(root: Path, change_id: str, commit: str) -> dict[str, tuple[str, str]]:
    """Run record files (started or final) of the change in `commit`: key -> (blob, path).

    Keyed by flat form (layout.flat_form): the origin may hold the change in its block while
    this clone still has it flat, and the same record under another path is no other run.
    """
    folders = [f"{p}/" for p in change_pathspecs(change_id, RUNS)]  # either layout
    listing = git(root, "ls-tree", "-r", "-z", commit, "--", *folders, check=False).stdout.split(
        "\0"
    )
    runs = {}
    for entry in filter(None, listing):
        meta, _, path = entry.partition("\t")
        if path.endswith(".json") and _is_run_file(path):
            runs[flat_form(path)] = (meta.split()[-1], path)
    return runs


def _is_run_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    stem = name[: -len(STARTED_SUFFIX)] if name.endswith(STARTED_SUFFIX) else name[:-5]
    return stem.endswith("Z") and stem[:8].isdigit()


def refuse_running(project: Project, change_id: str) -> None:
    """Exit 4 when the branch (as pulled) has a run of the change that started and has not ended.

    Pulled from the origin, such a write-ahead record is another controller's run in progress
    (or one that died there, recorded as interrupted 6 h after it started): never run it twice.
    """
    for open_run in read_runs(project).started:
        if open_run.record.change == change_id:
            runner = open_run.record.runner
            raise OpsledgerError(
                Problem(
                    f"a run of {change_id} started at {open_run.record.started_at} by "
                    f"{runner.get('person', '?')} on {runner.get('machine', '?')} has not ended",
                    open_run.path,
                    "runs",
                    "wait for it: its final record ends it (a run that died elsewhere is "
                    "recorded as interrupted 6 h after it started)",
                ),
                EXIT_LOCKED,
            )
