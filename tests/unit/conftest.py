"""Fixtures for unit tests that need a real git repository of the project."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from aiosmtpd.controller import Controller
from hypothesis import HealthCheck, settings

from opsledger import layout
from opsledger.gitrepo import commit_paths, git
from opsledger.project import Project
from opsledger.signoff import request_change

from ..conftest import REPO_ROOT

# Property-based tests: no deadline on a shared 2-core machine, no example database written
# into the checkout, and fixtures shared across examples (each test restores what it edits).
settings.register_profile(
    "opsledger",
    deadline=None,
    database=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# HYPOTHESIS_PROFILE=fuzz tries many more variants (minutes): for a bad-input campaign.
settings.register_profile("fuzz", parent=settings.get_profile("opsledger"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "opsledger"))

START = dt.datetime(2026, 12, 1, 20, 0, tzinfo=dt.UTC)  # a Tuesday
PROJECT_PARTS = (
    "runbooks",
    "roles",
    "tests/infra",
    "inventories",
    "policies",
    "vault-passwords",
    "ansible.cfg",
    "plugins",
    "site.yml",
    "README.md",
)


def copy_project(root):
    """The parts of this repository a change workflow reads, copied to root (no git)."""
    for part in PROJECT_PARTS:
        source = REPO_ROOT / part
        if source.is_dir():
            shutil.copytree(source, root / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            root.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / part)
    (root / "changes").mkdir(exist_ok=True)
    return Project(root)


def keypair(folder, name):
    key = folder / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
    )
    return key


KEY_NAMES = ("alice", "bob", "carol", "dave", "ci")


@pytest.fixture(scope="session")
def _repo_template(tmp_path_factory):
    """The `repo` fixture's tree, built once per session: ~170 tests use it, and building it
    (five key pairs, git init, a signed request) costs three times copying it."""
    base = tmp_path_factory.mktemp("repo-template")
    _, change_id, _ = build_repo(base)
    return base, change_id


@pytest.fixture
def repo(tmp_path, _repo_template):
    """A git repo of the project with signing keys for alice, bob, carol, dave and ci, and
    CHG-0001 (alice's converge of db in the lab, 2026-12-01 20:00-22:00 UTC) requested by
    alice: its change.yml and her request statement, committed by her.

    Each test gets its own copy (repository, keys); nothing in it names the template's path."""
    base, change_id = _repo_template
    shutil.copytree(base, tmp_path, symlinks=True, dirs_exist_ok=True)
    return Project(tmp_path / "p"), change_id, {name: tmp_path / name for name in KEY_NAMES}


def build_repo(tmp_path):
    """What the `repo` fixture returns, built under tmp_path (for wider-scoped fixtures)."""
    project = copy_project(tmp_path / "p")
    root = project.root
    keys = {name: keypair(tmp_path, name) for name in KEY_NAMES}
    people = root / "policies" / "people.yml"
    data = yaml.safe_load(people.read_text())
    for person in data["people"]:
        if person["id"] in keys:
            person["signing_key"] = keys[person["id"]].with_suffix(".pub").read_text().strip()
    people.write_text(yaml.safe_dump(data, sort_keys=False))
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    env = {
        "GIT_AUTHOR_NAME": "Alice Arnold",
        "GIT_AUTHOR_EMAIL": "alice@example.org",
        "GIT_COMMITTER_NAME": "Alice Arnold",
        "GIT_COMMITTER_EMAIL": "alice@example.org",
    }
    git(root, "commit", "-q", "-m", "Initial state", env=env)
    change, _ = request_change(
        project,
        title="Tune the database hosts",
        runbook="converge",
        requested_by="alice",
        reason="Sorts spill to disk nightly",
        targets="db",
        params={"tags": ["postgresql"]},
        window_start=START,
        window_end=START + dt.timedelta(hours=2),
        # Statements are ordered by the moment they name: the request must come before the
        # re-submissions and approvals tests make at START (not at the machine's clock, which
        # passed START on 2026-12-01 and made every later re-submission look older).
        now=START - dt.timedelta(hours=1),
    )
    commit_paths(
        root,
        [change.file.parent],
        f"Request {change.id}",
        name="Alice Arnold",
        email="alice@example.org",
    )
    return project, change.id, keys


@contextlib.contextmanager
def legacy_layout(monkeypatch):
    """New change folders flat (`changes/<ID>/`), as an opsledger before the block layout wrote
    them; a change already in its block stays there (both layouts side by side)."""
    original = layout.block_folder

    def folder(root, change_id):
        block = original(root, change_id)
        return block if os.path.lexists(block) else layout.flat_folder(root, change_id)

    with monkeypatch.context() as patch:
        patch.setattr(layout, "block_folder", folder)
        yield


def record_run(project, change_id, started, **fields):
    """Write a run record and commit it as CI would (only committed records count)."""
    from opsledger.records import Record, run_record_path, write_record

    data = dict(
        kind="run",
        change=change_id,
        environment="lab",
        runbook="converge",
        result="success",
        started_at=started.isoformat(),
        finished_at=(started + dt.timedelta(minutes=5)).isoformat(),
    )
    data.update(fields)
    path = write_record(run_record_path(project, change_id, started), Record(**data))
    commit_paths(project.root, [path], f"Run {change_id}", name="CI", email="ci@example.org")
    return path


# A runbook that acts on the controller itself (ansible_connection=local): real
# ansible-playbook processes to kill, interrupt and race, without the lab.
LOCAL_RUNBOOK = """\
---
description: Local steps on the controller (tests of apply on real processes).
playbook: playbook.yml
parameters:
  type: object
  additionalProperties: false
  properties:
    steps: {type: integer, minimum: 1}
    delay: {type: number, minimum: 0}
    lock_git: {type: boolean}
    fail: {type: boolean}
change_types: [standard, normal, emergency]
standard: true
risk: low
check_mode: false
roles: []
verification: {suites: [os_baseline]}
rollback: null
timeout: 600
"""
LOCAL_PLAYBOOK = """\
---
- name: Local steps
  hosts: all
  gather_facts: false
  vars:
    # steps/ is git-ignored, machine-local: the export a run starts from links it in from the
    # checkout (export.py), so the steps land in the checkout that ran them.
    steps_dir: "{{ playbook_dir }}/../../steps"
  tasks:
    - name: Make the steps folder
      ansible.builtin.file: {path: "{{ steps_dir }}", state: directory, mode: "0755"}
    - name: Mark the start
      ansible.builtin.file:
        path: "{{ steps_dir }}/{{ inventory_hostname }}-started"
        state: touch
        mode: "0644"
    - name: Take the steps
      ansible.builtin.shell: >-
        sleep {{ opsledger_params.delay | default(0) }};
        touch {{ steps_dir }}/{{ inventory_hostname }}-step-{{ item }}
      loop: "{{ range(1, (opsledger_params.steps | default(1)) + 1) | list }}"
      changed_when: true
    - name: Hold git's index lock, as a concurrent git would
      ansible.builtin.file:
        path: "{{ opsledger_test_root }}/.git/index.lock"
        state: touch
        mode: "0644"
      when: opsledger_params.lock_git | default(false)
      run_once: true
    - name: Fail when asked
      ansible.builtin.fail: {msg: asked to fail}
      when: opsledger_params.fail | default(false)
"""


def make_steps_folder(checkout: Path) -> None:
    """The machine's own steps/ folder (ignored by git), which a run's export links in."""
    (checkout / "steps").mkdir(exist_ok=True)
    (checkout / "steps" / ".machine").touch()


LOCAL_CONNECTION = """\
---
ansible_connection: local
ansible_become: false
ansible_python_interpreter: "{{ ansible_playbook_python }}"
"""


def open_window(now=None):
    """A change window around now that fits the lab's daily maintenance window (UTC days)."""
    now = now or dt.datetime.now(dt.UTC).replace(microsecond=0)
    day = dt.datetime.combine(now.date(), dt.time(0), dt.UTC)
    start = max(now - dt.timedelta(minutes=1), day)
    end = min(now + dt.timedelta(minutes=30), day + dt.timedelta(days=1))
    return start, end


@pytest.fixture
def local_repo(tmp_path):
    """A git repo of the project whose lab hosts are this machine (local connection), with the
    `local-steps` runbook; alice requests, bob approves. Returns (project, request)."""
    project = copy_project(tmp_path / "p")
    root = project.root
    folder = root / "runbooks" / "local-steps"
    folder.mkdir()
    (folder / "runbook.yml").write_text(LOCAL_RUNBOOK)
    (folder / "playbook.yml").write_text(LOCAL_PLAYBOOK)
    (root / "inventories/lab/group_vars/all/connection.yml").write_text(
        LOCAL_CONNECTION + f"opsledger_test_root: {json.dumps(str(root))}\n"
    )
    (root / ".gitignore").write_text(".opsledger/\nsteps/\n")
    make_steps_folder(root)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    env = {
        "GIT_AUTHOR_NAME": "Alice Arnold",
        "GIT_AUTHOR_EMAIL": "alice@example.org",
        "GIT_COMMITTER_NAME": "Alice Arnold",
        "GIT_COMMITTER_EMAIL": "alice@example.org",
    }
    git(root, "commit", "-q", "-m", "Initial state", env=env)
    git(root, "config", "user.name", "CI")
    git(root, "config", "user.email", "ci@example.org")

    def request(targets="lab-db1", params=None, change_type="normal", window=None, **kw):
        start, end = window or open_window()
        change, _ = request_change(
            project,
            title=kw.pop("title", "Local steps on the controller"),
            runbook=kw.pop("runbook", "local-steps"),
            requested_by="alice",
            reason="Exercise apply on real processes",
            change_type=change_type,
            targets=targets,
            params=params or {},
            window_start=start,
            window_end=end,
            **kw,
        )
        commit_paths(
            root,
            [change.file.parent],
            f"Request {change.id}",
            name="Alice Arnold",
            email="alice@example.org",
        )
        return change.id

    return project, request


NOTE_RUNBOOK = """\
---
description: Write a note on the host (a test runbook with a free-form text parameter).
playbook: playbook.yml
parameters:
  type: object
  additionalProperties: false
  required: [note]
  properties:
    note: {type: string, description: Any text at all.}
change_types: [normal, emergency]
risk: low
check_mode: true
roles: []
verification: {suites: []}
rollback: null
timeout: 300
"""

NOTE_PLAYBOOK = """\
---
- name: Write the note
  hosts: all
  gather_facts: false
  tasks:
    - name: Show the note
      ansible.builtin.debug:
        msg: "{{ opsledger_params.note }}"
    - name: Write the note
      ansible.builtin.copy:
        content: "{{ opsledger_params.note }}\\n"
        dest: "{{ note_file }}"
        mode: "0644"
"""


@pytest.fixture
def local_env_repo(tmp_path):
    """A git repo of the project with a `local` environment — one host, `here`, in group db,
    reached with ansible_connection=local (no lab) — and a runbook `note` whose `note` param
    is free text, written by the playbook to tmp_path/note.txt."""
    project = copy_project(tmp_path / "p")
    root = project.root
    inventory = root / "inventories" / "local"
    inventory.mkdir()
    (inventory / "hosts.yml").write_text(
        "---\nall:\n  children:\n    db:\n      hosts:\n        here:\n"
        "          ansible_connection: local\n"
        f"          ansible_python_interpreter: {sys.executable}\n"
        f"          note_file: {tmp_path / 'note.txt'}\n"
    )
    windows = root / "policies" / "windows.yml"
    data = yaml.safe_load(windows.read_text())
    data["environments"]["local"] = {
        "windows": [
            {
                "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                "start": "00:00",
                "end": "24:00",
                "timezone": "UTC",
            }
        ]
    }
    windows.write_text(yaml.safe_dump(data, sort_keys=False))
    (root / "runbooks" / "note").mkdir()
    (root / "runbooks" / "note" / "runbook.yml").write_text(NOTE_RUNBOOK)
    (root / "runbooks" / "note" / "playbook.yml").write_text(NOTE_PLAYBOOK)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "Initial state", env=ALICE_ENV)
    return project


ALICE_ENV = {
    "GIT_AUTHOR_NAME": "Alice Arnold",
    "GIT_AUTHOR_EMAIL": "alice@example.org",
    "GIT_COMMITTER_NAME": "Alice Arnold",
    "GIT_COMMITTER_EMAIL": "alice@example.org",
}


# --- real notification receivers on 127.0.0.1 (notify.py sends to them through Apprise) --------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def webhook():
    """An HTTP server on 127.0.0.1 keeping what is POSTed to it; /broken answers 500."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.startswith("/broken"):
                self.send_response(500)
                self.end_headers()
                return
            received.append({"path": self.path, **json.loads(body)})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], received
    server.shutdown()


@pytest.fixture
def smtp_sink():
    """A real SMTP server (aiosmtpd) on 127.0.0.1 keeping every message."""
    messages: list[str] = []

    class Sink:
        async def handle_DATA(self, server, session, envelope):
            messages.append(envelope.content.decode())
            return "250 OK"

    port = _free_port()
    # aiosmtpd gives its server 5 s to start and answer a first handshake, then raises: a
    # speed a loaded runner need not reach. A bound only: a server that never starts fails.
    controller = Controller(Sink(), hostname="127.0.0.1", port=port, ready_timeout=120)
    controller.start()
    yield port, messages
    controller.stop()


@pytest.fixture
def host_lock_refused(monkeypatch) -> threading.Event:
    """Set once this process is refused a host lock another holder has (the real lock code,
    watched): tests that let a holder go prove a wait by that order, never by a duration."""
    import opsledger.lock as lock_module

    refused = threading.Event()
    take_machine = lock_module._take_machine

    def watched(folder, holder):
        taken = take_machine(folder, holder)
        if taken[0] is None:
            refused.set()
        return taken

    monkeypatch.setattr(lock_module, "_take_machine", watched)
    return refused
