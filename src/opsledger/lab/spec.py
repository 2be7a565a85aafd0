"""What the lab should look like, derived from `inventories/lab` and validated before anything runs.

The inventory is the single source of truth: each host's SSH port, admin user, key file and
known_hosts file are the values Ansible itself will use, so `ansible -i inventories/lab` and the
lab can never disagree. Everything the lab writes (podman settings, sysctl, container arguments)
is rendered here as plain data, which keeps it testable without root or podman.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from opsledger.errors import OpsledgerError, Problem
from opsledger.inventory import Inventory, InventoryHost
from opsledger.project import Project

LABEL = "io.opsledger"  # prefix of every podman label the lab sets
PORT_MIN, PORT_MAX = 1024, 65535
_CAPABILITY = re.compile(r"^(CAP_)?[A-Z_]+$")
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_VOLUME = re.compile(r"^[a-z0-9][a-z0-9_.-]*:/[^:]*$")

# Podman settings that work on these machines (cgroup v1 hybrid, hard nofile 20000): crun and
# the systemd cgroup manager fail here, and without explicit ulimits containers inherit limits
# that systemd inside rejects. The network backend is pinned to netavark, whose networks carry
# aardvark-dns on the gateway (CNI's have no DNS; see host_setup). Written as a drop-in so a
# user's containers.conf stays theirs.
NETWORK_BACKEND = "netavark"
CONTAINERS_CONF_PATH = Path("/etc/containers/containers.conf.d/50-opsledger-lab.conf")
CONTAINERS_CONF = f"""\
# Written by `opsledger lab up`: podman settings the lab's systemd containers need here.
[containers]
default_ulimits = ["nofile=1024:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "{NETWORK_BACKEND}"
"""

# Each systemd container holds ~6 inotify instances; the kernel default of 128 per user caps a
# lab at ~21 hosts, the rest stay "initializing" forever.
SYSCTL_PATH = Path("/etc/sysctl.d/60-opsledger-lab.conf")
SYSCTL_MINIMUMS = {
    "fs.inotify.max_user_instances": 8192,
    "fs.inotify.max_user_watches": 524288,
}


def render_sysctl_conf() -> str:
    lines = ["# Written by `opsledger lab up`: inotify limits for many systemd containers."]
    lines += [f"{key} = {value}" for key, value in SYSCTL_MINIMUMS.items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PublishedPort:
    """A service port of a lab host published on this machine's loopback (`lab_published_ports`).

    Only loopback: the lab's services (Prometheus, Alertmanager) are reached from this machine,
    never offered to the network it sits on.
    """

    name: str
    host_port: int
    container_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"


@dataclass(frozen=True)
class LabHost:
    """One lab host as the lab will run it."""

    name: str
    groups: tuple[str, ...]
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    capabilities: tuple[str, ...]
    container: str
    volumes: tuple[str, ...] = ()  # "volume-name:/mount/path", shared by hosts naming it
    published: tuple[PublishedPort, ...] = ()

    @property
    def address(self) -> str:
        return "127.0.0.1"


@dataclass(frozen=True)
class LabSpec:
    """The whole lab: hosts plus the shared network and where host keys live."""

    project: Project
    hosts: tuple[LabHost, ...]
    network: str
    subnet: str | None = None

    @property
    def project_label(self) -> str:
        return str(self.project.root)

    @property
    def hostkey_dir(self) -> Path:
        return self.project.lab_state_dir / "hostkeys"

    def host(self, name: str) -> LabHost:
        for host in self.hosts:
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts)
        raise OpsledgerError(Problem(f"no lab host named {name!r}", fix=f"use one of: {known}"))

    def volume_names(self) -> list[str]:
        return sorted({v.split(":", 1)[0] for h in self.hosts for v in h.volumes})

    def key_files(self) -> list[Path]:
        return sorted({h.key_file for h in self.hosts})

    def known_hosts_files(self) -> list[Path]:
        return sorted({h.known_hosts for h in self.hosts})


def _ssh_option(common_args: str, option: str) -> str | None:
    """Value of `-o Option=value` inside ansible_ssh_common_args (case-insensitive option)."""
    match = re.search(rf"-o\s*{option}=(\S+)", common_args or "", re.IGNORECASE)
    return match.group(1) if match else None


def next_free_port(taken: Iterable[int], start: int = 2201) -> int:
    """Smallest port >= start that is neither taken by another lab host nor bound on loopback."""
    used = set(taken)
    for port in range(start, PORT_MAX + 1):
        if port not in used and not port_in_use(port):
            return port
    raise OpsledgerError(f"no free TCP port on 127.0.0.1 from {start} up")


def port_in_use(port: int) -> bool:
    """True when something already listens on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _host_problems(host: InventoryHost, source: str) -> list[Problem]:
    """Problems with one host's lab settings, each naming the variable and the fix."""
    problems: list[Problem] = []
    where = f"{host.name}"
    if not _HOSTNAME.fullmatch(host.name):
        problems.append(
            Problem(
                "not a valid host name for a lab host",
                source,
                where,
                "use lowercase letters, digits and dashes",
            )
        )
    address = str(host.get("ansible_host", ""))
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = address == "localhost"
    if not loopback:
        problems.append(
            Problem(
                f"ansible_host is {address or 'unset'!r}; lab hosts are reached on loopback only",
                source,
                f"{where}.ansible_host",
                "set ansible_host: 127.0.0.1",
            )
        )
    user = host.get("ansible_user")
    if not user or user == "root":
        problems.append(
            Problem(
                "lab hosts need a non-root admin user",
                source,
                f"{where}.ansible_user",
                "set ansible_user (e.g. opsadmin)",
            )
        )
    if not host.get("ansible_ssh_private_key_file"):
        problems.append(
            Problem(
                "no SSH key file",
                source,
                f"{where}.ansible_ssh_private_key_file",
                "point it at .opsledger/lab/id_ed25519 (see group_vars/all)",
            )
        )
    if not _ssh_option(host.get("ansible_ssh_common_args", ""), "UserKnownHostsFile"):
        problems.append(
            Problem(
                "no lab known_hosts file",
                source,
                f"{where}.ansible_ssh_common_args",
                "add -o UserKnownHostsFile=<...>/.opsledger/lab/known_hosts",
            )
        )
    caps = host.get("lab_capabilities", [])
    if not isinstance(caps, list) or not all(
        isinstance(c, str) and _CAPABILITY.fullmatch(c) for c in caps
    ):
        problems.append(
            Problem(
                f"lab_capabilities must be a list of capability names, got {caps!r}",
                source,
                f"{where}.lab_capabilities",
                "e.g. [NET_ADMIN]",
            )
        )
    volumes = host.get("lab_volumes", [])
    if not isinstance(volumes, list) or not all(
        isinstance(v, str) and _VOLUME.fullmatch(v) for v in volumes
    ):
        problems.append(
            Problem(
                f"lab_volumes must be a list of 'name:/path' strings, got {volumes!r}",
                source,
                f"{where}.lab_volumes",
                "e.g. [opsledger-lab-pgbackrest:/var/lib/pgbackrest]",
            )
        )
    return problems


def _published(host: InventoryHost, source: str) -> tuple[list[PublishedPort], list[Problem]]:
    """A host's `lab_published_ports`, each {name, host_port, container_port}, checked."""
    value = host.get("lab_published_ports", [])
    where = f"{host.name}.lab_published_ports"
    example = "e.g. [{name: prometheus, host_port: 19090, container_port: 9090}]"
    if not isinstance(value, list):
        return [], [Problem(f"must be a list, got {value!r}"[:200], source, where, example)]
    ports, problems = [], []
    for index, entry in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"name", "host_port", "container_port"}:
            problems.append(
                Problem(
                    "each entry has exactly name, host_port and container_port",
                    source,
                    at,
                    example,
                )
            )
            continue
        name, outer, inner = entry["name"], entry["host_port"], entry["container_port"]
        if not isinstance(name, str) or not _HOSTNAME.fullmatch(name):
            problems.append(
                Problem(f"name {name!r} is not a short name", source, f"{at}.name", "e.g. grafana")
            )
            continue
        if (
            isinstance(outer, bool)
            or not isinstance(outer, int)
            or not PORT_MIN <= outer <= PORT_MAX
        ):
            problems.append(
                Problem(
                    f"host_port {outer!r} is not a port in {PORT_MIN}-{PORT_MAX}",
                    source,
                    f"{at}.host_port",
                    "pick an unprivileged port of this machine, e.g. 19090",
                )
            )
            continue
        if isinstance(inner, bool) or not isinstance(inner, int) or not 1 <= inner <= PORT_MAX:
            problems.append(
                Problem(
                    f"container_port {inner!r} is not a port",
                    source,
                    f"{at}.container_port",
                    "the port the service listens on inside the host, e.g. 9090",
                )
            )
            continue
        if inner == 22:
            problems.append(
                Problem(
                    "sshd is already published at ansible_port",
                    source,
                    f"{at}.container_port",
                    "publish another service",
                )
            )
            continue
        ports.append(PublishedPort(name, outer, inner))
    return ports, problems


def build_spec(project: Project, inventory: Inventory) -> LabSpec:
    """Validate the lab inventory and turn it into a LabSpec; report every problem at once.

    Example:
        spec = build_spec(project, load_inventory(project.inventory_file("lab")))
    """
    source = str(inventory.source)
    problems: list[Problem] = []
    ports: dict[int, str] = {}
    raw_ports: dict[str, int | None] = {}
    published: dict[str, list[PublishedPort]] = {}
    for host in inventory.hosts.values():
        problems += _host_problems(host, source)
        published[host.name], found = _published(host, source)
        problems += found
        value = host.get("ansible_port")
        try:
            port = int(value) if value is not None else None
        except (TypeError, ValueError):
            port = None
            problems.append(
                Problem(
                    f"ansible_port {value!r} is not a number",
                    source,
                    f"{host.name}.ansible_port",
                    "use a TCP port, e.g. 2201",
                )
            )
        raw_ports[host.name] = port
        if port is None:
            continue
        if not PORT_MIN <= port <= PORT_MAX:
            problems.append(
                Problem(
                    f"ansible_port {port} is outside {PORT_MIN}-{PORT_MAX}",
                    source,
                    f"{host.name}.ansible_port",
                    "pick an unprivileged port, e.g. 2201",
                )
            )
        elif port in ports:
            problems.append(
                Problem(
                    f"ansible_port {port} is also used by {ports[port]}",
                    source,
                    f"{host.name}.ansible_port",
                    f"use a free one, e.g. {next_free_port(ports)}",
                )
            )
        else:
            ports[port] = host.name
    for name, port in raw_ports.items():
        if port is None and not any(p.field == f"{name}.ansible_port" for p in problems):
            problems.append(
                Problem(
                    "no ansible_port: each lab host publishes sshd on its own loopback port",
                    source,
                    f"{name}.ansible_port",
                    f"set ansible_port: {next_free_port(ports)}",
                )
            )
    # A published port is a loopback port like any host's sshd: unique across the lab.
    for name, entries in published.items():
        for entry in entries:
            where = f"{name}.lab_published_ports.{entry.name}.host_port"
            if entry.host_port in ports:
                problems.append(
                    Problem(
                        f"host_port {entry.host_port} is also used by {ports[entry.host_port]}",
                        source,
                        where,
                        f"use a free one, e.g. {next_free_port(ports, entry.host_port)}",
                    )
                )
            else:
                ports[entry.host_port] = f"{name} ({entry.name})"
    if problems:
        raise OpsledgerError(problems)

    # Lab-wide settings come from group_vars/all in practice; read them from the first host.
    first = next(iter(inventory.hosts.values()))
    prefix = str(first.get("lab_container_prefix", "opsledger-"))
    network = str(first.get("lab_network", "opsledger-lab"))
    subnet = first.get("lab_network_subnet")
    if subnet is not None:
        try:
            subnet = str(ipaddress.ip_network(str(subnet)))
        except ValueError:
            raise OpsledgerError(
                Problem(
                    f"lab_network_subnet {subnet!r} is not a network",
                    source,
                    "lab_network_subnet",
                    "use CIDR notation, e.g. 10.89.70.0/24",
                )
            ) from None
    hosts = []
    for host in inventory.hosts.values():
        known_hosts = _ssh_option(host.get("ansible_ssh_common_args", ""), "UserKnownHostsFile")
        hosts.append(
            LabHost(
                name=host.name,
                groups=host.groups,
                port=int(host.get("ansible_port")),
                user=str(host.get("ansible_user")),
                key_file=Path(str(host.get("ansible_ssh_private_key_file"))).resolve(),
                known_hosts=Path(str(known_hosts)).resolve(),
                capabilities=tuple(
                    c.removeprefix("CAP_") for c in host.get("lab_capabilities", [])
                ),
                container=f"{prefix}{host.name}",
                volumes=tuple(host.get("lab_volumes", [])),
                published=tuple(published[host.name]),
            )
        )
    return LabSpec(project=project, hosts=tuple(hosts), network=network, subnet=subnet)


def create_args(spec: LabSpec, host: LabHost, image: str) -> list[str]:
    """`podman create` arguments for one host (without the labels, which carry their hash)."""
    args = [
        "--name",
        host.container,
        "--hostname",
        host.name,
        "--network",
        spec.network,
        "--network-alias",
        host.name,
        "--publish",
        f"127.0.0.1:{host.port}:22",
        # systemd as PID 1: podman mounts /run, /tmp tmpfs and sets the stop signal for it.
        "--systemd",
        "always",
        # /etc/resolv.conf and /etc/hosts belong to the desired state (the network role), not
        # to podman, which would rewrite them at every start and leave the host drifted after a
        # restart. `lab up` seeds both for the first converge (provision.sh).
        "--dns",
        "none",
        "--no-hosts",
    ]
    # Service ports (lab_published_ports) on loopback only; a host without any keeps exactly
    # the arguments (and so the spec hash) it had before they existed.
    for port in host.published:
        args += ["--publish", f"127.0.0.1:{port.host_port}:{port.container_port}"]
    for cap in host.capabilities:
        args += ["--cap-add", cap]
    for volume in host.volumes:
        args += ["--volume", volume]
    return [*args, image, "/sbin/init"]


def spec_hash(args: list[str]) -> str:
    """Identity of a container's definition: a different hash means the container is replaced."""
    return hashlib.sha256(json.dumps(args).encode()).hexdigest()[:16]


def labels(spec: LabSpec, host: LabHost, definition: str) -> dict[str, str]:
    return {
        f"{LABEL}.lab": "1",
        f"{LABEL}.project": spec.project_label,
        f"{LABEL}.host": host.name,
        f"{LABEL}.spec": definition,
    }


def known_hosts_line(host: LabHost, public_host_key: str) -> str:
    """known_hosts entry for a host key: ssh names non-22 ports as [addr]:port."""
    key_type, key_data = public_host_key.split()[:2]
    return f"[{host.address}]:{host.port} {key_type} {key_data}"
