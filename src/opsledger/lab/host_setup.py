"""Make this machine able to run the lab: root, podman and its settings, kernel limits.

Done by `lab up` itself, so a fresh Debian 12 machine needs nothing by hand. Each step checks
first and changes only what is missing, reporting what it changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from opsledger.errors import OpsledgerError, Problem
from opsledger.lab.spec import (
    CONTAINERS_CONF,
    CONTAINERS_CONF_PATH,
    SYSCTL_MINIMUMS,
    SYSCTL_PATH,
    render_sysctl_conf,
)

# Debian packages the lab needs on this machine; iptables is what netavark publishes ports with.
HOST_PACKAGES = ("podman", "runc", "debootstrap", "openssh-client", "iptables", "uidmap")


def require_root() -> None:
    if os.geteuid() != 0:
        raise OpsledgerError(
            Problem(
                "the lab needs root: it runs rootful podman with published ports and NET_ADMIN",
                fix="run it as root (e.g. `sudo -E opsledger lab up`)",
            )
        )


def missing_packages() -> list[str]:
    commands = {
        "podman": "podman",
        "runc": "runc",
        "debootstrap": "debootstrap",
        "openssh-client": "ssh-keygen",
        "iptables": "iptables",
        "uidmap": "newuidmap",
    }
    return [pkg for pkg, cmd in commands.items() if shutil.which(cmd) is None]


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


def prepare_host() -> list[str]:
    """Everything the machine needs before containers can start; returns what it changed."""
    require_root()
    actions = []
    missing = missing_packages()
    if missing:
        install_packages(missing)
        actions.append(f"installed {' '.join(missing)}")
    if write_if_changed(CONTAINERS_CONF_PATH, CONTAINERS_CONF):
        actions.append(f"wrote {CONTAINERS_CONF_PATH}")
    actions += [f"set {item}" for item in ensure_sysctl()]
    return actions
