"""The lab end to end on real podman systemd hosts over real SSH. Tests run in file order."""

from __future__ import annotations

import re
import shutil

import pytest

from opsledger.errors import OpsledgerError
from opsledger.lab.service import lab_down, lab_status, lab_up, load_spec, run_on_host
from opsledger.project import Project

from .helpers import (
    ansible,
    control_master_alive,
    live_processes_mentioning,
    opsledger,
    podman_json,
)

pytestmark = pytest.mark.lab


def test_up_twice_is_a_no_op(lab):
    result = lab_up(lab)
    assert not result.changed
    assert {h.action for h in result.hosts} == {"unchanged"}
    assert result.image_built is False


def test_every_host_answers_ansible_ping_over_ssh(lab):
    proc = ansible(lab, "all", "-m", "ansible.builtin.ping", "-o")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pinged = set(re.findall(r"^(\S+) \| SUCCESS", proc.stdout, re.M))
    assert pinged == {h.name for h in load_spec(lab).hosts}
    assert "ansible_connection" not in proc.stdout  # plain ssh connection, not podman/local


def test_become_reaches_root_on_every_host(lab):
    proc = ansible(lab, "all", "-b", "-m", "ansible.builtin.command", "-a", "id -un", "-o")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    users = dict(re.findall(r"^(\S+) \| CHANGED \| rc=0 \| \(stdout\) (\S+)", proc.stdout, re.M))
    assert users == {h.name: "root" for h in load_spec(lab).hosts}


@pytest.mark.parametrize("host", ["lab-db1", "lab-db2", "lab-app1", "lab-app2"])
def test_admin_user_is_not_root_and_has_passwordless_sudo(lab, host):
    spec_host = load_spec(lab).host(host)
    proc = run_on_host(lab, host, "id -un; hostname; sudo -n id -un")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [spec_host.user, host, "root"]


def test_host_keys_are_the_ones_the_lab_generated(lab):
    # Strict checking against the lab's known_hosts: a wrong key would make SSH fail above;
    # here we also check the live key matches the generated one byte for byte.
    spec = load_spec(lab)
    for host in spec.hosts:
        proc = run_on_host(lab, host.name, "cat /etc/ssh/ssh_host_ed25519_key.pub")
        generated = (spec.hostkey_dir / f"{host.name}_ed25519.pub").read_text()
        assert proc.stdout.split()[:2] == generated.split()[:2]


def test_hosts_are_systemd_hosts_and_reach_each_other_by_name(lab):
    proc = run_on_host(
        lab,
        "lab-db1",
        "systemctl is-system-running; cat /proc/1/comm; "
        "getent hosts lab-db2 >/dev/null && echo resolved",
    )
    assert proc.stdout.split() == ["running", "systemd", "resolved"], proc.stdout + proc.stderr


def test_status_shows_each_host_port_and_ssh(lab):
    status = lab_status(lab)
    assert status.healthy
    rows = {h.name: h for h in status.hosts}
    assert rows["lab-db1"].port == 2201 and rows["lab-db1"].groups == ("db",)
    assert all(h.state == "running" and h.ssh for h in status.hosts)
    proc = opsledger(lab, "lab", "status")
    assert proc.returncode == 0 and "lab-app2" in proc.stdout and "answers" in proc.stdout


def test_cli_ssh_runs_a_command(lab):
    proc = opsledger(lab, "lab", "ssh", "lab-app1", "--", "sudo", "systemctl", "is-active", "ssh")
    assert (proc.returncode, proc.stdout.strip()) == (0, "active")


def test_hosts_take_index_files_from_the_mirror_and_packages_from_the_cache(lab):
    """Every host refreshing its indexes at once (as a converge does) and fetching a package.

    apt-cacher-ng 3.7.4 cannot serve index files that change under one name to many hosts at
    once: stored, concurrent refreshes collide (503s, truncated answers; a lab host's apt once
    hung a converge for 30 minutes); passed through, it repeats the client's Host header and a
    strict mirror answers 400 (the image build failed on a fresh machine). Hosts list the cache
    as a mirror for package files only: no index request reaches it, every .deb goes through it.
    """
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from opsledger.lab import cache

    assert cache.answers(), "lab up starts the package cache"
    log = Path("/var/log/apt-cacher-ng/apt-cacher.log")
    start = log.stat().st_size if log.exists() else 0
    hosts = [h.name for h in load_spec(lab).hosts]
    command = "sudo apt-get update -q && cd /tmp && apt-get download -q hello && rm -f hello_*.deb"
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        results = list(pool.map(lambda name: run_on_host(lab, name, command), hosts))
    failed = {
        h: r.stdout[-800:] + r.stderr[-800:]
        for h, r in zip(hosts, results, strict=True)
        if r.returncode
    }
    assert failed == {}
    with log.open() as lines:
        lines.seek(start)
        served = [line.split("|")[-1].strip() for line in lines if "|O|" in line]
    assert [path for path in served if "/dists/" in path] == []
    assert len([path for path in served if "/hello_" in path]) >= len(hosts)


def test_facts_gather_on_every_host(lab):
    # Converging site.yml is test_site.py's job; here: Ansible gathers facts over SSH.
    proc = ansible(
        lab, "all", "-m", "ansible.builtin.setup", "-a", "filter=ansible_distribution*", "-o"
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    for host in load_spec(lab).hosts:
        assert re.search(
            rf'^{host.name} \| SUCCESS.*"ansible_distribution": "Debian"', proc.stdout, re.M
        ), host.name


def test_down_leaves_nothing_behind_and_up_restores(lab, tmp_path):
    spec = load_spec(lab)
    # Plain SSH (not Mitogen) leaves ControlPersist masters behind: `down` must close them
    ansible(lab, "all", "-m", "ansible.builtin.ping", extra_env={"ANSIBLE_STRATEGY": "linear"})
    assert any(control_master_alive(h.port, h.user) for h in spec.hosts)

    result = lab_down(lab)
    assert sorted(result.containers) == sorted(h.container for h in spec.hosts)
    assert result.networks == [spec.network]
    assert podman_json("ps", "--all", "--filter", f"label=io.opsledger.project={lab.root}") == []
    assert spec.network not in {n["name"] for n in podman_json("network", "ls")}
    assert not lab.lab_state_dir.exists()
    assert not any(control_master_alive(h.port, h.user) for h in spec.hosts)
    assert live_processes_mentioning(*(h.container for h in spec.hosts)) == []
    assert lab_down(lab).containers == []  # down twice is harmless

    # A cold start from a throwaway checkout: the containers are that checkout's lab, not ours.
    other = Project(tmp_path / "other-checkout")
    shutil.copytree(lab.root / "inventories", other.root / "inventories")
    shutil.copy(lab.ansible_cfg, other.ansible_cfg)
    assert {h.action for h in lab_up(other).hosts} == {"created"}
    with pytest.raises(OpsledgerError, match="another checkout"):
        lab_up(lab)

    # Once that checkout is deleted, nobody can `lab down` it: our lab takes its network, volumes
    # and containers over (and so stays usable for the tests that follow).
    shutil.rmtree(other.root)
    result = lab_up(lab)
    assert {h.action for h in result.hosts} == {"created"}
    owned = podman_json("ps", "--filter", f"label=io.opsledger.project={lab.root}")
    assert sorted(c["Names"][0] for c in owned) == sorted(h.container for h in spec.hosts)
    assert lab_status(lab).healthy
