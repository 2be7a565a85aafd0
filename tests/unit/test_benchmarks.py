"""The apply benchmark closes only its own lanes' SSH control masters.

It used to end them with `pkill -f` by name, which also ended every other SSH control master
of the machine (a user's sessions, the lab's masters). Here real `ssh` masters connect to a
real SSH server (paramiko, in this process, on a loopback port): one per lane and one standing
for a user's unrelated session, kept under a `.ansible/cp` path like Ansible's own.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import paramiko
import pytest

from ..conftest import REPO_ROOT


class _AnyKey(paramiko.ServerInterface):
    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED


@pytest.fixture
def ssh_server():
    """An SSH server on 127.0.0.1 accepting any key; yields its port."""
    host_key = paramiko.RSAKey.generate(2048)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    transports = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(host_key)
            transport.start_server(server=_AnyKey())
            transports.append(transport)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()
    for transport in transports:
        transport.close()


def _bench():
    spec = importlib.util.spec_from_file_location("bench_apply", REPO_ROOT / "benchmarks/apply.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _master(tmp_path: Path, port: int, control_dir: Path) -> Path:
    key = tmp_path / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    control_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "ssh",
            "-f",
            "-N",
            "-M",
            "-o",
            f"ControlPath={control_dir}/%C",
            "-o",
            "ControlPersist=120",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-i",
            str(key),
            "-p",
            str(port),
            "bench@127.0.0.1",
        ],
        check=True,
        # The master forks to the background holding its outputs: no pipes to wait on.
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "ssh.log", "a"),  # noqa: SIM115 - closed by the process ending
        timeout=120,  # a bound: paramiko's handshake in this process is slow under load
    )
    (socket_path,) = [p for p in control_dir.iterdir() if p.is_socket()]
    return socket_path


def _alive(socket_path: Path) -> bool:
    check = subprocess.run(
        ["ssh", "-o", f"ControlPath={socket_path}", "-O", "check", "x"],
        capture_output=True,
        timeout=10,
    )
    return check.returncode == 0


@pytest.fixture
def short_dir():
    """Unix sockets need short paths (108 bytes): pytest's tmp_path is too deep for %C."""
    folder = Path(tempfile.mkdtemp(prefix="obench-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_closing_a_lanes_masters_spares_every_other_ssh_master(tmp_path, short_dir, ssh_server):
    bench = _bench()
    lanes = short_dir / "control"
    tuned = bench.lane_env({}, lanes / "tuned")["ANSIBLE_SSH_CONTROL_PATH_DIR"]
    apply = bench.lane_env({}, lanes / "apply")["ANSIBLE_SSH_CONTROL_PATH_DIR"]
    mine = _master(tmp_path, ssh_server, Path(tuned))
    other_lane = _master(tmp_path, ssh_server, Path(apply))
    users = _master(tmp_path, ssh_server, short_dir / "home" / ".ansible" / "cp")
    try:
        assert _alive(mine) and _alive(other_lane) and _alive(users)
        bench.close_masters(Path(tuned))
        assert not mine.exists() and not _alive(mine)
        assert _alive(other_lane), "another lane's master was closed"
        assert _alive(users), "a user's unrelated SSH master was closed"
    finally:
        for folder in (Path(apply), short_dir / "home" / ".ansible" / "cp"):
            bench.close_masters(folder)
    assert not _alive(other_lane) and not _alive(users)


def _startup_bench():
    spec = importlib.util.spec_from_file_location(
        "bench_startup", REPO_ROOT / "benchmarks/startup.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_startup_benchmark_stops_on_a_run_that_did_not_do_the_real_work(tmp_path):
    """A timed run counts only when it exits 0 printing what the command prints on success: an
    error path (a missing change, a broken import) stops the benchmark instead of being timed."""
    bench = _startup_bench()
    wall, cpu = bench.timed([sys.executable, "-c", "print('CHG-0001: valid')"], tmp_path, "valid")
    assert wall > 0 and cpu >= 0
    with pytest.raises(SystemExit, match="without 'valid'"):
        bench.timed([sys.executable, "-c", "print('error: no change')"], tmp_path, "valid")
    with pytest.raises(SystemExit, match="exited 3"):
        bench.timed(
            [sys.executable, "-c", "print('valid'); raise SystemExit(3)"], tmp_path, "valid"
        )


def _audit_bench():
    spec = importlib.util.spec_from_file_location("bench_audit", REPO_ROOT / "benchmarks/audit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_audit_benchmark_refuses_a_history_whose_changes_do_not_load(tmp_path, monkeypatch):
    """It once timed an error path: without tests/infra no change loaded, `audit log` listed
    nothing and `audit check` judged nothing. Its proof now passes on the history it builds and
    stops the benchmark on one whose changes do not load."""
    bench = _audit_bench()
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT / "src"))
    bench.build(tmp_path / "good", 12, 3)
    bench.prove_valid(tmp_path / "good", 3)
    monkeypatch.setattr(bench, "PARTS", tuple(p for p in bench.PARTS if p != "tests/infra"))
    bench.build(tmp_path / "broken", 12, 3)
    with pytest.raises(SystemExit, match="listed 0 rows"):
        bench.prove_valid(tmp_path / "broken", 3)


def test_the_audit_benchmark_measures_each_lane_s_own_peak_memory(tmp_path):
    """Peak memory is the point of streaming: each lane's own, not the largest so far, and the
    audit's own process apart from the git log it starts."""
    bench = _audit_bench()
    # Measured from a fresh, small interpreter, as the benchmark runs: a forked process starts
    # with its parent's peak (Linux), and this test's parent is the whole test session.
    driver, audit_py = tmp_path / "driver.py", str(REPO_ROOT / "benchmarks/audit.py")
    driver.write_text(
        "import importlib.util, json, sys\n"
        "from pathlib import Path\n"
        f"spec = importlib.util.spec_from_file_location('b', {audit_py!r})\n"
        "bench = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(bench)\n"
        "here = Path(sys.argv[1])\n"
        "grow = 'x = bytearray(80_000_000); x[-1] = 1'\n"
        "big = bench.timed([sys.executable, '-c', grow], here)[1]\n"
        "small = bench.timed([sys.executable, '-c', 'pass'], here)[1]\n"
        "child = 'import subprocess, sys; subprocess.run([sys.executable, \"-c\", %r])' % grow\n"
        "code = bench.OPSLEDGER.replace('from opsledger.cli import main\\nmain()', child)\n"
        "_, own, tree, _ = bench.timed([sys.executable, '-c', code], here)\n"
        "print(json.dumps([big, small, own, tree]))\n"
    )
    out = subprocess.run(
        [sys.executable, str(driver), str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    big, small, own, tree = json.loads(out)
    assert big > 80 > small
    assert tree > 80 > own
    with pytest.raises(SystemExit, match="failed"):
        bench.timed([sys.executable, "-c", "raise SystemExit(2)"], tmp_path)


def test_the_audit_benchmark_times_this_checkout_s_code(tmp_path):
    """Its lanes run in the synthetic repository: with a relative PYTHONPATH (src, as the
    worktrees use) they imported the installed opsledger of another checkout instead."""
    bench = _audit_bench()
    src = str(REPO_ROOT / "src" / "opsledger")
    probe = f"import opsledger, sys; sys.exit(0 if opsledger.__file__.startswith({src!r}) else 2)"
    bench.timed([sys.executable, "-c", probe], tmp_path)  # exits (SystemExit) when not
