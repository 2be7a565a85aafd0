"""Notifications end to end, through Apprise to real receivers on 127.0.0.1: an HTTP server
(the generic webhook) and an SMTP sink (aiosmtpd). apply runs on this machine
(ansible_connection=local); a failing channel never fails the run and is recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from opsledger.gitrepo import commit_paths
from opsledger.layout import stored_file
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
    assert stored_file(project.root, change_id, "runs") + "/" in message["message"]
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


def _critical_record(path, text=None):
    """An inspection record with one critical finding on lab-db1 (text: written as given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        text
        or json.dumps(
            {
                "kind": "inspection",
                "environment": "lab",
                "result": "failed",
                "started_at": "2026-12-01T05:00:00+00:00",
                "finished_at": "2026-12-01T05:01:00+00:00",
                "findings": [
                    {"host": "lab-db1", "check": "disk", "severity": "critical", "message": "97%"}
                ],
            }
        )
    )
    return path


def test_a_record_that_does_not_read_as_evidence_is_not_told_and_says_why(
    notified, webhook, tmp_path
):
    """Records go through the project's one JSON loader: a duplicate key (which json.loads
    would settle silently, last one wins), a symlink to a file git never recorded, or a file
    past the size bound tells nobody anything; each says file, field and fix, one line."""
    project, _ = notified
    _, received = webhook
    folder = project.root / "records" / "inspections"
    good = _critical_record(folder / "20261201T050000Z-daily-lab.json")
    twice = good.read_text().replace('"result": "failed"', '"result": "success", "result": "x"')
    duplicate = _critical_record(folder / "20261201T060000Z-daily-lab.json", twice)
    linked = folder / "20261201T070000Z-daily-lab.json"
    linked.symlink_to(_critical_record(tmp_path / "elsewhere.json"))
    huge = _critical_record(folder / "20261201T080000Z-daily-lab.json", " " * (1024 * 1024 + 1))
    results = notify_records(project, [duplicate, linked, huge])
    assert received == [] and [r.deliveries for r in results] == [[], [], []]
    lines = [line for r in results for line in r.lines()]
    rel = "records/inspections/20261201T0"
    assert len(lines) == 3 and all(line.count("\n") == 0 for line in lines)
    assert f"{rel}60000Z-daily-lab.json" in lines[0] and "duplicate key 'result'" in lines[0]
    assert lines[1].endswith(
        f"{rel}70000Z-daily-lab.json: path: is a symlink — replace the symlink by the real "
        "file: git must record what is approved and run"
    )
    assert "larger than" in lines[2] and "size" in lines[2]
    journal = (project.state_dir / "notifications.jsonl").read_text().splitlines()
    assert [json.loads(e)["subject"] for e in journal][-3:] == [
        f"{rel}60000Z-daily-lab.json",
        f"{rel}70000Z-daily-lab.json",
        f"{rel}80000Z-daily-lab.json",
    ]
    (told,) = notify_records(project, [good])  # the same finding, read as evidence, is told
    assert [d.status for d in told.deliveries] == ["sent"] and len(received) == 1


# -- rollbacks and drills, told from the real flow ----------------------------------------------

TOLD_POLICY = """\
---
channels:
  hook: {kind: webhook, url_env: OPSLEDGER_NOTIFY_HOOK}
  mail: {kind: email, url_env: OPSLEDGER_NOTIFY_MAIL}
routes:
  - events: [rollback, drill_failed]
    channels: [hook, mail]
"""
# local-checked marks each host as started; its verification wants a mark the run never
# leaves (so it always fails), and its rollback local-undo removes the start mark, proven by
# its own suite — or fails when the change asks it to (break_rollback).
CHECKED_RUNBOOK = """\
---
description: Mark the hosts as started; verified by a mark it never leaves (rollback tests).
playbook: playbook.yml
parameters:
  type: object
  additionalProperties: false
  properties:
    break_rollback: {type: boolean}
change_types: [normal]
risk: low
check_mode: false
roles: []
verification: {suites: [marked]}
rollback: local-undo
timeout: 600
"""
CHECKED_PLAYBOOK = """\
---
- name: Mark the hosts as started
  hosts: all
  gather_facts: false
  tasks:
    - name: Mark the start
      ansible.builtin.file: {path: "MARKS/{{ inventory_hostname }}-started", state: touch,
                             mode: "0644"}
"""
UNDO_RUNBOOK = """\
---
description: Remove the start marks of local-checked (its rollback).
playbook: playbook.yml
parameters: {type: object}
change_types: [normal]
risk: low
check_mode: false
roles: []
verification: {suites: [undone]}
rollback: null
timeout: 600
"""
UNDO_PLAYBOOK = """\
---
- name: Remove the start marks
  hosts: all
  gather_facts: false
  tasks:
    - name: Remove the start mark
      ansible.builtin.file: {path: "MARKS/{{ inventory_hostname }}-started", state: absent}
    - name: Fail when the change asks the rollback to
      ansible.builtin.fail: {msg: the rollback broke too}
      when: opsledger_params.break_rollback | default(false)
"""
SUITES = {
    "marked": """\
SUITE = "marked"
APPLIES_TO = "all"


def test_the_change_left_its_mark(host, target):
    assert host.file(f"MARKS/{target.name}-healthy").exists
""",
    "undone": """\
SUITE = "undone"
APPLIES_TO = "all"


def test_the_start_mark_is_gone(host, target):
    assert not host.file(f"MARKS/{target.name}-started").exists
""",
}
# local-drill drills the service `localsvc` (policies/dr.yml) and hands back no timeline:
# every drill of it fails, measured nothing.
DRILL_RUNBOOK = """\
---
description: A drill of localsvc that measures nothing (drill_failed tests).
playbook: playbook.yml
parameters: {type: object, additionalProperties: false}
change_types: [normal]
risk: low
check_mode: false
roles: []
verification: {suites: []}
rollback: null
timeout: 600
promotion: false
drill: localsvc
"""
DRILL_PLAYBOOK = """\
---
- name: Drill without a timeline
  hosts: all
  gather_facts: false
  tasks:
    - name: Mark the drill
      ansible.builtin.file: {path: "MARKS/{{ inventory_hostname }}-drilled", state: touch,
                             mode: "0644"}
"""
DR_SERVICE = """\
  localsvc:
    description: A service of this machine (drill_failed tests).
    runbook: local-drill
    targets: db
    rto: 15m
    rpo: 5m
    drill_every: 90d
    direct_environments: [lab]
"""


@pytest.fixture
def told(notified, smtp_sink, tmp_path):
    """`notified` with rollback and drill_failed routed to the webhook and the SMTP sink, the
    runbooks local-checked, local-undo and local-drill, their suites and the DR service
    localsvc, committed before any change (a rollback runs from the commit before its
    change). Marks go to tmp_path/marks, outside the repository."""
    project, request = notified
    marks = tmp_path / "marks"
    marks.mkdir()
    root = project.root
    (root / "policies" / "notifications.yml").write_text(TOLD_POLICY)
    for name, runbook, playbook in (
        ("local-checked", CHECKED_RUNBOOK, CHECKED_PLAYBOOK),
        ("local-undo", UNDO_RUNBOOK, UNDO_PLAYBOOK),
        ("local-drill", DRILL_RUNBOOK, DRILL_PLAYBOOK),
    ):
        (root / "runbooks" / name).mkdir()
        (root / "runbooks" / name / "runbook.yml").write_text(runbook)
        (root / "runbooks" / name / "playbook.yml").write_text(
            playbook.replace("MARKS", str(marks))
        )
    for name, text in SUITES.items():
        (root / "tests" / "infra" / f"test_{name}.py").write_text(text.replace("MARKS", str(marks)))
    dr = root / "policies" / "dr.yml"
    dr.write_text(dr.read_text().rstrip("\n") + "\n" + DR_SERVICE)
    # verify collects every suite: the lab's admin user reads the key its SSH would use
    (tmp_path / "id_test.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE test\n")
    connection = root / "inventories/lab/group_vars/all/connection.yml"
    key = f"ansible_ssh_private_key_file: {tmp_path / 'id_test'}\n"
    connection.write_text(connection.read_text() + key)
    parts = [root / "policies", root / "runbooks", root / "tests", connection]
    commit_paths(
        root, parts, "Rollback and drill runbooks", name="Carol", email="carol@example.org"
    )
    return project, request, marks


def _messages(webhook, smtp_sink):
    return webhook[1], smtp_sink[1]


def test_a_change_that_fails_verification_is_rolled_back_and_told(told, webhook, smtp_sink):
    project, request, marks = told
    received, mails = _messages(webhook, smtp_sink)
    change_id = request(targets="db", runbook="local-checked", params={})
    approve_change(project, change_id, person="bob")
    done = _cli(project, "apply", change_id)
    assert done.returncode == 1, done.stdout + done.stderr
    assert sorted(p.name for p in marks.iterdir()) == []  # the rollback removed the marks
    (record,) = read_runs(project).committed
    assert record.result == "rolled_back" and record.hosts == ["lab-db1", "lab-db2"]
    (message,) = received  # rollback is routed; apply_failed is not
    assert message["title"] == f"[lab] {change_id} rolled_back" and message["type"] == "failure"
    body = message["message"]
    assert f"{change_id} (Local steps on the controller): rolled_back" in body
    assert "hosts: lab-db1, lab-db2" in body
    assert "verification failed: test_the_change_left_its_mark[lab-db1]" in body
    assert "rollback local-undo: succeeded (run successful)" in body
    assert f"record: {stored_file(project.root, change_id, 'runs')}/" in body
    (mail,) = mails
    assert f"Subject: [lab] {change_id} rolled_back" in mail and "hosts: lab-db1, lab-db2" in mail
    assert {n["channel"]: n["status"] for n in record.notifications} == {
        "hook": "sent",
        "mail": "sent",
    }


def test_a_rollback_that_fails_is_told_rollback_failed(told, webhook, smtp_sink):
    project, request, _ = told
    received, mails = _messages(webhook, smtp_sink)
    change_id = request(runbook="local-checked", params={"break_rollback": True})
    approve_change(project, change_id, person="bob")
    done = _cli(project, "apply", change_id)
    assert done.returncode == 1, done.stdout + done.stderr
    (record,) = read_runs(project).committed
    assert record.result == "rollback_failed" and record.rollback["result"] == "failed"
    (message,) = received
    assert message["title"] == f"[lab] {change_id} rollback_failed"
    assert "hosts: lab-db1" in message["message"] and message["type"] == "failure"
    assert (
        "rollback local-undo: FAILED (run failed; lab-db1: Fail when the change asks the "
        "rollback to: the rollback broke too)" in message["message"]
    )
    (mail,) = mails
    assert f"Subject: [lab] {change_id} rollback_failed" in mail


def test_a_failed_drill_is_told_by_itself_and_run_as_a_change(told, webhook, smtp_sink):
    """`opsledger drill` tells a failed drill once its record is committed; a drill run as a
    change (its runbook drills a service) leaves a drill record committed with the run, and
    that failed drill is told the same way."""
    project, request, _ = told
    received, mails = _messages(webhook, smtp_sink)
    drilled = _cli(project, "drill", "localsvc", "--env", "lab")
    assert drilled.returncode == 1, drilled.stdout + drilled.stderr
    (message,) = received
    assert message["title"] == "[lab] DR drill localsvc failed" and message["type"] == "failure"
    assert "the drill handed back no timeline (opsledger_drill)" in message["message"]
    assert "record: records/drills/" in message["message"]
    assert len(mails) == 1 and "Subject: [lab] DR drill localsvc failed" in mails[0]

    change_id = request(targets="db", runbook="local-drill", params={})
    approve_change(project, change_id, person="bob")
    done = _cli(project, "apply", change_id)
    assert done.returncode == 0, done.stdout + done.stderr  # the run itself succeeded
    assert len(received) == 2, received
    assert received[1]["title"] == "[lab] DR drill localsvc failed"
    assert "the drill handed back no timeline" in received[1]["message"]
    assert len(mails) == 2 and "Subject: [lab] DR drill localsvc failed" in mails[1]
    drill_records = sorted((project.root / "records" / "drills").glob("*.json"))
    assert len(drill_records) == 2
    assert f"record: {drill_records[-1].relative_to(project.root)}" in received[1]["message"]
