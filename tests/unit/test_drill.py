"""DR drills: the policy file, the RTO/RPO arithmetic on a timeline, the verdict, the guard rails.

The lab drill itself (a real restore) is tests/integration/test_workflow_drill.py; here the
timeline is what the runbook hands back, written out by hand.
"""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from opsledger.drill import drill, drill_record, judge, load_services, measure, seconds
from opsledger.errors import OpsledgerError
from opsledger.playbook_runs import HostRun, PlaybookRun
from opsledger.project import Project

from ..conftest import REPO_ROOT
from .conftest import copy_project

T0 = 1_790_000_000.0  # the primary's clock, epoch seconds


def _evidence(**over):
    acknowledged = [[str(i), str(T0 + i)] for i in range(1, 61)]  # 1 marker/s for 60 s
    acknowledged += [[str(100 + i), str(T0 + 90 + i)] for i in range(3)]  # after the restore
    evidence = {
        "declared_at": T0 + 60.5,
        "down_at": T0 + 60.6,
        "restored_at": T0 + 85,
        "writable_at": T0 + 90,
        "acknowledged": acknowledged,
        "restored": [[str(i), str(T0 + i)] for i in range(1, 41)],  # archived up to marker 40
    }
    return evidence | over


def test_durations():
    assert [seconds(t) for t in ("90s", "15m", "4h", "90d", "1.5m")] == [
        90,
        900,
        14400,
        7776000,
        90,
    ]
    assert seconds("15") is None and seconds("soon") is None and seconds(None) is None


def test_the_repository_policy_loads():
    service = load_services(Project(REPO_ROOT))["postgres"]
    assert (service.rto_s, service.rpo_s, service.runbook) == (900, 300, "pg-dr-drill")
    assert service.direct_environments == ("lab",)


def test_rto_and_rpo_come_from_the_markers():
    m = measure(_evidence())
    assert m.rto_s == pytest.approx(29.5)  # declared -> first acknowledged write after
    assert m.rpo_s == pytest.approx(20)  # last acknowledged (60) - newest restored (40)
    assert (m.acknowledged, m.restored, m.lost) == (60, 40, 20)
    events = [e["event"] for e in m.timeline]
    assert events[0] == "first marker acknowledged"
    assert events[-1] == "writable again (first marker acknowledged)"
    assert [e["at"] for e in m.timeline] == sorted(e["at"] for e in m.timeline)


def test_nothing_restored_loses_the_whole_marker_period():
    m = measure(_evidence(restored=[]))
    assert m.rpo_s == pytest.approx(59) and m.lost == 60


def test_never_writable_again_has_no_rto():
    m = measure(_evidence(writable_at=None))
    assert m.rto_s is None


def _run(status="successful"):
    host = HostRun("lab-db1")
    if status != "successful":
        host.failures.append("Check the repository holds a backup to restore: no backup")
    return PlaybookRun(status, 0 if status == "successful" else 2, {"lab-db1": host})


def test_judge_passes_within_objectives_and_names_each_missed_one():
    service = load_services(Project(REPO_ROOT))["postgres"]
    assert judge(service, measure(_evidence()), _run(), None) == []
    late = measure(_evidence(writable_at=T0 + 2000))
    lossy = measure(_evidence(restored=[["1", str(T0 + 1)]]))
    assert judge(service, late, _run(), None) == ["RTO 1940s missed the objective 900s"]
    assert judge(service, measure(_evidence()), _run(), None) == []
    assert lossy.rpo_s == pytest.approx(59)
    tight = service.__class__(**{**service.__dict__, "rpo_s": 30.0})
    assert judge(tight, lossy, _run(), None) == ["RPO 59s missed the objective 30s"]


def test_a_failed_run_says_why_and_measures_nothing():
    service = load_services(Project(REPO_ROOT))["postgres"]
    reasons = judge(service, None, _run("failed"), None)
    assert reasons == [
        "drill run failed: lab-db1: Check the repository holds a backup to restore: no backup"
    ]


def _policy(project, **service):
    path = project.root / "policies" / "dr.yml"
    data = yaml.safe_load(path.read_text())
    data["services"]["postgres"].update(service)
    path.write_text(yaml.safe_dump(data))


def test_bad_policy_names_each_field_and_fix(tmp_path):
    project = copy_project(tmp_path / "p")
    _policy(project, runbook="converge", direct_environments=["moon"])
    with pytest.raises(OpsledgerError) as err:
        load_services(project)
    text = str(err.value)
    assert err.value.exit_code == 2
    for expected in (
        "services.postgres.runbook: runbook 'converge' does not drill 'postgres'",
        "services.postgres.direct_environments",
    ):
        assert expected in text
    # The file's JSON Schema is checked first (opsledger policy schema dr).
    _policy(project, rto="soon", color="red")
    with pytest.raises(OpsledgerError) as err:
        load_services(project)
    text = str(err.value)
    for expected in (
        "services.postgres.rto: 'soon' does not match",
        "services.postgres: unknown field(s) color",
    ):
        assert expected in text


def test_drills_elsewhere_than_direct_environments_need_a_change(tmp_path):
    project = copy_project(tmp_path / "p")
    with pytest.raises(OpsledgerError) as err:
        drill(project, "postgres", environment="production")
    assert err.value.exit_code == 3
    assert "opsledger change new --runbook pg-dr-drill --env production" in str(err.value)
    assert not (project.root / "records").exists()


def test_unknown_service_and_bad_params_are_invalid_input(tmp_path):
    project = copy_project(tmp_path / "p")
    with pytest.raises(OpsledgerError, match="no DR service named 'mysql'") as err:
        drill(project, "mysql")
    assert err.value.exit_code == 2
    with pytest.raises(OpsledgerError, match="marker_seconds") as err:
        drill(project, "postgres", params={"marker_seconds": 1})
    assert err.value.exit_code == 2


def test_drill_record_keeps_the_measurements_and_host_counts(tmp_path):
    project = copy_project(tmp_path / "p")  # no git: measured and judged, not written
    service = load_services(project)["postgres"]
    run = _run()
    run.hosts["lab-db1"].ok = 40
    run.data = {"opsledger_drill": _evidence(backup="20261121-120000F", timeline=2)}
    result = drill_record(
        project,
        service,
        environment="lab",
        started=dt.datetime.now(dt.UTC),
        run=run,
        checked=None,
        hosts=["lab-db1"],
        params={},
    )
    assert result.passed and result.record_path is None
    assert result.record.stats["lab-db1"]["ok"] == 40
    assert result.record.measurements["rpo_s"] == pytest.approx(20)
    assert result.record.measurements["backup"] == "20261121-120000F"
