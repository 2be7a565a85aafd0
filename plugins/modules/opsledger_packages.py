#!/usr/bin/python
"""Ansible module: package snapshots around a patch, the previous .debs kept, and their restore.

Why a module of our own: a patch is reversible only if, before anything changes, the host
knows which version of each package it ran and still holds the .deb of that version. Debian
mirrors serve only current versions and apt's own cache is cleaned by autoclean (and by
unattended-upgrade after installing), so the previous .debs are copied into a folder of ours.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: opsledger_packages
short_description: Snapshot installed packages around a patch, keep the previous .debs, restore them
description:
  - C(before) records every installed package (name -> version, architecture, held or not) in
    C(<state_dir>/<run>.json) and copies the .deb of the installed version of each package about
    to change into C(<state_dir>/debs/) (from apt's cache, else downloaded by version).
  - C(after) records the packages again, returns the difference (upgraded, downgraded,
    installed, removed, held) and keeps any previous .deb still missing.
  - C(restore) puts every package the patch changed back to its version before the patch from
    the kept .debs (dpkg), removes packages the patch installed, and fails naming each package
    it could not restore.
options:
  action: {type: str, required: true, choices: [before, after, restore]}
  run:
    {type: str, required: true, description: The run that patches (names the snapshot file).}
  patch_run:
    type: str
    description: restore - the run whose snapshot to restore (default run); a change id
      picks its newest.
  simulate:
    type: list
    elements: str
    default: []
    description: before - apt-get arguments whose simulation (-s) lists what will change.
  packages:
    type: dict
    default: {}
    description: before - more packages (name -> version) whose .deb to keep.
  root:
    type: path
    default: /
    description: dpkg's root directory (dpkg --root); the state folder and apt cache are
      below it.
  state_dir:
    type: str
    default: /var/lib/opsledger/packages
    description: Folder of snapshots and kept .debs, below root.
  keep_last:
    type: int
    default: 5
    description: after - snapshots (and the .debs only they use) kept; older ones deleted.
  missing_ok:
    type: bool
    default: false
    description: restore - a host without a snapshot of that run (the patch never reached
      it) is not a failure.
"""

EXAMPLES = r"""
- name: Snapshot the packages and keep the .debs of what will change
  opsledger_packages:
    action: before
    run: "{{ lookup('ansible.builtin.env', 'OPSLEDGER_RUN') }}"
    simulate: [dist-upgrade]
"""

RETURN = r"""
packages: {description: before/after - installed packages, name -> version., type: dict}
diff: {description: after - upgraded, downgraded, installed, removed, held, not_kept., type: dict}
restored: {description: restore - packages put back, name -> version., type: dict}
failed_packages:
  {description: restore - packages not restored, each with version and why., type: list}
"""

SEP = "\x1f"
QUERY = SEP.join(["${Package}", "${Architecture}", "${Version}", "${db:Status-Abbrev}"])
QUERY += SEP + "${db:Status-Want}\n"
INST = re.compile(r"^(Inst|Remv) (\S+) \[([^\]]+)\]", re.M)
_KEY_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class PackageError(Exception):
    """Something the module reports as a failure (message for the run record)."""


def run_key(run: str) -> str:
    """`CHG-0001/20261201T203000Z` -> `CHG-0001-20261201T203000Z` (a file name)."""
    key = _KEY_SAFE.sub("-", run).strip("-.")
    if not key:
        raise PackageError(f"run {run!r} names no snapshot")
    return key[:128]


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/")) if root != "/" else path


def _dpkg_root(root: str) -> list[str]:
    return [] if root == "/" else ["--root", root]


def installed(root: str = "/") -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Every installed package: (name -> version, name -> architecture, names on hold).

    A package installed for two architectures keeps its plain name for the first and
    `name:arch` for the other, so both are restored.
    """
    admindir = ["--admindir", _under(root, "/var/lib/dpkg")] if root != "/" else []
    out = subprocess.run(
        ["dpkg-query", *admindir, "-W", "-f", QUERY],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode not in (0, 1):  # 1: a name asked for is unknown (none asked here)
        raise PackageError(f"dpkg-query failed: {out.stderr.strip()[:300]}")
    versions: dict[str, str] = {}
    arches: dict[str, str] = {}
    held: list[str] = []
    for line in out.stdout.splitlines():
        parts = line.split(SEP)
        if len(parts) != 5:
            continue
        name, arch, version, abbrev, want = parts
        if len(abbrev) < 2 or abbrev[1] not in "iUFWt":  # not (half-)installed: gone
            continue
        key = name if name not in versions else f"{name}:{arch}"
        versions[key] = version
        arches[key] = arch
        if want == "hold":
            held.append(key)
    return versions, arches, sorted(held)


def diff(before: dict[str, str], after: dict[str, str], held: list[str]) -> dict[str, list]:
    """What changed between two snapshots, as the run record keeps it."""
    upgraded, downgraded = [], []
    for name in sorted(set(before) & set(after)):
        if before[name] != after[name]:
            entry = {"name": name, "from": before[name], "to": after[name]}
            (upgraded if _compare(after[name], before[name]) > 0 else downgraded).append(entry)
    return {
        "upgraded": upgraded,
        "downgraded": downgraded,
        "installed": [{"name": n, "version": after[n]} for n in sorted(set(after) - set(before))],
        "removed": [{"name": n, "version": before[n]} for n in sorted(set(before) - set(after))],
        "held": [{"name": n, "version": before.get(n, after.get(n, ""))} for n in held],
    }


def _compare(a: str, b: str) -> int:
    """Debian version order (dpkg --compare-versions), -1, 0 or 1."""
    if a == b:
        return 0
    lower = subprocess.run(["dpkg", "--compare-versions", a, "lt", b], check=False).returncode
    return -1 if lower == 0 else 1


def changed_names(change: dict[str, list]) -> list[str]:
    return sorted(
        {e["name"] for k in ("upgraded", "downgraded", "installed", "removed") for e in change[k]}
    )


def deb_name(name: str, version: str, arch: str) -> str:
    """apt's file name for a package version (an epoch's colon is written %3a)."""
    return f"{name.split(':')[0]}_{version.replace(':', '%3a')}_{arch}.deb"


def _deb_is(path: str, name: str, version: str) -> bool:
    out = subprocess.run(
        ["dpkg-deb", "-f", path, "Package", "Version"], capture_output=True, text=True, check=False
    )
    fields = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    return out.returncode == 0 and (fields.get("Package"), fields.get("Version")) == (
        name.split(":")[0],
        version,
    )


def keep(
    root: str, debs: str, wanted: dict[str, str], arches: dict[str, str], download: bool
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Copy the .deb of each wanted version into `debs`: from apt's cache, else downloaded.

    Returns (name -> kept file name, name -> {version, why} for those that could not be kept).
    """
    os.makedirs(debs, mode=0o750, exist_ok=True)
    cache = _under(root, "/var/cache/apt/archives")
    kept: dict[str, str] = {}
    missing: dict[str, dict[str, str]] = {}
    for name, version in sorted(wanted.items()):
        arch = arches.get(name, "")
        file = deb_name(name, version, arch)
        target = os.path.join(debs, file)
        if os.path.isfile(target) and _deb_is(target, name, version):
            kept[name] = file
            continue
        source = os.path.join(cache, file)
        if os.path.isfile(source) and _deb_is(source, name, version):
            shutil.copy2(source, target)
            kept[name] = file
            continue
        why = "not in apt's cache"
        if download:
            with tempfile.TemporaryDirectory(dir=debs) as scratch:
                got = subprocess.run(
                    ["apt-get", "download", "-q", f"{name}={version}"],  # name:arch if keyed so
                    cwd=scratch,
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=600,
                )
                found = [os.path.join(scratch, f) for f in os.listdir(scratch)]
                if got.returncode == 0 and len(found) == 1 and _deb_is(found[0], name, version):
                    shutil.move(found[0], target)
                    kept[name] = file
                    continue
                said = (got.stderr or got.stdout).strip().splitlines()
                last = said[-1][:160] if said else "no .deb"
                why += f", and the mirror does not serve it ({last})"
        missing[name] = {"version": version, "why": why}
    return kept, missing


def simulated(args: list[str], root: str) -> dict[str, str]:
    """Installed versions of the packages an apt-get run would upgrade or remove (its -s)."""
    if not args or root != "/":
        return {}
    out = subprocess.run(
        ["apt-get", "-s", "-q", "-o", "Debug::NoLocking=1", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
        timeout=600,
    )
    if out.returncode != 0:
        raise PackageError(f"apt-get -s {' '.join(args)} failed: {out.stderr.strip()[:300]}")
    return {name: version for _, name, version in INST.findall(out.stdout)}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _read(path: str) -> dict:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise PackageError(f"cannot read the snapshot {path}: {exc}") from None


def _write(path: str, data: dict) -> None:
    scratch = path + ".new"
    with open(scratch, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.write("\n")
    os.chmod(scratch, 0o640)
    os.replace(scratch, path)


def snapshot_path(state: str, run: str) -> str:
    return os.path.join(state, f"{run_key(run)}.json")


def before(
    root: str, state: str, run: str, simulate: list[str], extra: dict[str, str], check: bool
) -> dict:
    versions, arches, held = installed(root)
    wanted = {**simulated(simulate, root), **extra}
    wanted = {n: v for n, v in wanted.items() if versions.get(n) == v}  # what runs now
    path = snapshot_path(state, run)
    result = {"changed": False, "packages": versions, "held": held, "path": path}
    if check:
        return {**result, "kept": {}, "not_kept": {}, "expected": sorted(wanted)}
    os.makedirs(state, mode=0o750, exist_ok=True)
    kept, missing = keep(root, os.path.join(state, "debs"), wanted, arches, root == "/")
    data = {
        "run": run,
        "before_at": _now(),
        "before": versions,
        "arch": arches,
        "held": held,
        "kept": kept,
        "not_kept": missing,
    }
    _write(path, data)
    return {
        **result,
        "changed": True,
        "kept": kept,
        "not_kept": missing,
        "expected": sorted(wanted),
    }


def after(root: str, state: str, run: str, keep_last: int, check: bool) -> dict:
    path = snapshot_path(state, run)
    versions, arches, held = installed(root)
    if not os.path.isfile(path):
        if check:  # the check run wrote no snapshot before: nothing changed either
            return {"changed": False, "packages": versions, "diff": diff(versions, versions, held)}
        raise PackageError(f"no snapshot before the patch at {path}: run action=before first")
    data = _read(path)
    change = diff(data["before"], versions, data.get("held", []))
    previous = {e["name"]: e["from"] for e in change["upgraded"] + change["downgraded"]}
    previous.update({e["name"]: e["version"] for e in change["removed"]})
    still = {n: v for n, v in previous.items() if n not in data.get("kept", {})}
    kept, missing = ({}, {})
    if still and not check:
        kept, missing = keep(
            root, os.path.join(state, "debs"), still, data.get("arch", {}), root == "/"
        )
    all_kept = {**data.get("kept", {}), **kept}
    not_kept = [
        {"name": n, "version": v, "why": missing.get(n, {}).get("why", "not kept")}
        for n, v in sorted(previous.items())
        if n not in all_kept
    ]
    change["not_kept"] = not_kept
    if check:
        return {"changed": False, "packages": versions, "diff": change, "path": path}
    data.update(
        after_at=_now(),
        after=versions,
        arch={**arches, **data.get("arch", {})},
        kept=all_kept,
        not_kept={e["name"]: {"version": e["version"], "why": e["why"]} for e in not_kept},
    )
    _write(path, data)
    pruned = prune(state, keep_last)
    return {"changed": True, "packages": versions, "diff": change, "path": path, "pruned": pruned}


def prune(state: str, keep_last: int) -> list[str]:
    """Keep the newest `keep_last` snapshots and the .debs they name; delete the rest."""
    files = sorted(glob.glob(os.path.join(state, "*.json")), key=os.path.getmtime, reverse=True)
    gone = files[max(keep_last, 1) :]
    for path in gone:
        os.remove(path)
    used = set()
    for path in files[: max(keep_last, 1)]:
        used |= set(_read(path).get("kept", {}).values())
    debs = os.path.join(state, "debs")
    for name in os.listdir(debs) if os.path.isdir(debs) else []:
        if name.endswith(".deb") and name not in used:
            os.remove(os.path.join(debs, name))
    return [os.path.basename(p) for p in gone]


def find_snapshot(state: str, patch_run: str) -> str:
    """The snapshot of a run (`CHG-0003/<stamp>`), or the newest of a change (`CHG-0003`)."""
    exact = snapshot_path(state, patch_run)
    if os.path.isfile(exact):
        return exact
    if "/" not in patch_run:
        found = sorted(glob.glob(os.path.join(state, f"{run_key(patch_run)}-*.json")))
        if found:
            return found[-1]
    raise PackageError(
        f"no package snapshot of {patch_run} on this host (looked in {state}): it was not "
        "patched by that run, or the snapshot was pruned"
    )


def restore(root: str, state: str, patch_run: str, check: bool, missing_ok: bool = False) -> dict:
    try:
        path = find_snapshot(state, patch_run)
    except PackageError as exc:
        if not missing_ok:
            raise
        # The patch stopped before this host (one host at a time): nothing of it to undo.
        return {"changed": False, "not_patched": True, "note": str(exc), "failed_packages": []}
    data = _read(path)
    versions, _, _ = installed(root)
    base = data["before"]
    if "after" in data:  # what the patch changed, and nothing changed since by others
        scope = set(changed_names(diff(base, data["after"], [])))
    else:  # the patch stopped before its after-snapshot: whatever differs from before
        scope = {n for n in set(base) | set(versions) if base.get(n) != versions.get(n)}
    put_back = {n: base[n] for n in sorted(scope) if n in base and versions.get(n) != base[n]}
    take_out = sorted(n for n in scope if n not in base and n in versions)
    debs = os.path.join(state, "debs")
    failed = []
    files = []
    for name, version in put_back.items():
        file = data.get("kept", {}).get(name)
        if file and os.path.isfile(os.path.join(debs, file)):
            files.append(os.path.join(debs, file))
        else:
            why = (data.get("not_kept") or {}).get(name, {}).get("why", "not kept")
            failed.append(
                {"name": name, "version": version, "why": f"no .deb of it was kept ({why})"}
            )
    result = {
        "path": path,
        "run": data.get("run", ""),
        "would_restore": put_back,
        "would_remove": take_out,
    }
    if check or (not files and not take_out):
        would = check and bool(put_back or take_out)  # plan shows it would change the host
        return {
            **result,
            "changed": would,
            "restored": {},
            "removed": [],
            "failed_packages": failed,
        }
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    said = ""
    if files:
        done = subprocess.run(
            ["dpkg", *_dpkg_root(root), "--force-confdef", "--force-confold", "-i", *files],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=1800,
        )
        said = (done.stderr or done.stdout).strip()
    for name in take_out:
        gone = subprocess.run(
            ["dpkg", *_dpkg_root(root), "--remove", name],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=600,
        )
        if gone.returncode != 0:
            said += "\n" + (gone.stderr or gone.stdout).strip()
    now, _, _ = installed(root)
    restored = {n: v for n, v in put_back.items() if now.get(n) == v}
    removed = [n for n in take_out if n not in now]
    for name, version in put_back.items():
        if name not in restored and not any(f["name"] == name for f in failed):
            failed.append(
                {
                    "name": name,
                    "version": version,
                    "why": f"dpkg left {now.get(name, 'nothing')} installed: " + _about(said, name),
                }
            )
    for name in take_out:
        if name not in removed:
            failed.append(
                {
                    "name": name,
                    "version": "(not installed before)",
                    "why": f"dpkg could not remove it: {_about(said, name)}",
                }
            )
    data["restored_at"] = _now()
    data["restore"] = {"restored": restored, "removed": removed, "failed": failed}
    _write(path, data)
    return {
        **result,
        "changed": bool(restored or removed),
        "restored": restored,
        "removed": removed,
        "failed_packages": failed,
    }


def _about(said: str, name: str) -> str:
    """dpkg's line about one package, else its last line."""
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    hit = next((line for line in lines if name.split(":")[0] in line), lines[-1] if lines else "")
    return hit[:240] or "no message"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "action": {"type": "str", "required": True, "choices": ["before", "after", "restore"]},
            "run": {"type": "str", "required": True},
            "patch_run": {"type": "str"},
            "simulate": {"type": "list", "elements": "str", "default": []},
            "packages": {"type": "dict", "default": {}},
            "root": {"type": "path", "default": "/"},
            "state_dir": {"type": "str", "default": "/var/lib/opsledger/packages"},
            "keep_last": {"type": "int", "default": 5},
            "missing_ok": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    root = params["root"]
    state = _under(root, params["state_dir"])
    check = module.check_mode
    try:
        if params["action"] == "before":
            extra = {str(k): str(v) for k, v in params["packages"].items()}
            result = before(root, state, params["run"], params["simulate"], extra, check)
        elif params["action"] == "after":
            result = after(root, state, params["run"], params["keep_last"], check)
        else:
            result = restore(
                root, state, params["patch_run"] or params["run"], check, params["missing_ok"]
            )
    except (PackageError, OSError, subprocess.SubprocessError) as exc:
        module.fail_json(msg=str(exc))
    if result.get("failed_packages"):
        names = ", ".join(f"{f['name']} {f['version']}" for f in result["failed_packages"])
        module.fail_json(msg=f"could not restore: {names}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
