"""plugins/modules/opsledger_packages.py on a real dpkg database: real .deb packages built with
dpkg-deb, installed with dpkg into a private root under tmp_path (`dpkg --root`), so snapshot,
kept .debs, diff and restore run for real without touching this machine's packages."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

from ..conftest import REPO_ROOT

SPEC = importlib.util.spec_from_file_location(
    "opsledger_packages", REPO_ROOT / "plugins" / "modules" / "opsledger_packages.py"
)
assert SPEC and SPEC.loader
packages = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(packages)

RUN = "CHG-0007/20261201T203000Z"


def build_deb(folder: Path, name: str, version: str, depends: str = "") -> Path:
    """A real (tiny) Debian package: one file saying its version."""
    tree = folder / f"build-{name}-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr" / "share" / name).mkdir(parents=True)
    (tree / "usr" / "share" / name / "version").write_text(version + "\n")
    control = f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
    control += f"Depends: {depends}\n" if depends else ""
    control += "Maintainer: Test <t@example.org>\nDescription: test package\n"
    (tree / "DEBIAN" / "control").write_text(control)
    out = folder / packages.deb_name(name, version, "all")
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def dpkg(root: Path, *args: str, stdin: str | None = None) -> None:
    subprocess.run(
        ["dpkg", "--root", str(root), *args],
        check=True,
        capture_output=True,
        input=stdin,
        text=True,
    )


@pytest.fixture
def host(tmp_path):
    """A dpkg root with demo 1.0, gone 1.0 and held 1.0 installed, their .debs in apt's cache
    (as apt leaves them), and 2.0 / new 1.0 built for the 'patch'."""
    root = tmp_path / "root"
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/updates").mkdir()
    (root / "var/lib/dpkg/status").touch()
    (root / "var/lib/dpkg/available").touch()
    cache = root / "var/cache/apt/archives"
    cache.mkdir(parents=True)
    debs = tmp_path / "debs"
    debs.mkdir()
    olds = [build_deb(debs, n, "1.0") for n in ("opsl-demo", "opsl-gone", "opsl-held")]
    for deb in olds:
        (cache / deb.name).write_bytes(deb.read_bytes())
    dpkg(root, "-i", *map(str, olds))
    dpkg(root, "--set-selections", stdin="opsl-held hold\n")
    new = {
        "demo": build_deb(debs, "opsl-demo", "1:2.0"),  # an epoch: apt names it 1%3a2.0
        "new": build_deb(debs, "opsl-new", "1.0"),
    }
    return root, new


def version_file(root: Path, name: str) -> str | None:
    path = root / "usr" / "share" / name / "version"
    return path.read_text().strip() if path.exists() else None


def patch(root: Path, new: dict[str, Path]) -> None:
    """What an upgrade does: a newer version, a new dependency, a package removed."""
    dpkg(root, "-i", str(new["demo"]), str(new["new"]))
    dpkg(root, "--remove", "opsl-gone")


def test_apt_names_debs_with_the_epoch_escaped():
    assert packages.deb_name("openssl", "1:3.0.15-1~deb12u1", "amd64") == (
        "openssl_1%3a3.0.15-1~deb12u1_amd64.deb"
    )
    assert packages.run_key(RUN) == "CHG-0007-20261201T203000Z"
    with pytest.raises(packages.PackageError):
        packages.run_key("///")


def test_a_patch_is_snapshotted_diffed_and_restored_from_the_kept_debs(host):
    root, new = host
    state = packages._under(str(root), "/var/lib/opsledger/packages")
    expected = {"opsl-demo": "1.0", "opsl-gone": "1.0"}  # what the simulation would list

    first = packages.before(str(root), state, RUN, [], expected, check=False)
    assert first["packages"] == {"opsl-demo": "1.0", "opsl-gone": "1.0", "opsl-held": "1.0"}
    assert first["held"] == ["opsl-held"]
    assert first["kept"] == {
        "opsl-demo": "opsl-demo_1.0_all.deb",
        "opsl-gone": "opsl-gone_1.0_all.deb",
    }
    (root / "var/cache/apt/archives/opsl-demo_1.0_all.deb").unlink()  # autoclean: ours stay

    patch(root, new)
    done = packages.after(str(root), state, RUN, keep_last=5, check=False)
    change = done["diff"]
    assert change["upgraded"] == [{"name": "opsl-demo", "from": "1.0", "to": "1:2.0"}]
    assert change["installed"] == [{"name": "opsl-new", "version": "1.0"}]
    assert change["removed"] == [{"name": "opsl-gone", "version": "1.0"}]
    assert change["held"] == [{"name": "opsl-held", "version": "1.0"}]
    assert change["downgraded"] == [] and change["not_kept"] == []
    saved = json.loads(Path(done["path"]).read_text())
    assert saved["run"] == RUN and saved["after"]["opsl-demo"] == "1:2.0"
    assert version_file(root, "opsl-demo") == "1:2.0"

    back = packages.restore(str(root), state, RUN, check=False)
    assert back["failed_packages"] == []
    assert back["restored"] == {"opsl-demo": "1.0", "opsl-gone": "1.0"}
    assert back["removed"] == ["opsl-new"]
    versions, _, held = packages.installed(str(root))
    assert versions == {"opsl-demo": "1.0", "opsl-gone": "1.0", "opsl-held": "1.0"}
    assert held == ["opsl-held"]
    assert version_file(root, "opsl-demo") == "1.0" and version_file(root, "opsl-new") is None
    assert json.loads(Path(done["path"]).read_text())["restore"]["restored"] == back["restored"]


def test_a_version_without_its_deb_is_named_and_the_rest_restored(host):
    root, new = host
    state = packages._under(str(root), "/var/lib/opsledger/packages")
    (root / "var/cache/apt/archives/opsl-gone_1.0_all.deb").unlink()  # never kept anywhere
    packages.before(str(root), state, RUN, [], {"opsl-demo": "1.0"}, check=False)
    patch(root, new)
    done = packages.after(str(root), state, RUN, keep_last=5, check=False)
    assert done["diff"]["not_kept"] == [
        {"name": "opsl-gone", "version": "1.0", "why": "not in apt's cache"}
    ]

    back = packages.restore(str(root), state, "CHG-0007", check=False)  # newest of the change
    (failed,) = back["failed_packages"]
    assert failed["name"] == "opsl-gone" and failed["version"] == "1.0"
    assert "no .deb of it was kept (not in apt's cache)" in failed["why"]
    assert back["restored"] == {"opsl-demo": "1.0"} and back["removed"] == ["opsl-new"]
    assert packages.installed(str(root))[0].get("opsl-gone") is None


def test_check_mode_reports_what_it_would_do_and_changes_nothing(host):
    root, new = host
    state = packages._under(str(root), "/var/lib/opsledger/packages")
    seen = packages.before(str(root), state, RUN, [], {"opsl-demo": "1.0"}, check=True)
    assert seen["expected"] == ["opsl-demo"] and not os.path.exists(seen["path"])
    packages.before(str(root), state, RUN, [], {"opsl-demo": "1.0"}, check=False)
    patch(root, new)
    plan = packages.restore(str(root), state, RUN, check=True)
    assert plan["would_restore"] == {"opsl-demo": "1.0", "opsl-gone": "1.0"}
    assert plan["would_remove"] == ["opsl-new"] and plan["changed"] is True  # plan: would change
    assert version_file(root, "opsl-demo") == "1:2.0"


def test_a_host_the_patch_never_reached_has_no_snapshot_to_restore(host):
    root, _ = host
    state = packages._under(str(root), "/var/lib/opsledger/packages")
    with pytest.raises(packages.PackageError, match="no package snapshot of CHG-0009"):
        packages.restore(str(root), state, "CHG-0009/20261201T203000Z", check=False)
    skipped = packages.restore(str(root), state, "CHG-0009", check=False, missing_ok=True)
    assert skipped["not_patched"] and skipped["changed"] is False
    assert "was not patched by that run" in skipped["note"]


def test_old_snapshots_and_debs_only_they_use_are_pruned(host):
    root, _ = host
    state = packages._under(str(root), "/var/lib/opsledger/packages")
    for minute, name in enumerate(("opsl-demo", "opsl-gone")):
        run = f"CHG-000{minute}/20261201T20{minute}000Z"
        packages.before(str(root), state, run, [], {name: "1.0"}, check=False)
        os.utime(packages.snapshot_path(state, run), (1000 + minute, 1000 + minute))
    packages.before(str(root), state, RUN, [], {}, check=False)
    pruned = packages.prune(state, keep_last=2)
    assert pruned == ["CHG-0000-20261201T200000Z.json"]
    assert sorted(os.listdir(os.path.join(state, "debs"))) == ["opsl-gone_1.0_all.deb"]
