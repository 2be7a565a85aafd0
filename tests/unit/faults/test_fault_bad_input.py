"""Incidents and problems under bad input and failing git (#14.7, #17): a step git refuses
leaves the tree exactly as it was, free text is bounded, a file never grows past what the
loader reads back, and lists and reports never skip an incident they cannot read."""

from __future__ import annotations

import contextlib

from click.testing import CliRunner

from opsledger.cli import cli
from opsledger.yamlio import MAX_BYTES

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


# --- #17: free text is bounded, a file never outgrows the loader, nothing unreadable is skipped


def test_free_text_of_an_incident_is_bounded_by_its_schema(fault_repo):
    project = fault_repo
    before = tree_state(project.root)
    cases = [
        (["--note", "n" * 4001], "timeline[0].note: 4001 characters; at most 4000 allowed"),
        (["--fingerprint", "f" * 257], "fingerprints[0]: 257 characters; at most 256 allowed"),
        (["--fingerprint", "alert\nsecond"], "fingerprints[0]: 'alert\\nsecond' does not match"),
        (["--service", "s" * 129], "services[1]: 129 characters; at most 128 allowed"),
        (["--title", "PostgreSQL\ndown on lab-db1"], "title: 'PostgreSQL\\ndown on lab-db1'"),
        (["--title", "Pro\x1bbe is down"], "title: 'Pro\\x1bbe is down' does not match"),
    ]
    for extra, message in cases:
        assert_refused(run(*NEW, *extra), expect=message)
        assert tree_state(project.root) == before, extra
    assert run(*NEW).exit_code == 0
    before = tree_state(project.root)
    steps = [
        ["incident", "note", "INC-0001", "--text", "t" * 4001, "--as", "bob"],
        ["incident", "ack", "INC-0001", "--note", "a" * 4001, "--as", "bob"],
        ["incident", "assign", "INC-0001", "--to", "carol", "--note", "r" * 4001, "--as", "bob"],
        ["problem", "new", "--title", "two\nlines here", "--incident", "INC-0001", "--as", "bob"],
    ]
    for args in steps:
        lines = assert_refused(run(*args), expect="allowed" if "\n" not in args[3] else "match")
        assert all("incident.yml" in line or "problem.yml" in line for line in lines), lines
        assert tree_state(project.root) == before, args[:2]


def _grow(project, incident_id: str, up_to: int) -> None:
    """Pad an incident's timeline with notes (as if many steps were taken) to about `up_to`
    bytes, and commit it."""
    from opsledger.faults.store import INCIDENT_ORDER, dump, load_incident
    from opsledger.gitrepo import commit_paths

    incident = load_incident(project, incident_id)
    note = {**incident.timeline[0], "action": "note", "text": "x" * 3900}
    note.pop("note", None)
    size = len(dump(incident.data, INCIDENT_ORDER).encode())
    incident.timeline.append(dict(note))
    each = len(dump(incident.data, INCIDENT_ORDER).encode()) - size
    incident.timeline.extend(dict(note) for _ in range((up_to - size) // each - 1))
    rest = up_to - len(dump(incident.data, INCIDENT_ORDER).encode()) - (each - 3900)
    incident.timeline.append({**note, "text": "x" * rest})
    incident.path.write_text(dump(incident.data, INCIDENT_ORDER))
    commit_paths(project.root, [incident.path], "notes", name="Bob", email="bob@example.org")


def test_a_step_that_would_outgrow_the_loader_is_refused_before_writing(fault_repo):
    """Nine notes of 120 KB made incident.yml unreadable (over 1 MiB): it then dropped out of
    every list and report. Each note is bounded now, and a step whose file would pass the
    loader's limit is refused (exit 2) with nothing written."""
    project = fault_repo
    assert run(*NEW).exit_code == 0
    _grow(project, "INC-0001", MAX_BYTES - 1500)
    assert (project.root / "incidents/INC-0001/incident.yml").stat().st_size > MAX_BYTES - 2000
    before = tree_state(project.root)
    result = run("incident", "note", "INC-0001", "--text", "y" * 3999, "--as", "bob")
    [line] = assert_refused(result, expect="incidents/INC-0001/incident.yml: timeline: the ")
    assert f"past the {MAX_BYTES}-byte limit of a readable file" in line
    assert tree_state(project.root) == before
    listed = run("incident", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert "INC-0001" in listed.stdout


def test_lists_and_reports_never_skip_an_unreadable_incident(fault_repo):
    project = fault_repo
    assert run(*NEW).exit_code == 0
    broken = project.root / "incidents" / "INC-0002" / "incident.yml"
    broken.parent.mkdir()
    broken.write_text("id: INC-0002\n" + "# padding\n" * (MAX_BYTES // 10 + 1))
    listed = run("incident", "list", "--json")
    lines = assert_refused(listed, expect="incidents/INC-0002/incident.yml")
    assert len(lines) == 1 and "larger than" in lines[0]
    assert "INC-0001" in listed.stdout  # the readable ones are still shown
    assert_refused(run("incident", "list", "--breaching"), expect="INC-0002/incident.yml")
    # the breach notices: the readable incidents are judged, the unreadable one named, exit 2
    assert_refused(
        run("notify", "breaches", "--within", "15m"), expect="INC-0002/incident.yml", progress=True
    )
    for args in (
        ["report", "--format", "json", "--period", "2026-11"],
        ["problem", "suggest"],
        ["problem", "list"],
        ["host", "show", "lab-db1"],
    ):
        assert_refused(run(*args), expect="INC-0002/incident.yml", progress=True)
