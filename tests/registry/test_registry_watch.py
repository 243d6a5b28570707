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
from pr1d.registry.watch import Reference, WatchConfig, check_watches, watch_status, watch_verdict

CFG = WatchConfig(window=50, min_samples=10, tolerance=0.02, z=1.645)
REF = Reference(mean=0.9, sd=0.0, n=50, version="tiny-gsm-v1")  # the previous version's platform grades
NOISY_REF = Reference(mean=0.9, sd=0.1, n=50)

VERDICTS = [
    # (id, reference, new version's scores, config, state, complete)
    ("too_few", REF, [0.9] * 9, CFG, "insufficient", False),
    ("on_par", REF, [0.9] * 20, CFG, "ok", False),
    ("within_tolerance", REF, [0.885] * 20, CFG, "ok", False),
    ("short", REF, [0.8] * 20, CFG, "short", False),
    ("window_full_final", REF, [0.9] * 80, CFG, "ok", True),
    ("short_and_final", REF, [0.7] * 50, CFG, "short", True),
    # below the floor on average, but too noisy to be sure with 10 grades: the bound gives it the benefit
    ("noisy_benefit_of_doubt", REF, [0.6, 1.0] * 5, CFG, "ok", False),
    ("noisy_plain_mean", REF, [0.6, 1.0] * 5, WatchConfig(window=50, min_samples=10, tolerance=0.02, z=0.0),
     "short", False),
    # the reference's own noise widens the bound too (Welch): 0.87 vs 0.9 +- 0.1 over 50 is not sure ...
    ("noisy_reference", NOISY_REF, [0.87] * 20, CFG, "ok", False),
    ("exact_reference", REF, [0.87] * 20, CFG, "short", False),  # ... against a steady 0.9 it is
    ("clearly_short_despite_noisy_reference", NOISY_REF, [0.8] * 20, CFG, "short", False),
    # no platform grades of the previous version (a new agent): nothing to compare with, never short
    ("no_reference", None, [0.5] * 20, CFG, "insufficient", False),
    ("no_reference_final", None, [0.5] * 50, CFG, "insufficient", True),
    ("reference_too_small", Reference(mean=0.9, sd=0.0, n=9), [0.5] * 20, CFG, "insufficient", False),
]


@pytest.mark.parametrize(("case", "reference", "scores", "cfg", "state", "complete"), VERDICTS,
                         ids=[v[0] for v in VERDICTS])
def test_watch_verdict_table(case, reference, scores, cfg, state, complete):
    r = watch_verdict(reference, scores, cfg)
    assert (r.state, r.complete) == (state, complete), r.evidence
    assert r.evidence["n"] == min(len(scores), cfg.window)
    assert r.evidence["expected"] == (reference.mean if reference else None)


def test_reference_summary():
    r = Reference.of([0.8, 0.9, 1.0], "v1")
    assert (r.mean, r.n, r.version) == (pytest.approx(0.9), 3, "v1") and r.sd == pytest.approx(0.1)
    assert Reference.of([]) is None and Reference.from_dict(r.to_dict()).n == 3


def test_auto_rollback_is_off_by_default():
    assert WatchConfig().auto_rollback is False


def _promote(sim, ledger, models, tmp_path, expected: float, name: str = "cand", served_as: str | None = None,
             seed: int = 1):
    run_id = awaiting_run(ledger, "agent-000", expected=expected)
    v = register_version(ledger, models, "agent-000", make_model(tmp_path / name, seed), run_id=run_id,
                         served_as=served_as)
    approve(ledger, models, run_id, "alice", "ok", pusher=HttpPusher(sim.url))
    return v


def _initial(sim, ledger, models, tmp_path):
    sim.tick(300)  # slow-degradation: the base model has drifted down to ~0.81 on the platform
    ingest(ledger, sim)
    base = register_version(ledger, models, "agent-000", make_model(tmp_path / "base", 0), served_as=BASE_MODEL)
    record_initial(ledger, models, "agent-000", base["id"])
    return base


def test_watch_compares_platform_with_platform_not_with_the_gate(sim, ledger, models, tmp_path):
    _initial(sim, ledger, models, tmp_path)
    # The gate over-promised (0.99 on pr1's own tasks): irrelevant, the new version beats the old on the platform.
    v = _promote(sim, ledger, models, tmp_path, expected=0.99)
    assert check_watches(ledger, CFG) == []  # no grades since the promotion yet
    sim.tick(60)
    ingest(ledger, sim)
    (change,) = check_watches(ledger, CFG)
    assert change["state"] == "ok" and change["complete"] and change["alert"] is None, change
    ev = change["evidence"]
    assert ev["n"] == 50  # only the new version's grades after the promotion, up to the window
    assert ev["reference"]["n"] == 50 and ev["reference"]["version"] == BASE_MODEL  # the old model's platform grades
    assert ev["expected"] < 0.85 < ev["mean"]  # ~0.81 before, ~0.92 after
    assert check_watches(ledger, CFG) == []  # the watch is over
    assert registry_status(ledger)["alerts"] == []
    (w,) = watch_status(ledger)
    assert w["version"] == v["id"] and w["reference"]["mean"] == ev["expected"]


def test_watch_short_alerts_and_can_roll_back(sim, ledger, models, tmp_path):
    _initial(sim, ledger, models, tmp_path)
    good = _promote(sim, ledger, models, tmp_path, expected=0.9)
    sim.tick(60)
    ingest(ledger, sim)
    # A bad candidate: the sim grades it like the drifted base (~0.81), well below the good version's ~0.92.
    bad = _promote(sim, ledger, models, tmp_path, expected=0.95, name="cand-bad", served_as="cand-bad", seed=2)
    sim.tick(30)
    ingest(ledger, sim)
    cfg = WatchConfig(window=50, min_samples=10, tolerance=0.02, auto_rollback=True)
    (change,) = check_watches(ledger, cfg)
    assert change["state"] == "short" and not change["complete"], change
    assert change["alert"] and "falls short" in change["alert"] and bad["id"] in change["alert"]
    assert change["evidence"]["reference"]["version"] == good["id"]  # compared with the version it replaced
    assert change["auto_rollback"] is True
    (w,) = watch_status(ledger)
    assert w["state"] == "short" and w["n"] == 30
    alerts = registry_status(ledger)["alerts"]
    assert [a["kind"] for a in alerts] == ["watch_short"]
    # the daemon acts on auto_rollback with the ordinary rollback
    rollback(ledger, models, "agent-000", "daemon", change["alert"], pusher=HttpPusher(sim.url))
    assert read_pointer(models, "agent-000") == good["id"]
    assert sim.history("agent-000")[-1]["model_version"] == good["id"]
    assert watch_status(ledger) == [] and registry_status(ledger)["alerts"] == []
