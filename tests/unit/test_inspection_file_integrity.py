"""The file_integrity inspection: the daily AIDE check's result graded (os_baseline OS-AIDE-02)."""

from __future__ import annotations

from opsledger.inspections import CHECKS, grade_file_integrity

# AIDE 0.18.3's report (Debian 12) for the rules os_baseline writes, after a file was added,
# one removed, one edited and one chmod-ed (captured from a container, detail section cut).
REPORT = """\
Start timestamp: 2026-12-01 14:17:06 +0000 (AIDE 0.18.3)
AIDE found differences between database and filesystem!!

Summary:
  Total number of entries:\t1454
  Added entries:\t\t1
  Removed entries:\t\t1
  Changed entries:\t\t3

---------------------------------------------------
Added entries:
---------------------------------------------------

f+++++++++++++++++: /etc/newfile

---------------------------------------------------
Removed entries:
---------------------------------------------------

f-----------------: /etc/issue

---------------------------------------------------
Changed entries:
---------------------------------------------------

d = ... mc.. ..   : /etc
f > ... mc..H..   : /etc/issue.net
f = p.. .c...A.   : /etc/motd

---------------------------------------------------
Detailed information about changes:
---------------------------------------------------

Directory: /etc
 Mtime     : 2026-12-01 14:16:58 +0000        | 2026-12-01 14:17:06 +0000

File: /etc/issue.net
 Size      : 20                               | 22
"""

SPEC = {"groups": ["all"], "hours": 48}


def test_the_check_is_in_the_shipped_catalogue():
    assert "file_integrity" in CHECKS


def test_a_clean_recent_check_is_no_finding():
    assert grade_file_integrity(0, 3.0, "", SPEC) == []


def test_changes_since_the_baseline_are_critical_and_named():
    [(severity, message)] = grade_file_integrity(7, 2.0, REPORT, SPEC)
    assert severity == "critical"
    assert message == (
        "AIDE: 1 added, 1 removed, 3 changed since the converge baseline: "
        "/etc/newfile, /etc/issue, /etc, /etc/issue.net, /etc/motd"
    )


def test_a_stale_result_is_a_warning_even_when_clean():
    assert grade_file_integrity(0, 50.0, "", SPEC) == [
        ("warning", "last AIDE check 50 h ago (older than 48 h)")
    ]


def test_a_failed_check_says_why():
    said = "  ERROR: /etc/aide/opsledger.conf:1: open (read-only) failed for file"
    [(severity, message)] = grade_file_integrity(18, 1.0, said, SPEC)
    assert severity == "critical"
    assert message.startswith("AIDE check failed (exit 18): ERROR: /etc/aide/opsledger.conf:1")


def test_many_paths_are_cut_to_five():
    report = "Changed entries:\t\t7\n" + "".join(
        f"f = ... mc..H..   : /etc/f{i}\n" for i in range(7)
    )
    [(_, message)] = grade_file_integrity(4, 1.0, report, SPEC)
    assert message.endswith("/etc/f0, /etc/f1, /etc/f2, /etc/f3, /etc/f4 and 2 more")
