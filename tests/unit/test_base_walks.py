"""The base's first-parent line and policy log kept by commit id (base._walks): reused for the
same base, walked again for a new one, ignored when forged."""

from __future__ import annotations

import json

import opsledger.base as base
from opsledger.gitrepo import commit_paths
from opsledger.localcache import cache_file


def _resolve(project, monkeypatch):
    """resolve_base as a new command does it; the git walks it ran, by subcommand."""
    walked: list[str] = []
    real = base.git

    def counting(root, *args, **kwargs):
        walked.append(args[0])
        return real(root, *args, **kwargs)

    monkeypatch.setattr(base, "git", counting)
    base._BASES.clear()
    resolved = base.resolve_base(project)
    monkeypatch.setattr(base, "git", real)
    return resolved, walked


def test_the_walks_of_a_base_are_kept_by_its_commit(repo, monkeypatch):
    project, _, _ = repo
    first, walked = _resolve(project, monkeypatch)
    assert "rev-list" in walked
    again, walked = _resolve(project, monkeypatch)
    assert "rev-list" not in walked
    assert again.first_parent == first.first_parent
    assert [v.commit for v in again.versions] == [v.commit for v in first.versions]
    # a new commit on the base is a new key: walked again, and its line is one longer
    readme = project.root / "policies" / "README.md"
    readme.write_text(readme.read_text() + "\nA note.\n")
    commit_paths(project.root, [readme], "Note", name="Alice Arnold", email="alice@example.org")
    after, walked = _resolve(project, monkeypatch)
    assert "rev-list" in walked
    assert (
        after.first_parent[:-1] == first.first_parent
        and len(after.first_parent) == len(first.first_parent) + 1
    )


def test_a_forged_line_is_ignored(repo, monkeypatch):
    project, _, _ = repo
    first, _ = _resolve(project, monkeypatch)
    path = cache_file(project, "base-walks")
    mac, _, body = path.read_bytes().partition(b"\n")
    entries = json.loads(body)
    for entry in entries.values():
        entry["line"] = ["0" * 40]
    path.write_bytes(mac + b"\n" + json.dumps(entries).encode())
    again, walked = _resolve(project, monkeypatch)
    assert "rev-list" in walked
    assert again.first_parent == first.first_parent


def test_a_shallow_boundary_or_grafts_are_part_of_the_key(repo):
    """A fetch that deepens a shallow clone gives the same commit a longer line: the boundary
    (and grafts) are keyed with it."""
    from opsledger.localcache import history_stamp

    project, _, _ = repo
    full = history_stamp(project.root)
    shallow = project.root / ".git" / "shallow"
    shallow.write_text("0" * 40 + "\n")
    bounded = history_stamp(project.root)
    shallow.write_text("1" * 40 + "\n")
    deepened = history_stamp(project.root)
    shallow.unlink()
    assert len({full, bounded, deepened}) == 3
    assert history_stamp(project.root) == full
