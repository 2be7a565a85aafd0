"""A fair queue of the runs waiting for hosts, on the same git origin as the host locks.

Without it, waiters on many runners poll, and whichever polls first after a release wins: a
run can starve behind later ones. So a waiter lines up once:

- **ticket**: `refs/opsledger/tickets/<env>` holds the last ticket given out (a commit whose
  message is the number). Lining up is ONE atomic push that moves it from n to n+1 (CAS on its
  old commit) and creates `refs/opsledger/queue/<env>/<host>/<n+1, 12 digits>` for each host
  wanted (CAS: must not exist). Of two waiters racing for a number exactly one wins; the other
  reads the counter again. Tickets therefore only grow, and are unique per environment.
- **first in line**: a waiter may try to take its hosts only when no *live* entry with a lower
  ticket waits for any of them. One counter per environment means the smallest ticket among
  waiters is first on every host it waits for, so waiters for overlapping host sets never
  wait on each other in a ring.
- **expiry**: each entry carries `expires`, renewed while its waiter polls; the entry of a
  waiter that died is skipped once it expired (and deleted, by CAS, by whoever sees it), so a
  dead waiter never blocks the line.
- a run that does not wait (`--wait 0`) does not line up, but it does not jump the line either:
  a live entry on one of its hosts refuses it (exit 4 naming that waiter).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path

from opsledger.lockholder import Holder
from opsledger.origin_lock import (
    _git,
    _holders,
    _lock_commits,
    _push,
    _refusals,
    _refused,
    _rejected,
    _unreachable,
)

QUEUE_REFS = "refs/opsledger/queue"
TICKET_REFS = "refs/opsledger/tickets"
ATTEMPTS = 20  # counter CAS rounds lost to other waiters before giving up this poll


def queue_ref(environment: str, host: str, ticket: int) -> str:
    return f"{QUEUE_REFS}/{environment}/{host}/{ticket:012d}"


@dataclass
class Entry:
    host: str
    ticket: int
    ref: str
    oid: str
    holder: Holder | None


@dataclass
class Place:
    """Our place in line: the ticket and the entry commit of each host (what renewal expects)."""

    environment: str
    ticket: int
    refs: dict[str, str] = field(default_factory=dict)  # queue ref -> our commit


def _ls(root: Path, remote: str, *patterns: str) -> dict[str, str]:
    proc = _git(root, "ls-remote", remote, *patterns)
    if proc.returncode != 0:
        raise _unreachable(remote, proc)
    refs = {}
    for line in proc.stdout.splitlines():
        oid, _, ref = line.partition("\t")
        refs[ref] = oid
    return refs


def entries(root: Path, remote: str, environment: str, hosts: list[str]) -> list[Entry]:
    """The queue entries of these hosts on the origin, each with the waiter it names."""
    prefix = f"{QUEUE_REFS}/{environment}/"
    wanted = set(hosts)
    found = {}
    for ref, oid in _ls(root, remote, f"{prefix}*").items():
        host, _, number = ref.removeprefix(prefix).rpartition("/")
        if host in wanted and number.isdigit():
            found[ref] = (host, int(number), oid)
    holders = _holders(root, remote, {ref: oid for ref, (_, _, oid) in found.items()})
    return sorted(
        (
            Entry(h, n, ref, oid, holders[ref])
            for ref, (h, n, oid) in found.items()
            if ref in holders  # not gone since it was listed
        ),
        key=lambda e: (e.ticket, e.host),
    )


def _live(entry: Entry, now: dt.datetime) -> bool:
    holder = entry.holder
    if holder is None or not holder.expires:
        return False
    return now < dt.datetime.fromisoformat(holder.expires)


def ahead_of(
    root: Path,
    remote: str,
    environment: str,
    hosts: list[str],
    place: Place | None,
    now: dt.datetime,
) -> list[Holder]:
    """The live waiters before us (all of them when we hold no ticket), first one per host.

    Expired entries are deleted on the way (CAS on the commit seen, so a renewal that came in
    meanwhile wins): a dead waiter never blocks the line.
    """
    mine = set(place.refs) if place else set()
    first: dict[str, Holder] = {}
    stale: dict[str, tuple[str, str]] = {}
    for entry in entries(root, remote, environment, hosts):
        if entry.ref in mine:
            continue
        if not _live(entry, now):
            stale[entry.ref] = ("", entry.oid)
            continue
        if place is None or entry.ticket < place.ticket:
            first.setdefault(entry.host, _with_ticket(entry))
    if stale:
        _push(root, remote, stale, atomic=False)  # best effort: someone else may do it
    return [first[h] for h in sorted(first)]


def _with_ticket(entry: Entry) -> Holder:
    assert entry.holder is not None
    return Holder(**{**asdict(entry.holder), "host": entry.host, "ticket": entry.ticket})


def _counter(root: Path, remote: str, environment: str) -> tuple[str, int]:
    ref = f"{TICKET_REFS}/{environment}"
    oid = _ls(root, remote, ref).get(ref, "")
    if not oid:
        return "", 0
    fetched = _git(root, "fetch", "-q", "--no-tags", "--no-write-fetch-head", remote, ref)
    if fetched.returncode != 0:
        raise _unreachable(remote, fetched)
    body = _git(root, "log", "-1", "--format=%B", oid).stdout.strip()
    return oid, int(body) if body.isdigit() else 0


def _counter_commit(root: Path, number: int) -> str:
    tree = _git(root, "mktree", stdin="").stdout.strip()
    who = {
        "GIT_AUTHOR_NAME": "opsledger",
        "GIT_AUTHOR_EMAIL": "opsledger@queue",
        "GIT_COMMITTER_NAME": "opsledger",
        "GIT_COMMITTER_EMAIL": "opsledger@queue",
    }
    return _git(root, "commit-tree", tree, "-m", str(number), env=who).stdout.strip()


def line_up(
    root: Path,
    remote: str,
    holder: Holder,
    hosts: list[str],
    lease_s: int,
    now: dt.datetime,
) -> Place:
    """Take the next ticket and an entry per host, in one atomic push (see the module doc).

    Raises OpsledgerError (exit 2) when the origin is unreachable or refuses queue refs.
    """
    environment = holder.environment
    expires = (now + dt.timedelta(seconds=lease_s)).isoformat()
    counter_ref = f"{TICKET_REFS}/{environment}"
    for _ in range(ATTEMPTS):
        old, number = _counter(root, remote, environment)
        ticket = number + 1
        updates = {counter_ref: (_counter_commit(root, ticket), old)}
        entries = [
            Holder(**{**asdict(holder), "host": host, "expires": expires, "ticket": ticket})
            for host in hosts
        ]
        for host, oid in zip(hosts, _lock_commits(root, entries), strict=True):
            updates[queue_ref(environment, host, ticket)] = (oid, "")
        pushed = _push(root, remote, updates, atomic=True)
        if pushed.returncode == 0:
            refs = {ref: new for ref, (new, _) in updates.items() if ref != counter_ref}
            return Place(environment, ticket, refs)
        if not _rejected(pushed):
            raise _unreachable(remote, pushed)
        if refusals := _refusals(pushed):
            raise _refused(remote, refusals[0])
    raise _refused(remote, f"{ATTEMPTS} rounds lost for a queue ticket")


def stay(root: Path, remote: str, holder: Holder, place: Place, lease_s: int, now: dt.datetime):
    """Renew our entries' expiry while we wait (CAS on our last commit of each).

    An entry someone deleted as expired (we were too slow) is created again with the same
    ticket: the ticket, not the entry's age, is our place.
    """
    expires = (now + dt.timedelta(seconds=lease_s)).isoformat()
    entries = [
        Holder(
            **{
                **asdict(holder),
                "host": ref.rsplit("/", 2)[-2],
                "expires": expires,
                "ticket": place.ticket,
            }
        )
        for ref in place.refs
    ]
    made = _lock_commits(root, entries)
    updates = {ref: (oid, ours) for (ref, ours), oid in zip(place.refs.items(), made, strict=True)}
    pushed = _push(root, remote, updates, atomic=False)
    if pushed.returncode == 0:
        place.refs = {ref: new for ref, (new, _) in updates.items()}
        return
    if not _rejected(pushed):
        raise _unreachable(remote, pushed)
    present = _ls(root, remote, *place.refs)
    for ref, (new, _) in updates.items():  # whatever went through is ours now
        if present.get(ref) == new:
            place.refs[ref] = new
        elif ref not in present:
            retry = _push(root, remote, {ref: (new, "")}, atomic=False)
            if retry.returncode == 0:
                place.refs[ref] = new


def leave(root: Path, remote: str, place: Place | None) -> None:
    """Delete our entries (CAS on our commits): on taking the hosts, or on giving up."""
    if place is None or not place.refs:
        return
    _push(root, remote, {ref: ("", ours) for ref, ours in place.refs.items()}, atomic=False)
    place.refs = {}


__all__ = ["Place", "ahead_of", "entries", "leave", "line_up", "queue_ref", "stay"]
