"""Cross-controller host locks: refs on the git origin, taken and freed by compare-and-swap.

`refs/opsledger/locks/<env>/<host>` points at a parentless commit whose message is the holder
(JSON: change, person, pid, machine, run, since, expires). Every controller that pushes records
to the same origin — CI runners, laptops, the demo's clone — sees the same refs.

- *take*: one `git push --atomic` creating every host's ref with
  `--force-with-lease=<ref>:` (must not exist) — or, for a stale holder, `<ref>:<its commit>`
  (must still be that one). receive-pack checks the expected old value under its ref lock, so
  of several controllers racing for a host exactly one wins; the others are told "stale info",
  read the new holder and report it (exit 4). All hosts or none, thanks to `--atomic`.
- *stale*: expired (`expires`: `lease_s` of policies/locks.yml after it was taken or last
  renewed), or held by a process of this machine that is gone (with its guard and its
  playbook).
- *heartbeat*: while the run lives, a thread of its process (`Heartbeat`) pushes a new lock
  commit with a later `expires` every third of `lease_s`, by CAS on the commit it pushed last;
  a killed runner stops beating and its hosts are free `lease_s` later. A renewal that loses
  the CAS means someone took the hosts over (they judged us dead): the lease is marked lost
  and the run is told (`lost`).
- *queue*: waiters line up in origin_queue.py; only the first in line takes the hosts.
- *release*: pushing the deletion with `--force-with-lease=<ref>:<our commit>`, so a lock that
  someone took over meanwhile is not freed by mistake.
"""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from opsledger.errors import EXIT_INVALID, OpsledgerError, Problem
from opsledger.gitrepo import blob_contents, git_env
from opsledger.layout import policy_file
from opsledger.lockholder import Holder
from opsledger.project import Project

LOCK_REFS = "refs/opsledger/locks"
ATTEMPTS = 5  # CAS rounds lost to other controllers before reporting contention


@dataclass
class OriginLease:
    root: Path
    remote: str
    refs: dict[str, str]  # ref -> the commit we pushed (what release expects to find)
    holder: Holder | None = None
    lease_s: int = 600
    renewals: int = 0
    lost: list[str] = field(default_factory=list)  # refs someone took over from us
    guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_spec(self) -> dict[str, Any]:
        with self.guard:
            return {"root": str(self.root), "remote": self.remote, "refs": dict(self.refs)}


def lock_ref(environment: str, host: str) -> str:
    return f"{LOCK_REFS}/{environment}/{host}"


def _git(root: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None):
    return subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=git_env(env),
        check=False,
    )


def _unreachable(remote: str, proc: subprocess.CompletedProcess) -> OpsledgerError:
    last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return OpsledgerError(
        Problem(
            f"cannot reach the lock remote {remote!r}: {last[0]}",
            policy_file("locks.yml"),
            "remote",
            "check the remote (git remote -v) and the network; nothing was run",
        ),
        EXIT_INVALID,
    )


def _remote_refs(root: Path, remote: str, environment: str) -> dict[str, str]:
    proc = _git(root, "ls-remote", remote, f"{LOCK_REFS}/{environment}/*")
    if proc.returncode != 0:
        raise _unreachable(remote, proc)
    refs = {}
    for line in proc.stdout.splitlines():
        oid, _, ref = line.partition("\t")
        refs[ref] = oid
    return refs


def _holders(root: Path, remote: str, refs: dict[str, str]) -> dict[str, Holder | None]:
    """The holder each lock commit names (None when unreadable)."""
    if not refs:
        return {}
    fetched = _git(root, "fetch", "-q", "--no-tags", "--no-write-fetch-head", remote, *refs)
    gone: set[str] = set()
    if fetched.returncode != 0:
        # A ref listed a moment ago may be gone now (released, or a waiter left the line):
        # fetch one by one and leave out the ones the remote no longer has.
        for ref in refs:
            one = _git(root, "fetch", "-q", "--no-tags", "--no-write-fetch-head", remote, ref)
            if one.returncode != 0:
                if "couldn't find remote ref" not in one.stderr:
                    raise _unreachable(remote, one)
                gone.add(ref)
    kept = {ref: oid for ref, oid in refs.items() if ref not in gone}
    commits = blob_contents(root, sorted(set(kept.values())))  # one cat-file for all
    found: dict[str, Holder | None] = {}
    for ref, oid in kept.items():
        raw = commits.get(oid)
        message = raw.split(b"\n\n", 1)[1] if raw and b"\n\n" in raw else b""
        found[ref] = Holder.parse(message) if message else None
    return found


def _stale(holder: Holder | None, now: dt.datetime) -> str | None:
    if holder is None:
        return "its lock commit is unreadable"
    if holder.expires and now >= dt.datetime.fromisoformat(holder.expires):
        return f"expired at {holder.expires}"
    return holder.gone()


def _ident(text: str) -> str:
    """A name or address git accepts in an ident line (no <, >, newline)."""
    cleaned = "".join(ch for ch in text if ch not in "<>\n").strip()
    return cleaned or "opsledger"


def _lock_commits(root: Path, holders: list[Holder]) -> list[str]:
    """Parentless commits whose messages are the holders, made by ONE git process.

    One `git fast-import` for all of them, read from a pipe (no ref is left behind: the
    scratch ref is reset to nothing at the end): at a thousand hosts a `git commit-tree` each
    was two thousand processes, most of a lock's cost (benchmarks/shards.py).
    """
    if not holders:
        return []
    stamp = int(dt.datetime.now(dt.UTC).timestamp())
    scratch = b"refs/opsledger/scratch"
    stream = []
    for index, holder in enumerate(holders, start=1):
        who = f"{_ident(holder.owner)} <{_ident(holder.owner)}@{_ident(holder.machine)}>"
        message = (holder.to_json() + "\n").encode()
        stream += [
            b"reset " + scratch + b"\n",
            b"commit " + scratch + b"\nmark :%d\n" % index,
            f"author {who} {stamp} +0000\ncommitter {who} {stamp} +0000\n".encode(),
            b"data %d\n" % len(message) + message + b"\n",
        ]
    stream += [b"get-mark :%d\n" % i for i in range(1, len(holders) + 1)]
    stream += [b"reset " + scratch + b"\n", b"done\n"]
    made = subprocess.run(
        ["git", "-C", str(root), "fast-import", "--quiet", "--done"],
        input=b"".join(stream),
        capture_output=True,
        env=git_env(),
        check=False,
    )
    oids = made.stdout.decode().split()
    if made.returncode != 0 or len(oids) != len(holders):
        raise OpsledgerError(
            Problem(
                f"git fast-import failed: {made.stderr.decode(errors='replace').strip()}",
                str(root),
                "git",
                "the checkout's object store must be writable",
            ),
            EXIT_INVALID,
        )
    return oids


def _push(root: Path, remote: str, updates: dict[str, tuple[str, str]], atomic: bool):
    """updates: ref -> (new commit or "" to delete, expected current value or "" for none)."""
    args = ["push", "--porcelain", "--no-verify"] + (["--atomic"] if atomic else [])
    args.append(remote)
    for ref, (_, expected) in updates.items():
        args.append(f"--force-with-lease={ref}:{expected}")
    args += [f"{new}:{ref}" for ref, (new, _) in updates.items()]
    return _git(root, *args)


def _rejected(proc: subprocess.CompletedProcess) -> bool:
    """The push reached the remote and lost a compare-and-swap (not a connection failure)."""
    lines = proc.stdout.splitlines()
    return any(line.startswith("!") for line in lines) or "atomic push failed" in proc.stderr


def _refusals(proc: subprocess.CompletedProcess) -> list[str]:
    """Why the remote refused the refs outright (a hook, a rule), not for a lost race.

    A lost compare-and-swap reads `[rejected] (stale info)`, or `[remote rejected] (failed to
    update ref | failed to lock | atomic ...)` when the race was lost on the server; a hook
    or a server rule that will refuse these refs every time reads otherwise.
    """
    raced = ("stale info", "failed to update ref", "failed to lock", "atomic", "fetch first")
    why = []
    for line in proc.stdout.splitlines():
        if line.startswith("!") and "[remote rejected]" in line:
            reason = line.split("[remote rejected]", 1)[1].strip()
            if not any(word in reason for word in raced):
                why.append(reason)
    said = [
        line.removeprefix("remote:").strip()
        for line in proc.stderr.splitlines()
        if line.startswith("remote:") and line.removeprefix("remote:").strip()
    ]
    return [f"{reason}: {said[-1]}" if said else reason for reason in why]


def _refused(remote: str, why: str) -> OpsledgerError:
    return OpsledgerError(
        Problem(
            f"the lock remote {remote!r} refused the lock refs ({why}); nothing was run",
            policy_file("locks.yml"),
            "remote",
            f"allow pushes to {LOCK_REFS}/* on that remote (hooks, protected-ref rules), or "
            "use another remote",
        ),
        EXIT_INVALID,
    )


def take_origin(
    project: Project, *, remote: str, holder: Holder, hosts: list[str], now: dt.datetime
) -> tuple[OriginLease | None, list[Holder], list[str]]:
    """(lease, [], notes taken over) or (None, holders in the way (never none), []).

    Raises OpsledgerError (exit 2) when the remote cannot be reached or refuses lock refs: a
    run never goes ahead without the lock its policy asks for.
    """
    root = project.root
    environment = holder.environment
    for attempt in range(ATTEMPTS):
        present = _remote_refs(root, remote, environment)
        wanted = {lock_ref(environment, h): h for h in hosts}
        holders = _holders(root, remote, {r: o for r, o in present.items() if r in wanted})
        blocked, notes, mine = [], [], {}
        for ref, host in wanted.items():
            expected = present.get(ref, "")
            if expected:
                other = holders.get(ref)
                why = _stale(other, now)
                if why is None and other is not None:
                    blocked.append(other)
                    continue
                who = other.describe() if other else "an unreadable holder"
                notes.append(f"{host}: origin lock of {who} taken over: {why}")
            mine[ref] = (Holder(**{**asdict(holder), "host": host}), expected)
        if blocked:
            return None, blocked, []
        made = _lock_commits(root, [h for h, _ in mine.values()])
        updates = {
            ref: (oid, expected)
            for (ref, (_, expected)), oid in zip(mine.items(), made, strict=True)
        }
        pushed = _push(root, remote, updates, atomic=True)
        if pushed.returncode == 0:
            refs = {r: new for r, (new, _) in updates.items()}
            return OriginLease(root, remote, refs, holder), [], notes
        if not _rejected(pushed):
            raise _unreachable(remote, pushed)
        if refusals := _refusals(pushed):
            raise _refused(remote, refusals[0])
        time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))  # jittered backoff
    present = _remote_refs(root, remote, environment)
    wanted = [lock_ref(environment, h) for h in hosts]
    holders = _holders(root, remote, {r: o for r, o in present.items() if r in wanted})
    found = [h for h in holders.values() if h is not None]
    if not found:  # every round lost, yet nobody holds them: never run without the lock
        last = (pushed.stdout + pushed.stderr).strip().splitlines()[-1:] or ["no output"]
        raise _refused(remote, f"{ATTEMPTS} pushes refused, no holder found; last: {last[0]}")
    return None, found, []


def renew_origin(lease: OriginLease, now: dt.datetime | None = None) -> bool | None:
    """Push a later `expires` on every lock ref still ours, by CAS on the commit we pushed last.

    True when renewed; False when the CAS lost (someone took the hosts over: `lease.lost`
    names the refs, and we stop renewing them); None when the origin could not be reached
    (the next beat tries again, the lease still runs until `expires`).
    """
    moment = now or dt.datetime.now(dt.UTC)
    with lease.guard:
        if lease.holder is None or not lease.refs:
            return None
        expires = (moment + dt.timedelta(seconds=lease.lease_s)).isoformat()
        renewed = [
            Holder(
                **{
                    **asdict(lease.holder),
                    "host": ref.rsplit("/", 1)[1],
                    "expires": expires,
                    "renewed": moment.isoformat(),
                }
            )
            for ref in lease.refs
        ]
        made = _lock_commits(lease.root, renewed)
        updates = {
            ref: (oid, ours) for (ref, ours), oid in zip(lease.refs.items(), made, strict=True)
        }
        pushed = _push(lease.root, lease.remote, updates, atomic=True)
        if pushed.returncode == 0:
            lease.refs = {ref: new for ref, (new, _) in updates.items()}
            lease.holder = Holder(**{**asdict(lease.holder), "expires": expires})
            lease.renewals += 1
            return True
        if not _rejected(pushed):
            return None
        # Atomic: nothing was renewed. Keep renewing the refs that are still ours.
        present = _remote_refs(lease.root, lease.remote, lease.holder.environment)
        taken = [ref for ref, ours in lease.refs.items() if present.get(ref) != ours]
        lease.lost += taken
        lease.refs = {ref: ours for ref, ours in lease.refs.items() if ref not in taken}
        return False


class Heartbeat:
    """Renews a lease every `every` seconds while the run lives; stopped before release.

    A thread of the apply process itself, on purpose: when the process dies (kill -9, OOM, a
    runner torn down) the beats stop with it and the lease expires `lease_s` later.

    Example:
        beat = Heartbeat(lease, every=lease.lease_s / 3); ...; beat.stop()
    """

    def __init__(self, lease: OriginLease, every: float) -> None:
        self.lease = lease
        self.every = every
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="opsledger-heartbeat", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                if renew_origin(self.lease) is False and not self.lease.refs:
                    return  # every host taken over: nothing left to renew
            except OpsledgerError:
                continue  # the origin is unreachable now; the lease runs until it expires

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=60)


def release_origin(lease: OriginLease) -> list[str]:
    """Delete our lock refs (only where they are still ours); warnings for the rest."""
    with lease.guard:
        refs = dict(lease.refs)
    warnings = [
        f"origin lock {ref} was taken over while the run held it (a renewal lost its "
        "compare-and-swap): another run may have touched those hosts"
        for ref in lease.lost
    ]
    if not refs:
        return warnings
    for attempt in range(ATTEMPTS):
        updates = {ref: ("", ours) for ref, ours in refs.items()}
        pushed = _push(lease.root, lease.remote, updates, atomic=False)
        if pushed.returncode == 0:
            return warnings
        if not _rejected(pushed):
            break
        # Rejected: lost to a takeover, or only the origin's ref lock was busy (many runners
        # releasing at once). Retry what is still ours; what is not was taken over.
        environment = lease.holder.environment if lease.holder else ""
        present = _remote_refs(lease.root, lease.remote, environment) if environment else {}
        others = [ref for ref, ours in refs.items() if ref in present and present[ref] != ours]
        if others:
            warnings.append(
                f"origin lock(s) {', '.join(others)} were taken over by another run meanwhile: "
                "left as they are"
            )
        refs = {ref: ours for ref, ours in refs.items() if present.get(ref) == ours}
        if not refs:
            return warnings
        time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))  # jittered backoff
    names = ", ".join(refs)
    last = (pushed.stderr or pushed.stdout).strip().splitlines()[-1:] or ["no output"]
    return [
        *warnings,
        f"could not free origin lock(s) {names} on {lease.remote}: {last[0]}; they expire by "
        f"themselves, or delete them: git push {lease.remote} --delete {' '.join(refs)}",
    ]
