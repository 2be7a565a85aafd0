"""Incidents and problems under bad input and failing git (#14.7, #17): a step git refuses
leaves the tree exactly as it was, free text is bounded, a file never grows past what the
loader reads back, and lists and reports never skip an incident they cannot read."""

from __future__ import annotations

import contextlib

from click.testing import CliRunner

from opsledger.cli import cli

from ..badinput import assert_refused, tree_state

NEW = [
    "incident", "new", "--title", "PostgreSQL down on lab-db1", "--class", "software",
    "--impact", "high", "--urgency", "medium", "--host", "lab-db1", "--service", "postgresql",
    "--as", "alice",
]  # fmt: skip


def run(*args):
    return CliRunner().invoke(cli, list(args))


@contextlib.contextmanager
def index_locked(project):
    """git refuses every commit, as while another git holds the index."""
    lock = project.root / ".git" / "index.lock"
    lock.touch()
    try:
        yield
    finally:
        lock.unlink()


def test_a_step_git_refuses_leaves_the_tree_as_it_was(fault_repo):
    project = fault_repo
    assert run(*NEW).exit_code == 0  # INC-0001
    steps = [
        NEW,  # would be INC-0002: its folder must not stay behind
        ["incident", "ack", "INC-0001", "--as", "bob"],
        ["incident", "note", "INC-0001", "--text", "restarted the cluster", "--as", "bob"],
        ["incident", "assign", "INC-0001", "--to", "carol", "--as", "bob"],
        ["problem", "new", "--title", "WAL fills the disk", "--incident", "INC-0001",
         "--as", "bob"],
    ]  # fmt: skip
    before = tree_state(project.root)
    for args in steps:
        with index_locked(project):
            result = run(*args)
        lines = assert_refused(result, code=1, expect="index.lock")
        assert len(lines) == 1, lines
        assert tree_state(project.root) == before, args
    assert not (project.root / "incidents" / "INC-0002").exists()
    assert not (project.root / "problems").exists()
    acked = run("incident", "ack", "INC-0001", "--as", "bob")  # git has no acknowledgement
    assert acked.exit_code == 0, acked.output


def test_a_problem_step_git_refuses_leaves_problem_and_incidents_as_they_were(fault_repo):
    project = fault_repo
    assert run(*NEW).exit_code == 0
    assert run(*NEW[:3], "Disk full on lab-db1", *NEW[4:]).exit_code == 0
    opened = run("problem", "new", "--title", "WAL fills the disk", "--incident", "INC-0001",
                 "--as", "bob")  # fmt: skip
    assert opened.exit_code == 0, opened.output
    before = tree_state(project.root)
    with index_locked(project):
        result = run("problem", "link", "PRB-0001", "INC-0002", "--as", "bob")
    assert_refused(result, code=1, expect="index.lock")
    assert tree_state(project.root) == before


def test_detection_reads_records_through_the_one_json_loader(fault_repo, tmp_path):
    """faults/detect.py read records with bare json.loads: a duplicate key silently kept the
    last value and a record linked out of the repository was read."""
    import json
    from dataclasses import asdict

    from opsledger.faults.detect import _Reader

    from .conftest import T0, inspection

    project = fault_repo
    folder = project.root / "records" / "inspections"
    folder.mkdir(parents=True, exist_ok=True)
    good = json.dumps(asdict(inspection(T0, [])))
    (folder / "good.json").write_text(good)
    twice = good.replace('"result": "success"', '"result": "failed", "result": "success"')
    assert twice != good
    (folder / "twice.json").write_text(twice)
    outside = tmp_path / "outside.json"
    outside.write_text(good)
    (folder / "linked.json").symlink_to(outside)
    reader = _Reader(project)
    assert reader.record("records/inspections/good.json") is not None
    assert reader.record("records/inspections/twice.json") is None
    assert reader.record("records/inspections/linked.json") is None
