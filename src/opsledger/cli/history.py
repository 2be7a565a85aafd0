"""Which commands need git history — checked in one place, for every command at once.

Approvals, run records, incident and problem steps (and their SLA clocks) and the audit trail
are git history. A command that reads or commits them outside a repository, or before its
first commit, would answer about nothing (deny, allow, list or report on an empty history) or
fail half-way with git's own words and exit 1. So every command needs history — checked before
it runs, exit 2 with one line — unless WITHOUT_HISTORY names it (or its group) with the reason
it reads only files of the working tree. A new command is checked by default: forgetting to
classify it fails closed, never open.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import click

WITHOUT_HISTORY: dict[str, str] = {
    "change new": "writes a change file (ids used in history are skipped when there is one)",
    "change validate": "checks change files against the schema, runbooks and inventories",
    "change schema": "prints a schema",
    "incident schema": "prints a schema",
    "problem schema": "prints a schema",
    "policy check": "checks the policy files of the working tree",
    "policy schema": "prints a schema",
    "runbook": "runbooks are files of the working tree",
    "roles": "role documentation is generated from the working tree",
    "ci codeowners": "writes CODEOWNERS from policies/people.yml",
    "notify test": "sends a test message through the configured channels",
    "verify": "runs the infrastructure tests against hosts and records nothing",
    "lab": "the local container lab, not the ledger",
}
_CHECKED = "__opsledger_history_checked__"


def leaf_commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """(`change withdraw`, its command) for every command under `group`, groups opened.

    Asks the group (list_commands, get_command) rather than reading its `commands`: the root
    group loads its commands on first use (cli/root.py), and this loads them all.
    """
    ctx = click.Context(group)
    # The group's own order first: an alias (`change cancel`) comes after the command it names,
    # so a command is checked, and named in errors, under its own name.
    names = [*group.commands, *(n for n in group.list_commands(ctx) if n not in group.commands)]
    for name in names:
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*path, name))
        elif command is not None:
            yield " ".join((*path, name)), command


def needs_history(name: str) -> bool:
    """Whether the command `name` (e.g. `incident list`) must run in a repository with commits."""
    words = name.split()
    return not any(" ".join(words[:n]) in WITHOUT_HISTORY for n in range(1, len(words) + 1))


def check_history(command: click.Command, path: tuple[str, ...] = ()) -> None:
    """Make `command` (named `path`) and each command under it that needs history refuse without.

    The root group calls it for each of its commands as it loads, e.g. path ("change",).
    """
    if isinstance(command, click.Group):
        leaves = list(leaf_commands(command, path))
    else:
        leaves = [(" ".join(path), command)]
    for name, leaf in leaves:
        callback = leaf.callback
        if needs_history(name) and callback is not None and not hasattr(callback, _CHECKED):
            leaf.callback = _checked(callback, name)


def _checked(callback: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        # Imported when a command runs: the root group imports this module for --help too.
        from opsledger.gitrepo import require_history
        from opsledger.project import find_project

        require_history(find_project().root, name)
        return callback(*args, **kwargs)

    setattr(run, _CHECKED, True)
    return run
