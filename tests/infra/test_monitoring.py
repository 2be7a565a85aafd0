"""monitoring verified on real hosts: exporters run, bind where configured and serve metrics."""

from __future__ import annotations

import re
import time

import pytest

SUITE = "monitoring"
APPLIES_TO = "all"


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
    return host.check_output(f"python3 -c '{script}' {url}")


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


PARAMS = {"sandboxed_unit": _sandboxed}


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
