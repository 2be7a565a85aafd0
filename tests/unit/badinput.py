"""What every bad-input test checks: exit code, one `error:` line per problem, no traceback,
and nothing written (the project's files, and git's HEAD when there is a repository)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from click.testing import CliRunner, Result

from opsledger.cli import cli


def tree_state(root: Path) -> dict[str, str]:
    """Every file under root (git's own folder aside) with a hash of its bytes, and HEAD."""
    state = {}
    for path in sorted(root.rglob("*")):
        if ".git" in path.relative_to(root).parts:
            continue
        if path.parent == root / ".opsledger" and path.suffix == ".lock":
            continue  # an empty flock target (the commit lock), not data anyone reads
        if path.is_symlink():
            state[str(path.relative_to(root))] = f"-> {os.readlink(path)}"
        elif path.is_file():
            state[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    if (root / ".git").exists():
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "-q", "--verify", "HEAD"],
            capture_output=True,
            text=True,
        )
        state[".git/HEAD"] = head.stdout.strip()
    return state


def run(root: Path, args: list[str]) -> Result:
    """The CLI in-process against the project at root."""
    return CliRunner().invoke(cli, args, env={"OPSLEDGER_PROJECT": str(root)})


def assert_refused(
    result: Result, code: int = 2, *, expect: str = "", progress: bool = False
) -> list[str]:
    """Exit `code`, no traceback, stderr only `error:` lines (one per problem); returns them.

    progress: commands that report their phases on stderr (apply) may print those too.
    """
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    if progress:
        lines = [line for line in lines if line.startswith("error: ")]
    assert lines, "a refusal says why"
    assert all(line.startswith("error: ") for line in lines), lines
    assert all(len(line) < 1200 for line in lines), "error lines cut long values"
    if expect:
        assert expect in result.stderr, result.stderr
    return lines
