"""monitoring verified on real hosts: exporters run, bind where configured and serve metrics;
Prometheus scrapes every target its inventory names, with the rules of git; Alertmanager runs."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from opsledger.inventory import load_inventory
from opsledger.testinfra_hosts import Expectations, role_defaults

SUITE = "monitoring"
APPLIES_TO = "all"
ROLE = Path(__file__).resolve().parents[2] / "roles" / "monitoring"


def _scrape_targets(target) -> list[tuple[str, str]]:
    """(job, host:port) Prometheus on this host must scrape: from the inventory, like the role."""
    if not target.expect["monitoring_prometheus_enabled"] or target.inventory is None:
        return []
    defaults = role_defaults(ROLE.parent)
    found = []
    inventory = load_inventory(target.inventory)
    for job, group, toggle, address in (
        (
            "node",
            target.expect["monitoring_prometheus_node_group"],
            "monitoring_node_exporter_enabled",
            "monitoring_node_exporter_listen_address",
        ),
        (
            "postgres",
            target.expect["monitoring_prometheus_postgres_group"],
            "monitoring_postgres_exporter_enabled",
            "monitoring_postgres_exporter_listen_address",
        ),
    ):
        hosts = inventory.hosts.values() if group == "all" else inventory.group(group)
        for peer in sorted(hosts, key=lambda h: h.name):
            peer_expect = Expectations(peer, defaults)
            if peer_expect[toggle]:
                found.append((job, f"{peer.name}:{str(peer_expect[address]).rpartition(':')[2]}"))
    return found


def _alert_rules(target) -> list[str]:
    """Every alert of files/rules, which Prometheus on this host must have loaded."""
    if not target.expect["monitoring_prometheus_enabled"]:
        return []
    names = []
    for path in sorted((ROLE / "files" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names += [r["alert"] for r in group["rules"] if "alert" in r]
    return names


PARAMS = {"scrape": _scrape_targets, "alert": _alert_rules}


def _socket(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"tcp://{host or '0.0.0.0'}:{port}"


def _local_url(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"http://{'127.0.0.1' if host in ('', '0.0.0.0', '[::]') else host}:{port}/metrics"


def _fetch(host, url: str) -> str:
    """GET a URL from the host itself with its Python (curl is not on every host)."""
    script = (
        "import sys, urllib.request; "
        "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
    )
    return host.check_output(f"python3 -c '{script}' %s", url)


def test_node_exporter_running_and_bound_mon_node_01(host, expect):
    if not expect["monitoring_node_exporter_enabled"]:
        pytest.skip("node exporter not enabled for this host")
    assert host.service("prometheus-node-exporter").is_running
    address = expect["monitoring_node_exporter_listen_address"]
    assert host.socket(_socket(address)).is_listening
    metrics = _fetch(host, _local_url(address))
    assert "node_cpu_seconds_total" in metrics


def test_postgres_exporter_reaches_postgresql_mon_pg_01(host, expect):
    if not expect["monitoring_postgres_exporter_enabled"]:
        pytest.skip("PostgreSQL exporter not enabled for this host")
    assert host.service("prometheus-postgres-exporter").is_running
    address = expect["monitoring_postgres_exporter_listen_address"]
    assert host.socket(_socket(address)).is_listening
    # The exporter keeps its database connection between scrapes: the first scrape after
    # PostgreSQL restarted (a crash, a DR drill) reports the broken connection as pg_up 0 and
    # reconnects. A healthy exporter answers pg_up 1 within three scrapes, a second apart.
    for _ in range(3):
        metrics = _fetch(host, _local_url(address)).splitlines()
        if "pg_up 1" in metrics:
            break
        time.sleep(1)
    assert "pg_up 1" in metrics


def _api(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"http://{'127.0.0.1' if host in ('', '0.0.0.0', '[::]') else host}:{port}"


def test_prometheus_running_and_bound_mon_prom_01(host, expect):
    if not expect["monitoring_prometheus_enabled"]:
        pytest.skip("Prometheus not enabled for this host")
    assert host.service("prometheus").is_running
    assert host.service("prometheus").is_enabled
    address = expect["monitoring_prometheus_listen_address"]
    assert host.socket(_socket(address)).is_listening
    flags = json.loads(_fetch(host, _api(address) + "/api/v1/status/flags"))["data"]
    assert flags["storage.tsdb.retention.time"] == expect["monitoring_prometheus_retention_time"]
    # Prometheus prints sizes in binary units: 1GB is shown as 1GiB
    size = flags["storage.tsdb.retention.size"].replace("iB", "B")
    assert size == expect["monitoring_prometheus_retention_size"]


def test_prometheus_scrapes_inventory_target_mon_prom_02(host, expect, scrape):
    """Each exporter the inventory names is a target, and answers (within a few scrapes)."""
    job, address = scrape
    url = _api(expect["monitoring_prometheus_listen_address"]) + "/api/v1/targets?state=active"
    for _ in range(10):
        active = json.loads(_fetch(host, url))["data"]["activeTargets"]
        mine = [
            t
            for t in active
            if t["labels"]["job"] == job and t["scrapeUrl"].split("/")[2] == address
        ]
        if mine and mine[0]["health"] == "up":
            break
        time.sleep(3)
    assert mine, f"{job} target {address} is not configured"
    assert mine[0]["health"] == "up", mine[0].get("lastError")
    assert mine[0]["labels"]["instance"] == address.rpartition(":")[0]


def test_prometheus_loaded_alert_rule_mon_prom_03(host, expect, alert):
    url = _api(expect["monitoring_prometheus_listen_address"]) + "/api/v1/rules?type=alert"
    groups = json.loads(_fetch(host, url))["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert alert in rules
    override = (expect["monitoring_prometheus_alert_for"] or {}).get(alert)
    if override:
        seconds = {"s": 1, "m": 60, "h": 3600}[override[-1]] * int(override[:-1])
        assert rules[alert]["duration"] == seconds


def test_alertmanager_running_single_node_mon_am_01(host, expect):
    if not expect["monitoring_alertmanager_enabled"]:
        pytest.skip("Alertmanager not enabled for this host")
    assert host.service("prometheus-alertmanager").is_running
    assert host.service("prometheus-alertmanager").is_enabled
    address = expect["monitoring_alertmanager_listen_address"]
    assert host.socket(_socket(address)).is_listening
    status = json.loads(_fetch(host, _api(address) + "/api/v2/status"))
    assert status["cluster"]["status"] == "disabled"
    assert not host.socket("tcp://0.0.0.0:9094").is_listening


def test_alertmanager_receives_prometheus_alerts_mon_am_01(host, expect):
    """The Watchdog (always firing) reaches Alertmanager: the path alerts take works."""
    if not (expect["monitoring_alertmanager_enabled"] and expect["monitoring_prometheus_enabled"]):
        pytest.skip("Prometheus and Alertmanager do not both run on this host")
    url = _api(expect["monitoring_alertmanager_listen_address"]) + "/api/v2/alerts"
    for _ in range(20):
        names = [a["labels"]["alertname"] for a in json.loads(_fetch(host, url))]
        if "Watchdog" in names:
            break
        time.sleep(3)
    assert "Watchdog" in names


def test_pgbackrest_backup_time_reported_mon_pgbr_01(host, expect):
    if not expect["monitoring_pgbackrest_metrics_enabled"]:
        pytest.skip("backup reporting not enabled for this host")
    assert host.service("opsledger-pgbackrest-metrics.timer").is_enabled
    assert host.service("opsledger-pgbackrest-metrics.timer").is_running
    path = f"{expect['monitoring_pgbackrest_metrics_directory']}/pgbackrest.prom"
    for _ in range(15):
        if host.file(path).exists:
            break
        time.sleep(2)
    stanza = expect["monitoring_pgbackrest_metrics_stanza"]
    assert f'pgbackrest_backup_info_ok{{stanza="{stanza}"}} 1' in host.file(path).content_string


def _sandboxed(t) -> list[str]:
    if not t.expect["monitoring_sandbox_enabled"]:
        return []
    return [
        unit
        for unit, toggle in (
            ("prometheus-node-exporter", "monitoring_node_exporter_enabled"),
            ("prometheus-postgres-exporter", "monitoring_postgres_exporter_enabled"),
        )
        if t.expect[toggle]
    ]


PARAMS["sandboxed_unit"] = _sandboxed  # one PARAMS per suite (conftest.py reads it once)


def test_exporter_sandboxed_mon_sbx_01(host, expect, sandboxed_unit):
    """`systemd-analyze security` grades the unit no worse than the inventory allows."""
    assert host.service(sandboxed_unit).is_running
    out = host.check_output(f"systemd-analyze security --no-pager {sandboxed_unit}.service")
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", out)
    assert match, out[-500:]
    assert float(match.group(1)) <= float(expect["monitoring_systemd_security_max_exposure"]), out
    props = host.check_output(
        f"systemctl show -p NoNewPrivileges -p ProtectSystem -p PrivateTmp {sandboxed_unit}"
    ).splitlines()
    assert {"NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes"} <= set(props)
