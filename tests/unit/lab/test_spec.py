import socket

import pytest

from opsledger.errors import OpsledgerError
from opsledger.inventory import load_inventory
from opsledger.lab.spec import (
    CONTAINERS_CONF,
    build_spec,
    create_args,
    known_hosts_line,
    labels,
    next_free_port,
    render_sysctl_conf,
    spec_hash,
)

HOSTS = """\
all:
  children:
    db:
      hosts:
        db1: {ansible_port: 2301}
    app:
      hosts:
        app1: {ansible_port: 2311, lab_capabilities: [NET_ADMIN, CAP_SYS_TIME]}
"""


def spec_of(project):
    return build_spec(project, load_inventory(project.inventory_file()))


def problems_of(project):
    with pytest.raises(OpsledgerError) as err:
        spec_of(project)
    assert err.value.exit_code == 2
    return err.value.problems


def test_spec_takes_everything_from_the_inventory(make_project):
    project = make_project(HOSTS)
    spec = spec_of(project)
    db1, app1 = spec.hosts
    assert (db1.name, db1.port, db1.user, db1.groups) == ("db1", 2301, "opsadmin", ("db",))
    assert db1.key_file == project.root / ".opsledger/lab/id_ed25519"
    assert db1.known_hosts == project.root / ".opsledger/lab/known_hosts"
    assert db1.container == "opsledger-db1"
    assert app1.capabilities == ("NET_ADMIN", "SYS_TIME")
    assert spec.network == "opsledger-lab"


def test_container_prefix_and_network_come_from_inventory(make_project):
    project = make_project(
        HOSTS.replace("db1: {", "db1: {lab_container_prefix: t-, lab_network: n1, ")
    )
    spec = spec_of(project)
    # the first host's settings name the lab's network and prefix (group_vars/all in practice)
    assert spec.network == "n1"
    assert spec.hosts[0].container == "t-db1"


def test_duplicate_ports_are_refused_with_a_free_suggestion(make_project):
    (problem,) = problems_of(make_project(HOSTS.replace("2311", "2301")))
    assert problem.field == "app1.ansible_port"
    assert "also used by db1" in problem.message
    assert "use a free one, e.g." in problem.fix


def test_missing_port_suggests_the_next_free_one(make_project):
    (problem,) = problems_of(make_project(HOSTS.replace("{ansible_port: 2301}", "{}")))
    assert problem.field == "db1.ansible_port"
    assert "set ansible_port: " in problem.fix


def test_every_problem_is_reported_at_once(make_project):
    bad = HOSTS.replace("2301", "80").replace("2311", "abc")
    vars_ = "---\nansible_host: 10.1.2.3\nansible_user: root\n"
    fields = {p.field for p in problems_of(make_project(bad, group_vars=vars_))}
    assert {
        "db1.ansible_port",  # privileged
        "app1.ansible_port",  # not a number
        "db1.ansible_host",  # not loopback: the lab never targets other addresses
        "db1.ansible_user",  # root
        "db1.ansible_ssh_private_key_file",
        "db1.ansible_ssh_common_args",
    } <= fields


def test_bad_capabilities_are_refused(make_project):
    problems = problems_of(make_project(HOSTS.replace("CAP_SYS_TIME", "'sys time'")))
    assert [p.field for p in problems] == ["app1.lab_capabilities"]


def test_problem_lines_name_file_field_and_fix(make_project):
    (problem,) = problems_of(make_project(HOSTS.replace("2311", "2301")))
    line = str(problem)
    assert line.startswith(problem.file)
    assert "hosts.yml: app1.ansible_port: " in line and " — " in line


def test_next_free_port_skips_taken_and_bound_ports():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        bound = sock.getsockname()[1]
        assert next_free_port([bound + 1], start=bound) == bound + 2
        assert next_free_port([], start=bound) == bound + 1


def test_create_args_publish_sshd_on_loopback_only(make_project):
    spec = spec_of(make_project(HOSTS))
    args = create_args(spec, spec.hosts[1], "img:1")
    assert args[args.index("--publish") + 1] == "127.0.0.1:2311:22"
    assert args[-2:] == ["img:1", "/sbin/init"]
    assert args[args.index("--systemd") + 1] == "always"
    caps = [args[i + 1] for i, a in enumerate(args) if a == "--cap-add"]
    assert caps == ["NET_ADMIN", "SYS_TIME"]
    assert args[args.index("--network-alias") + 1] == "app1"
    assert "--privileged" not in args


def test_resolver_and_hosts_files_belong_to_the_desired_state(make_project):
    # podman would rewrite /etc/resolv.conf and /etc/hosts at every start (a restarted host
    # came back drifted); the lab leaves them to the network role.
    spec = spec_of(make_project(HOSTS))
    args = create_args(spec, spec.hosts[0], "img:1")
    assert args[args.index("--dns") + 1] == "none"
    assert "--no-hosts" in args
    assert args.count("--volume") == len(spec.hosts[0].volumes)


def test_spec_hash_changes_with_the_definition(make_project):
    spec = spec_of(make_project(HOSTS))
    a = create_args(spec, spec.hosts[0], "img:1")
    b = create_args(spec, spec.hosts[0], "img:2")
    assert spec_hash(a) == spec_hash(list(a))
    assert spec_hash(a) != spec_hash(b)


def test_labels_tie_containers_to_this_checkout(make_project):
    project = make_project(HOSTS)
    spec = spec_of(project)
    got = labels(spec, spec.hosts[0], "abc")
    assert got["io.opsledger.project"] == str(project.root)
    assert got["io.opsledger.host"] == "db1"
    assert got["io.opsledger.spec"] == "abc"


def test_known_hosts_line_uses_bracketed_port(make_project):
    spec = spec_of(make_project(HOSTS))
    line = known_hosts_line(spec.hosts[0], "ssh-ed25519 AAAAC3Nza root@db1\n")
    assert line == "[127.0.0.1]:2301 ssh-ed25519 AAAAC3Nza"


def test_rendered_host_config():
    assert 'runtime = "runc"' in CONTAINERS_CONF
    assert 'cgroup_manager = "cgroupfs"' in CONTAINERS_CONF
    assert "nofile=1024:20000" in CONTAINERS_CONF
    # pinned: CNI networks have no DNS and the lab's names and resolvers need it
    assert 'network_backend = "netavark"' in CONTAINERS_CONF
    sysctl = render_sysctl_conf()
    assert "fs.inotify.max_user_instances = 8192" in sysctl
    assert "fs.inotify.max_user_watches = 524288" in sysctl


def test_unknown_lab_host_lists_the_known_ones(make_project):
    spec = spec_of(make_project(HOSTS))
    with pytest.raises(OpsledgerError, match="use one of: db1, app1"):
        spec.host("db9")


MONITORED = """\
all:
  children:
    db:
      hosts:
        db1: {ansible_port: 2301}
    monitoring:
      hosts:
        mon1:
          ansible_port: 2321
          lab_published_ports:
            - {name: prometheus, host_port: 19090, container_port: 9090}
            - {name: alertmanager, host_port: 19093, container_port: 9093}
"""


def test_published_service_ports_go_to_loopback_and_status_urls(make_project):
    spec = spec_of(make_project(MONITORED))
    db1, mon1 = spec.hosts
    assert [(p.name, p.host_port, p.container_port, p.url) for p in mon1.published] == [
        ("prometheus", 19090, 9090, "http://127.0.0.1:19090"),
        ("alertmanager", 19093, 9093, "http://127.0.0.1:19093"),
    ]
    args = create_args(spec, mon1, "img:1")
    published = [args[i + 1] for i, a in enumerate(args) if a == "--publish"]
    assert published == ["127.0.0.1:2321:22", "127.0.0.1:19090:9090", "127.0.0.1:19093:9093"]
    # a host without published ports keeps the very arguments (and spec hash) it had: adding
    # the monitoring host never replaces the other lab containers
    db_args = create_args(spec, db1, "img:1")
    assert [a for a in db_args if a.startswith("127.0.0.1:")] == ["127.0.0.1:2301:22"]
    assert db1.published == ()


def test_the_lab_inventory_publishes_prometheus_and_alertmanager_of_lab_mon1():
    from opsledger.project import Project

    from ..conftest import REPO_ROOT

    project = Project(REPO_ROOT)
    spec = build_spec(project, load_inventory(project.inventory_file("lab")))
    mon1 = spec.host("lab-mon1")
    assert set(mon1.groups) >= {"monitoring", "logging"} and mon1.port == 2221
    urls = {p.name: p for p in mon1.published}
    assert (urls["prometheus"].container_port, urls["alertmanager"].container_port) == (9090, 9093)
    # `alerts sync` reads the Alertmanager the lab publishes
    inventory = load_inventory(project.inventory_file("lab"))
    assert inventory.hosts["lab-mon1"].get("opsledger_alertmanager_url") == urls["alertmanager"].url


@pytest.mark.parametrize(
    ("entry", "field", "fragment"),
    [
        ("{name: p, host_port: 80, container_port: 9090}", "[0].host_port", "not a port in"),
        ("{name: p, host_port: 2301, container_port: 9090}", "p.host_port", "also used by db1"),
        ("{name: p, host_port: 19090, container_port: 22}", "[0].container_port", "sshd"),
        ("{name: p, host_port: 19090}", "[0]", "exactly name, host_port and container_port"),
        ("{name: 'a b', host_port: 19090, container_port: 1}", "[0].name", "not a short name"),
        ("{name: p, host_port: '19090', container_port: 9090}", "[0].host_port", "not a port"),
    ],
)
def test_bad_published_ports_are_refused_naming_the_field(make_project, entry, field, fragment):
    text = MONITORED.replace(
        """            - {name: prometheus, host_port: 19090, container_port: 9090}
            - {name: alertmanager, host_port: 19093, container_port: 9093}
""",
        f"            - {entry}\n",
    )
    problems = problems_of(make_project(text))
    assert len(problems) == 1, problems
    assert (
        problems[0].field
        == f"mon1.lab_published_ports{'' if field.startswith('[') else '.'}{field}"
    )
    assert fragment in problems[0].message
