import stat

from opsledger.inventory import load_inventory
from opsledger.lab import ssh
from opsledger.lab.spec import build_spec

HOSTS = "all:\n  hosts:\n    h1: {ansible_port: 2401}\n    h2: {ansible_port: 2402}\n"


def test_keypair_is_created_once_and_private(tmp_path):
    key = tmp_path / "k" / "id_ed25519"
    assert ssh.ensure_keypair(key, "test") is True
    first = key.read_text()
    assert ssh.ensure_keypair(key, "test") is False
    assert key.read_text() == first
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.with_suffix(".pub").read_text().startswith("ssh-ed25519 ")


def test_known_hosts_lists_each_generated_host_key(make_project):
    project = make_project(HOSTS)
    spec = build_spec(project, load_inventory(project.inventory_file()))
    for host in spec.hosts:
        ssh.ensure_keypair(ssh.host_key_path(spec, host), host.name)
    ssh.write_known_hosts(spec)
    lines = spec.hosts[0].known_hosts.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["[127.0.0.1]:2401", "[127.0.0.1]:2402"]
    pub = ssh.host_key_path(spec, spec.hosts[1]).with_suffix(".pub").read_text().split()[1]
    assert lines[1].split()[2] == pub


def test_ssh_argv_matches_ansible_connection(make_project):
    project = make_project(HOSTS)
    host = build_spec(project, load_inventory(project.inventory_file())).hosts[0]
    argv = ssh.ssh_argv(host, "uptime")
    assert argv[-2:] == ["opsadmin@127.0.0.1", "uptime"]
    assert "StrictHostKeyChecking=yes" in argv
    assert f"UserKnownHostsFile={host.known_hosts}" in argv
    assert argv[argv.index("-p") + 1] == "2401"
    assert "BatchMode=yes" not in ssh.ssh_argv(host, batch=False)
