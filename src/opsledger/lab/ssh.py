"""SSH material for the lab: the admin key, per-host host keys, known_hosts, login probes.

Host keys are generated here and copied into each container before it starts, so the lab's
known_hosts is written from keys we made ourselves: SSH checks stay strict (no trust on first
use, no disabled checking) even though lab hosts are recreated all the time.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from opsledger.errors import OpsledgerError, Problem
from opsledger.lab.spec import LabHost, LabSpec, known_hosts_line

# Ansible's default ControlPath directory; `down` closes masters there so no ssh lingers.
ANSIBLE_CONTROL_DIR = Path("~/.ansible/cp").expanduser()


def ensure_keypair(path: Path, comment: str) -> bool:
    """Create an ed25519 key pair at path unless one exists; True when created."""
    if path.exists() and path.with_suffix(".pub").exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)
    path.with_suffix(".pub").unlink(missing_ok=True)
    proc = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise OpsledgerError(
            Problem(
                f"ssh-keygen failed: {proc.stderr.strip()}",
                str(path),
                fix="check that the folder is writable",
            )
        )
    return True


def host_key_path(spec: LabSpec, host: LabHost) -> Path:
    return spec.hostkey_dir / f"{host.name}_ed25519"


def write_known_hosts(spec: LabSpec) -> None:
    """Write each known_hosts file with exactly the lab hosts' generated host keys."""
    for path in spec.known_hosts_files():
        lines = [
            known_hosts_line(h, host_key_path(spec, h).with_suffix(".pub").read_text())
            for h in spec.hosts
            if h.known_hosts == path
        ]
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text("\n".join(lines) + "\n")


def ssh_argv(
    host: LabHost, *command: str, batch: bool = True, connect_timeout: int = 5
) -> list[str]:
    """ssh command line reaching a lab host exactly as Ansible does (same key, same known_hosts)."""
    argv = [
        "ssh",
        "-i",
        str(host.key_file),
        "-p",
        str(host.port),
        "-o",
        f"UserKnownHostsFile={host.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"ConnectTimeout={connect_timeout}",
        "-o",
        "LogLevel=ERROR",
    ]
    if batch:
        argv += ["-o", "BatchMode=yes"]
    return [*argv, f"{host.user}@{host.address}", *command]


def ssh_answers(host: LabHost, timeout: float = 10) -> bool:
    """True when the admin user can log in with the lab key and the host key checks out."""
    try:
        proc = subprocess.run(
            ssh_argv(host, "true"), capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def ssh_answers_all(hosts: list[LabHost]) -> dict[str, bool]:
    if not hosts:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        return dict(zip([h.name for h in hosts], pool.map(ssh_answers, hosts), strict=True))


def close_control_masters(host: LabHost) -> None:
    """Stop any ControlPersist master Ansible left for this host (it would outlive the host)."""
    subprocess.run(
        [
            "ssh",
            "-o",
            f"ControlPath={ANSIBLE_CONTROL_DIR}/%C",
            "-O",
            "exit",
            "-p",
            str(host.port),
            f"{host.user}@{host.address}",
        ],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=10,
        check=False,
    )
