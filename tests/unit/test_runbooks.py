import shutil

import pytest
import yaml

from opsledger.errors import OpsledgerError
from opsledger.layout import change_folder
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
    shutil.copy(REPO_ROOT / "site.yml", root / "site.yml")  # converge imports it
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


# --- #19.4: serial and max_fail_percentage in runbook.yml are what the plays run with ------


def test_every_shipped_runbook_batches_as_its_metadata_says(repo_project):
    from opsledger.runbooks import CheckStatus, check_runbooks

    result = check_runbooks(repo_project)
    assert [str(p) for p in result.problems] == []
    assert result.status is CheckStatus.AGREES
    assert set(result.checked) >= SHIPPED | {"package-rollback", "pg-minor-upgrade"}


def _playbook(project, name):
    return project.root / "runbooks" / name / "playbook.yml"


def test_a_play_batching_otherwise_than_the_metadata_is_named(project):
    """service-restart promises one host at a time; a play that restarts all at once is
    caught, with the play and both ways to make them agree."""
    from opsledger.runbooks import CheckStatus, check_runbooks

    path = _playbook(project, "service-restart")
    path.write_text(path.read_text().replace("  serial: 1\n", ""))
    result = check_runbooks(project, ["service-restart"])
    assert result.status is CheckStatus.DISAGREES
    (problem,) = result.problems
    assert problem.field == "serial"
    assert problem.file.endswith("runbooks/service-restart/runbook.yml")
    assert "says 1 but playbook.yml plays[0] (Restart a service, one host at a time)" in (
        problem.message
    )
    assert "runs with '100%'" in problem.message and 'declare "100%" here' in problem.fix


def test_a_failure_limit_the_play_does_not_set_is_named(project):
    from opsledger.runbooks import check_runbooks

    edit(project, "pg-backup", max_fail_percentage=0)
    (problem,) = check_runbooks(project, ["pg-backup"]).problems
    assert problem.field == "max_fail_percentage"
    assert "says 0 but playbook.yml plays[0]" in problem.message
    assert "no limit (null)" in problem.message


def test_plays_that_only_sort_hosts_are_not_rollout_plays(project):
    """pg-dr-drill's first play groups hosts (it must see all of them at once); the metadata
    judges only the plays that can change a host — and those are followed into imports."""
    from opsledger.playbooks import plays_of

    plays = plays_of(_playbook(project, "pg-dr-drill"))
    assert [p.rollout for p in plays] == [False, True, True, True]
    (project.root / "site.yml").write_text(
        "---\n- name: Everything\n  hosts: all\n  serial: 2\n  roles: [os_baseline]\n"
    )
    from opsledger.runbooks import check_runbooks

    (problem,) = check_runbooks(project, ["converge"]).problems
    assert "site.yml plays[0] (Everything) runs with 2" in problem.message


def test_runbook_check_cli_exits_2_with_one_line_per_mismatch(project):
    from click.testing import CliRunner

    from opsledger.cli import cli

    env = {"OPSLEDGER_PROJECT": str(project.root)}
    ok = CliRunner().invoke(cli, ["runbook", "check"], env=env)
    assert ok.exit_code == 0, ok.output
    assert "metadata agrees with the plays" in ok.output
    edit(project, "os-patch", serial="50%")
    bad = CliRunner().invoke(cli, ["runbook", "check", "os-patch"], env=env)
    assert bad.exit_code == 2
    lines = [line for line in bad.output.splitlines() if line.startswith("error:")]
    assert lines and all("os-patch/runbook.yml: serial: runbook.yml says '50%'" in x for x in lines)
    assert "Traceback" not in bad.output


def test_apply_refuses_a_runbook_whose_plays_disagree_and_runs_nothing(local_repo):
    """runbook.yml promises one host at a time; the play runs all at once: exit 2, no record,
    no task run."""
    from opsledger.apply import apply_change
    from opsledger.gitrepo import commit_paths
    from opsledger.signoff import approve_change

    project, request = local_repo
    meta = project.root / "runbooks" / "local-steps" / "runbook.yml"
    meta.write_text(meta.read_text() + "serial: 1\n")
    commit_paths(project.root, [meta], "Promise one host at a time", name="A", email="a@x")
    change_id = request(params={"steps": 1})
    approve_change(project, change_id, person="bob")
    with pytest.raises(OpsledgerError) as err:
        apply_change(project, change_id, skip_verify=True)
    assert err.value.exit_code == 2
    assert "serial: runbook.yml says 1 but playbook.yml plays[0] (Local steps)" in str(err.value)
    assert not list((project.root / "steps").glob("lab-*"))
    assert not (change_folder(project.root, change_id) / "runs").exists()
