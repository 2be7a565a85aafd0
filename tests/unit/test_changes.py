"""Change requests: creation with the next free id, and every kind of bad input refused
with one problem per line (file, field, fix), exit 2, nothing written or run."""

from __future__ import annotations

import datetime as dt
import textwrap

import pytest
import yaml
from click.testing import CliRunner

from opsledger.changes import load_change, new_change, next_change_id, validate_change
from opsledger.cli import cli
from opsledger.errors import OpsledgerError
from opsledger.gitrepo import commit_paths, git
from opsledger.layout import change_folder, stored_file

from .conftest import copy_project, record_run

ALICE = {
    "GIT_AUTHOR_NAME": "Alice Arnold",
    "GIT_AUTHOR_EMAIL": "alice@example.org",
    "GIT_COMMITTER_NAME": "Alice Arnold",
    "GIT_COMMITTER_EMAIL": "alice@example.org",
}

START = dt.datetime(2026, 12, 1, 20, 0, tzinfo=dt.UTC)


@pytest.fixture
def project(tmp_path):
    return copy_project(tmp_path / "p")


def make(project, **overrides):
    args = dict(
        title="Raise work_mem on db",
        runbook="converge",
        requested_by="alice",
        reason="Sorts spill to disk during the nightly report",
        targets="db",
        params={"tags": ["postgresql"]},
        window_start=START,
        window_end=START + dt.timedelta(hours=2),
    )
    return new_change(project, **{**args, **overrides})


def write(project, change_id, text):
    folder = project.root / "changes" / change_id  # by hand: the legacy flat layout, still read
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "change.yml").write_text(textwrap.dedent(text))


VALID = """\
    id: CHG-0007
    title: Restart chrony on the app hosts
    type: standard
    runbook: service-restart
    environment: lab
    targets: app
    params: {service: chrony}
    impact: low
    urgency: low
    window: {start: 2026-12-01T20:00:00+01:00, end: 2026-12-01T21:00:00+01:00}
    requested_by: alice
    reason: chrony lost its sources after the network change
"""


def problems(project, change_id):
    result = validate_change(project, change_id)
    assert result.change is None
    return {(p.field, p.message) for p in result.problems}


def test_new_changes_get_the_next_free_id(project):
    first, second = make(project), make(project, title="Second change here")
    assert (first.id, second.id) == ("CHG-0001", "CHG-0002")
    change = load_change(project, "CHG-0002")
    assert change.window_start == START and change.rollback == "converge"
    assert next_change_id(project) == "CHG-0003"


def test_an_invalid_new_change_writes_nothing(project):
    with pytest.raises(OpsledgerError) as err:
        make(project, runbook="no-such-runbook")
    assert err.value.exit_code == 2
    assert not list((project.root / "changes").iterdir())


def test_a_valid_hand_written_change(project):
    write(project, "CHG-0007", VALID)
    result = validate_change(project, "CHG-0007")
    assert result.ok, result.problems
    assert result.hosts == ["lab-app1", "lab-app2"]
    assert result.change.window_start.utcoffset() == dt.timedelta(hours=1)


def test_bad_yaml_names_the_line(project):
    write(project, "CHG-0008", "id: CHG-0008\ntitle: [unclosed\n")
    with pytest.raises(OpsledgerError) as err:
        validate_change(project, "CHG-0008")
    assert err.value.problems[0].field == "line 3"


def test_unknown_fields_and_wrong_types(project):
    write(project, "CHG-0007", VALID.replace("impact: low", "impact: 3\n    colour: red"))
    found = problems(project, "CHG-0007")
    assert ("top level", "unknown field(s) colour") in found
    assert any(f == "impact" for f, _ in found)


def test_unknown_runbook(project):
    write(project, "CHG-0007", VALID.replace("runbook: service-restart", "runbook: reboot-all"))
    assert any(
        f == "runbook" and "no runbook named 'reboot-all'" in m
        for f, m in problems(project, "CHG-0007")
    )


def test_empty_and_unmatched_targets(project):
    write(project, "CHG-0007", VALID.replace("targets: app", "targets: ''"))
    assert any(f == "targets" for f, _ in problems(project, "CHG-0007"))
    write(project, "CHG-0007", VALID.replace("targets: app", "targets: web"))
    assert ("targets", "unknown host or group 'web'") in problems(project, "CHG-0007")
    write(project, "CHG-0007", VALID.replace("targets: app", "targets: 'app,&db'"))
    assert ("targets", "targets 'app,&db' match no host of lab") in problems(project, "CHG-0007")


def test_params_type_and_window_are_checked(project):
    text = (
        VALID.replace("params: {service: chrony}", "params: {service: chrony, now: true}")
        .replace("start: 2026-12-01T20:00:00+01:00", "start: 2026-12-01T22:00:00+01:00")
        .replace("runbook: service-restart", "runbook: converge")
    )
    write(project, "CHG-0007", text)
    fields = {f for f, _ in problems(project, "CHG-0007")}
    assert {"params", "type", "window.end"} <= fields


def test_naive_times_need_a_timezone(project):
    write(project, "CHG-0007", VALID.replace("+01:00", ""))
    assert ("window.start", "no timezone") in problems(project, "CHG-0007")
    write(
        project,
        "CHG-0007",
        VALID.replace("+01:00", "").replace("window: {", "window: {timezone: Europe/Berlin, "),
    )
    assert validate_change(project, "CHG-0007").ok
    write(
        project,
        "CHG-0007",
        VALID.replace("+01:00", "").replace("window: {", "window: {timezone: Mars/Olympus, "),
    )
    assert any(f == "window.timezone" for f, _ in problems(project, "CHG-0007"))


def test_id_must_match_its_folder_and_environment_must_exist(project):
    write(project, "CHG-0009", VALID.replace("environment: lab", "environment: moon"))
    fields = {f for f, _ in problems(project, "CHG-0009")}
    assert {"id", "environment"} <= fields


def test_cli_validate_prints_one_line_per_problem_and_exits_2(project, monkeypatch):
    write(
        project,
        "CHG-0007",
        VALID.replace("targets: app", "targets: web").replace("impact: low", "impact: huge"),
    )
    monkeypatch.setenv("OPSLEDGER_PROJECT", str(project.root))
    result = CliRunner().invoke(cli, ["change", "validate", "CHG-0007"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all("changes/CHG-0007/change.yml: " in line for line in lines)
    assert CliRunner().invoke(cli, ["change", "validate", "--all"]).exit_code == 2


def test_ids_are_never_reused_even_after_a_deletion(repo):
    """Deleting a folder handed its id to the next change: approvals voided, rollback base and
    audit findings pointing at the wrong change."""
    project, change_id, _ = repo
    root = project.root
    git(root, "rm", "-q", "-r", stored_file(root, change_id))
    git(root, "commit", "-q", "-m", f"Drop {change_id}", env=ALICE)
    git(root, "checkout", "-q", "-b", "elsewhere")
    other = make(project, title="Requested on another branch")
    commit_paths(root, [other.file], "Request", name="Alice Arnold", email="alice@example.org")
    git(root, "checkout", "-q", "main")
    assert (change_id, other.id) == ("CHG-0001", "CHG-0002")
    assert make(project, title="The next one").id == "CHG-0003"


def test_a_history_git_cannot_read_hands_out_no_id(repo):
    """A failing `git log` read as "no id used yet": on a damaged repository the next change
    could take an id its history already gave out."""
    project, change_id, _ = repo
    root = project.root
    git(root, "rm", "-q", "-r", stored_file(root, change_id))
    git(root, "commit", "-q", "-m", f"Drop {change_id}", env=ALICE)
    tree = git(root, "rev-parse", "HEAD~1^{tree}").stdout.strip()  # the tree holding CHG-0001
    (root / ".git" / "objects" / tree[:2] / tree[2:]).unlink()
    with pytest.raises(OpsledgerError, match="cannot read which ids the history used"):
        make(project, title="Would have been CHG-0001 again")


def test_withdraw_is_recorded_keeps_the_folder_and_nothing_runs_it(repo, monkeypatch):
    project, change_id, _ = repo
    monkeypatch.setenv("OPSLEDGER_PROJECT", str(project.root))
    run = CliRunner().invoke
    done = run(cli, ["change", "withdraw", change_id, "--as", "alice", "--reason", "Superseded"])
    assert done.exit_code == 0, done.output
    assert f"{change_id}: withdrawn by alice at " in done.output
    withdrawn = change_folder(project.root, change_id, "withdrawn.yml")
    data = yaml.safe_load(withdrawn.read_text())
    assert (data["withdrawn_by"], data["reason"]) == ("alice", "Superseded")
    author = git(project.root, "log", "-1", "--format=%ae %s", "--", str(withdrawn)).stdout
    assert author.strip() == f"alice@example.org Withdraw {change_id}: Superseded"
    assert change_folder(project.root, change_id, "change.yml").exists()
    approve = run(cli, ["approve", change_id, "--as", "bob"])
    assert approve.exit_code == 0
    applied = run(cli, ["apply", change_id, "--at", "2026-12-01T20:30:00+00:00"])
    assert applied.exit_code == 3 and "denied by rule withdrawn" in applied.stderr
    again = run(cli, ["change", "cancel", change_id, "--as", "bob", "--reason", "Twice"])
    assert again.exit_code == 2 and "already withdrawn by alice" in again.stderr
    shown = run(cli, ["change", "show", change_id])
    assert "withdrawn by alice at" in shown.output
    assert next_change_id(project) == "CHG-0002"


def test_a_change_that_ran_cannot_be_withdrawn(repo, monkeypatch):
    project, change_id, _ = repo
    record_run(project, change_id, START)
    monkeypatch.setenv("OPSLEDGER_PROJECT", str(project.root))
    result = CliRunner().invoke(
        cli, ["change", "withdraw", change_id, "--as", "alice", "--reason", "Oops"]
    )
    assert result.exit_code == 2
    assert "a change that ran cannot be withdrawn" in result.stderr
    assert "Traceback" not in result.output
    stranger = CliRunner().invoke(
        cli, ["change", "withdraw", change_id, "--as", "mallory", "--reason", "Oops"]
    )
    assert stranger.exit_code == 2 and "'mallory' is not in people.yml" in stranger.stderr
