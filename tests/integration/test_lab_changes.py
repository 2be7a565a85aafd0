"""`lab up` converges to inventory changes; conflicts fail early. Uses a throwaway project whose
containers, ports and network differ from the repository's lab, so both can run at once."""

from __future__ import annotations

import socket

import pytest

from opsledger.errors import OpsledgerError
from opsledger.lab.service import lab_down, lab_status, lab_up

from ..conftest import CONNECTION_VARS
from .helpers import podman_json

pytestmark = pytest.mark.lab

VARS = CONNECTION_VARS + "lab_container_prefix: opsledger-t-\nlab_network: opsledger-test\n"
TWO = "all:\n  hosts:\n    t1: {ansible_port: 2291}\n    t2: {ansible_port: 2292}\n"


@pytest.fixture
def tproject(lab, make_project):  # `lab` first: the base image is built once per session
    project = make_project(TWO, group_vars=VARS)
    yield project
    lab_down(project)


def actions(result):
    return {h.name: h.action for h in result.hosts}


def test_inventory_changes_replace_or_remove_only_what_changed(tproject):
    assert actions(lab_up(tproject)) == {"t1": "created", "t2": "created"}

    hosts = tproject.inventory_file()
    hosts.write_text(TWO.replace("2292", "2293"))
    assert actions(lab_up(tproject)) == {"t1": "unchanged", "t2": "replaced"}
    assert {h.name: h.port for h in lab_status(tproject).hosts if h.ssh} == {"t1": 2291, "t2": 2293}

    hosts.write_text("all:\n  hosts:\n    t1: {ansible_port: 2291}\n")
    result = lab_up(tproject)
    assert result.removed == ["opsledger-t-t2"]
    assert actions(result) == {"t1": "unchanged"}


def test_stopped_host_is_started_and_broken_login_repaired(tproject):
    lab_up(tproject)
    import subprocess

    subprocess.run(["podman", "stop", "-t", "2", "opsledger-t-t1"], check=True, capture_output=True)
    subprocess.run(
        ["podman", "exec", "opsledger-t-t2", "rm", "/home/opsadmin/.ssh/authorized_keys"],
        check=True,
    )
    assert actions(lab_up(tproject)) == {"t1": "started", "t2": "repaired"}
    assert lab_status(tproject).healthy


def test_port_taken_by_another_program_fails_before_creating_anything(tproject):
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 2292))
        sock.listen()
        with pytest.raises(OpsledgerError) as err:
            lab_up(tproject)
    assert err.value.exit_code == 2
    (problem,) = err.value.problems
    assert problem.field == "t2.ansible_port" and "already in use" in problem.message
    assert (
        podman_json("ps", "--all", "--filter", f"label=io.opsledger.project={tproject.root}") == []
    )
