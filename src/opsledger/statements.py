"""Signed statements about a change: who requests, approves or rejects which content.

A statement is one file, `changes/<block>/<ID>/approvals/<person>/<UTC stamp>.yml`, written once and
never edited: a person who changes their mind adds a newer statement. It names the change, the
person, the decision (`requested`, `approved` or `rejected`), the sha256 of the content it is
about, the policy bundle hash it was judged under, the time and a comment. Those fields, in a
canonical text form, are what the person signs with `ssh-keygen -Y sign -n opsledger-approval`
and what anyone verifies with `ssh-keygen -Y verify` against the person's key in people.yml.

The signature stands on its own, whatever the commits around the file look like, so a signed
statement survives squash and rebase merges. An unsigned statement (allowed where policy does
not require signatures, e.g. the lab) is only attributable through the commit that added it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opsledger.errors import OpsledgerError, Problem
from opsledger.layout import APPROVALS, change_folder
from opsledger.yamlio import parse_yaml

NAMESPACE = "opsledger-approval"
VERSION = 1
DECISIONS = ("requested", "approved", "rejected")
SIGNED_FIELDS = ("change", "person", "decision", "content_sha256", "policy_sha256", "at", "comment")
_HEX = re.compile(r"^[0-9a-f]{64}$")
_PERSON = re.compile(r"^[a-z][a-z0-9_.-]*$")


class NotAStatement(ValueError):
    """A file where a statement belongs that is not a well-formed one (the reason says why)."""


@dataclass(frozen=True)
class Statement:
    change: str
    person: str
    decision: str
    content_sha256: str
    policy_sha256: str
    at: dt.datetime
    comment: str = ""
    signature: str = ""  # an armored SSH signature over text(), or "" when unsigned
    content_files: dict[str, str] = field(default_factory=dict, compare=False)  # not signed

    def text(self) -> str:
        """The canonical text that is signed: one `key=json value` line per signed field."""
        values = {**self.__dict__, "at": self.at.isoformat()}
        lines = [f"opsledger statement v{VERSION}"]
        lines += [f"{key}={json.dumps(values[key])}" for key in SIGNED_FIELDS]
        return "\n".join(lines) + "\n"

    def to_yaml(self) -> str:
        data: dict[str, Any] = {"version": VERSION}
        data |= {key: getattr(self, key) for key in SIGNED_FIELDS}
        data["at"] = self.at.isoformat()
        data["signature"] = self.signature
        data["content_files"] = self.content_files
        header = (
            "# opsledger statement: written once, never edited (add a newer one instead).\n"
            "# The signature covers every field above it except version; see statements.py.\n"
        )
        return "---\n" + header + yaml.safe_dump(data, sort_keys=False, width=100)


def stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def statement_path(root: Path, change_id: str, person: str, at: dt.datetime) -> Path:
    """`changes/<block>/<ID>/approvals/<person>/<UTC stamp>.yml` (or the legacy flat folder)."""
    return change_folder(root, change_id, APPROVALS, person, f"{stamp(at)}.yml")


def parse_statement(raw: bytes) -> Statement:
    """A statement from a file's bytes; NotAStatement says what is wrong with it."""
    try:
        data = parse_yaml(raw.decode(), source="statement")
    except (OpsledgerError, yaml.YAMLError, UnicodeDecodeError) as exc:
        # duplicate keys, tags, aliases, size: the one loader's refusals (yamlio.py)
        raise NotAStatement(f"not YAML ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(data, dict):
        raise NotAStatement("not a mapping of fields")
    if data.get("version") != VERSION:
        raise NotAStatement(f"version {data.get('version')!r} is not {VERSION}")
    for key in SIGNED_FIELDS:
        if not isinstance(data.get(key), str):
            raise NotAStatement(f"field {key!r} is missing or not text")
    if data["decision"] not in DECISIONS:
        raise NotAStatement(f"unknown decision {data['decision']!r}")
    for key in ("content_sha256", "policy_sha256"):
        if not _HEX.fullmatch(data[key]):
            raise NotAStatement(f"{key} is not a sha256")
    if not _PERSON.fullmatch(data["person"]):
        raise NotAStatement(f"{data['person']!r} is not a person id")
    try:
        at = dt.datetime.fromisoformat(data["at"])
    except ValueError:
        raise NotAStatement(f"at {data['at']!r} is not an ISO 8601 time") from None
    if at.tzinfo is None:
        raise NotAStatement("at has no timezone")
    signature = data.get("signature") or ""
    files = data.get("content_files") or {}
    if not isinstance(signature, str) or not isinstance(files, dict):
        raise NotAStatement("signature or content_files has the wrong type")
    return Statement(
        data["change"],
        data["person"],
        data["decision"],
        data["content_sha256"],
        data["policy_sha256"],
        at,
        data["comment"],
        signature,
        {str(k): str(v) for k, v in files.items()},
    )


def sign(text: str, key: Path) -> str:
    """Sign text with an SSH private key (or a public key whose private half ssh-agent holds)."""
    proc = subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-f", str(key), "-n", NAMESPACE],
        input=text.encode(),
        capture_output=True,
    )
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise OpsledgerError(
            Problem(
                f"ssh-keygen could not sign: {message[0]}",
                str(key),
                "--key",
                "point at your SSH private key (without a passphrase prompt, or in ssh-agent)",
            )
        )
    return proc.stdout.decode()


_VERIFIED: dict[tuple[str, str, str, str], bool] = {}


def verify(statement: Statement, public_key: str) -> bool:
    """Whether the statement's signature is the person's, made with this public key.

    The principal is the person id and the namespace is fixed, so a signature made for
    anything else (a git commit, another person's statement) never verifies here.
    """
    if not statement.signature or not public_key:
        return False
    key = (statement.text(), statement.signature, statement.person, public_key)
    if key not in _VERIFIED:
        with tempfile.TemporaryDirectory(prefix="opsledger-verify-") as tmp:
            signers = Path(tmp) / "allowed_signers"
            signers.write_text(f'{statement.person} namespaces="{NAMESPACE}" {public_key}\n')
            signature = Path(tmp) / "statement.sig"
            signature.write_text(statement.signature)
            proc = subprocess.run(
                [
                    "ssh-keygen",
                    "-Y",
                    "verify",
                    "-f",
                    str(signers),
                    "-I",
                    statement.person,
                    "-n",
                    NAMESPACE,
                    "-s",
                    str(signature),
                ],
                input=statement.text().encode(),
                capture_output=True,
            )
        _VERIFIED[key] = proc.returncode == 0
    return _VERIFIED[key]
