"""Running git in the project: the change log *is* the git history."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from opsledger.errors import OpsledgerError, Problem


def git(
    root: Path, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """`git -C root ARGS`; with check, failure raises OpsledgerError carrying git's words."""
    proc = subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise OpsledgerError(
            Problem(
                f"git {args[0]} failed: {last[0]}",
                field="git",
                fix="run the git command yourself to see more",
            ),
            1,
        )
    return proc


def is_repo(root: Path) -> bool:
    return git(root, "rev-parse", "--git-dir", check=False).returncode == 0


def head(root: Path) -> str:
    return git(root, "rev-parse", "HEAD").stdout.strip()


def commit_paths(
    root: Path,
    paths: list[Path],
    message: str,
    *,
    name: str,
    email: str,
    signing_key: Path | None = None,
) -> str:
    """Commit exactly these paths as this person (author and committer); returns the sha.

    With a key the commit is SSH-signed, so git itself can later verify who approved.
    """
    relative = [str(p.resolve().relative_to(root.resolve())) for p in paths]
    git(root, "add", "--", *relative)
    identity = {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }
    sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={signing_key}"] if signing_key else []
    args = [*sign, "commit", "--quiet", "--no-verify", "-m", message]
    if signing_key:
        args.append("-S")
    git(root, *args, "--", *relative, env=identity)
    return head(root)


def blob_contents(root: Path, shas: list[str]) -> dict[str, bytes]:
    """Object contents by sha from one `git cat-file --batch` (missing objects are left out)."""
    if not shas:
        return {}
    proc = subprocess.run(
        ["git", "-C", str(root), "cat-file", "--batch"],
        input="".join(f"{s}\n" for s in shas).encode(),
        capture_output=True,
        check=True,
    )
    out, found, at = proc.stdout, {}, 0
    for sha in shas:
        end = out.index(b"\n", at)
        header = out[at:end].split()
        at = end + 1
        if len(header) < 3 or header[1] == b"missing":
            continue
        size = int(header[2])
        found[sha] = out[at : at + size]
        at += size + 1
    return found
