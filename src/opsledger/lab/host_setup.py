"""Make this machine able to run the lab: root, podman and its settings, kernel limits.

Done by `lab up` itself, so a fresh Debian 12 machine needs nothing by hand. Each step checks
first and changes only what is missing, reporting what it changed.

The network backend is pinned, not left to chance: `apt-get install --no-install-recommends
podman` resolves podman's network stack to CNI, whose networks have no DNS, while the lab's
hosts find each other (and the resolvers the network role writes point) at podman's DNS on the
gateway. So the lab brings netavark and aardvark-dns itself and pins `network_backend =
"netavark"`. Switching a machine whose podman runs on CNI would cut other containers off their
networks, so that is refused unless the only containers are labs.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from opsledger.errors import OpsledgerError, Problem
from opsledger.lab import cache
from opsledger.lab.spec import (
    CONTAINERS_CONF,
    CONTAINERS_CONF_PATH,
    LABEL,
    NETWORK_BACKEND,
    SYSCTL_MINIMUMS,
    SYSCTL_PATH,
    render_sysctl_conf,
)


def require_root() -> None:
    if os.geteuid() != 0:
        raise OpsledgerError(
            Problem(
                "the lab needs root: it runs rootful podman with published ports and NET_ADMIN",
                fix="run it as root (e.g. `sudo -E opsledger lab up`)",
            )
        )


# Debian package -> a file it installs. netavark publishes ports with iptables; aardvark-dns is
# the DNS server on each network's gateway; apt-cacher-ng is the lab's package cache.
PACKAGE_FILES = {
    "podman": "/usr/bin/podman",
    "runc": "/usr/sbin/runc",
    "debootstrap": "/usr/sbin/debootstrap",
    "openssh-client": "/usr/bin/ssh-keygen",
    "iptables": "/usr/sbin/iptables",
    "uidmap": "/usr/bin/newuidmap",
    "netavark": "/usr/lib/podman/netavark",
    "aardvark-dns": "/usr/lib/podman/aardvark-dns",
    "apt-cacher-ng": cache.DAEMON,
    "iproute2": "/usr/sbin/ip",
}


def missing_packages() -> list[str]:
    return [pkg for pkg, path in PACKAGE_FILES.items() if not Path(path).exists()]


def install_packages(packages: list[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-2:]
            raise OpsledgerError(
                Problem(
                    f"{' '.join(cmd[:2])} failed: {' | '.join(tail)}",
                    fix=f"install {' '.join(packages)} with apt-get yourself and run again",
                )
            )


def write_if_changed(path: Path, content: str) -> bool:
    if path.exists() and path.read_text() == content:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return True


def ensure_sysctl(proc_sys: Path = Path("/proc/sys")) -> list[str]:
    """Raise inotify limits that are below the lab's minimum; never lower a higher setting."""
    changed = []
    for key, minimum in SYSCTL_MINIMUMS.items():
        current_file = proc_sys / key.replace(".", "/")
        current = int(current_file.read_text().split()[0]) if current_file.exists() else 0
        if current < minimum:
            subprocess.run(
                ["sysctl", "-q", "-w", f"{key}={minimum}"], check=False, capture_output=True
            )
            changed.append(f"{key}={minimum}")
    if changed:
        write_if_changed(SYSCTL_PATH, render_sysctl_conf())
    return changed


def network_backend() -> str:
    """The network backend podman uses now ("netavark", "cni"; "" when podman cannot say)."""
    proc = subprocess.run(
        ["podman", "info", "--format", "{{.Host.NetworkBackend}}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


@dataclass(frozen=True)
class BackendSwitch:
    """What moving podman to netavark means for the containers this machine has."""

    labs: tuple[str, ...]  # lab containers (of this or a deleted checkout): recreated by `up`
    others: tuple[str, ...]  # anything else: switching would cut it off its network


def plan_backend_switch(containers: list[dict], project_label: str) -> BackendSwitch:
    """Sort podman's containers into the ones a backend switch may recreate and the rest.

    A lab of a checkout that still exists is somebody else's running work, like any other
    container: it counts as "others" (only a deleted checkout's lab may be taken over).
    """
    labs, others, other_labs = [], [], []
    for info in containers:
        name = (info.get("Names") or [info.get("Id", "?")])[0]
        labels = info.get("Labels") or {}
        owner = labels.get(f"{LABEL}.project")
        if labels.get(f"{LABEL}.lab") != "1":
            others.append(name)
        elif owner == project_label or not (Path(owner or "/nonexistent") / "inventories").is_dir():
            labs.append(name)
        else:
            other_labs.append(name)
    # containers no lab owns first: they are the ones their owners will not expect to lose
    return BackendSwitch(tuple(labs), tuple(others + other_labs))


def _conf_files_setting_backend() -> list[str]:
    """containers.conf files other than ours that set network_backend (they can override it)."""
    found = []
    candidates = [
        Path("/usr/share/containers/containers.conf"),
        Path("/etc/containers/containers.conf"),
        *sorted(CONTAINERS_CONF_PATH.parent.glob("*.conf")),
    ]
    for path in candidates:
        if (
            path != CONTAINERS_CONF_PATH
            and path.is_file()
            and "network_backend" in path.read_text(errors="replace")
        ):
            found.append(str(path))
    return found


def _switch_to_netavark(project_label: str, current: str) -> list[str]:
    """Move podman from `current` (CNI) to netavark, recreating only lab containers."""
    listing = subprocess.run(
        ["podman", "ps", "--all", "--format", "json"], capture_output=True, text=True, timeout=120
    )
    plan = plan_backend_switch(json.loads(listing.stdout or "[]"), project_label)
    if plan.others:
        # every name (the Problem bounds the line): the user must find each one to remove it
        raise OpsledgerError(
            Problem(
                f"podman here uses the {current or 'unknown'} network backend, which gives lab "
                f"networks no DNS, and moving it to netavark would cut {len(plan.others)} "
                f"container(s) that are not this lab's off their networks: "
                f"{', '.join(plan.others)}",
                str(CONTAINERS_CONF_PATH),
                "network_backend",
                "remove those containers (or recreate them after the switch), then run "
                "`opsledger lab up` again; nothing was changed",
            )
        )
    actions = []
    for name in plan.labs:
        subprocess.run(["podman", "rm", "--force", "--time", "5", name], capture_output=True)
        actions.append(f"removed lab container {name} (recreated on netavark)")
    # Lab networks made under CNI are invisible to netavark: remove them while CNI still sees them.
    nets = subprocess.run(
        ["podman", "network", "ls", "--format", "{{.Name}}", "--filter", f"label={LABEL}.project"],
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in nets:
        subprocess.run(["podman", "network", "rm", "--force", name], capture_output=True)
        actions.append(f"removed {current} network {name} (recreated on netavark)")
    return actions


def ensure_network_backend(project_label: str) -> list[str]:
    """Pin podman to netavark with aardvark-dns; returns what it changed.

    Raises OpsledgerError (exit 2, nothing changed) when the switch would disturb containers
    that are not labs, or when another containers.conf file overrides the pinned backend.
    """
    actions: list[str] = []
    current = network_backend()
    if current != NETWORK_BACKEND:
        actions += _switch_to_netavark(project_label, current)
    if write_if_changed(CONTAINERS_CONF_PATH, CONTAINERS_CONF):
        actions.append(f"wrote {CONTAINERS_CONF_PATH} (runc, cgroupfs, ulimits, netavark)")
    now = network_backend()
    if now != NETWORK_BACKEND:
        others = _conf_files_setting_backend()
        raise OpsledgerError(
            Problem(
                f"podman still uses the {now or 'unknown'} network backend after "
                f"{CONTAINERS_CONF_PATH} pinned netavark",
                ", ".join(others) or str(CONTAINERS_CONF_PATH),
                "network_backend",
                "remove network_backend from the file(s) named here, or set it to "
                '"netavark", then run `opsledger lab up` again',
            )
        )
    return actions


def prepare_host(project_label: str = "") -> list[str]:
    """Everything the machine needs before containers can start; returns what it changed."""
    require_root()
    actions = []
    missing = missing_packages()
    if missing:
        install_packages(missing)
        actions.append(f"installed {' '.join(missing)}")
    actions += ensure_network_backend(project_label)
    actions += [f"set {item}" for item in ensure_sysctl()]
    return actions
