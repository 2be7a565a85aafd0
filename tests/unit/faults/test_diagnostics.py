"""Diagnostics over SSH with Fabric against a real sshd: read-only commands from policy run on
the affected host, their output is attached to the incident — bounded, secrets scrubbed, host
and time stamped — and a command that writes is refused before any host is contacted."""

from __future__ import annotations

import datetime as dt
import json
import socket

import pytest
import yaml
from click.testing import CliRunner

from opsledger.cli import cli
from opsledger.faults.diagnostics import bounded, plan_commands, scrub
from opsledger.faults.incidents import open_incident
from opsledger.faults.policy import Diagnostic, load_fault_policy
from opsledger.faults.readonly import NotReadOnly
from opsledger.faults.store import load_incident

from .conftest import T0, authors, head, point_lab_at_sshd

pytestmark = pytest.mark.slow  # a real sshd and SSH sessions: seconds, not milliseconds

PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"  # pragma: allowlist secret
    "b3BlbnNzaC1rZXk\n"
    "-----END OPENSSH PRIVATE KEY-----"
)


def test_scrub_removes_the_secret_shapes_diagnostics_carry():
    text = (
        "conninfo postgresql://replicator:"  # a password in a connection string
        "s3cret@lab-db1:5432/postgres\n"
        "password=hunter2 api_key: abc123\n"
        f"{PEM}\n"
        "rolpassword SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2lnbg== md5" + "a" * 32 + "\n"
        "Authorization: Bearer eyJhbGciOi.payload.sig\n"
        'FATAL:  password authentication failed for user "app"\n'
    )
    clean, count = scrub(text)
    for secret in ("s3cret", "hunter2", "abc123", "b3BlbnNz", "c2lnbg", "a" * 32, "eyJhbG"):
        assert secret not in clean, secret
    assert count == 7
    # log lines that merely talk about passwords stay readable
    assert 'password authentication failed for user "app"' in clean
    assert scrub(clean)[1] == 0  # scrubbing is idempotent


def test_output_is_bounded_with_a_note():
    text, cut = bounded("x" * 5000, 1024)
    assert cut and text.startswith("x" * 1024) and "[... cut: 3976 more bytes]" in text
    assert bounded("short", 1024) == ("short", False)


def test_a_writing_command_is_refused_even_past_the_policy_check(fault_repo):
    policy = load_fault_policy(fault_repo)
    policy.diagnostics["software"].append(Diagnostic("sort -o /etc/passwd /tmp/x", ()))
    with pytest.raises(NotReadOnly):
        plan_commands(policy, "software", ("db",))


@pytest.fixture
def incident(fault_repo, sshd, tmp_path):
    """INC-0001 (software, P2) on lab-db1, which is this machine behind the test sshd, with a
    file of secrets and a big file there for policy commands to read."""
    project = fault_repo
    point_lab_at_sshd(project, sshd)
    host_files = tmp_path / "host"
    host_files.mkdir()
    (host_files / "app.conf").write_text(
        "db_url = postgresql://app:"  # secrets a config file on the host carries
        f"s3cret@lab-db1/app\npassword=hunter2\n{PEM}\n"
    )
    (host_files / "big.log").write_text("line of log\n" * 1000)
    path = project.root / "policies" / "incidents.yml"
    data = yaml.safe_load(path.read_text())
    data["diagnostics"]["max_bytes"] = 2048
    data["diagnostics"]["classes"]["software"] = [
        "free -m",
        f"cat {host_files / 'app.conf'}",
        f"cat {host_files / 'big.log'}",
        {"run": "cat /proc/loadavg", "groups": ["db"]},
        {"run": "cat /proc/uptime", "groups": ["app"]},  # not for a db host
    ]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    open_incident(
        project, title="PostgreSQL down on lab-db1", person="alice", klass="software",
        impact="high", urgency="medium", hosts=("lab-db1",),
    )  # fmt: skip
    return project, host_files


def test_collect_attaches_bounded_scrubbed_stamped_output(incident, clock):
    project, _ = incident
    clock.advance(minutes=5)
    result = CliRunner().invoke(cli, ["incident", "collect", "INC-0001", "--as", "bob"])
    assert result.exit_code == 0, result.output
    assert "lab-db1: 7 command(s)" in result.output  # 3 of `all` + 4 of software for db
    files = sorted((project.root / "incidents" / "INC-0001" / "diagnostics").glob("*.json"))
    assert len(files) == 1 and files[0].name.endswith("-lab-db1.json")
    found = json.loads(files[0].read_text())
    assert found["host"] == "lab-db1" and not found["error"]
    assert found["host_name"] == socket.gethostname()  # the host said who it is
    host_time = dt.datetime.fromisoformat(found["host_time"].replace("Z", "+00:00"))
    assert abs(host_time - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    by_command = {c["command"]: c for c in found["commands"]}
    assert "cat /proc/uptime" not in by_command  # that one is for app hosts
    assert "Mem:" in by_command["free -m"]["stdout"] and by_command["free -m"]["rc"] == 0
    conf = next(c for name, c in by_command.items() if name.endswith("app.conf"))
    assert "s3cret" not in conf["stdout"] and "hunter2" not in conf["stdout"]
    assert "PRIVATE KEY" not in conf["stdout"] and conf["scrubbed"] == 3
    big = next(c for name, c in by_command.items() if name.endswith("big.log"))
    assert big["truncated"] and len(big["stdout"].encode()) < 2200
    assert all(c["sent"].startswith("bash -o pipefail -c ") for c in found["commands"])
    # nothing of it is stored outside git: the file and the timeline step are one commit by bob
    incident_ = load_incident(project, "INC-0001")
    step = incident_.timeline[-1]
    assert step["action"] == "diagnostics" and step["by"] == "bob" and step["result"] == "collected"
    assert authors(project, files[0]) == ["bob@example.org"]
    assert step["files"] == [str(files[0].relative_to(project.root))]


def test_a_writing_command_in_policy_is_refused_and_nothing_runs(incident, tmp_path):
    project, host_files = incident
    marker = host_files / "written-by-diagnostics"
    path = project.root / "policies" / "incidents.yml"
    data = yaml.safe_load(path.read_text())
    data["diagnostics"]["classes"]["software"] = [
        "uptime",
        f"cat /etc/hostname > {marker}",
        f"sort -o {marker} /etc/hostname",
    ]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    before = head(project)
    result = CliRunner().invoke(cli, ["incident", "collect", "INC-0001", "--as", "bob"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all("diagnostics.classes.software" in line for line in lines)
    assert "'>'" in lines[0] and "sort -o" in lines[1]
    assert not marker.exists()  # the host was never contacted
    assert not (project.root / "incidents" / "INC-0001" / "diagnostics").exists()
    assert head(project) == before
    check = CliRunner().invoke(cli, ["policy", "check"])
    assert check.exit_code == 2 and "is refused" in check.stderr


def test_an_unknown_host_key_is_refused_not_trusted(incident, sshd):
    project, _ = incident
    sshd["known_hosts"].write_text(
        f"[127.0.0.1]:{sshd['port']} ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIOm5ENpjQzDx"  # a host key that is not the server's
        "Q2a5nD2GZ1O3fZ0dHjYl8uQ0fZ0dHjYl\n"
    )
    result = CliRunner().invoke(cli, ["incident", "collect", "INC-0001", "--as", "bob"])
    assert result.exit_code == 1, result.output
    assert "diagnostics failed" in result.output
    found = json.loads(
        next((project.root / "incidents" / "INC-0001" / "diagnostics").glob("*.json")).read_text()
    )
    assert found["error"] and not found["commands"]
    assert load_incident(project, "INC-0001").timeline[-1]["result"] == "failed"


def test_recovery_test_runs_verify_on_the_affected_hosts_and_records_a_failure(incident, clock):
    project, _ = incident
    clock.advance(minutes=30)
    # this machine is not a converged lab host: the monitoring suite fails, and says so
    result = CliRunner().invoke(
        cli, ["incident", "verify", "INC-0001", "--suite", "monitoring", "--as", "bob"]
    )
    assert result.exit_code == 1, result.output
    step = load_incident(project, "INC-0001").timeline[-1]
    assert step["action"] == "recovery_test" and step["result"] == "failed"
    assert step["failed"] >= 1 and step["suites"] == ["monitoring"]
    assert all(f.startswith("lab-db1: ") for f in step["failures"])
    denied = CliRunner().invoke(
        cli,
        ["incident", "resolve", "INC-0001", "--recovery-test", "--summary", "it is back now",
         "--as", "bob"],
    )  # fmt: skip
    assert denied.exit_code == 3 and "the last one failed" in denied.stderr
    assert T0  # the clock fixture set git time for every step above
