"""Post-promotion watch: the pure verdict as a table, then live grades from a real `pr1d sim`."""

from __future__ import annotations

import pytest
from registry_kit import (  # noqa: F401 (fixtures)
    BASE_MODEL,
    awaiting_run,
    ingest,
    ledger_fixture,
    make_model,
    models_fixture,
    sim_fixture,
)

from pr1d.registry.approvals import approve
from pr1d.registry.deploy import read_pointer, record_initial, rollback
from pr1d.registry.push import HttpPusher
from pr1d.registry.status import registry_status
from pr1d.registry.versions import register_version
from pr1d.registry.watch import WatchConfig, check_watches, watch_status, watch_verdict

CFG = WatchConfig(window=50, min_samples=10, tolerance=0.02, z=1.645)

VERDICTS = [
    # (id, expected, scores, config, state, complete)
    ("too_few", 0.9, [0.9] * 9, CFG, "insufficient", False),
    ("on_target", 0.9, [0.9] * 20, CFG, "ok", False),
    ("within_tolerance", 0.9, [0.885] * 20, CFG, "ok", False),
    ("short", 0.9, [0.8] * 20, CFG, "short", False),
    ("window_full_final", 0.9, [0.9] * 80, CFG, "ok", True),
    ("short_and_final", 0.9, [0.7] * 50, CFG, "short", True),
    # below the floor on average, but too noisy to be sure with 10 grades: the bound gives it the benefit
    ("noisy_benefit_of_doubt", 0.9, [0.6, 1.0] * 5, CFG, "ok", False),
    ("noisy_plain_mean", 0.9, [0.6, 1.0] * 5, WatchConfig(window=50, min_samples=10, tolerance=0.02, z=0.0),
     "short", False),
]


@pytest.mark.parametrize(("case", "expected", "scores", "cfg", "state", "complete"), VERDICTS,
                         ids=[v[0] for v in VERDICTS])
def test_watch_verdict_table(case, expected, scores, cfg, state, complete):
    r = watch_verdict(expected, scores, cfg)
    assert (r.state, r.complete) == (state, complete), r.evidence
    assert r.evidence["expected"] == expected and r.evidence["n"] == min(len(scores), cfg.window)


def test_auto_rollback_is_off_by_default():
    assert WatchConfig().auto_rollback is False


def _promote(sim, ledger, models, tmp_path, expected: float):
    sim.tick(300)
    ingest(ledger, sim)
    base = register_version(ledger, models, "agent-000", make_model(tmp_path / "base", 0), served_as=BASE_MODEL)
    record_initial(ledger, models, "agent-000", base["id"])
    run_id = awaiting_run(ledger, "agent-000", expected=expected)
    v = register_version(ledger, models, "agent-000", make_model(tmp_path / "cand", 1), run_id=run_id)
    approve(ledger, models, run_id, "alice", "ok", pusher=HttpPusher(sim.url))
    return base, v


def test_watch_ok_when_live_grades_meet_the_expectation(sim, ledger, models, tmp_path):
    _promote(sim, ledger, models, tmp_path, expected=0.92)  # the sim's recovered mean
    assert check_watches(ledger, CFG) == []  # no grades since the promotion yet
    sim.tick(60)
    ingest(ledger, sim)
    (change,) = check_watches(ledger, CFG)
    assert change["state"] == "ok" and change["complete"] and change["alert"] is None
    assert change["evidence"]["n"] == 50  # only grades after the promotion, up to the window
    assert check_watches(ledger, CFG) == []  # the watch is over
    assert registry_status(ledger)["alerts"] == []


def test_watch_short_alerts_and_can_roll_back(sim, ledger, models, tmp_path):
    base, v = _promote(sim, ledger, models, tmp_path, expected=0.99)  # the gate over-promised
    sim.tick(30)
    ingest(ledger, sim)
    cfg = WatchConfig(window=50, min_samples=10, tolerance=0.02, auto_rollback=True)
    (change,) = check_watches(ledger, cfg)
    assert change["state"] == "short" and not change["complete"]
    assert change["alert"] and "falls short" in change["alert"] and v["id"] in change["alert"]
    assert change["auto_rollback"] is True
    (w,) = watch_status(ledger)
    assert w["state"] == "short" and w["n"] == 30
    alerts = registry_status(ledger)["alerts"]
    assert [a["kind"] for a in alerts] == ["watch_short"]
    # the daemon acts on auto_rollback with the ordinary rollback
    rollback(ledger, models, "agent-000", "daemon", change["alert"], pusher=HttpPusher(sim.url))
    assert read_pointer(models, "agent-000") == base["id"]
    assert sim.history("agent-000")[-1]["model_version"] == BASE_MODEL
    assert watch_status(ledger) == [] and registry_status(ledger)["alerts"] == []
