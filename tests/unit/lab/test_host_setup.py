import os
import shutil
import subprocess
import sys

import pytest

from opsledger.lab import host_setup
from opsledger.lab.spec import SYSCTL_MINIMUMS

from ...conftest import REPO_ROOT


def test_sysctl_never_lowers_a_higher_limit(tmp_path):
    for key, minimum in SYSCTL_MINIMUMS.items():
        f = tmp_path / key.replace(".", "/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"{minimum * 2}\n")
    assert host_setup.ensure_sysctl(tmp_path) == []


def test_write_if_changed_reports_changes(tmp_path):
    path = tmp_path / "d" / "f.conf"
    assert host_setup.write_if_changed(path, "a\n") is True
    assert host_setup.write_if_changed(path, "a\n") is False
    assert host_setup.write_if_changed(path, "b\n") is True


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop it"
)
def test_lab_up_as_non_root_fails_cleanly_with_exit_2(tmp_path):
    # Really run as an unprivileged user (not a patched geteuid): exit 2, one clear line.
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o777)
    tmp_path.chmod(0o755)
    tmp_path.parent.chmod(0o755)
    env = dict(os.environ, HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            sys.executable,
            "-m",
            "opsledger",
            "lab",
            "up",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: the lab needs root: it runs rootful podman with published ports and NET_ADMIN"
        " — run it as root (e.g. `sudo -E opsledger lab up`)"
    ]
