"""The lab's use cases: `up`, `down`, `status`, `ssh` — each returns a result object.

`up` converges the running lab to `inventories/lab` (create, start, replace or remove
containers) and is a no-op when it already matches; `down` removes everything `up` made, found
by podman labels rather than by the inventory, so it works even after the inventory changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from opsledger.errors import EXIT_FAILED, OpsledgerError, Problem
from opsledger.inventory import load_inventory
from opsledger.lab import cache, host_setup, image, netcheck, ssh
from opsledger.lab.podman import containers_with_label, inspect_container, network_exists, podman
from opsledger.lab.spec import (
    LABEL,
    LabHost,
    LabSpec,
    build_spec,
    create_args,
    labels,
    next_free_port,
    port_in_use,
    spec_hash,
)
from opsledger.project import Project

BOOT_TIMEOUT = 90  # seconds for systemd to finish booting; measured < 2 s, slack for a busy CI
SSH_TIMEOUT = 60

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class HostResult:
    """What `up` did to one host: created, started, replaced, repaired or unchanged."""

    name: str
    container: str
    port: int
    action: str
    system_state: str = ""


@dataclass
class UpResult:
    hosts: list[HostResult]
    image: str
    image_built: bool
    host_changes: list[str]
    removed: list[str] = field(default_factory=list)
    cache_up: bool = False

    @property
    def changed(self) -> bool:
        return (
            self.image_built
            or bool(self.host_changes)
            or bool(self.removed)
            or any(h.action != "unchanged" for h in self.hosts)
        )


@dataclass
class DownResult:
    containers: list[str]
    networks: list[str]
    volumes: list[str]
    files: list[str]
    images: list[str]


@dataclass
class HostStatus:
    name: str
    groups: tuple[str, ...]
    container: str
    port: int
    state: str  # podman state, or "absent"
    ssh: bool
    in_inventory: bool = True
    # service name -> URL on this machine's loopback (lab_published_ports), e.g. Prometheus
    urls: dict[str, str] = field(default_factory=dict)


@dataclass
class StatusResult:
    hosts: list[HostStatus]
    cache_url: str = ""  # empty when the package cache does not answer

    @property
    def healthy(self) -> bool:
        return bool(self.hosts) and all(h.ssh and h.in_inventory for h in self.hosts)


def load_spec(project: Project) -> LabSpec:
    return build_spec(project, load_inventory(project.inventory_file("lab")))


@contextlib.contextmanager
def _lab_lock(project: Project, progress: Progress) -> Iterator[None]:
    """Serialise lab commands of one checkout (flock on its root: no lock file to clean up)."""
    fd = os.open(project.root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("another lab command runs in this checkout; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _definition(spec: LabSpec, host: LabHost, image_ref: str) -> tuple[list[str], str]:
    args = create_args(spec, host, image_ref)
    host_key = ssh.host_key_path(spec, host).with_suffix(".pub").read_text().strip()
    return args, spec_hash([*args, host_key, host.user])


def _network_info(name: str) -> dict:
    proc = podman("network", "inspect", name)
    data = json.loads(proc.stdout or "[]")
    return data[0] if data else {}


def _network_subnets(name: str) -> list[str]:
    return [s.get("subnet", "") for s in _network_info(name).get("subnets") or []]


def network_gateway(name: str) -> str:
    """The lab network's gateway: where podman's DNS (aardvark-dns) answers for lab names."""
    for subnet in _network_info(name).get("subnets") or []:
        if subnet.get("gateway"):
            return str(subnet["gateway"])
    raise OpsledgerError(
        Problem(
            f"podman network {name} has no gateway",
            fix="`opsledger lab down && opsledger lab up` recreates it",
        ),
        EXIT_FAILED,
    )


def _ensure_network(spec: LabSpec, progress: Progress) -> None:
    """Create the lab network and shared volumes, labelled so `down` finds them.

    A network whose subnet no longer matches the inventory is recreated, with the containers
    on it (podman cannot change a network's subnet in place).
    """
    label = f"{LABEL}.project={spec.project_label}"
    # A network or volume left by a deleted checkout goes, with the containers that use it; one
    # of a checkout that still exists goes only when no container uses it any more.
    for kind, name in [("network", spec.network)] + [("volume", v) for v in spec.volume_names()]:
        owner = _owner(kind, name)
        if not owner or owner == spec.project_label:
            continue
        users = _users(kind, name)
        if _orphaned(owner):
            progress(f"{kind} {name} belonged to {owner}, now deleted; replacing it")
            podman(kind, "rm", "--force", name)
        elif not users:
            progress(f"{kind} {name} of {owner} is used by no container; taking it over")
            podman(kind, "rm", name)
        else:
            # Another checkout's lab (its hosts, ports and addresses): sharing it would let
            # one checkout's `lab down` pull the network from under the other's runs.
            raise OpsledgerError(
                Problem(
                    f"podman {kind} {name} belongs to the lab of another checkout ({owner}), "
                    f"and its containers use it: {', '.join(users)}",
                    str(spec.project.inventory_file("lab")),
                    "lab_network" if kind == "network" else "lab_container_prefix",
                    "run `opsledger lab down` in that checkout, or give this one its own "
                    "lab_network, lab_container_prefix and ports in "
                    "inventories/lab/group_vars/all/lab.yml",
                )
            )
    if network_exists(spec.network):
        info = _network_info(spec.network)
        reason = ""
        if spec.subnet and spec.subnet not in _network_subnets(spec.network):
            reason = f"subnet changed to {spec.subnet}"
        elif not info.get("dns_enabled"):
            # made by CNI (or with --disable-dns): the lab's names and resolvers need its DNS
            reason = "it has no DNS server"
        if reason and _owner("network", spec.network) != spec.project_label:
            raise OpsledgerError(
                Problem(
                    f"podman network {spec.network} exists, is not this lab's, and {reason}",
                    str(spec.project.inventory_file("lab")),
                    "lab_network",
                    f"remove it (`podman network rm {spec.network}`) or name another "
                    "lab_network in inventories/lab/group_vars/all/lab.yml",
                )
            )
        if reason:
            progress(f"network {spec.network}: {reason}, recreating it")
            for info in containers_with_label(label):
                _remove_container(info, progress)
            podman("network", "rm", "--force", spec.network)
    if not network_exists(spec.network):
        subnet = ["--subnet", spec.subnet] if spec.subnet else []
        podman("network", "create", "--label", label, *subnet, spec.network)
    for volume in spec.volume_names():
        if podman("volume", "exists", volume, check=False).returncode != 0:
            podman("volume", "create", "--label", label, volume)


def _wait_booted(container: str) -> str:
    """Wait for systemd to finish booting; 'degraded' still boots (a unit failed, not the host).

    Right after `podman start`, systemctl cannot reach systemd's bus yet and prints nothing, so
    poll until it names a final state.
    """
    deadline = time.monotonic() + BOOT_TIMEOUT
    state = "unknown"
    while time.monotonic() < deadline:
        proc = podman(
            "exec",
            container,
            "systemctl",
            "is-system-running",
            "--wait",
            check=False,
            timeout=BOOT_TIMEOUT,
        )
        state = proc.stdout.strip() or "unknown"
        if state in ("running", "degraded", "maintenance", "stopping"):
            return state
        time.sleep(0.2)
    return state


def _provision(host: LabHost, nameserver: str) -> bool:
    script = resources.files("opsledger.lab").joinpath("files/provision.sh").read_text()
    pubkey = host.key_file.with_suffix(".pub").read_text().strip()
    proc = podman(
        "exec",
        "-i",
        host.container,
        "sh",
        "-s",
        "--",
        host.user,
        pubkey,
        nameserver,
        host.name,
        input_text=script,
    )
    return "changed=1" in proc.stdout


def _wait_ssh(host: LabHost) -> None:
    deadline = time.monotonic() + SSH_TIMEOUT
    while time.monotonic() < deadline:
        if ssh.ssh_answers(host):
            return
        time.sleep(0.5)
    raise OpsledgerError(
        Problem(
            f"{host.name}: SSH on 127.0.0.1:{host.port} did not answer within {SSH_TIMEOUT}s",
            fix=f"check `podman logs {host.container}` and `opsledger lab status`",
        ),
        EXIT_FAILED,
    )


def _check_ports(spec: LabSpec) -> None:
    """Fail before anything starts when a port is held by anything but its own lab container.

    A half-created lab is worse than none, so every port is checked up front.
    """
    problems = []
    taken = [h.port for h in spec.hosts]
    for host in spec.hosts:
        info = inspect_container(host.container)
        ours = (
            info is not None
            and info["State"]["Running"]
            and ((info["Config"]["Labels"] or {}).get(f"{LABEL}.port") == str(host.port))
        )
        if not ours and port_in_use(host.port):
            problems.append(
                Problem(
                    f"port 127.0.0.1:{host.port} is already in use by another program",
                    str(spec.project.inventory_file("lab")),
                    f"{host.name}.ansible_port",
                    f"stop that program or set ansible_port: {next_free_port(taken)}",
                )
            )
            taken.append(next_free_port(taken))
        for published in host.published:
            if not ours and port_in_use(published.host_port):
                problems.append(
                    Problem(
                        f"port 127.0.0.1:{published.host_port} is already in use by another "
                        "program",
                        str(spec.project.inventory_file("lab")),
                        f"{host.name}.lab_published_ports.{published.name}.host_port",
                        f"stop that program or use a free port, e.g. "
                        f"{next_free_port(taken, published.host_port)}",
                    )
                )
    if problems:
        raise OpsledgerError(problems)


def _create(spec: LabSpec, host: LabHost, args: list[str], definition: str) -> None:
    label_args = []
    for key, value in {
        **labels(spec, host, definition),
        f"{LABEL}.port": str(host.port),
        f"{LABEL}.user": host.user,
    }.items():
        label_args += ["--label", f"{key}={value}"]
    podman("create", *label_args, *args)
    key = ssh.host_key_path(spec, host)
    podman("cp", str(key), f"{host.container}:/etc/ssh/ssh_host_ed25519_key")
    podman(
        "cp", str(key.with_suffix(".pub")), f"{host.container}:/etc/ssh/ssh_host_ed25519_key.pub"
    )


def _owner(kind: str, name: str) -> str | None:
    """The checkout a lab network or volume was created for (None: absent or not ours)."""
    found = podman(kind, "inspect", name, check=False)
    if found.returncode != 0:
        return None
    info = json.loads(found.stdout or "[]")
    labels = (info[0].get("Labels") or info[0].get("labels") or {}) if info else {}
    return labels.get(f"{LABEL}.project")


def _users(kind: str, name: str) -> list[str]:
    """Names of the containers (running or not) attached to a network or using a volume."""
    found = podman("ps", "--all", "--format", "{{.Names}}", "--filter", f"{kind}={name}")
    return found.stdout.split()


def _alive(pid: int) -> bool:
    return pid > 0 and Path(f"/proc/{pid}").exists()


def _orphaned(owner: str | None) -> bool:
    """A lab container whose checkout no longer exists has nobody to run `lab down` for it.

    Such containers are left behind by deleted clones (CI workspaces, scratch checkouts); taking
    them over is safe, while a container of a checkout that still exists is somebody's lab.
    """
    return owner is not None and not (Path(owner) / "inventories").is_dir()


@dataclass
class _Retired:
    """A host's container after stale ones were removed: what is left and what happened."""

    current: dict | None
    action: str  # "unchanged" or "replaced"


def _retire_stale(spec: LabSpec, host: LabHost, definition: str, progress: Progress) -> _Retired:
    """Remove the host's container when it cannot be kept; refuse another checkout's."""
    current = inspect_container(host.container)
    action = "unchanged"
    if current is not None:
        theirs = current["Config"]["Labels"] or {}
        running = current["State"]["Running"]
        if running and not _alive(current["State"].get("Pid") or 0):
            # podman's database survived a restart of the machine (or of its runtime state)
            # that its processes did not: the container cannot exec or stop; start it afresh
            progress(f"{host.name}: {host.container} is marked running but its processes are gone")
            podman("rm", "--force", host.container)
            current, running, action = None, False, "replaced"
    if current is not None:
        owner = theirs.get(f"{LABEL}.project")
        if owner != spec.project_label:
            if running and not _orphaned(owner):
                raise OpsledgerError(
                    Problem(
                        f"container {host.container} is running for another checkout "
                        f"({theirs.get(f'{LABEL}.project', 'not opsledger')})",
                        field=host.name,
                        fix="run `opsledger lab down` in that checkout, or set "
                        "lab_container_prefix in inventories/lab/group_vars/all",
                    )
                )
            if running:
                progress(
                    f"{host.name}: {host.container} belonged to {owner}, now deleted; replacing it"
                )
            podman("rm", "--force", host.container)
            current, action = None, "replaced"
        elif theirs.get(f"{LABEL}.spec") != definition:
            progress(f"{host.name}: definition changed, replacing its container")
            ssh.close_control_masters(host)
            podman("rm", "--force", "--time", "5", host.container)
            current, action = None, "replaced"
    return _Retired(current, action)


def _reset_orphaned_volumes(spec: LabSpec, kept: set[str], progress: Progress) -> None:
    """Empty a shared volume whose every user is a new container.

    A volume outlives its containers; the db hosts' pgBackRest repository then holds the
    backups of clusters that no longer exist, and the new primary's `stanza-create` fails
    ("backup and archive info files exist but do not match the database"). When no container
    that used a volume is kept, nothing can still need what it holds.
    """
    for volume in spec.volume_names():
        users = [h for h in spec.hosts if any(v.startswith(f"{volume}:") for v in h.volumes)]
        if not users or any(h.name in kept for h in users):
            continue
        found = podman("volume", "inspect", volume, check=False)
        mountpoint = (
            json.loads(found.stdout or "[{}]")[0].get("Mountpoint", "")
            if (found.returncode == 0)
            else ""
        )
        if mountpoint and any(Path(mountpoint).iterdir()):
            progress(f"volume {volume}: every host using it is new, emptying it")
            podman("volume", "rm", "--force", volume)
            podman("volume", "create", "--label", f"{LABEL}.project={spec.project_label}", volume)


def _up_host(
    spec: LabSpec,
    host: LabHost,
    image_ref: str,
    nameserver: str,
    retired: _Retired,
    progress: Progress,
) -> HostResult:
    args, definition = _definition(spec, host, image_ref)
    current, action = retired.current, retired.action
    if current is None:
        _create(spec, host, args, definition)
        action = "created" if action == "unchanged" else action
    if current is None or not current["State"]["Running"]:
        podman("start", host.container)
        action = "started" if action == "unchanged" else action
    state = _wait_booted(host.container)
    if action == "unchanged" and ssh.ssh_answers(host):
        return HostResult(host.name, host.container, host.port, action, state)
    if _provision(host, nameserver) and action == "unchanged":
        action = "repaired"
    _wait_ssh(host)
    progress(f"{host.name}: {action} (127.0.0.1:{host.port}, systemd {state})")
    return HostResult(host.name, host.container, host.port, action, state)


def _remove_container(info: dict, progress: Progress) -> tuple[str, str]:
    """Remove one lab container; returns (container, lab host name)."""
    name = info["Names"][0]
    lab_labels = info.get("Labels") or {}
    if f"{LABEL}.port" in lab_labels:
        host = LabHost(
            lab_labels.get(f"{LABEL}.host", name),
            (),
            int(lab_labels[f"{LABEL}.port"]),
            lab_labels.get(f"{LABEL}.user", "root"),
            Path(),
            Path(),
            (),
            name,
        )
        ssh.close_control_masters(host)
    podman("rm", "--force", "--time", "5", name)
    progress(f"removed container {name}")
    return name, lab_labels.get(f"{LABEL}.host", name)


def lab_up(project: Project, *, progress: Progress = _quiet) -> UpResult:
    """Bring the lab to match inventories/lab; a second call with nothing changed does nothing.

    Example:
        result = lab_up(find_project())
        [(h.name, h.action) for h in result.hosts]  # [('lab-db1', 'created'), ...]
    """
    host_setup.require_root()
    spec = load_spec(project)  # invalid inventory: fail before touching the machine
    with _lab_lock(project, progress):
        host_changes = host_setup.prepare_host(spec.project_label)
        for change in host_changes:
            progress(change)
        cache_status = _ensure_cache(progress)
        _check_ports(spec)
        recipe = image.default_recipe()
        if not image.image_exists(recipe.ref):
            progress(f"building base image {recipe.ref} with debootstrap (about a minute, once)")
        image_ref, built = image.ensure_image(recipe)
        for key_file in spec.key_files():
            ssh.ensure_keypair(key_file, "opsledger-lab-admin")
        for host in spec.hosts:
            ssh.ensure_keypair(ssh.host_key_path(spec, host), f"root@{host.name}")
        ssh.write_known_hosts(spec)
        _ensure_network(spec, progress)
        nameserver = network_gateway(spec.network)

        wanted = {h.container for h in spec.hosts}
        removed = [
            _remove_container(c, progress)[0]
            for c in containers_with_label(f"{LABEL}.project={spec.project_label}")
            if c["Names"][0] not in wanted
        ]

        retired = {
            h.name: _retire_stale(spec, h, _definition(spec, h, image_ref)[1], progress)
            for h in spec.hosts
        }
        _reset_orphaned_volumes(
            spec, {name for name, r in retired.items() if r.current is not None}, progress
        )
        with ThreadPoolExecutor(max_workers=min(8, len(spec.hosts))) as pool:
            futures = [
                pool.submit(_up_host, spec, h, image_ref, nameserver, retired[h.name], progress)
                for h in spec.hosts
            ]
            results, problems = [], []
            for future in futures:
                try:
                    results.append(future.result())
                except OpsledgerError as exc:
                    problems += exc.problems
        if problems:
            raise OpsledgerError(problems, EXIT_FAILED)
        check_network(spec, cache_up=cache_status.up, progress=progress)
    return UpResult(results, image_ref, built, host_changes, removed, cache_status.up)


def _ensure_cache(progress: Progress) -> cache.CacheStatus:
    status = cache.ensure_cache(*image.host_mirrors())
    for action in status.actions:
        progress(action)
    if not status.up:
        progress(
            f"package cache unavailable ({status.reason}): lab hosts fetch from the Debian "
            "mirror directly"
        )
    return status


def check_network(spec: LabSpec, *, cache_up: bool, progress: Progress = _quiet) -> None:
    """Every host resolves every lab host and the mirror, and fetches from it; else exit 1.

    Example:
        check_network(load_spec(project), cache_up=True)
    """
    recipe = image.default_recipe()
    names = [h.name for h in spec.hosts]
    mirror_host = urlsplit(recipe.mirror).hostname or ""
    release_url = f"{recipe.mirror}/dists/{recipe.suite}/Release"
    results = netcheck.probe_hosts(
        {h.name: h.container for h in spec.hosts},
        names=[*names, mirror_host],
        release_url=release_url,
        cache_url=cache.CACHE_URL if cache_up else "",
    )
    problems = netcheck.problems_of(
        results, network=spec.network, mirror=recipe.mirror, lab_hosts=names
    )
    if problems:
        raise OpsledgerError(problems, EXIT_FAILED)
    cache_failed = [r for r in results if r.cache]
    if cache_up and cache_failed:
        progress(
            f"package cache {cache.CACHE_URL} does not answer from {cache_failed[0].host} "
            f"({cache_failed[0].cache[:80]}): hosts fetch from the Debian mirror directly"
        )
    progress(
        f"network: {len(results)} host(s) resolve each other and {mirror_host}, "
        f"and reach the mirror{' and the package cache' if cache_up and not cache_failed else ''}"
    )


@dataclass
class ImageResult:
    ref: str
    built: bool


def lab_image(project: Project, *, progress: Progress = _quiet) -> ImageResult:
    """Build (once) the lab's base image without starting hosts; Molecule scenarios use it.

    Example:
        lab_image(find_project()).ref  # 'localhost/opsledger-base:403d96f9ba44'
    """
    host_setup.require_root()
    with _lab_lock(project, progress):
        for change in host_setup.prepare_host(str(project.root)):
            progress(change)
        _ensure_cache(progress)
        recipe = image.default_recipe()
        if not image.image_exists(recipe.ref):
            progress(f"building base image {recipe.ref} with debootstrap (about a minute, once)")
        ref, built = image.ensure_image(recipe)
    return ImageResult(ref, built)


def lab_down(project: Project, *, purge: bool = False, progress: Progress = _quiet) -> DownResult:
    """Remove every container, network and file `lab up` created (with purge: the image too).

    Example:
        lab_down(find_project()).containers  # ['opsledger-lab-db1', ...]
    """
    host_setup.require_root()
    with _lab_lock(project, progress):
        ours = f"{LABEL}.project={project.root}"
        removed = [_remove_container(c, progress) for c in containers_with_label(ours)]
        networks = []
        listing = podman("network", "ls", "--format", "{{.Name}}", "--filter", f"label={ours}")
        for name in listing.stdout.split():
            podman("network", "rm", "--force", name)
            networks.append(name)
        volumes = podman("volume", "ls", "--format", "{{.Name}}", "--filter", f"label={ours}")
        for name in volumes.stdout.split():
            podman("volume", "rm", "--force", name)
        files = []
        if project.lab_state_dir.exists():
            shutil.rmtree(project.lab_state_dir)
            files.append(str(project.lab_state_dir))
        facts = project.state_dir / "facts"
        for _, host_name in removed:  # cached facts would describe a host that is gone
            # ansible-core 2.19's jsonfile cache names files "s1_<host>" (format version prefix).
            for cached in [facts / host_name, *facts.glob(f"*_{host_name}")]:
                if cached.is_file():
                    cached.unlink()
                    files.append(str(cached))
        with contextlib.suppress(OSError):
            facts.rmdir()
        with contextlib.suppress(OSError):
            project.state_dir.rmdir()
        images = image.remove_images() if purge else []
        if purge:
            files += cache.purge_cache()
    return DownResult([c for c, _ in removed], networks, volumes.stdout.split(), files, images)


def lab_status(project: Project) -> StatusResult:
    """Each lab host (inventory and running), its port, container state and whether SSH answers.

    Example:
        lab_status(find_project()).healthy  # True when every host answers SSH
    """
    spec = load_spec(project)
    rows: list[HostStatus] = []
    running: list[LabHost] = []
    for host in spec.hosts:
        info = inspect_container(host.container)
        state = info["State"]["Status"] if info else "absent"
        if state == "running":
            running.append(host)
        rows.append(
            HostStatus(
                host.name,
                host.groups,
                host.container,
                host.port,
                state,
                False,
                urls={p.name: p.url for p in host.published},
            )
        )
    answers = ssh.ssh_answers_all(running)
    for row in rows:
        row.ssh = answers.get(row.name, False)
    wanted = {h.container for h in spec.hosts}
    for info in containers_with_label(f"{LABEL}.project={project.root}"):
        if info["Names"][0] not in wanted:
            lab_labels = info.get("Labels") or {}
            rows.append(
                HostStatus(
                    lab_labels.get(f"{LABEL}.host", "?"),
                    (),
                    info["Names"][0],
                    int(lab_labels.get(f"{LABEL}.port", 0)),
                    info["State"],
                    False,
                    in_inventory=False,
                )
            )
    return StatusResult(rows, cache.CACHE_URL if cache.answers() else "")


def lab_ssh_command(project: Project, name: str, command: tuple[str, ...] = ()) -> list[str]:
    """The ssh command line for a lab host (the CLI execs it, so it gets the terminal).

    Example:
        lab_ssh_command(find_project(), "lab-db1", ("uptime",))
    """
    spec = load_spec(project)
    host = spec.host(name)
    info = inspect_container(host.container)
    if not info or not info["State"]["Running"]:
        raise OpsledgerError(
            Problem(f"lab host {name} is not running", fix="run `opsledger lab up` first")
        )
    return ssh.ssh_argv(host, *command, batch=bool(command))


def run_on_host(project: Project, name: str, command: str) -> subprocess.CompletedProcess:
    """Run a shell command on a lab host over SSH and capture its output (used by tests/tools)."""
    return subprocess.run(
        lab_ssh_command(project, name, (command,)),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
