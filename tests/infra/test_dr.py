"""DR drill verified on the restored host: the live server against the drill's own evidence.

A drill (runbooks/pg-dr-drill) leaves its timeline on the primary it restored: the reference
data set's checksum and the query that takes it, the moment the primary went down, and every
marker row the database acknowledged. These tests hold the restored server to that evidence;
the port comes from the inventory. Hosts without a drill timeline (standbys, hosts never
drilled) skip: the postgresql suite checks that standbys stream again.
"""

from __future__ import annotations

import json
import shlex

import pytest

SUITE = "dr"
APPLIES_TO = "db"
TIMELINE = "/var/lib/opsledger/drills/last.json"


@pytest.fixture
def drill(host):
    timeline = host.file(TIMELINE)
    if not timeline.exists:
        pytest.skip(f"no DR drill timeline on this host ({TIMELINE})")
    return json.loads(timeline.content_string)


@pytest.fixture
def sql(host, expect, drill):
    """Run a query as postgres in the drill's database; rows as lists of strings."""
    port = expect["postgresql_port"]

    def run(query: str) -> list[list[str]]:
        out = host.check_output(
            f"runuser -u postgres -- psql -XAt -F '|' -p {port} -d {drill['database']} "
            f"-c {shlex.quote(query)}"
        )
        return [line.split("|") for line in out.splitlines() if line]

    return run


def _markers(rows) -> dict[int, float]:
    return {int(i): float(t) for i, t in rows}


def test_restored_primary_is_out_of_recovery(sql):
    assert sql("SELECT pg_is_in_recovery()") == [["f"]]


def test_restored_primary_runs_on_a_new_timeline(sql, drill):
    assert int(sql("SELECT timeline_id FROM pg_control_checkpoint()")[0][0]) >= int(
        drill["timeline"]
    )
    assert int(drill["timeline"]) > 1, "a restore to the end of the WAL promotes a new timeline"


def test_restored_primary_is_writable(sql, drill):
    written = sql(f"INSERT INTO markers (drill) VALUES ('{drill['drill_id']}-verify') RETURNING id")
    assert written and written[0][0].isdigit()
    sql(f"DELETE FROM markers WHERE drill = '{drill['drill_id']}-verify'")


def test_reference_data_matches_its_checksum(sql, drill):
    assert sql(drill["reference_query"]) == [[drill["reference_checksum"]]]


def test_markers_present_up_to_the_recovery_point(sql, drill):
    down = float(drill["down_at"])
    restored = _markers(
        sql(
            "SELECT id, extract(epoch FROM ts) FROM markers "
            f"WHERE drill = '{drill['drill_id']}' AND ts <= to_timestamp({down})"
        )
    )
    assert restored, "no marker written before the disaster came back"
    point = max(restored.values())
    acknowledged = _markers(drill["acknowledged"])
    missing = sorted(i for i, t in acknowledged.items() if t <= point and i not in restored)
    assert missing == [], f"acknowledged before the recovery point but not restored: {missing}"


def test_writes_after_the_restore_are_kept(sql, drill):
    """The markers acknowledged once it was writable again are in the database."""
    down = float(drill["down_at"])
    after = {i for i, t in _markers(drill["acknowledged"]).items() if t > down}
    live = set(_markers(sql(f"SELECT id, 0 FROM markers WHERE drill = '{drill['drill_id']}'")))
    assert after and after <= live
