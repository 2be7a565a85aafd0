"""The WAL archiving status the postgresql role installs (pg-archive-status): its verdicts."""

from __future__ import annotations

import importlib.machinery
import importlib.util

from ..conftest import REPO_ROOT

_PATH = REPO_ROOT / "roles" / "postgresql" / "files" / "pg-archive-status"
_loader = importlib.machinery.SourceFileLoader("pg_archive_status", str(_PATH))
_spec = importlib.util.spec_from_loader("pg_archive_status", _loader)
status = importlib.util.module_from_spec(_spec)
_loader.exec_module(status)

HEALTHY = {
    "archive_mode": "on",
    "archive_timeout": 20,
    "current_wal": "000000040000000000000031",
    "last_archived_wal": "000000040000000000000030",
    "last_archived_age": 12.0,
    "last_failed_wal": None,
    "last_failed_age": None,
    "failed_count": 0,
}


def judge(state=None, repo="000000040000000000000030", unarchived=5.0, margin=10):
    return status.judge({**HEALTHY, **(state or {})}, repo, unarchived, margin)


def test_a_healthy_primary_has_no_findings():
    assert judge() == []
    assert judge(unarchived=None) == []  # idle: nothing unarchived


def test_a_commit_older_than_archive_timeout_plus_margin_is_a_gap():
    # the failure that lost a drill's markers: archive_timeout dormant after a restart
    [(severity, message)] = judge(unarchived=64.6)
    assert severity == "critical"
    assert "oldest commit not yet archived is 65 s old" in message
    assert "archive_timeout 20 s + 10 s margin" in message
    assert judge(unarchived=29.9) == []


def test_a_failing_archiver_is_critical():
    findings = judge(
        {
            "last_failed_wal": "000000040000000000000031",
            "last_failed_age": 3.0,
            "last_archived_age": 90.0,
            "failed_count": 7,
        }
    )
    assert (
        findings[0][0] == "critical"
        and "archive_command is failing: 7 failure(s)" in findings[0][1]
    )
    # an old failure followed by successes is history, not a problem
    assert (
        judge(
            {
                "last_failed_age": 500.0,
                "failed_count": 1,
                "last_failed_wal": "000000040000000000000010",
            }
        )
        == []
    )


def test_completed_segments_waiting_are_critical():
    findings = judge({"current_wal": "000000040000000000000034"}, repo="000000040000000000000030")
    messages = [m for _, m in findings]
    assert any("3 completed WAL segment(s) wait to be archived" in m for m in messages)


def test_the_repository_behind_or_on_another_timeline_is_critical():
    behind = judge(repo="00000004000000000000002C")
    assert any("segment(s) behind the server" in m for _, m in behind)
    other = judge(repo="00000003000000000000002A")
    assert any("is on timeline 3, the server writes timeline 4" in m for _, m in other)
    assert any("holds no archived WAL" in m for _, m in judge(repo=None))


def test_segment_numbers_span_log_ids():
    assert status.segno("0000000400000001000000FF") == (4, 0x1FF)
    assert status.segno("000000040000000200000000") == (4, 0x200)
    assert status.segno("00000004.history") is None
    assert status.segno(None) is None


def test_archive_mode_off_is_said_plainly():
    [(severity, message)] = judge({"archive_mode": "off"})
    assert severity == "critical" and message.startswith("archive_mode is off")
