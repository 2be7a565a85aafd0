"""plan --detailed-exitcode, -v passed to Ansible, --no-color and uncut tables (issue 23).

The exit-code mapping is a pure function tested on every combination; the CLI wiring and the
verbosity run real ansible-playbook processes against this machine (local connection), no lab.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest

from opsledger.decide import Check, Decision
from opsledger.plan import EXIT_WOULD_CHANGE, HostPlan, Plan, exit_code
from opsledger.playbook_runs import ansible_verbosity, run_playbook
from opsledger.runbooks import load_runbook
from opsledger.signoff import approve_change


def _plan(*statuses, allowed=True):
    decision = Decision(
        "CHG-0001",
        allowed,
        [Check("approvals", allowed, "")],
        dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        "p" * 64,
        "c" * 64,
        "low",
        "P4",
    )
    hosts = [HostPlan(f"h{i}", s) for i, s in enumerate(statuses)]
    return Plan("CHG-0001", "t", "converge", "lab", "all", decision, hosts, True)


@pytest.mark.parametrize(
    ("statuses", "allowed", "plain", "detailed"),
    [
        (("unchanged", "unchanged"), True, 0, 0),
        ((), True, 0, 0),
        (("unchanged", "would change"), True, 0, EXIT_WOULD_CHANGE),
        (("cannot predict",), True, 0, EXIT_WOULD_CHANGE),  # nothing proves it won't change
        (("unreachable",), True, 0, 0),
        (("would change",), False, 3, 3),  # a denial outranks changes
        (("would change", "error"), True, 1, 1),  # an error outranks everything
        (("error",), False, 1, 1),
    ],
)
def test_exit_code_mapping(statuses, allowed, plain, detailed):
    p = _plan(*statuses, allowed=allowed)
    assert exit_code(p) == plain
    assert exit_code(p, detailed=True) == detailed


def test_the_changes_code_is_distinct_from_every_other_exit_code():
    assert EXIT_WOULD_CHANGE not in (0, 1, 2, 3, 4, 130)


@pytest.mark.parametrize(("level", "flag"), [(0, ""), (1, " -v"), (2, " -vv"), (9, " -vvvv")])
def test_ansible_verbosity_flag(level, flag):
    assert ansible_verbosity(level) == flag


def _cli(project, *args, env=None):
    return subprocess.run(
        [sys.executable, "-c", "from opsledger.cli import main; main()", *args],
        env={**os.environ, "OPSLEDGER_PROJECT": str(project.root), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_plan_detailed_exitcode_through_the_cli(local_repo):
    """local-steps is not predictable in check mode: every host may change."""
    project, request = local_repo
    change_id = request()
    denied = _cli(project, "plan", change_id, "--detailed-exitcode")
    assert denied.returncode == 3, denied.stdout + denied.stderr  # not approved yet
    approve_change(project, change_id, person="bob")
    plain = _cli(project, "plan", change_id)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    detailed = _cli(project, "plan", change_id, "--detailed-exitcode", "--format", "json")
    assert detailed.returncode == EXIT_WOULD_CHANGE, detailed.stdout + detailed.stderr
    assert '"status": "cannot predict"' in detailed.stdout


def test_verbosity_reaches_ansible_and_its_output_goes_to_stderr(local_repo, capfd):
    project, _ = local_repo
    runbook = load_runbook(project, "local-steps")
    inventory = project.inventory_file("lab")
    quiet = run_playbook(project, playbook=runbook.playbook, inventory=inventory,
                         limit="lab-db1", params={}, check=True)  # fmt: skip
    out, err = capfd.readouterr()
    assert quiet.hosts["lab-db1"].ok and "TASK [" not in err + out
    run_playbook(project, playbook=runbook.playbook, inventory=inventory,
                 limit="lab-db1", params={}, check=True, verbosity=2)  # fmt: skip
    out, err = capfd.readouterr()
    assert "TASK [Mark the start]" in err and "TASK [" not in out
    assert "config file = " in err  # printed only from -v on


def test_plan_and_apply_take_v_and_vv():
    for command in ("plan", "apply"):
        done = subprocess.run(
            [sys.executable, "-c", "from opsledger.cli import main; main()", command, "--help"],
            capture_output=True,
            text=True,
        )
        assert "-v, --verbose" in done.stdout


def test_tables_are_not_cut_off_a_terminal(tmp_path):
    """Piped (CI): runbook names and suites appear whole however narrow COLUMNS is."""
    from .conftest import copy_project

    project = copy_project(tmp_path / "p")
    done = _cli(project, "runbook", "list", env={"COLUMNS": "60"})
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    assert "pg-minor-upgrade" in done.stdout and "service-restart" in done.stdout
    # the title starts its line, not hundreds of columns in (centred over a 4000-column console)
    assert done.stdout.splitlines()[0].rstrip() == "runbooks"


def test_no_color_strips_colour_even_when_colour_is_forced(tmp_path):
    from .conftest import copy_project

    project = copy_project(tmp_path / "p")
    forced = _cli(project, "runbook", "list", env={"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1"})
    assert "\x1b[" in forced.stdout  # the check below means something
    plain = _cli(project, "--no-color", "runbook", "list", env={"FORCE_COLOR": "1"})
    assert plain.returncode == 0 and "\x1b[" not in plain.stdout
    assert "runbooks" in plain.stdout
