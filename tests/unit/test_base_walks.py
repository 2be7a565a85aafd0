"""The base's first-parent line and policy log kept by commit id (base._walks): reused for the
same base, walked again for a new one, ignored when forged."""

from __future__ import annotations

import json

import opsledger.base as base
from opsledger.gitrepo import commit_paths, git
from opsledger.localcache import cache_file


def _resolve(project, monkeypatch):
    """resolve_base as a new command does it; the git walks it ran, by subcommand (a pass of
    `rev-list --first-parent` placing commits on the line counts as "rev-list")."""
    walked: list[str] = []
    real, real_pass = base.git, base.FirstParentLine._pass

    def counting(root, *args, **kwargs):
        walked.append(args[0])
        return real(root, *args, **kwargs)

    def counted_pass(self):
        walked.append("rev-list")
        return real_pass(self)

    monkeypatch.setattr(base, "git", counting)
    monkeypatch.setattr(base.FirstParentLine, "_pass", counted_pass)
    base._BASES.clear()
    resolved = base.resolve_base(project)
    resolved.policies_at(resolved.sha)  # places the policy versions and the tip on the line
    return resolved, walked


def _line(project, rev="HEAD"):
    return git(project.root, "rev-list", "--first-parent", "--reverse", rev).stdout.split()


def test_the_walks_of_a_base_are_kept_by_its_commit(repo, monkeypatch):
    project, _, _ = repo
    first, walked = _resolve(project, monkeypatch)
    assert "rev-list" in walked
    line = _line(project)
    assert first.position[line[-1]] == len(line) - 1
    again, walked = _resolve(project, monkeypatch)
    assert "rev-list" not in walked  # the places asked before are kept with the base
    assert again.position[line[-1]] == len(line) - 1
    assert [v.commit for v in again.versions] == [v.commit for v in first.versions]
    # a new commit on the base is a new key: walked again, and its line is one longer
    readme = project.root / "policies" / "README.md"
    readme.write_text(readme.read_text() + "\nA note.\n")
    commit_paths(project.root, [readme], "Note", name="Alice Arnold", email="alice@example.org")
    after, walked = _resolve(project, monkeypatch)
    assert "rev-list" in walked
    assert after.position[_line(project)[-1]] == len(line)
    assert after.position[line[-1]] == len(line) - 1


def test_the_line_answers_what_is_asked_and_holds_nothing_else(repo, monkeypatch):
    """Every commit's place is git's; one pass answers a batch; only the answers are held
    (an audit of 100,000 commits must not hold the whole line)."""
    project, _, _ = repo
    for n in range(6):
        note = project.root / f"note-{n}.md"
        note.write_text(f"note {n}\n")
        commit_paths(
            project.root, [note], f"Note {n}", name="Alice Arnold", email="alice@example.org"
        )
    git(project.root, "checkout", "-q", "-b", "side")
    aside = project.root / "aside.md"
    aside.write_text("aside\n")
    commit_paths(project.root, [aside], "Aside", name="Alice Arnold", email="alice@example.org")
    off_line = git(project.root, "rev-parse", "HEAD").stdout.strip()
    git(project.root, "checkout", "-q", "-")
    resolved, walked = _resolve(project, monkeypatch)
    line = _line(project)
    asked = [line[1], line[-2], off_line]
    walked.clear()
    resolved.position.want(asked)
    assert [resolved.position.get(sha) for sha in asked] == [1, len(line) - 2, None]
    assert walked == ["rev-list"]  # one pass for the batch
    assert off_line not in resolved.position and line[-2] in resolved.position
    held = resolved.position._known.keys() | resolved.position._absent
    assert held <= {*asked, *(v.commit for v in resolved.versions), resolved.sha}
    assert len(held) < len(line)


def test_a_forged_line_is_ignored(repo, monkeypatch):
    project, _, _ = repo
    _resolve(project, monkeypatch)
    line = _line(project)
    path = cache_file(project, "base-walks")
    mac, _, body = path.read_bytes().partition(b"\n")
    entries = json.loads(body)
    for entry in entries.values():
        entry["positions"] = {sha: 0 for sha in entry["positions"]}
    path.write_bytes(mac + b"\n" + json.dumps(entries).encode())
    again, walked = _resolve(project, monkeypatch)
    assert "rev-list" in walked
    assert again.position[line[-1]] == len(line) - 1


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
