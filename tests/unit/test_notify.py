"""Notifications end to end, through Apprise to real receivers on 127.0.0.1: an HTTP server
(the generic webhook) and an SMTP sink (aiosmtpd). apply runs on this machine
(ansible_connection=local); a failing channel never fails the run and is recorded."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from opsledger.gitrepo import commit_paths
from opsledger.notify import load_notify_policy, notify_records
from opsledger.records import read_runs
from opsledger.signoff import approve_change

POLICY = """\
---
channels:
  hook: {kind: webhook, url_env: OPSLEDGER_NOTIFY_HOOK}
  broken: {kind: webhook, url_env: OPSLEDGER_NOTIFY_BROKEN}
  mail: {kind: email, url_env: OPSLEDGER_NOTIFY_MAIL}
  unset: {kind: slack, url_env: OPSLEDGER_NOTIFY_NOBODY}
routes:
  - events: [apply_succeeded, apply_failed, apply_denied, critical_finding]
    channels: [hook]
  - events: [apply_succeeded]
    environments: [lab]
    channels: [broken, unset]
  - events: [apply_failed, rollback]
    channels: [mail]
  - events: [apply_succeeded]
    environments: [production]
    channels: [mail]
"""


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
    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    yield port, messages
    controller.stop()


@pytest.fixture
def notified(local_repo, webhook, smtp_sink, monkeypatch):
    project, request = local_repo
    path = project.root / "policies" / "notifications.yml"
    path.write_text(POLICY)
    commit_paths(project.root, [path], "Notifications", name="Carol Chen",
                 email="carol@example.org")  # fmt: skip
    hook_port, _ = webhook
    mail_port, _ = smtp_sink
    monkeypatch.setenv("OPSLEDGER_NOTIFY_HOOK", f"json://127.0.0.1:{hook_port}/opsledger")
    monkeypatch.setenv("OPSLEDGER_NOTIFY_BROKEN", f"json://127.0.0.1:{hook_port}/broken")
    monkeypatch.setenv(
        "OPSLEDGER_NOTIFY_MAIL",
        f"mailto://127.0.0.1:{mail_port}?smtp=127.0.0.1&mode=insecure"
        "&from=ci@example.org&to=ops@example.org",
    )
    monkeypatch.delenv("OPSLEDGER_NOTIFY_NOBODY", raising=False)
    return project, request


def _cli(project, *args):
    return subprocess.run(
        [sys.executable, "-c", "from opsledger.cli import main; main()", *args],
        env={**os.environ, "OPSLEDGER_PROJECT": str(project.root), "OPSLEDGER_PERSON": "ci"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_an_apply_result_reaches_the_webhook_and_a_broken_channel_is_recorded(notified, webhook):
    project, request = notified
    _, received = webhook
    change_id = request(params={"steps": 1})
    approve_change(project, change_id, person="bob")
    done = _cli(project, "apply", change_id, "--skip-verify")
    assert done.returncode == 0, done.stdout + done.stderr  # the broken channel fails nothing
    (message,) = received
    assert message["path"] == "/opsledger" and message["type"] == "success"
    assert message["title"] == f"[lab] {change_id} success"
    assert "local-steps on lab:lab-db1" in message["message"]
    assert f"changes/{change_id}/runs/" in message["message"]
    (record,) = read_runs(project).committed
    by_channel = {n["channel"]: n for n in record.notifications}
    assert by_channel["hook"]["status"] == "sent"
    assert by_channel["broken"]["status"] == "failed" and by_channel["broken"]["error"]
    assert by_channel["unset"] == {
        "channel": "unset",
        "kind": "slack",
        "status": "skipped",
        "error": "$OPSLEDGER_NOTIFY_NOBODY is not set here",
    }
    assert "mail" not in by_channel  # success in the lab is not routed to e-mail
    assert "notification to broken (webhook) failed" in " ".join(done.stderr.split())


def test_a_failed_run_is_mailed_and_a_denial_in_the_window_is_told(notified, webhook, smtp_sink):
    project, request = notified
    _, received = webhook
    _, mails = smtp_sink
    failing = request(params={"steps": 1, "fail": True})
    approve_change(project, failing, person="bob")
    done = _cli(project, "apply", failing, "--skip-verify")
    assert done.returncode == 1, done.stdout + done.stderr
    (mail,) = mails
    assert f"Subject: [lab] {failing} failed" in mail and "To: ops@example.org" in mail
    assert "asked to fail" in mail
    assert received[-1]["type"] == "failure"

    unapproved = request(params={"steps": 1}, title="Nobody approved this")
    denied = _cli(project, "apply", unapproved, "--skip-verify")
    assert denied.returncode == 3, denied.stdout + denied.stderr
    assert received[-1]["title"] == f"[lab] {unapproved} denied in its window"
    assert "approvals" in received[-1]["message"]


def test_critical_findings_are_told_and_a_bad_policy_is_named(notified, webhook):
    project, _ = notified
    _, received = webhook
    record = project.root / "records" / "inspections" / "20261201T050000Z-daily-lab.json"
    record.parent.mkdir(parents=True)
    record.write_text(
        json.dumps(
            {
                "kind": "inspection",
                "environment": "lab",
                "result": "failed",
                "started_at": "2026-12-01T05:00:00+00:00",
                "finished_at": "2026-12-01T05:01:00+00:00",
                "findings": [
                    {
                        "host": "lab-db1",
                        "check": "disk",
                        "severity": "critical",
                        "message": "/var at 97%",
                    },
                    {"host": "lab-db2", "check": "load", "severity": "warning", "message": "x"},
                ],
            }
        )
    )
    (result,) = notify_records(project, [record])
    assert [d.status for d in result.deliveries] == ["sent"]
    assert received[-1]["title"] == "[lab] 1 critical inspection finding(s)"
    assert "lab-db1: disk — /var at 97%" in received[-1]["message"]

    (project.root / "policies" / "notifications.yml").write_text(
        POLICY.replace("channels: [hook]", "channels: [hook, pager]")
    )
    _, problems = load_notify_policy(project)
    assert [str(p).split(": ", 1)[1] for p in problems] == [
        "routes[0].channels: unknown channel 'pager' — use one of: broken, hook, mail, unset"
    ]
    check = _cli(project, "policy", "check")
    assert check.returncode == 2 and "unknown channel 'pager'" in check.stderr


def test_a_symlinked_notifications_policy_is_refused_not_followed(local_repo, tmp_path):
    """Read by the one loader of policy files: a symlink would send notifications wherever a
    file outside the repository says, which git never recorded or reviewed."""
    project, _ = local_repo
    elsewhere = tmp_path / "elsewhere.yml"
    elsewhere.write_text(POLICY)
    path = project.root / "policies" / "notifications.yml"
    path.unlink()
    path.symlink_to(elsewhere)
    policy, problems = load_notify_policy(project)
    assert policy.channels == {} and [p.message for p in problems] == ["is a symlink"]
    check = _cli(project, "policy", "check")
    assert check.returncode == 2 and "is a symlink" in check.stderr, check.stderr
