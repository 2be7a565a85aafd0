import datetime as dt
import json

import pytest

from opsledger.gitrepo import commit_paths, git
from opsledger.layout import block_file
from opsledger.project import Project
from opsledger.records import (
    EVIDENCE_FOLDERS,
    Record,
    RunResult,
    change_runs,
    read_runs,
    run_record_path,
    save_evidence,
    started_record_path,
    write_record,
)

from .conftest import REPO_ROOT

STARTED = dt.datetime(2026, 12, 1, 20, 30, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))


def record(**overrides):
    base = dict(
        kind="run",
        environment="lab",
        result="success",
        change="CHG-0001",
        runbook="converge",
        params={"tags": ["postgresql"]},
        started_at=STARTED.isoformat(),
        finished_at=(STARTED + dt.timedelta(minutes=3)).isoformat(),
    )
    return Record(**{**base, **overrides})


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "README.md").write_text("x\n")
    commit_paths(root, [root / "README.md"], "Initial", name="A", email="a@example.org")
    return Project(root)


def _commit(project, *paths):
    commit_paths(project.root, list(paths), "Record", name="CI", email="ci@example.org")


def test_records_round_trip_and_are_written_once(project):
    path = run_record_path(project, "CHG-0001", STARTED)
    assert path.name == "20261201T193005Z.json"  # UTC, sortable
    write_record(path, record())
    _commit(project, path)
    assert change_runs(project) == [record()]
    with pytest.raises(FileExistsError):
        write_record(path, record(result="failed"))


@pytest.mark.parametrize("result", list(RunResult))
def test_a_typed_result_writes_the_bytes_its_string_wrote(result, tmp_path):
    """Audit replays record files: typing the result must not change one byte of them."""
    typed, plain = record(result=result), record(result=str(result.value))
    assert type(plain.result) is str
    assert typed.to_json() == plain.to_json()
    assert f'"result": "{result.value}"' in typed.to_json()
    write_record(tmp_path / "run.json", typed)
    assert Record.from_dict(json.loads((tmp_path / "run.json").read_text())).result == result


def test_unknown_fields_from_newer_versions_are_ignored():
    data = {**record().__dict__, "something_new": 1}
    assert Record.from_dict(data) == record()


def test_runs_are_ordered_by_finish_time(project):
    late = record(change="CHG-0002", finished_at="2026-12-02T00:00:00+00:00")
    first = write_record(run_record_path(project, "CHG-0002", STARTED), late)
    second = write_record(run_record_path(project, "CHG-0001", STARTED), record())
    _commit(project, first, second)
    assert [r.change for r in change_runs(project)] == ["CHG-0001", "CHG-0002"]


def test_only_committed_records_count(project):
    """A record whose commit failed made apply refuse ("already applied") and change show list
    a success that git never had."""
    path = write_record(run_record_path(project, "CHG-0001", STARTED), record())
    ledger = read_runs(project)
    assert ledger.committed == []
    assert [(f.path, f.record.result) for f in ledger.uncommitted] == [
        (block_file("CHG-0001", "runs", "20261201T193005Z.json"), "success")  # a new change's
    ]
    _commit(project, path)
    ledger = read_runs(project)
    assert ledger.committed == [record()] and ledger.uncommitted == []
    path.write_text(record(result="failed").to_json())  # an edit in the working tree
    assert change_runs(project) == [record()]  # git's version counts


def test_a_write_ahead_record_is_open_until_its_final_record_is_committed(project):
    ahead = write_record(
        started_record_path(project, "CHG-0001", STARTED), record(result="started", finished_at="")
    )
    _commit(project, ahead)
    ledger = read_runs(project)
    assert [f.path for f in ledger.started] == [
        block_file("CHG-0001", "runs", "20261201T193005Z.started.json")
    ]
    assert ledger.committed == []
    final = write_record(run_record_path(project, "CHG-0001", STARTED), record())
    assert [f.path for f in read_runs(project).started]  # not committed yet: still open
    _commit(project, final)
    ledger = read_runs(project)
    assert ledger.started == [] and ledger.committed == [record()]


@pytest.mark.parametrize("kind", sorted(EVIDENCE_FOLDERS))
def test_evidence_is_saved_where_its_kind_lives_and_committed_alone(kind, project, monkeypatch):
    monkeypatch.setenv("OPSLEDGER_COMMITTER_NAME", "CI")
    monkeypatch.setenv("OPSLEDGER_COMMITTER_EMAIL", "ci@example.org")
    entry = record(kind=kind, change=None, runbook=None)
    saved = save_evidence(project, entry, started=STARTED, name="lab", message=f"{kind} lab")
    assert (
        saved.path
        == project.root / "records" / EVIDENCE_FOLDERS[kind] / "20261201T193005Z-lab.json"
    )
    shown = git(project.root, "show", "--name-only", "--format=%an <%ae>|%s", saved.commit)
    assert shown.stdout.split() == [
        "CI",
        "<ci@example.org>|" + f"{kind}",
        "lab",
        str(saved.path.relative_to(project.root)),
    ]
    assert git(project.root, "status", "--porcelain").stdout == ""
    kept = save_evidence(project, entry, started=STARTED, name="lab", message="x", commit=False)
    assert kept.commit == "" and kept.path.name == "20261201T193006Z-lab.json"  # the next second
    assert git(project.root, "status", "--porcelain").stdout.strip().startswith("??")


def test_only_records_knows_where_evidence_lives():
    """Every writer of inspection, drift, drill and alert records goes through save_evidence."""
    src = REPO_ROOT / "src" / "opsledger"
    naming = [
        str(path.relative_to(src))
        for path in src.rglob("*.py")
        if path.name != "records.py"
        and ('"records" /' in path.read_text() or "write_evidence(" in path.read_text())
    ]
    assert naming == []


def test_two_evidence_records_in_one_second_both_stay(tmp_path):
    """Two inspections (or two CI runners) in the same second: the second takes the next free
    second instead of failing with FileExistsError or overwriting the first."""
    import datetime as dt

    from opsledger.records import Record, write_evidence

    at = dt.datetime(2026, 11, 30, 19, 0, 50, tzinfo=dt.UTC)
    when = {"started_at": at.isoformat(), "finished_at": at.isoformat()}
    first = Record(kind="inspection", environment="lab", result="ok", **when)
    second = Record(kind="inspection", environment="lab", result="critical", **when)
    a = write_evidence(tmp_path, at, "probe-lab", first)
    b = write_evidence(tmp_path, at, "probe-lab", second)
    assert (a.name, b.name) == (
        "20261130T190050Z-probe-lab.json",
        "20261130T190051Z-probe-lab.json",
    )
    assert '"critical"' in b.read_text() and '"ok"' in a.read_text()


def test_committed_records_git_cannot_read_stop_the_command_not_vanish(project):
    """A run record whose object is gone (a damaged clone) made read_runs crash (IndexError) or,
    when cat-file failed, count no run at all: a change applied successfully became pending
    again and would have run twice."""
    from opsledger.errors import OpsledgerError

    path = write_record(run_record_path(project, "CHG-0001", STARTED), record())
    commit_paths(project.root, [path], "Run", name="CI", email="ci@example.org")
    assert [r.result for r in change_runs(project)] == ["success"]
    blob = git(project.root, "rev-parse", f"HEAD:{path.relative_to(project.root)}").stdout.strip()
    (project.root / ".git" / "objects" / blob[:2] / blob[2:]).unlink()
    with pytest.raises(OpsledgerError) as err:
        read_runs(project)
    assert err.value.exit_code == 2
    (problem,) = err.value.problems
    assert "cannot read the committed run records" in problem.message
    assert blob in problem.message and "git fsck" in problem.fix


def test_a_project_without_history_has_no_runs(tmp_path):
    root = tmp_path / "none"
    root.mkdir()
    assert read_runs(Project(root)).committed == []
    git(root, "init", "-q", "-b", "main")
    assert read_runs(Project(root)).committed == []  # a repository without commits
