"""Fixtures for fault-handling tests: a real git repository of the project whose commit times
the test sets (SLA clocks run on git time), records committed like evidence, and a real sshd
on a loopback port for diagnostics over SSH."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from opsledger.gitrepo import git
from opsledger.identity import commit_evidence
from opsledger.layout import change_folder
from opsledger.records import Record, stamp, write_record

from ..conftest import copy_project

T0 = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)  # Monday, 09:00 in Berlin
ALICE = {"GIT_AUTHOR_NAME": "Alice Arnold", "GIT_AUTHOR_EMAIL": "alice@example.org"}


class GitClock:
    """Sets the time the next commits get (author and committer date)."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.now = T0

    def set(self, moment: dt.datetime) -> dt.datetime:
        self.now = moment
        for name in ("GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE"):
            self.monkeypatch.setenv(name, moment.isoformat())
        return moment

    def advance(self, **delta) -> dt.datetime:
        return self.set(self.now + dt.timedelta(**delta))


@pytest.fixture
def clock(monkeypatch):
    found = GitClock(monkeypatch)
    found.set(T0 - dt.timedelta(days=1))
    return found


@pytest.fixture
def fault_repo(tmp_path, clock, monkeypatch):
    """The project in a git repo (committed by alice a day before T0); detections commit as CI."""
    project = copy_project(tmp_path / "p")
    git(project.root, "init", "-q", "-b", "main")
    git(project.root, "add", "-A")
    git(
        project.root,
        "commit",
        "-qm",
        "Initial",
        env={
            **ALICE,
            "GIT_COMMITTER_NAME": "Alice Arnold",
            "GIT_COMMITTER_EMAIL": ALICE["GIT_AUTHOR_EMAIL"],
        },
    )
    monkeypatch.setenv("OPSLEDGER_COMMITTER_NAME", "opsledger CI")
    monkeypatch.setenv("OPSLEDGER_COMMITTER_EMAIL", "ci@example.org")
    monkeypatch.delenv("OPSLEDGER_NO_INCIDENTS", raising=False)
    monkeypatch.delenv("OPSLEDGER_SIGNING_KEY", raising=False)
    monkeypatch.setenv("OPSLEDGER_PROJECT", str(project.root))
    clock.set(T0)
    return project


def commit_record(project, record: Record, name: str | None = None) -> Path:
    """Write a record where opsledger writes it and commit it as evidence; returns its path."""
    started = dt.datetime.fromisoformat(record.started_at)
    if record.kind == "run":
        path = change_folder(project.root, record.change) / "runs" / f"{stamp(started)}.json"
    else:
        folder = {"inspection": "inspections", "drift": "drift", "drill": "drills"}[record.kind]
        path = project.root / "records" / folder / (name or f"{stamp(started)}-{record.kind}.json")
    write_record(path, record)
    commit_evidence(project, [path], f"{record.kind} record")
    return path


def inspection(moment, findings, *, schedule="daily", hosts=("lab-db1", "lab-db2", "lab-app1")):
    return Record(
        kind="inspection",
        environment="lab",
        result="failed" if findings else "success",
        started_at=moment.isoformat(),
        finished_at=moment.isoformat(),
        hosts=list(hosts),
        findings=[
            {"host": h, "check": c, "severity": s, "message": m, "priority": ""}
            for h, c, s, m in findings
        ],
        measurements={"schedule": schedule},
    )


def head(project) -> str:
    return git(project.root, "rev-parse", "HEAD").stdout.strip()


def authors(project, path) -> list[str]:
    rel = str(Path(path).relative_to(project.root))
    return git(project.root, "log", "--reverse", "--format=%ae", "--", rel).stdout.split()


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


# --- a real sshd on 127.0.0.1 ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sshd(tmp_path_factory):
    """A real OpenSSH server on a free loopback port, root login by key only, its host key in a
    known_hosts file: what a managed host looks like to Fabric. scripts/test installs the
    openssh-server package when the binary is missing."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.access(binary, os.X_OK):
        pytest.fail("sshd is needed (apt-get install openssh-server); scripts/test installs it")
    if os.geteuid() != 0:
        pytest.fail("the sshd fixture runs as root (it logs in as root with a test key)")
    folder = tmp_path_factory.mktemp("sshd")
    port = _free_port()
    host_key = folder / "host_ed25519"
    client_key = folder / "id_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = folder / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {folder}/sshd.pid\n"
        f"AuthorizedKeysFile {authorized}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "Subsystem sftp internal-sftp\nLogLevel ERROR\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    # A bound, not a measure (a loaded runner may take long to start it); a server that never
    # listens fails here rather than as a refused connection in the test that needed it.
    deadline = time.monotonic() + 120
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None:
            pytest.fail(f"sshd did not start: {proc.stderr.read().decode()[-500:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("sshd did not listen within 120 s")
        time.sleep(0.1)
    known = folder / "known_hosts"
    public = host_key.with_suffix(".pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{port} {public[0]} {public[1]}\n")
    yield {"port": port, "key": client_key, "known_hosts": known, "folder": folder}
    proc.terminate()
    proc.wait(timeout=10)


def point_lab_at_sshd(project, sshd, hosts=("lab-db1",)) -> None:
    """Make these lab hosts of the project reach the test sshd (this machine) as root."""
    for host in hosts:
        (project.root / "inventories" / "lab" / "host_vars").mkdir(exist_ok=True)
        path = project.root / "inventories" / "lab" / "host_vars" / f"{host}.yml"
        existing = path.read_text() if path.exists() else "---\n"
        path.write_text(
            existing.rstrip("\n")
            + f"\nansible_host: 127.0.0.1\nansible_port: {sshd['port']}\nansible_user: root\n"
            f"ansible_ssh_private_key_file: {sshd['key']}\n"
            f"ansible_ssh_common_args: -o UserKnownHostsFile={sshd['known_hosts']} "
            "-o StrictHostKeyChecking=yes\nansible_become: false\n"
        )
