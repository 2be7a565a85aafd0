import shutil

import pytest
import yaml

from opsledger.errors import OpsledgerError
from opsledger.project import Project
from opsledger.runbooks import list_runbooks, load_runbook

from ..conftest import REPO_ROOT

SHIPPED = {"converge", "service-restart", "os-patch", "pg-backup", "pg-reload-config"}


def test_shipped_runbooks_load_and_are_complete(repo_project):
    runbooks = {rb.name: rb for rb in list_runbooks(repo_project)}
    assert set(runbooks) >= SHIPPED
    assert runbooks["service-restart"].standard and runbooks["pg-backup"].standard
    assert not runbooks["converge"].standard and runbooks["converge"].check_mode
    assert runbooks["os-patch"].serial == 1
    assert runbooks["converge"].rollback == "converge"
    assert set(runbooks["converge"].roles) == {
        "os_baseline",
        "network",
        "postgresql",
        "hardware",
        "monitoring",
    }


def test_params_are_checked_against_the_runbook_schema(repo_project):
    converge = load_runbook(repo_project, "converge")
    assert converge.param_problems({"tags": ["postgresql"]}, "c.yml") == []
    (problem,) = converge.param_problems({"tags": ["nope"]}, "c.yml")
    assert problem.field == "params.tags[0]" and "use one of" in problem.fix
    (problem,) = converge.param_problems({"tag": ["x"]}, "c.yml")
    assert "unknown field(s) tag" in problem.message
    restart = load_runbook(repo_project, "service-restart")
    (problem,) = restart.param_problems({}, "c.yml")
    assert "'service' is a required property" in problem.message


@pytest.fixture
def project(tmp_path):
    """A copy of the repository's runbooks, roles and suites to break on purpose."""
    root = tmp_path / "p"
    for folder in ("runbooks", "roles", "tests/infra"):
        shutil.copytree(REPO_ROOT / folder, root / folder)
    (root / "ansible.cfg").write_text("[defaults]\n")
    (root / "inventories").mkdir()
    return Project(root)


def edit(project, name, **changes):
    path = project.root / "runbooks" / name / "runbook.yml"
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data))


def fields(project, name):
    with pytest.raises(OpsledgerError) as err:
        load_runbook(project, name)
    assert err.value.exit_code == 2
    return {p.field for p in err.value.problems}


def test_unknown_runbook_lists_the_known_ones(project):
    with pytest.raises(OpsledgerError, match="use one of: converge, os-patch"):
        load_runbook(project, "nope")


def test_metadata_errors_name_their_field(project):
    edit(project, "pg-backup", risk="extreme", colour="red")
    assert fields(project, "pg-backup") == {"risk", "top level"}


def test_references_are_checked(project):
    edit(
        project,
        "pg-backup",
        playbook="missing.yml",
        roles=["nope"],
        rollback="gone",
        verification={"suites": ["nosuch"]},
        parameters={"type": "bogus"},
    )
    assert fields(project, "pg-backup") == {
        "playbook",
        "roles",
        "rollback",
        "parameters",
        "verification.suites",
    }


def test_one_broken_runbook_fails_the_listing(project):
    edit(project, "os-patch", change_types=[])
    with pytest.raises(OpsledgerError) as err:
        list_runbooks(project)
    assert [p.field for p in err.value.problems] == ["change_types"]
