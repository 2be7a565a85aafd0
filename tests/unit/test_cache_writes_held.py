"""A refused command writes nothing, not even its machine-local caches (localcache.hold_writes):
the CLI holds every cache write until the command ends and drops them on exit 2 or 3."""

from __future__ import annotations

import shutil
import subprocess
import sys

from opsledger.errors import EXIT_DENIED, EXIT_INVALID
from opsledger.localcache import cache_file, hold_writes, load_cache, save_cache

from .badinput import tree_state
from .conftest import START
from .test_ci import _request


def _cli(project, *args):
    return subprocess.run(
        [sys.executable, "-m", "opsledger", *args],
        cwd=project.root,
        env={**project.ansible_env(), "OPSLEDGER_PROJECT": str(project.root)},
        capture_output=True,
        text=True,
    )


def _cached(project) -> list[str]:
    folder = project.state_dir / "cache"
    return sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []


def test_a_denied_or_invalid_command_leaves_no_cache_and_a_good_one_keeps_them(repo):
    project, _, _ = repo
    change_id = _request(project)  # requested and committed by alice
    shutil.rmtree(project.state_dir / "cache", ignore_errors=True)  # what the request kept
    before = tree_state(project.root)

    denied = _cli(project, "decide", change_id, "--at", START.isoformat())  # no approvals
    assert denied.returncode == EXIT_DENIED, denied.stdout + denied.stderr
    invalid = _cli(project, "change", "validate", "CHG-9999")
    assert invalid.returncode == EXIT_INVALID, invalid.stderr
    assert tree_state(project.root) == before and _cached(project) == []

    checked = _cli(project, "change", "validate", change_id)
    assert checked.returncode == 0, checked.stderr
    assert _cached(project), "a command that ends well keeps what it derived"


def test_held_writes_are_seen_inside_and_dropped_everywhere_by_one_discard(repo):
    project, _, _ = repo
    with hold_writes():
        save_cache(project, "probe", {"a": 1})
        assert load_cache(project, "probe") == {"a": 1}  # seen before it is written
        assert not cache_file(project, "probe").exists()
    assert load_cache(project, "probe") == {"a": 1}  # written when the command ended

    with hold_writes() as discard:
        with hold_writes():
            save_cache(project, "probe", {"a": 2})
        discard()
        save_cache(project, "probe", {"a": 3})  # after a refusal: dropped too
    assert load_cache(project, "probe") == {"a": 1}

    with hold_writes(), hold_writes() as inner_discard:
        save_cache(project, "probe", {"a": 4})
        inner_discard()
    assert load_cache(project, "probe") == {"a": 1}
