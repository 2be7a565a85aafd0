"""Typed statuses (StrEnums) are written exactly as the plain strings they replaced."""

from __future__ import annotations

import json

import pytest
import yaml

from opsledger.faults.store import dump
from opsledger.records import DriftState, RunResult, Verified
from opsledger.verify import _outcomes

MEMBERS = [*Verified, *DriftState, *RunResult]


@pytest.mark.parametrize("member", MEMBERS, ids=str)
def test_a_status_is_written_as_its_plain_string(member):
    # incidents and problems are YAML (faults.store), records are JSON: both must hold the bare
    # value, never a Python object tag, and read back equal to the member
    text = dump({"result": member}, ("result",))
    assert "!!python" not in text and "Verified" not in text
    assert text == dump({"result": member.value}, ("result",))
    assert yaml.safe_load(text)["result"] == member
    assert json.dumps({"result": member}) == json.dumps({"result": member.value})


def test_junit_outcomes_are_typed(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(
        "<testsuites><testsuite>"
        '<testcase name="test_a[ansible://h1]"/>'
        '<testcase name="test_b[ansible://h1]"><failure message="boom">x</failure></testcase>'
        '<testcase name="test_c[ansible://h2]"><error message="broke"/></testcase>'
        '<testcase name="test_d[ansible://h2]"><skipped message="not here"/></testcase>'
        "</testsuite></testsuites>"
    )
    got = [(o.test, o.status, o.message) for o in _outcomes(junit)]
    assert got == [
        ("test_a", Verified.PASSED, ""),
        ("test_b", Verified.FAILED, "boom"),
        ("test_c", Verified.ERROR, "broke"),
        ("test_d", Verified.SKIPPED, "not here"),
    ]
    assert all(isinstance(status, Verified) for _, status, _ in got)
