"""`opsledger lab ...`: the local lab of systemd hosts (podman containers reached over SSH)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import click
from rich.console import Console
from rich.table import Table

from opsledger.cli.options import output_option
from opsledger.cli.output import console as table_console
from opsledger.errors import EXIT_FAILED
from opsledger.project import find_project

console = Console(stderr=True, highlight=False)


def _progress(message: str) -> None:
    console.print(f"[dim]·[/dim] {message}")


@click.group()
def lab() -> None:
    """Run the local lab: the hosts of inventories/lab as podman systemd containers.

    \b
    Example:
        opsledger lab up && opsledger lab status
    """


@lab.command()
def up() -> None:
    """Create or update the lab to match inventories/lab (idempotent; needs root).

    Installs and configures podman when missing, builds the base image once, starts each host
    with sshd on its 127.0.0.1 port and an admin user, and waits until SSH answers. The image
    comes from $OPSLEDGER_DEBIAN_MIRROR and $OPSLEDGER_DEBIAN_SECURITY_MIRROR when set.

    \b
    Example:
        opsledger lab up
    """
    from opsledger.lab.service import lab_up

    result = lab_up(find_project(), progress=_progress)
    table = Table("host", "container", "ssh port", "action", "systemd", title="lab")
    for host in result.hosts:
        table.add_row(
            host.name, host.container, f"127.0.0.1:{host.port}", host.action, host.system_state
        )
    table_console().print(table)
    for name in result.removed:
        click.echo(f"removed {name} (no longer in the inventory)")
    click.echo("lab is up; nothing changed" if not result.changed else "lab is up")


@lab.command()
def image() -> None:
    """Build the lab's Debian 12 base image once (cached; also tagged latest for Molecule).

    Debootstrap reads $OPSLEDGER_DEBIAN_MIRROR and $OPSLEDGER_DEBIAN_SECURITY_MIRROR when set
    (default: the mirrors this machine's apt uses, else deb.debian.org).

    \b
    Example:
        opsledger lab image
    """
    from opsledger.lab.service import lab_image

    result = lab_image(find_project(), progress=_progress)
    click.echo(f"{result.ref} ({'built' if result.built else 'cached'}), tagged latest")


@lab.command()
@click.option("--purge", is_flag=True, help="Also delete the cached base image.")
def down(purge: bool) -> None:
    """Remove every lab container, network and file `lab up` created.

    \b
    Example:
        opsledger lab down --purge
    """
    from opsledger.lab.service import lab_down

    result = lab_down(find_project(), purge=purge, progress=_progress)
    removed = [*result.containers, *result.networks, *result.volumes, *result.files, *result.images]
    click.echo(f"removed {len(removed)} item(s)" if removed else "lab was already down")


@lab.command()
@output_option("text", "json")
def status(fmt: str) -> None:
    """Show each lab host, its SSH port, container state and whether SSH answers.

    Services a host publishes on this machine's loopback (`lab_published_ports`: Prometheus
    and Alertmanager of lab-mon1) are listed with their URLs. Exits 1 when a host is missing
    or does not answer.

    \b
    Example:
        opsledger lab status --json
    """
    from opsledger.lab.service import lab_status

    result = lab_status(find_project())
    if fmt == "json":
        click.echo(json.dumps([asdict(h) for h in result.hosts], indent=2))
    else:
        table = Table("host", "groups", "container", "ssh port", "state", "ssh", title="lab")
        for h in result.hosts:
            table.add_row(
                h.name + ("" if h.in_inventory else " (not in inventory)"),
                ",".join(h.groups),
                h.container,
                f"127.0.0.1:{h.port}",
                h.state,
                "[green]answers[/green]" if h.ssh else "[red]no[/red]",
            )
        table_console().print(table)
        for h in result.hosts:
            for name, url in h.urls.items():
                click.echo(f"{name} ({h.name}): {url}")
        click.echo(
            f"package cache: {result.cache_url}"
            if result.cache_url
            else "package cache: not answering (hosts use the Debian mirror directly; "
            "`opsledger lab up` starts it)"
        )
    if not result.healthy:
        raise SystemExit(EXIT_FAILED)


@lab.command(context_settings={"ignore_unknown_options": True})
@click.argument("host")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(host: str, command: tuple[str, ...]) -> None:
    """Open a shell on a lab host as its admin user, or run COMMAND there.

    \b
    Example:
        opsledger lab ssh lab-db1 -- sudo systemctl is-system-running
    """
    from opsledger.lab.service import lab_ssh_command

    argv = lab_ssh_command(find_project(), host, command)
    os.execvp(argv[0], argv)
