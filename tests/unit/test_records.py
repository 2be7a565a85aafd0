import datetime as dt

import pytest

from opsledger.project import Project
from opsledger.records import Record, change_runs, run_record_path, write_record

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


def test_records_round_trip_and_are_written_once(tmp_path):
    project = Project(tmp_path)
    path = run_record_path(project, "CHG-0001", STARTED)
    assert path.name == "20261201T193005Z.json"  # UTC, sortable
    write_record(path, record())
    assert change_runs(project) == [record()]
    with pytest.raises(FileExistsError):
        write_record(path, record(result="failed"))


def test_unknown_fields_from_newer_versions_are_ignored(tmp_path):
    data = {**record().__dict__, "something_new": 1}
    assert Record.from_dict(data) == record()


def test_runs_are_ordered_by_finish_time(tmp_path):
    project = Project(tmp_path)
    late = record(change="CHG-0002", finished_at="2026-12-02T00:00:00+00:00")
    write_record(run_record_path(project, "CHG-0002", STARTED), late)
    write_record(run_record_path(project, "CHG-0001", STARTED), record())
    assert [r.change for r in change_runs(project)] == ["CHG-0001", "CHG-0002"]
