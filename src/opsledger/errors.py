"""The one exception type for problems a user can fix, and the exit codes the CLI maps them to.

Every use case validates its input up front and raises `OpsledgerError` with one `Problem` per
thing that is wrong, so a user sees every problem at once (file, field, what to do) instead of
fixing them one run at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

# Exit codes are part of the CLI contract: CI pipelines branch on them.
EXIT_OK = 0
EXIT_FAILED = 1  # the operation ran and did not succeed (e.g. a host failed)
EXIT_INVALID = 2  # invalid input or environment; nothing was run
EXIT_DENIED = 3  # a policy denied the operation; nothing was run
EXIT_LOCKED = 4  # another operation holds the lock


@dataclass(frozen=True)
class Problem:
    """One thing that is wrong: where it is and what the user should do about it."""

    message: str
    file: str | None = None
    field: str | None = None
    fix: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.file and self.field:
            where = f"{self.file}: {self.field}: "
        elif self.file or self.field:
            where = f"{self.file or self.field}: "
        text = f"{where}{self.message}"
        return f"{text} — {self.fix}" if self.fix else text


class OpsledgerError(Exception):
    """A problem the user can act on; carries the exit code the CLI should return."""

    def __init__(self, problems: list[Problem] | Problem | str, exit_code: int = EXIT_INVALID):
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        self.exit_code = exit_code
        super().__init__("\n".join(str(p) for p in self.problems))
