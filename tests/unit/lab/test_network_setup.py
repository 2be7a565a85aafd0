"""The lab's network stack decisions: backend switch, network probe verdicts, package cache."""

from __future__ import annotations

import subprocess
import sys

from opsledger.lab import cache, host_setup, netcheck

from ...conftest import REPO_ROOT


def _container(name, labels=None):
    return {"Names": [name], "Labels": labels or {}}


def test_backend_switch_recreates_this_labs_and_deleted_labs_only(tmp_path):
    live = tmp_path / "live-checkout"
    (live / "inventories").mkdir(parents=True)
    ours = str(tmp_path / "ours")
    containers = [
        _container("opsledger-lab-db1", {"io.opsledger.lab": "1", "io.opsledger.project": ours}),
        _container(
            "old-lab-app1",
            {"io.opsledger.lab": "1", "io.opsledger.project": str(tmp_path / "deleted")},
        ),
        _container("their-lab-db1", {"io.opsledger.lab": "1", "io.opsledger.project": str(live)}),
        _container("webapp"),
        _container("fake", {"io.opsledger.project": ours}),  # not a lab container
    ]
    plan = host_setup.plan_backend_switch(containers, ours)
    assert plan.labs == ("opsledger-lab-db1", "old-lab-app1")
    assert plan.others == ("webapp", "fake", "their-lab-db1")  # labs nobody owns here first


def test_backend_switch_with_nothing_else_has_no_others():
    plan = host_setup.plan_backend_switch([], "/x")
    assert plan == host_setup.BackendSwitch((), ())


def test_probe_output_is_parsed_per_host():
    out = '{"dns": {"lab-db2": "", "deb.debian.org": ""}, "mirror": "", "cache": "refused"}\n'
    result = netcheck.parse_probe("lab-db1", 0, out, "")
    assert result.dns == {"lab-db2": "", "deb.debian.org": ""}
    assert result.cache == "refused"
    assert not result.probe


def test_a_probe_that_timed_out_or_crashed_is_a_finding():
    assert "timed out" in netcheck.parse_probe("h", 124, "", "").probe
    assert "boom" in netcheck.parse_probe("h", 1, "", "Traceback\nboom\n").probe
    assert netcheck.parse_probe("h", 0, "not json", "").probe


def test_problems_name_host_what_failed_and_the_fix():
    mirror = "http://deb.debian.org/debian"
    results = [
        netcheck.HostNetwork("lab-db1", dns={"lab-db2": "[Errno -3] Temporary failure"}),
        netcheck.HostNetwork("lab-db2", dns={"deb.debian.org": "[Errno -2] Name unknown"}),
        netcheck.HostNetwork("lab-app1", mirror="timed out"),
        netcheck.HostNetwork("lab-app2", cache="refused"),  # the cache is not fatal
    ]
    problems = netcheck.problems_of(
        results, network="opsledger-lab", mirror=mirror, lab_hosts=["lab-db1", "lab-db2"]
    )
    lines = [str(p) for p in problems]
    assert len(lines) == 3
    assert lines[0].startswith("lab-db1: DNS: cannot resolve lab host(s) lab-db2")
    assert "dns_enabled true" in lines[0]
    assert lines[1].startswith("lab-db2: DNS: cannot resolve the Debian mirror deb.debian.org")
    assert lines[2].startswith("lab-app1: route: the Debian mirror")
    assert all("\n" not in line for line in lines)


def test_the_probe_really_runs_and_reports_an_unresolvable_name():
    # The same probe script lab hosts run, here on this machine's Python: a name under the
    # reserved .invalid TLD never resolves, and a closed loopback port refuses the mirror.
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            netcheck.PROBE,
            "localhost,no-such-host.invalid",
            "http://127.0.0.1:9/dists/bookworm/Release",
            "",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    result = netcheck.parse_probe("here", proc.returncode, proc.stdout, proc.stderr)
    assert result.dns["localhost"] == ""
    assert result.dns["no-such-host.invalid"]
    assert result.mirror  # connection refused
    assert result.cache == ""


def test_cache_config_listens_on_loopback_only_and_uses_this_machines_mirrors():
    config = cache.render_config("http://mirror.example/debian", "http://sec.example/ds/")
    assert f"BindAddress: 127.0.0.1 {cache.CACHE_ADDRESS}\n" in config
    assert "0.0.0.0" not in config
    assert "Remap-debrep: file:deb_mirror*.gz /debian ; http://mirror.example/debian/" in config
    assert "Remap-secdeb: " in config and "; http://sec.example/ds/\n" in config


def test_the_cache_passes_nothing_through(tmp_path):
    """apt-cacher-ng's pass-through repeats the client's Host header: a strict mirror answers 400.

    Index files stay off the cache instead: lab hosts list it as a mirror for packages only.
    """
    config = cache.render_config("http://mirror.example/debian", "http://sec.example/ds/")
    assert "DontCache" not in config
    setup = REPO_ROOT / "src/opsledger/lab/files/image-setup.sh"
    # the script's mirror-list loop, run on its own into a scratch folder
    text = setup.read_text()
    loop = text[text.index("for list in") : text.index("done\n", text.index("for list in")) + 5]
    loop = loop.replace("/etc/apt/mirrors", str(tmp_path))
    subprocess.run(
        [
            "sh",
            "-c",
            f"mirror=http://m.example/debian security=http://s.example/ds cache=http://c:1\n{loop}",
        ],
        check=True,
    )
    assert (tmp_path / "debian.list").read_text() == (
        "http://m.example/debian/\tpriority:1 type:index\n"
        "http://c:1/debian/\tpriority:2 type:deb\n"
        "http://m.example/debian/\tpriority:3 type:deb\n"
    )
    assert (
        (tmp_path / "debian-security.list")
        .read_text()
        .startswith("http://s.example/ds/\tpriority:1 type:index\nhttp://c:1/debian-security/\t")
    )
    setup = text
    assert "mirror+file:/etc/apt/mirrors/debian.list bookworm main" in setup


def test_cache_address_is_outside_podman_pools_and_the_lab_subnet():
    import ipaddress

    address = ipaddress.ip_address(cache.CACHE_ADDRESS)
    assert address not in ipaddress.ip_network("10.88.0.0/16")  # podman's default network
    assert address not in ipaddress.ip_network("10.89.70.0/24")  # the lab's subnet


def test_stale_cache_temp_files_are_removed_and_cached_files_kept(tmp_path):
    from opsledger.lab.cache import remove_stale_temp_files

    dists = tmp_path / "secdeb" / "dists" / "bookworm-security"
    dists.mkdir(parents=True)
    for name in ("InRelease", "InRelease.head", "InRelease.1796063679", "Release.1796057456"):
        (dists / name).write_text("x")
    pool = tmp_path / "debrep" / "pool"
    pool.mkdir(parents=True)
    (pool / "tmux_3.3a-3_amd64.deb").write_text("x")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == ["InRelease.1796063679", "Release.1796057456"]
    assert sorted(p.name for p in dists.iterdir()) == ["InRelease", "InRelease.head"]
    assert (pool / "tmux_3.3a-3_amd64.deb").exists()
