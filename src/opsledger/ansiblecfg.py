"""Reading an ansible.cfg the way every opsledger module must: a broken one is exit 2.

Several readers need a key or two from ansible.cfg (vault ids, the fact cache folder, SSH
settings) before Ansible itself runs. A duplicate section, a line outside any section or
bytes that are not UTF-8 must reach the user as one line naming the file, never as
configparser's traceback — and every reader must say it the same way, so it lives here.
"""

from __future__ import annotations

import configparser
from pathlib import Path

from opsledger.errors import OpsledgerError, Problem


def read_ansible_cfg_file(path: Path) -> configparser.ConfigParser:
    """The file as Ansible reads it (no interpolation); unreadable or malformed: exit 2.

    Example:
        read_ansible_cfg_file(Path("ansible.cfg")).get("defaults", "forks", fallback="5")
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return parser  # no ansible.cfg: Ansible's defaults, as configparser.read gave
    except (UnicodeDecodeError, OSError) as exc:
        raise _unreadable(path, str(exc)) from None
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        detail = str(exc).replace(f"While reading from {str(path)!r} ", "")
        raise _unreadable(path, detail) from None
    return parser


def _unreadable(path: Path, detail: str) -> OpsledgerError:
    return OpsledgerError(
        Problem(
            f"unreadable: {detail}",
            str(path),
            fix="fix its syntax (one [section] each, key = value lines, UTF-8)",
        )
    )
