"""Poller item validation, field mapping, and retry delays (Retry-After honoured, jittered backoff bounded)."""

from __future__ import annotations

import math

import pytest

from pr1d.config import ScoringConfig
from pr1d.monitor.poller import AgentPoll, ScoringClient, agent_health, parse_evaluation

GOOD = {"id": "e1", "ts": "2026-01-01T00:00:00Z", "weighted_score": 0.9, "status": "pass",
        "rubric": {"compliance": True}, "task_id": "t1", "tier": "easy"}


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({}, None),
        ({"id": None}, "missing or invalid id"),
        ({"id": True}, "missing or invalid id"),
        ({"ts": "yesterday"}, "missing or invalid ts"),
        ({"ts": math.nan}, "missing or invalid ts"),
        ({"weighted_score": "abc"}, "weighted_score is not a number"),
        ({"weighted_score": True}, "weighted_score is not a number"),
        ({"status": "meh"}, "invalid status"),
        ({"rubric": {"compliance": "yes"}}, "rubric is not an object of booleans"),
        ({"rubric": [1]}, "rubric is not an object of booleans"),
        ({"tier": 3}, "invalid tier"),
        ({"model_version": "tiny-gsm-v2"}, None),
        ({"model_version": ""}, "invalid model_version"),
        ({"model_version": 2}, "invalid model_version"),
    ],
)
def test_item_validation(patch, reason):
    smp, why = parse_evaluation({**GOOD, **patch}, {})
    assert why == reason
    assert (smp is None) == (reason is not None)


def test_non_finite_scores_are_kept_as_no_score():
    smp, why = parse_evaluation({**GOOD, "weighted_score": math.inf}, {})
    assert why is None and smp["weighted_score"] is None  # missing data, not a low score


def test_field_map_adapts_platform_names():
    item = {"evaluation_id": 7, "timestamp": 1700000000, "score": 0.5, "status": "fail"}
    smp, why = parse_evaluation(item, {"id": "evaluation_id", "ts": "timestamp", "weighted_score": "score"})
    assert why is None
    assert (smp["eval_id"], smp["ts"], smp["weighted_score"], smp["status"]) == ("7", 1700000000.0, 0.5, "fail")


def test_model_version_is_optional_and_mappable():
    assert parse_evaluation(GOOD, {})[0]["model_version"] is None  # tagged from the agents listing at ingest
    smp, why = parse_evaluation({**GOOD, "model": "v7"}, {"model_version": "model"})
    assert why is None and smp["model_version"] == "v7"


def test_not_an_object():
    assert parse_evaluation([1, 2], {}) == (None, "item is not an object")


def test_retry_after_is_honoured_and_capped():
    c = ScoringClient(ScoringConfig(backoff_base_s=0.2, backoff_max_s=10.0), None)
    assert c._delay(0, "3") == 3.0
    assert c._delay(0, "999") == 10.0
    for attempt in range(6):
        d = c._delay(attempt, None)
        assert 0 <= d <= min(10.0, 0.2 * 2**attempt)


def test_agent_health_counts_failures_and_invalid_items():
    p = AgentPoll("a", "c", error="HTTP 503 (after 4 attempts)")
    h = agent_health(None, p)
    h = agent_health(h, p)
    assert h["consecutive_failures"] == 2 and "503" in h["last_error"]
    ok = AgentPoll("a", "c", invalid={"invalid status": 2})
    h = agent_health(h, ok)
    assert h["consecutive_failures"] == 0 and h["invalid_total"] == {"invalid status": 2}
