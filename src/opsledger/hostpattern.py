"""Host patterns as opsledger accepts them: inventory names and the documented operators only.

A change's `targets` (and `--targets` of drift, verify and inspect) reaches Ansible's host
matching and `ansible-playbook --limit`, which understand far more than names: `@file` reads
a file on the controller, `~regex` compiles a regular expression, `name[0:2]` slices a group.
None of that belongs in a reviewed change, and some of it crashes or leaks, so a pattern is
refused unless every term is:

- a host or group name of the environment's inventory (or `all`), or a name with `*` / `?`
  wildcards that matches at least one of them;
- optionally prefixed by `!` (except those hosts) or `&` (only hosts also in it);

with terms joined by `,` (or `:`, not both). Nothing else: no spaces, `@`, `~` or brackets.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from opsledger.errors import shown

MAX_LENGTH = 256
_TERM = re.compile(r"[A-Za-z0-9_.*?-]{1,128}")
FIX = (
    "use host or group names of the inventory (or all), * and ? wildcards, "
    "joined by , and prefixed by ! (except) or & (and)"
)


def pattern_problems(pattern: object, names: Iterable[str]) -> list[tuple[str, str]]:
    """(message, fix) for every way the pattern breaks the rules above; [] when it is fine.

    Example:
        pattern_problems("db:!lab-db2", ["all", "db", "lab-db1", "lab-db2"])  # []
    """
    if not isinstance(pattern, str) or not pattern:
        return [("no host pattern given", "name a group or host, e.g. db")]
    if len(pattern) > MAX_LENGTH:
        return [(f"the host pattern is longer than {MAX_LENGTH} characters", "name groups")]
    separators = [s for s in ",:" if s in pattern]
    if len(separators) > 1:
        return [("the host pattern mixes ',' and ':'", "join terms with ',' only")]
    known = set(names) | {"all"}
    found = []
    for term in pattern.split(separators[0]) if separators else [pattern]:
        body = term[1:] if term[:1] in ("!", "&") else term
        if not _TERM.fullmatch(body):
            found.append((f"{shown(term, 120)} is not a host or group name", FIX))
        elif "*" in body or "?" in body:
            if not any(fnmatch.fnmatchcase(name, body) for name in known):
                found.append((f"{shown(term, 120)} matches no host or group", FIX))
        elif body not in known:
            found.append(
                (f"unknown host or group {shown(body, 120)}", f"use: {', '.join(sorted(known))}")
            )
    return found


def select(pattern: str, memberships: dict[str, frozenset[str]], groups: Iterable[str]) -> set[str]:
    """The hosts a pattern (that passed pattern_problems) selects, as Ansible selects them.

    `memberships` maps every host to every group it is in, directly or through parent groups
    (`all` included); `groups` is every group name, those without hosts too. As Ansible's
    InventoryManager.get_hosts: terms split on `,` (else `:`); plain terms first (none:
    `all`), then `&` terms intersect, then `!` terms remove. A term selects the hosts of every
    group whose name it matches (fnmatch, case-sensitive), and the hosts it names too when it
    matched no group or holds `*`, `?` or `.`.

    Example:
        every = {"lab-db1": frozenset({"all", "db"}), "lab-db2": frozenset({"all", "db"})}
        select("db:!lab-db2", every, {"all", "db"})  # {'lab-db1'}
    """
    separator = "," if "," in pattern else ":"
    terms = [t for t in pattern.split(separator) if t]
    regular = [t for t in terms if t[0] not in "!&"] or ["all"]
    groups = set(groups)
    selected: set[str] = set()
    for term in regular:
        selected |= _one(term, memberships, groups)
    for term in (t for t in terms if t[0] == "&"):
        selected &= _one(term[1:], memberships, groups)
    for term in (t for t in terms if t[0] == "!"):
        selected -= _one(term[1:], memberships, groups)
    return selected


def _one(term: str, memberships: dict[str, frozenset[str]], groups: set[str]) -> set[str]:
    matched = {g for g in groups if fnmatch.fnmatchcase(g, term)}
    hosts = {h for h, every in memberships.items() if every & matched}
    if not matched or any(c in term for c in ".?*"):
        hosts |= {h for h in memberships if fnmatch.fnmatchcase(h, term)}
    return hosts
