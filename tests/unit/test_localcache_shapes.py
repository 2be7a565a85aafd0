"""A cache file that verifies but holds another shape (a newer opsledger's format, written with
the same clone key): every reader treats what it does not recognise as a miss, never a crash
and never a different answer. Each cache is written through localcache itself (authenticated)."""

from __future__ import annotations

import pytest

from opsledger import localcache, policycheck
from opsledger.changes import validate_change
from opsledger.localcache import load_cache, save_cache, schema_passes

SHAPES = [5, "x", [[1]], {"a": 1}, None]


@pytest.mark.parametrize("shape", SHAPES, ids=repr)
def test_a_policy_check_cache_of_another_shape_is_a_miss(repo, shape):
    project, _, _ = repo
    expected = policycheck.require_policies(project)
    policycheck._PASSED.clear()  # what this process remembered: read the cache again
    save_cache(project, "policycheck", {"passed": shape})
    assert policycheck.require_policies(project) == expected
    assert isinstance(load_cache(project, "policycheck")["passed"], list)  # rewritten whole


@pytest.mark.parametrize("shape", SHAPES, ids=repr)
def test_a_schema_passes_cache_of_another_shape_is_a_miss(repo, shape):
    project, change_id, _ = repo
    with schema_passes(project):
        expected = validate_change(project, change_id)
    save_cache(project, "schema-passes", {"code": localcache._validator_code(), "passes": shape})
    with schema_passes(project):
        assert validate_change(project, change_id) == expected
