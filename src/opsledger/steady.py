"""A scope in which the working tree is read as unchanged, so loaders skip freshness checks.

The inventory and runbook loaders stat every file they depend on at each call, so a process
that lives on while files change (the lab, tests, `apply` editing nothing but records) never
gets a stale copy. An audit reads the tree once and validates thousands of changes against
the same inventory and runbooks: those checks were most of its time (8 ms a change at
20,000 commits). Inside `steady_tree()` each loader's result is kept by its arguments until
the scope ends; outside it nothing is kept here.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")

_MEMO: ContextVar[dict[Hashable, object] | None] = ContextVar("steady_memo", default=None)


@contextmanager
def steady_tree() -> Iterator[None]:
    """Keep loaded inventories and runbooks for the scope (the caller writes no file in it).

    Example:
        with steady_tree():
            changes = [load_change(project, c) for c in change_ids(project)]
    """
    if _MEMO.get() is not None:  # already inside one: its memo serves
        yield
        return
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def remembered(key: Hashable, load: Callable[[], T]) -> T:
    """`load()`, once per key inside a steady scope (failures are not kept); always outside."""
    memo = _MEMO.get()
    if memo is None:
        return load()
    if key not in memo:
        memo[key] = load()
    return memo[key]  # type: ignore[return-value]


def steady_memo() -> dict[Hashable, object] | None:
    """The scope's memo (None outside one), for a loader that keeps several keys per call."""
    return _MEMO.get()
