"""The history read in the background (gitlog.history_in_background) while git still writes it,
and objects read once per steady scope (gitrepo.blob_contents)."""

from __future__ import annotations

import pytest

from opsledger.errors import OpsledgerError
from opsledger.gitlog import history_in_background, read_history
from opsledger.gitrepo import blob_contents, commit_paths, git
from opsledger.layout import REQUEST, stored_file
from opsledger.steady import steady_tree


def _grow(project, count):
    """`count` more commits, each a note (enough for git to write the listing in parts)."""
    for n in range(count):
        note = project.root / "notes" / f"n{n % 7}.md"
        note.parent.mkdir(exist_ok=True)
        note.write_text(f"note {n}\n" + "x" * 2000)
        commit_paths(project.root, [note], f"Note {n}", name="Alice", email="a@example.org")


def test_the_background_read_lists_what_a_plain_read_does(repo):
    """Parsed as git writes its listing, not after: the same commits, in the same order."""
    project, _, _ = repo
    _grow(project, 40)
    plain = read_history(project)
    with history_in_background(project) as history:
        followed = list(history())
    assert [(c.sha, c.files) for c in followed] == [(c.sha, c.files) for c in plain]
    assert len(followed) > 40


def test_branches_merges_and_skewed_clocks_come_in_the_plain_read_s_order(repo):
    """git lists newest first and the kept commits are reversed: exactly `--reverse`'s order,
    merges and commit dates that run backwards (a date anyone can forge) included."""
    project, _, _ = repo
    _grow(project, 3)
    dates = iter(range(1_900_000_000, 1_000_000_000, -86_400))  # every commit older

    def commit(name):
        note = project.root / "notes" / f"{name}.md"
        note.parent.mkdir(exist_ok=True)
        note.write_text(name)
        git(project.root, "add", str(note))
        stamp = f"{next(dates)} +0000"
        env = {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
        git(project.root, "commit", "-q", "-m", name, env=env)

    main = git(project.root, "branch", "--show-current").stdout.strip()
    for side in ("a", "b"):
        git(project.root, "checkout", "-q", "-b", side, main)
        commit(f"{side}1")
        commit(f"{side}2")
        git(project.root, "checkout", "-q", main)
        commit(f"main-{side}")
        git(project.root, "merge", "-q", "--no-ff", "-m", f"merge {side}", side)
    commit("last")
    plain = read_history(project)
    assert any(c.merge for c in plain)
    with history_in_background(project) as history:
        followed = list(history())
    assert [(c.sha, c.files) for c in followed] == [(c.sha, c.files) for c in plain]
    with history_in_background(
        project, keep=lambda sha, email, paths: "notes/b1.md" not in paths
    ) as history:
        kept = [c.sha for c in history()]
    assert kept == [c.sha for c in plain if "notes/b1.md" not in [f.path for f in c.files]]


def test_a_failing_git_is_one_error_not_a_partial_history(repo):
    project, _, _ = repo
    with (
        history_in_background(project, rev="0" * 40) as history,
        pytest.raises(OpsledgerError, match="git log failed"),
    ):
        list(history())


def test_an_object_is_read_once_per_steady_scope_and_only_by_an_immutable_name(repo):
    """A commit id (and path) names the same bytes for ever; HEAD does not."""
    project, change_id, _ = repo
    path = stored_file(project.root, change_id, REQUEST)
    head = git(project.root, "rev-parse", "HEAD").stdout.strip()
    named, moving = f"{head}:{path}", f"HEAD:{path}"
    with steady_tree():
        first = blob_contents(project.root, [named, moving])
        (project.root / path).write_text(first[named].decode() + "# edited\n")
        commit_paths(project.root, [project.root / path], "Edit", name="A", email="a@example.org")
        again = blob_contents(project.root, [named, moving])
    assert first[named] and again[named] == first[named] == first[moving]
    assert again[moving] == first[named] + b"# edited\n"


def test_a_path_a_commit_lacks_is_asked_for_once_and_a_moving_name_again(repo, monkeypatch):
    """`commit:path` missing stays missing (an audit asks for both layouts' spellings of each
    request, one of them absent); `HEAD:path` may appear with the next commit."""
    import opsledger.gitrepo as gitrepo

    project, _, _ = repo
    head = git(project.root, "rev-parse", "HEAD").stdout.strip()
    named, moving = f"{head}:notes/late.md", "HEAD:notes/late.md"
    asked: list[list[str]] = []
    real = gitrepo._cat_file

    def counted(root, shas):
        asked.append(list(shas))
        return real(root, shas)

    monkeypatch.setattr(gitrepo, "_cat_file", counted)
    with steady_tree():
        assert blob_contents(project.root, [named, moving]) == {}
        late = project.root / "notes" / "late.md"
        late.parent.mkdir(exist_ok=True)
        late.write_text("late\n")
        commit_paths(project.root, [late], "Late", name="A", email="a@example.org")
        again = blob_contents(project.root, [named, moving])
    assert again == {moving: b"late\n"}
    assert asked == [[named, moving], [moving]]
