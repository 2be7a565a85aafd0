"""The lab's package cache: Debian's apt-cacher-ng on this machine, shared by every lab host.

Why a cache: a converge installs PostgreSQL, pgBackRest, exporters and their dependencies on
every host; Molecule does it again in fresh containers; a rebuilt base image downloads the whole
of Debian's minbase. With the cache each .deb crosses the network once per machine, and a
flaky mirror hurts once instead of on every host.

How hosts reach it: apt-cacher-ng listens on 127.0.0.1 and on one service address kept on the
loopback interface (`CACHE_ADDRESS`). A container's packets to that address leave through its
network's gateway — this machine — and are delivered locally, so the lab's hosts and every
Molecule scenario (each on a network of its own) reach the same cache, while the address is
never on a physical interface and so never offered to the LAN. The base image lists the
cache as the first mirror for package files only (apt's mirror+file method, `type:deb`) and
the Debian mirror after it: index files always come from the mirror, and when the cache does
not answer apt takes the mirror for packages too, which the image logs once per boot: a cache
that is down slows hosts down, never stops them.

It is kept between runs (`lab down`) and removed with the base image (`lab down --purge`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# Outside podman's default pools (10.88.0.0/16 for "podman", 10.89.x.0/24 allocated upwards for
# new networks, never as high as .255) and outside the lab's fixed 10.89.70.0/24.
CACHE_ADDRESS = "10.89.255.254"
CACHE_PORT = 3142
CACHE_URL = f"http://{CACHE_ADDRESS}:{CACHE_PORT}"
CONFIG_DIR = Path("/etc/apt-cacher-ng")
# apt-cacher-ng reads every *.conf of its folder in order: ours comes last and only adds.
CONFIG_PATH = CONFIG_DIR / "zz_opsledger.conf"
CACHE_DIR = Path("/var/cache/apt-cacher-ng")
DAEMON = "/usr/sbin/apt-cacher-ng"
START_TIMEOUT = 10.0


def render_config(mirror: str, security_mirror: str) -> str:
    """Our additions to apt-cacher-ng's settings.

    Debian's package sends every Debian request to ftp.debian.org, which may not be reachable
    where this machine's own apt works; the cache fetches from this machine's mirrors instead.

    Lab hosts ask the cache for package files only (see the module docstring): apt-cacher-ng
    3.7.4 cannot serve index files that change under one name to many hosts at once. Stored, it
    refreshes one by moving it aside to `<file>.<unix second>` and concurrent refreshes collide:
    24 concurrent InRelease requests x 5 rounds gave 49 `503`s and 9 truncated answers out of
    120 (a mirror without Last-Modified makes every request a refresh); in CI a lab host's apt
    once hung a converge for 30 minutes. Passed through (`DontCacheRequested`), it repeats the
    client's Host header and a strict mirror or proxy answers `400 Bad Request` — which stopped
    the image build on a fresh machine. Only the image build (one debootstrap at a time) still
    fetches index files through the cache.
    """
    return (
        "# Written by `opsledger lab up`: the lab's package cache listens on loopback and on the\n"
        "# lab's service address (also on loopback), never on a physical interface, and\n"
        "# fetches from the mirrors this machine's apt uses.\n"
        f"BindAddress: 127.0.0.1 {CACHE_ADDRESS}\n"
        f"Port: {CACHE_PORT}\n"
        f"Remap-debrep: file:deb_mirror*.gz /debian ; {mirror.rstrip('/')}/\n"
        "Remap-secdeb: security.debian.org security.debian.org/debian-security "
        "deb.debian.org/debian-security /debian-security ; "
        f"{security_mirror.rstrip('/')}/\n"
    )


@dataclass
class CacheStatus:
    """Whether the cache answers, and what `ensure_cache` had to do for it."""

    up: bool
    actions: list[str]
    reason: str = ""


def answers(address: str = CACHE_ADDRESS, port: int = CACHE_PORT, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections on the cache's address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((address, port)) == 0


def _address_present() -> bool:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True
    ).stdout
    return f" {CACHE_ADDRESS}/32 " in out


def _ensure_address() -> bool:
    """Keep the service address on loopback; returns True when it had to be added."""
    if _address_present():
        return False
    proc = subprocess.run(
        ["ip", "addr", "add", f"{CACHE_ADDRESS}/32", "dev", "lo"], capture_output=True, text=True
    )
    if proc.returncode != 0 and not _address_present():
        raise RuntimeError(f"could not add {CACHE_ADDRESS} to lo: {proc.stderr.strip()}")
    return True


def _daemon_pids() -> list[int]:
    pids = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if (proc_dir / "exe").resolve() == Path(DAEMON):
                pids.append(int(proc_dir.name))
    return pids


def _stop_daemon() -> None:
    for pid in _daemon_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + START_TIMEOUT
    while _daemon_pids() and time.monotonic() < deadline:
        time.sleep(0.1)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete apt-cacher-ng's leftover `<file>.<unix time>` temp copies of index files.

    A daemon stopped mid-refresh leaves them; the next refresh of that index in the same second
    then fails ("Failure to move file ... out of the way ... File exists") and a lab host's apt
    was seen waiting on it for 14 minutes. Only a stopped daemon's folder is cleaned.
    """
    removed = []
    for path in folder.rglob("*"):
        stem, _, suffix = path.name.rpartition(".")
        if stem and len(suffix) == 10 and suffix.isdigit() and path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def _start_daemon() -> None:
    """Start apt-cacher-ng in the background (this machine may have no systemd to do it)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(CACHE_DIR)
    shutil.chown(CACHE_DIR, "apt-cacher-ng", "apt-cacher-ng")
    run_dir = Path("/run/apt-cacher-ng")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "apt-cacher-ng", "apt-cacher-ng")
    log_dir = Path("/var/log/apt-cacher-ng")
    log_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(log_dir, "apt-cacher-ng", "apt-cacher-ng")
    subprocess.run(
        [
            "setpriv",
            "--reuid=apt-cacher-ng",
            "--regid=apt-cacher-ng",
            "--init-groups",
            DAEMON,
            "-c",
            str(CONFIG_DIR),
            "ForeGround=0",
            f"PidFile={run_dir / 'pid'}",
            f"SocketPath={run_dir / 'socket'}",
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=START_TIMEOUT,
        check=False,
    )


def ensure_cache(mirror: str, security_mirror: str) -> CacheStatus:
    """Have apt-cacher-ng answer on the lab's service address; report instead of failing.

    A cache that cannot be started is not fatal: hosts fall back to the mirror by themselves,
    so the caller only says so (once).
    """
    actions: list[str] = []
    if not Path(DAEMON).exists():
        return CacheStatus(False, actions, "apt-cacher-ng is not installed")
    try:
        if _ensure_address():
            actions.append(f"added the package cache address {CACHE_ADDRESS} to lo")
    except RuntimeError as exc:
        return CacheStatus(False, actions, str(exc))
    config_changed = False
    config = render_config(mirror, security_mirror)
    if not CONFIG_PATH.is_file() or CONFIG_PATH.read_text() != config:
        CONFIG_PATH.parent.mkdir(parents=True, exist_ok=True)
        CONFIG_PATH.write_text(config)
        config_changed = True
        actions.append(f"wrote {CONFIG_PATH}")
    if config_changed or not answers():
        _stop_daemon()
        _start_daemon()
        deadline = time.monotonic() + START_TIMEOUT
        while not answers() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not answers():
            return CacheStatus(
                False, actions, f"apt-cacher-ng did not answer on {CACHE_ADDRESS}:{CACHE_PORT}"
            )
        actions.append(f"started apt-cacher-ng on {CACHE_URL}")
    return CacheStatus(True, actions)


def purge_cache() -> list[str]:
    """Stop the cache and delete what it holds (`lab down --purge`); the package stays."""
    removed = []
    if _daemon_pids():
        _stop_daemon()
        removed.append("apt-cacher-ng (stopped)")
    if CACHE_DIR.is_dir():
        for entry in CACHE_DIR.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        removed.append(f"{CACHE_DIR}/*")
    if CONFIG_PATH.is_file():
        CONFIG_PATH.unlink()
        removed.append(str(CONFIG_PATH))
    if _address_present():
        subprocess.run(
            ["ip", "addr", "del", f"{CACHE_ADDRESS}/32", "dev", "lo"], capture_output=True
        )
        removed.append(f"{CACHE_ADDRESS} on lo")
    return removed
