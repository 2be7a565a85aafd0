"""The lab's network stack, the way a fresh machine meets it, on real podman hosts.

A second, throwaway lab (its own checkout, prefix, network, subnet and ports) is brought up
beside the repository's: a network without DNS (what podman's CNI backend gives a machine that
installed podman without recommends), a network that is not ours, a machine pinned to CNI with
containers that are not labs, a resolver that does not answer, a package cache that is down and
a restarted host — each must end in a working lab or a clear refusal, never a silent hang.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from opsledger.errors import OpsledgerError
from opsledger.lab import cache, image
from opsledger.lab.service import lab_down, lab_up, load_spec, run_on_host
from opsledger.lab.spec import CONTAINERS_CONF_PATH
from opsledger.project import Project

from .helpers import podman_json

pytestmark = pytest.mark.lab

NETWORK = "opsledger-nettest"
PREFIX = "opsledger-nettest-"
BIN = Path(sys.executable).parent


def _podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def other(lab, tmp_path):
    """A throwaway checkout with two app hosts on a network of its own; taken down after."""
    root = tmp_path / "nettest-checkout"
    for folder in ("roles", "inventories/lab/group_vars/all", "vault-passwords"):
        source = lab.root / folder
        shutil.copytree(source, root / folder)
    shutil.copy(lab.ansible_cfg, root / "ansible.cfg")
    shutil.copytree(lab.root / "plugins", root / "plugins")
    inventory = root / "inventories" / "lab"
    (inventory / "hosts.yml").write_text(
        textwrap.dedent(
            """\
            all:
              children:
                app:
                  hosts:
                    nt-app1: {ansible_port: 2291}
                    nt-app2: {ansible_port: 2292}
            """
        )
    )
    (inventory / "group_vars" / "all" / "lab.yml").write_text(
        textwrap.dedent(
            f"""\
            lab_capabilities: [NET_ADMIN]
            lab_container_prefix: {PREFIX}
            lab_network: {NETWORK}
            lab_network_subnet: 10.89.71.0/24
            """
        )
    )
    project = Project(root)
    yield project
    lab_down(project)
    _podman("network", "rm", "--force", NETWORK, check=False)


def _network(name: str) -> dict:
    found = [n for n in podman_json("network", "ls") if n["name"] == name]
    return found[0] if found else {}


def test_a_network_without_dns_is_recreated_and_hosts_resolve_and_install(other):
    # The state a CNI-only machine leaves: the lab's own network, but no DNS on its gateway.
    _podman(
        "network",
        "create",
        "--disable-dns",
        "--subnet",
        "10.89.71.0/24",
        "--label",
        f"io.opsledger.project={other.root}",
        NETWORK,
    )
    assert _network(NETWORK)["dns_enabled"] is False
    result = lab_up(other)  # ends with the network probe: raises if any host cannot resolve
    assert {h.action for h in result.hosts} == {"created"}
    assert _network(NETWORK)["dns_enabled"] is True
    proc = run_on_host(other, "nt-app1", "getent hosts nt-app2 && getent hosts deb.debian.org")
    assert proc.returncode == 0, proc.stderr
    # a package install, the step that hung on a fresh machine, through the package cache
    proc = run_on_host(
        other,
        "nt-app2",
        "sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
        "--no-install-recommends hello && hello",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Hello, world!" in proc.stdout
    # the cache is a mirror for packages (mirror+file), never a proxy: the watcher says DIRECT
    watch = f"/usr/local/lib/opsledger/apt-cache-watch {cache.CACHE_URL}/debian/pool/x.deb"
    assert run_on_host(other, "nt-app2", watch).stdout.strip() == "DIRECT"


def test_a_network_that_is_not_ours_and_has_no_dns_is_refused(other):
    # not labelled: somebody else's network, with the lab's subnet but no DNS
    _podman("network", "create", "--disable-dns", "--subnet", "10.89.71.0/24", NETWORK)
    with pytest.raises(OpsledgerError, match=r"is not this lab's, and it has no DNS server") as e:
        lab_up(other)
    assert e.value.exit_code == 2
    assert "lab_network" in str(e.value)
    assert podman_json("ps", "--all", "--filter", f"name={PREFIX}") == []


def test_another_live_checkouts_network_is_taken_over_only_when_no_container_uses_it(other, lab):
    """A network left by the lab of a checkout that still exists (the repository's, here) and
    used by no container is taken over; one its containers use is refused, naming them."""
    mine = f"io.opsledger.project={lab.root}"
    _podman("network", "create", "--label", mine, "--subnet", "10.89.71.0/24", NETWORK)
    _podman(
        "create",
        "--name",
        "opsledger-nettest-squatter",
        "--network",
        NETWORK,
        "localhost/opsledger-base:latest",
    )
    try:
        with pytest.raises(OpsledgerError, match="belongs to the lab of another checkout") as e:
            lab_up(other)
        assert e.value.exit_code == 2 and "opsledger-nettest-squatter" in str(e.value)
        assert podman_json("ps", "--all", "--filter", f"name={PREFIX}app") == []  # nothing made
    finally:
        _podman("rm", "--force", "opsledger-nettest-squatter", check=False)
    lab_up(other)
    (info,) = podman_json("network", "inspect", NETWORK)
    assert info["labels"]["io.opsledger.project"] == str(other.root)


def test_a_machine_pinned_to_cni_with_other_containers_is_refused_untouched(other, lab):
    override = CONTAINERS_CONF_PATH.parent / "99-opsledger-test-cni.conf"
    override.write_text('[network]\nnetwork_backend = "cni"\n')
    try:
        assert _podman("info", "--format", "{{.Host.NetworkBackend}}").stdout.strip() == "cni"
        _podman("create", "--name", "opsledger-test-foreign", "localhost/opsledger-base:latest")
        before = {c["Names"][0] for c in podman_json("ps", "--all")}
        with pytest.raises(OpsledgerError, match="not this lab's off their networks") as e:
            lab_up(other)
        assert e.value.exit_code == 2
        assert "opsledger-test-foreign" in str(e.value)
        assert "\n" not in str(e.value)
        assert {c["Names"][0] for c in podman_json("ps", "--all")} == before  # nothing touched
    finally:
        override.unlink()
        _podman("rm", "--force", "opsledger-test-foreign", check=False)
    assert _podman("info", "--format", "{{.Host.NetworkBackend}}").stdout.strip() == "netavark"
    # the repository's lab kept running through all of it
    running = {c["Names"][0] for c in podman_json("ps")}
    assert {h.container for h in load_spec(lab).hosts} <= running


def test_a_resolver_that_does_not_answer_is_rolled_back(other):
    lab_up(other)
    before = run_on_host(other, "nt-app1", "cat /etc/resolv.conf").stdout
    playbook = other.root / "dns.yml"
    playbook.write_text(
        textwrap.dedent(
            """\
            - name: Point the resolvers at an address where no DNS server answers
              hosts: nt-app1
              become: true
              gather_facts: false
              tasks:
                - name: Apply the network role's resolver settings
                  ansible.builtin.include_role:
                    name: network
                    tasks_from: dns.yml
            """
        )
    )
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "dns.yml",
            "-e",
            '{"network_dns_servers": ["192.0.2.53"], "network_dns_check_names": ["nt-app2"],'
            ' "network_dns_options": ["timeout:1", "attempts:1"]}',
        ],
        cwd=other.root,
        env=other.ansible_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "did not resolve nt-app2" in proc.stdout, proc.stdout[-3000:]
    assert "previous /etc/resolv.conf was restored" in proc.stdout
    assert run_on_host(other, "nt-app1", "cat /etc/resolv.conf").stdout == before
    assert run_on_host(other, "nt-app1", "getent hosts nt-app2").returncode == 0


def test_a_restarted_host_keeps_its_resolver_and_hosts_files(other):
    lab_up(other)
    spec = load_spec(other)
    host = spec.host("nt-app1")
    edit = "echo '192.0.2.10 backup.example.internal' | sudo tee -a /etc/hosts >/dev/null"
    run_on_host(other, host.name, edit)
    before = run_on_host(other, host.name, "cat /etc/resolv.conf /etc/hosts").stdout
    _podman("restart", "--time", "5", host.container)
    lab_up(other)  # waits for SSH again; must not rewrite the files either
    after = run_on_host(other, host.name, "cat /etc/resolv.conf /etc/hosts").stdout
    assert after == before
    assert "192.0.2.10 backup.example.internal" in after


def test_hosts_fall_back_to_the_mirror_when_the_cache_is_down_and_say_so_once(other):
    lab_up(other)
    cache._stop_daemon()
    try:
        assert not cache.answers()
        for _ in range(2):  # index files never touch the cache; packages fall back to the mirror
            proc = run_on_host(
                other,
                "nt-app1",
                "sudo apt-get update -q && cd /tmp && apt-get download -q hello && ls hello_*.deb"
                " && rm hello_*.deb",
            )
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        said = run_on_host(
            other, "nt-app1", "sudo journalctl -t opsledger-apt --no-pager -o cat"
        ).stdout
        assert said.count("does not answer: using the Debian mirror directly") == 1, said
    finally:
        status = cache.ensure_cache(*image.host_mirrors())
    assert status.up and cache.answers()
