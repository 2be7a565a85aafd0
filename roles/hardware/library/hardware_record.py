#!/usr/bin/python
"""Collect a host's hardware facts, judge them against thresholds, write the asset record."""

from __future__ import annotations

DOCUMENTATION = r"""
module: hardware_record
short_description: Collect hardware facts and health checks into a JSON asset record
description:
  - Runs dmidecode, lsblk, smartctl, sensors, ipmitool and reads /proc to describe the host.
  - Compares disk and inode usage, SMART health, memory, CPU count and firmware version with
    thresholds and baselines, one check per item, each ok, warning, critical or not_applicable.
  - A probe that cannot run (no device, no permission, a container) is recorded as
    not_applicable with the reason; nothing is silently skipped.
  - Writes the record atomically to C(path) and returns it as the fact C(hardware_record).
  - The record keeps the thresholds and baselines it was judged by (C(settings)). The module
    reports C(changed), with a diff of the settings, when they differ from the record already on
    the host (or there is none): an edit of a threshold or a baseline then shows in plan, in run
    records and in drift. The observations themselves (usage, temperatures, the time) change on
    every run, like gathered facts, and are not reported as a change.
options:
  path: {description: Where to write the JSON record., type: path, required: true}
  disk_warn_percent: {description: Disk usage that is a warning., type: int, default: 80}
  disk_crit_percent: {description: Disk usage that is critical., type: int, default: 90}
  inode_warn_percent: {description: Inode usage that is a warning., type: int, default: 80}
  inode_crit_percent: {description: Inode usage that is critical., type: int, default: 90}
  memory_min_mb: {description: Least memory expected (0 = no baseline)., type: int, default: 0}
  cpu_count_min: {description: Least CPUs expected (0 = no baseline)., type: int, default: 0}
  firmware_version: {description: Expected BIOS/firmware version ('' = no baseline)., type: str, default: ''}
  ignore_fstypes: {description: File system types not checked for usage., type: list, elements: str, default: []}
author: opsledger
"""

EXAMPLES = r"""
- name: Record hardware
  hardware_record:
    path: /var/lib/opsledger/hardware.json
    disk_crit_percent: 95
"""

RETURN = r"""
ansible_facts:
  description: hardware_record, the record as written.
  returned: always
  type: dict
"""

import datetime
import json
import os
import platform
import shutil
import socket
import tempfile

from ansible.module_utils.basic import AnsibleModule

SEVERITY = {"ok": 0, "not_applicable": 0, "warning": 1, "critical": 2}
# What the record is judged by: desired state from the inventory, unlike the observations.
SETTINGS = ("disk_warn_percent", "disk_crit_percent", "inode_warn_percent", "inode_crit_percent",
            "memory_min_mb", "cpu_count_min", "firmware_version", "ignore_fstypes")


def read_settings(path):
    """The settings of the record already on the host; None when there is none (or unreadable)."""
    try:
        with open(path) as handle:
            return json.load(handle).get("settings")
    except (OSError, ValueError, AttributeError):
        return None


def na(reason):
    return {"status": "not_applicable", "reason": reason}


def run_json(module, argv):
    """Run a probe that prints JSON; (data, None) or (None, why it could not run)."""
    if shutil.which(argv[0]) is None:
        return None, f"{argv[0]} is not installed"
    rc, out, err = module.run_command(argv)
    if not out.strip():
        return None, (err or out).strip().splitlines()[-1] if (err or out).strip() else f"{argv[0]} printed nothing (rc={rc})"
    try:
        return json.loads(out), None
    except ValueError:
        return None, f"{argv[0]} did not print JSON"


def probe_dmi(module):
    """System and BIOS identity: dmidecode when it can read the tables, else sysfs, else n/a."""
    if shutil.which("dmidecode"):
        rc, out, err = module.run_command(["dmidecode", "-q", "-t", "system", "-t", "bios"])
        if rc == 0 and out.strip():
            fields = {}
            for line in out.splitlines():
                key, sep, value = line.strip().partition(": ")
                if sep:
                    fields.setdefault(key, value)
            return {"status": "ok", "source": "dmidecode",
                    "vendor": fields.get("Manufacturer", ""),
                    "product": fields.get("Product Name", ""),
                    "serial": fields.get("Serial Number", ""),
                    "bios_vendor": fields.get("Vendor", ""),
                    "bios_version": fields.get("Version", ""),
                    "bios_date": fields.get("Release Date", "")}
        reason = (err or out).strip().splitlines()[-1] if (err or out).strip() else f"rc={rc}"
    else:
        reason = "dmidecode is not installed"
    sysfs = "/sys/class/dmi/id"
    if os.path.isdir(sysfs):
        def read(name):
            try:
                with open(os.path.join(sysfs, name)) as handle:
                    return handle.read().strip()
            except OSError:
                return ""
        data = {"status": "ok", "source": "sysfs", "vendor": read("sys_vendor"),
                "product": read("product_name"), "serial": read("product_serial"),
                "bios_vendor": read("bios_vendor"), "bios_version": read("bios_version"),
                "bios_date": read("bios_date"), "dmidecode": reason}
        if any(data[k] for k in ("vendor", "product", "bios_version")):
            return data
    return na(f"no DMI tables: {reason}; /sys/class/dmi/id is absent or empty (container or VM "
              "without SMBIOS)")


def probe_cpu():
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"status": "ok", "count": os.cpu_count() or 0, "model": model or platform.processor(),
            "architecture": platform.machine()}


def probe_memory():
    info = {}
    with open("/proc/meminfo") as handle:
        for line in handle:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0])
    return {"status": "ok", "total_mb": info["MemTotal"] // 1024,
            "available_mb": info.get("MemAvailable", 0) // 1024,
            "swap_total_mb": info.get("SwapTotal", 0) // 1024}


def probe_disks(module):
    data, why = run_json(module, ["lsblk", "-J", "-b", "-o", "NAME,TYPE,SIZE,MODEL,SERIAL,ROTA"])
    if data is None:
        return na(why)
    devices = [d for d in data.get("blockdevices", []) if d.get("type") == "disk"]
    if not devices:
        return na("lsblk sees no disks (container or VM without block devices)")
    return {"status": "ok", "devices": devices}


def probe_smart(module):
    data, why = run_json(module, ["smartctl", "--scan", "-j"])
    if data is None:
        return na(why)
    devices = data.get("devices", [])
    if not devices:
        return na("smartctl finds no SMART-capable device (container, VM or RAID without passthrough)")
    results = []
    for device in devices:
        health, why = run_json(module, ["smartctl", "-H", "-j", device["name"]])
        if health is None:
            results.append({"device": device["name"], **na(why)})
        else:
            passed = health.get("smart_status", {}).get("passed")
            results.append({"device": device["name"],
                            "status": "ok" if passed else "critical" if passed is False else
                            "not_applicable", "passed": passed})
    return {"status": "ok", "devices": results}


def probe_sensors(module):
    data, why = run_json(module, ["sensors", "-j"])
    if data is None:
        return na(why)
    if not data:
        return na("no hardware sensors visible")
    return {"status": "ok", "chips": sorted(data)}


def probe_ipmi(module):
    if shutil.which("ipmitool") is None:
        return na("ipmitool is not installed")
    if not any(os.path.exists(p) for p in ("/dev/ipmi0", "/dev/ipmi/0", "/dev/ipmidev/0")):
        return na("no IPMI device (/dev/ipmi0): no BMC, or not passed to this host")
    rc, out, err = module.run_command(["ipmitool", "mc", "info"])
    if rc != 0:
        return na((err or out).strip() or f"ipmitool rc={rc}")
    return {"status": "ok", "mc_info": out.strip().splitlines()[:6]}


def usage_checks(module, warn, crit, kind, ignore):
    """One check per real mounted file system: used percent of blocks or inodes."""
    checks = []
    seen = set()
    pseudo = {"proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "cgroup", "cgroup2", "mqueue",
              "securityfs", "pstore", "debugfs", "tracefs", "configfs", "fusectl",
              "hugetlbfs", "bpf", "autofs", "binfmt_misc", "nsfs", "rpc_pipefs", "ramfs"}
    with open("/proc/self/mounts") as handle:
        mounts = [line.split()[:3] for line in handle]
    for device, mount, fstype in mounts:
        if fstype in pseudo or fstype in ignore or mount in seen:
            continue
        if mount.startswith(("/proc", "/sys", "/dev", "/run")) or mount in ("/etc/hosts",
                                                                              "/etc/hostname",
                                                                              "/etc/resolv.conf"):
            continue
        seen.add(mount)
        stat = os.statvfs(mount)
        total, free = (stat.f_blocks, stat.f_bfree) if kind == "disk" else (stat.f_files, stat.f_ffree)
        if total == 0:
            checks.append({"id": "HW-DISK-01" if kind == "disk" else "HW-DISK-02",
                           "name": f"{kind} usage {mount}", **na(f"{fstype} reports no {kind} totals")})
            continue
        percent = round(100.0 * (total - free) / total, 1)
        status = "critical" if percent >= crit else "warning" if percent >= warn else "ok"
        checks.append({"id": "HW-DISK-01" if kind == "disk" else "HW-DISK-02",
                       "name": f"{kind} usage {mount}", "status": status, "value": percent,
                       "warning_at": warn, "critical_at": crit, "fstype": fstype})
    return checks


def main():
    module = AnsibleModule(argument_spec=dict(
        path=dict(type="path", required=True),
        disk_warn_percent=dict(type="int", default=80),
        disk_crit_percent=dict(type="int", default=90),
        inode_warn_percent=dict(type="int", default=80),
        inode_crit_percent=dict(type="int", default=90),
        memory_min_mb=dict(type="int", default=0),
        cpu_count_min=dict(type="int", default=0),
        firmware_version=dict(type="str", default=""),
        ignore_fstypes=dict(type="list", elements="str", default=[]),
    ), supports_check_mode=True)
    p = module.params

    probes = {"dmi": probe_dmi(module), "cpu": probe_cpu(), "memory": probe_memory(),
              "disks": probe_disks(module), "smart": probe_smart(module),
              "sensors": probe_sensors(module), "ipmi": probe_ipmi(module)}

    checks = usage_checks(module, p["disk_warn_percent"], p["disk_crit_percent"], "disk",
                          p["ignore_fstypes"])
    checks += usage_checks(module, p["inode_warn_percent"], p["inode_crit_percent"], "inode",
                           p["ignore_fstypes"])
    smart = probes["smart"]
    if smart["status"] == "not_applicable":
        checks.append({"id": "HW-SMART-01", "name": "SMART health", **na(smart["reason"])})
    else:
        for device in smart["devices"]:
            checks.append({"id": "HW-SMART-01", "name": f"SMART health {device['device']}",
                           "status": device["status"], "reason": device.get("reason", "")})
    memory = probes["memory"]["total_mb"]
    checks.append({"id": "HW-MEM-01", "name": "memory size", "value": memory,
                   "baseline": p["memory_min_mb"],
                   **({"status": "critical" if memory < p["memory_min_mb"] else "ok"}
                      if p["memory_min_mb"] else na("no memory baseline set"))})
    cpus = probes["cpu"]["count"]
    checks.append({"id": "HW-CPU-01", "name": "CPU count", "value": cpus,
                   "baseline": p["cpu_count_min"],
                   **({"status": "critical" if cpus < p["cpu_count_min"] else "ok"}
                      if p["cpu_count_min"] else na("no CPU baseline set"))})
    dmi = probes["dmi"]
    if not p["firmware_version"]:
        checks.append({"id": "HW-FW-01", "name": "firmware version", **na("no firmware baseline set")})
    elif dmi["status"] != "ok":
        checks.append({"id": "HW-FW-01", "name": "firmware version", **na(dmi["reason"])})
    else:
        checks.append({"id": "HW-FW-01", "name": "firmware version", "value": dmi["bios_version"],
                       "baseline": p["firmware_version"],
                       "status": "ok" if dmi["bios_version"] == p["firmware_version"] else "warning"})
    for probe, check_id, name in (("sensors", "HW-SENS-01", "temperature sensors"),
                                  ("ipmi", "HW-IPMI-01", "BMC / IPMI")):
        result = probes[probe]
        checks.append({"id": check_id, "name": name, "status": result["status"],
                       "reason": result.get("reason", "")})

    worst = max((c["status"] for c in checks), key=lambda s: SEVERITY[s], default="ok")
    settings = {key: p[key] for key in SETTINGS}
    previous = read_settings(p["path"])
    changed = previous != settings
    record = {
        "host": socket.getfqdn(),
        "collected_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "asset": {"system": dmi, "cpu": probes["cpu"], "memory": probes["memory"],
                  "disks": probes["disks"]},
        "probes": {name: {"status": r["status"], "reason": r.get("reason", "")}
                   for name, r in probes.items()},
        "health": {"status": "ok" if worst == "not_applicable" else worst, "checks": checks},
        "settings": settings,
    }
    if not module.check_mode:
        folder = os.path.dirname(p["path"]) or "."
        os.makedirs(folder, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".hardware-")
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle, indent=2, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, p["path"])
    result = {"changed": changed, "ansible_facts": {"hardware_record": record}}
    if changed and module._diff:
        result["diff"] = {
            "before_header": f"{p['path']} (settings)",
            "after_header": f"{p['path']} (settings)",
            "before": json.dumps(previous, indent=2, sort_keys=True) + "\n" if previous else "",
            "after": json.dumps(settings, indent=2, sort_keys=True) + "\n",
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
