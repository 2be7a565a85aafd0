"""hardware verified on real hosts: the asset record exists, is honest and judged by the
inventory's thresholds; the live values still meet the baselines."""

from __future__ import annotations

import json

import pytest

SUITE = "hardware"
APPLIES_TO = "all"

PARAMS = {"tool": lambda t: t.expect["hardware_packages"]}


@pytest.fixture
def record(host, expect):
    return json.loads(host.file(expect["hardware_record_path"]).content_string)


def _checks(record, check_id):
    return [c for c in record["health"]["checks"] if c["id"] == check_id]


def test_probe_tool_installed_hw_probe_01(host, tool):
    assert host.package(tool).is_installed


def test_record_names_this_host_and_every_probe_hw_probe_01(record, host):
    assert record["host"].split(".")[0] == host.check_output("hostname -s")
    assert set(record["probes"]) == {"dmi", "cpu", "memory", "disks", "smart", "sensors", "ipmi"}


def test_not_applicable_always_says_why_hw_probe_01(record):
    silent = [
        c
        for c in record["health"]["checks"]
        if c["status"] == "not_applicable" and not c.get("reason")
    ]
    silent += [
        name
        for name, p in record["probes"].items()
        if p["status"] == "not_applicable" and not p["reason"]
    ]
    assert silent == []


def test_disk_usage_judged_by_inventory_thresholds_hw_disk_01(record, expect):
    checks = _checks(record, "HW-DISK-01")
    assert any(c["name"] == "disk usage /" for c in checks)
    for check in checks:
        assert (check["warning_at"], check["critical_at"]) == (
            expect["hardware_disk_warn_percent"],
            expect["hardware_disk_crit_percent"],
        )
        assert check["status"] != "critical", f"{check['name']} at {check['value']}%"


def test_root_disk_below_critical_now_hw_disk_01(host, expect):
    used = int(host.check_output("df --output=pcent / | tail -1").strip().rstrip("%"))
    assert used < expect["hardware_disk_crit_percent"]


def test_inode_usage_judged_by_inventory_thresholds_hw_disk_02(record, expect):
    for check in _checks(record, "HW-DISK-02"):
        assert (check["warning_at"], check["critical_at"]) == (
            expect["hardware_inode_warn_percent"],
            expect["hardware_inode_crit_percent"],
        )
        assert check["status"] != "critical"


def test_smart_health_hw_smart_01(record):
    checks = _checks(record, "HW-SMART-01")
    assert checks and all(c["status"] in ("ok", "not_applicable") for c in checks)


def test_memory_meets_baseline_hw_mem_01(host, expect, record):
    (check,) = _checks(record, "HW-MEM-01")
    assert check["baseline"] == expect["hardware_memory_min_mb"]
    total_kb = int(host.check_output("awk '/^MemTotal/ {print $2}' /proc/meminfo"))
    assert total_kb // 1024 >= expect["hardware_memory_min_mb"]


def test_cpu_count_meets_baseline_hw_cpu_01(host, expect, record):
    (check,) = _checks(record, "HW-CPU-01")
    assert check["baseline"] == expect["hardware_cpu_count_min"]
    assert int(host.check_output("nproc --all")) >= expect["hardware_cpu_count_min"]


def test_firmware_matches_baseline_hw_fw_01(record, expect):
    (check,) = _checks(record, "HW-FW-01")
    if not expect["hardware_firmware_version"]:
        assert check["status"] == "not_applicable"
    elif check["status"] != "not_applicable":
        assert check["value"] == expect["hardware_firmware_version"]
