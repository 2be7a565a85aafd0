"""Calling podman: one place that turns its failures into errors a user can act on."""

from __future__ import annotations

import json
import subprocess
from typing import IO, Any

from opsledger.errors import OpsledgerError, Problem


def podman(
    *args: str,
    check: bool = True,
    stdin: IO[bytes] | None = None,
    input_text: str | None = None,
    timeout: float | None = 600,
) -> subprocess.CompletedProcess:
    """Run `podman ARGS`; with check, a non-zero exit raises OpsledgerError with podman's words."""
    try:
        proc = subprocess.run(
            ["podman", *args],
            stdin=stdin,
            input=input_text,
            capture_output=True,
            text=stdin is None,
            timeout=timeout,
        )
    except FileNotFoundError:
        raise OpsledgerError(
            Problem(
                "podman is not installed", fix="run `opsledger lab up` as root; it installs podman"
            )
        ) from None
    except subprocess.TimeoutExpired:
        raise OpsledgerError(
            Problem(
                f"podman {args[0]} timed out after {timeout}s",
                fix="see `podman ps -a` and the troubleshooting section of README.md",
            )
        ) from None
    if check and proc.returncode != 0:
        err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
        message = (err.strip().splitlines() or ["(no output)"])[-1]
        raise OpsledgerError(
            Problem(
                f"podman {' '.join(args[:2])} failed: {message}",
                fix="see the troubleshooting section of README.md",
            ),
            1,
        )
    return proc


def inspect_container(name: str) -> dict[str, Any] | None:
    """`podman container inspect` of one container, or None when it does not exist."""
    proc = podman("container", "inspect", name, check=False)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)
    return data[0] if data else None


def containers_with_label(label: str) -> list[dict[str, Any]]:
    """Every container (running or not) carrying label `key=value`."""
    proc = podman("ps", "--all", "--format", "json", "--filter", f"label={label}")
    return json.loads(proc.stdout or "[]")


def network_exists(name: str) -> bool:
    return podman("network", "exists", name, check=False).returncode == 0
