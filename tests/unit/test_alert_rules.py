"""Alert rules as code (roles/monitoring/files/rules): proven by promtool, unit-tested with
`promtool test rules`, labelled the way `opsledger alerts sync` and the policies need, and
rendered by the role with the lab inventory into a configuration promtool accepts."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO_ROOT

ROLE = REPO_ROOT / "roles" / "monitoring"
RULES = ROLE / "files" / "rules"
RULE_FILES = sorted(RULES.glob("*.yml"))
TESTS = sorted((RULES / "tests").glob("*_test.yml"))
PROMTOOL = shutil.which("promtool") or "promtool"


@pytest.fixture(autouse=True)
def _promtool_installed():
    if shutil.which("promtool") is None:
        pytest.fail("promtool is needed (apt-get install prometheus); scripts/test installs it")


def _alerts() -> list[dict]:
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found += [rule for rule in group["rules"] if "alert" in rule]
    return found


ALERTS = _alerts()


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_accepts_the_rule_file(path):
    checked = _promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("path", TESTS, ids=lambda p: p.name)
def test_promtool_rule_unit_tests_pass(path):
    tested = _promtool("test", "rules", str(path))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_rule_file_has_its_unit_tests_and_every_alert_is_tested():
    tested = " ".join(p.read_text() for p in TESTS)
    assert {p.name.removesuffix("_test.yml") for p in TESTS} == {p.stem for p in RULE_FILES}
    for alert in ALERTS:
        assert re.search(rf"alertname: {alert['alert']}\b", tested), f"{alert['alert']} untested"


def test_the_issue_s_alerts_exist():
    names = {a["alert"] for a in ALERTS}
    assert {
        "Watchdog",
        "HostDown",
        "DiskSpaceLow",
        "InodesLow",
        "MemoryLow",
        "LoadHigh",
        "PostgreSQLDown",
        "ReplicationLag",
        "WALArchivingFailing",
        "WALArchivingLate",
        "BackupTooOld",
        "PostgreSQLExporterDown",
        "ExporterDown",
        "ClockOffset",
    } <= names


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a["alert"])
def test_labels_give_a_priority_the_policy_agrees_with_a_class_and_a_runbook(alert):
    policies = REPO_ROOT / "policies"
    incidents = yaml.safe_load((policies / "incidents.yml").read_text())
    matrix = yaml.safe_load((policies / "sla.yml").read_text())["matrix"]
    severities = incidents["detection"]["alert_severities"]
    labels, annotations = alert["labels"], alert["annotations"]
    assert labels["class"] in incidents["classes"]
    if alert["alert"] == "Watchdog":
        assert labels["severity"] == "none"
    else:
        rule = severities[labels["severity"]]
        assert labels["priority"] == matrix[rule["impact"]][rule["urgency"]]
    link, _, anchor = annotations["runbook_url"].partition("#")
    runbook = REPO_ROOT / link
    headings = {
        line[3:].strip().lower() for line in runbook.read_text().splitlines() if line[:3] == "## "
    }
    assert anchor in headings, f"{link} has no section for #{anchor}"
    assert annotations["summary"]


def test_the_role_renders_the_lab_configuration_promtool_and_amtool_accept(tmp_path):
    """The role's templates with the lab inventory (real Ansible, local connection): scrape
    targets are every lab host's exporters, the lab's `for:` overrides land in the rules, and
    each file passes the check the role's `validate:` runs."""
    out = tmp_path / "out"
    out.mkdir()
    # The role itself (its defaults, templates and rule files), with tasks that only render.
    role = tmp_path / "roles" / "monitoring"
    shutil.copytree(ROLE, role)
    (role / "tasks" / "main.yml").write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Render the scrape configuration",
                    "ansible.builtin.template": {
                        "src": "prometheus.yml.j2",
                        "dest": f"{out}/prometheus.yml",
                        "mode": "0644",
                    },
                },
                {
                    "name": "Render the Alertmanager routing",
                    "ansible.builtin.template": {
                        "src": "alertmanager.yml.j2",
                        "dest": f"{out}/alertmanager.yml",
                        "mode": "0644",
                        "validate": "amtool check-config %s",
                    },
                },
                {
                    "name": "Render the rules",
                    "ansible.builtin.template": {
                        "src": "rules.yml.j2",
                        "dest": f"{out}/{{{{ item | basename }}}}",
                        "mode": "0644",
                        "validate": "promtool check rules %s",
                    },
                    "loop": "{{ lookup('ansible.builtin.fileglob', role_path ~ "
                    "'/files/rules/*.yml', wantlist=True) | sort }}",
                },
            ]
        )
    )
    playbook = tmp_path / "render.yml"
    playbook.write_text(
        yaml.safe_dump(
            [{"hosts": "lab-mon1", "gather_facts": False, "roles": [{"role": "monitoring"}]}]
        )
    )
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(tmp_path / "roles"),
        "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
        "ANSIBLE_STRATEGY": "linear",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-tmp"),
    }
    ran = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(REPO_ROOT / "inventories" / "lab"),
            "-e",
            json.dumps(
                {
                    "ansible_connection": "local",
                    "ansible_become": False,
                    "ansible_python_interpreter": sys.executable,
                }
            ),
            str(playbook),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=REPO_ROOT,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]
    # The rule files the config names, where the config names them: /etc/prometheus/rules.
    config = yaml.safe_load((out / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    config["rule_files"] = [f"{out}/*.yml"]
    (out / "checked.yml").write_text(yaml.safe_dump(config))
    (out / "prometheus.yml").unlink()
    (out / "alertmanager.yml").unlink()
    shutil.move(out / "checked.yml", tmp_path / "prometheus.yml")
    checked = _promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    node = {t for c in jobs["node"]["static_configs"] for t in c["targets"]}
    postgres = {t for c in jobs["postgres"]["static_configs"] for t in c["targets"]}
    lab = yaml.safe_load((REPO_ROOT / "inventories" / "lab" / "hosts.yml").read_text())
    groups = lab["all"]["children"]
    every = {h for g in groups.values() for h in g["hosts"]}
    assert node == {f"{h}:9100" for h in every}
    assert postgres == {f"{h}:9187" for h in groups["db"]["hosts"]}
    instances = {c["labels"]["instance"] for c in jobs["node"]["static_configs"]}
    assert instances == every  # alerts name the host, which incidents take as theirs
    assert config["global"]["external_labels"] == {"environment": "lab"}

    lab_for = yaml.safe_load(
        (
            REPO_ROOT / "inventories" / "lab" / "group_vars" / "monitoring" / "monitoring.yml"
        ).read_text()
    )["monitoring_prometheus_alert_for"]
    rendered = {
        r["alert"]: r
        for path in out.glob("*.yml")
        for g in yaml.safe_load(path.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    assert set(rendered) == {a["alert"] for a in ALERTS}
    for name, duration in lab_for.items():
        assert rendered[name]["for"] == duration
    untouched = next(a for a in ALERTS if a["alert"] == "DiskSpaceLow")
    assert rendered["DiskSpaceLow"] == untouched
