"""The sequential fail-rate test (Bernoulli CUSUM) and the version epochs the signals judge: pure tables."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from false_triggers import WINDOW_ONLY, failing_scenario, judge, streams  # noqa: E402

from pr1d.monitor.rules import AgentState, RuleConfig, decide  # noqa: E402
from pr1d.monitor.signals import (  # noqa: E402
    Epoch,
    FailSequence,
    Sample,
    SignalConfig,
    evaluate_all,
    fail_llr,
    fail_sequence_state,
    fail_sequence_update,
    in_epoch,
    reliability_signal,
)

CFG = SignalConfig()  # max_fail_rate 0.08, healthy 0.04, h 5, min run 30
A, B = math.log(2.0), math.log(0.92 / 0.96)  # + per fail, - per pass


def stream(statuses: str, start: float = 0.0, version: str | None = None) -> list[Sample]:
    """One sample per character: f = fail, p = pass, e = platform error; one second apart."""
    kinds = {"f": "fail", "p": "pass", "e": "error"}
    return [Sample(ts=start + i, score=0.9, status=kinds[c], eval_id=f"e{start + i:08.1f}", version=version)
            for i, c in enumerate(statuses)]


def test_llr_steps():
    assert fail_llr(CFG) == (pytest.approx(A), pytest.approx(B))
    assert fail_llr(SignalConfig(max_fail_rate=0.0)) is None  # any confident fail is above a bar of 0


SEQUENCES = [
    # (id, statuses, cfg, s, run_n, fired_at_n, state)
    ("nothing_graded", "", CFG, 0.0, 0, None, "insufficient_data"),
    ("errors_are_no_verdict", "eeeee", CFG, 0.0, 0, None, "insufficient_data"),
    ("passes_stay_at_zero", "p" * 10, CFG, 0.0, 0, None, "ok"),
    ("one_fail", "f", CFG, A, 1, None, "ok"),
    ("fail_then_passes_decay", "f" + "p" * 5, CFG, A + 5 * B, 6, None, "ok"),
    ("decayed_to_zero_restarts_the_stretch", "f" + "p" * 17 + "pp", CFG, 0.0, 0, None, "ok"),
    # 8 straight fails pass h = 5, but a stretch of 8 is below the 30 the window rule needs too: a warning
    ("burst_below_min_run_warns", "f" * 8, CFG, 8 * A, 8, None, "warn"),
    ("thirty_straight_fails_fire_at_the_cap", "f" * 30, CFG, 10.0, 30, 30, "firing"),
    # exactly every 10th evaluation fails (10%): +0.31 per ten; the window's 5 of 50 never fires, this does
    ("every_tenth_fails_fires_at_150", ("p" * 9 + "f") * 16, CFG, A + 15 * (A + 9 * B), 151, 150, "firing"),
    # the healthy 2%: one fail in fifty decays away before the next
    ("healthy_two_percent_stays_quiet", ("p" * 49 + "f") * 10, CFG, A, 1, None, "ok"),
    ("switched_off_with_a_zero_bar", "f" * 40, SignalConfig(max_fail_rate=0.0), 0.0, 0, None, "ok"),
]


@pytest.mark.parametrize(("case", "statuses", "cfg", "s", "run_n", "fired", "state"), SEQUENCES,
                         ids=[c[0] for c in SEQUENCES])
def test_fail_sequence_table(case, statuses, cfg, s, run_n, fired, state):
    seq = fail_sequence_update(FailSequence(), stream(statuses), cfg)
    assert seq.s == pytest.approx(s, abs=1e-9) and seq.run_n == run_n and seq.fired_at_n == fired, seq
    assert fail_sequence_state(seq, cfg) == state
    assert seq.n == sum(c in "fp" for c in statuses) * (fail_llr(cfg) is not None)
    assert seq.last_eval_id == (f"e{len(statuses) - 1:08.1f}" if statuses else None)  # the cursor moves past all


def test_cap_bounds_how_long_a_recovered_agent_keeps_firing():
    seq = fail_sequence_update(FailSequence(), stream("f" * 100), CFG)
    assert seq.s == 10.0 and seq.fired_at_n == 30
    # From the cap (2h = 10) back under h = 5 takes 5 / 0.04256 = 117.5 passes, however long it failed.
    at_117 = fail_sequence_update(seq, stream("p" * 117, start=100.0), CFG)
    at_118 = fail_sequence_update(at_117, stream("p", start=217.0), CFG)
    assert fail_sequence_state(at_117, CFG) == "firing" and fail_sequence_state(at_118, CFG) == "warn"
    assert at_118.fired_at_n == 30  # the first alarm is kept as evidence


def test_folding_in_pieces_equals_folding_at_once_and_late_samples_are_skipped():
    rnd = random.Random(3)
    xs = stream("".join(rnd.choice("ppppppppfe") for _ in range(400)))
    whole = fail_sequence_update(FailSequence(), xs, CFG)
    st, i = FailSequence(), 0
    while i < len(xs):  # poll-sized pieces, each delivered out of order
        k = rnd.randint(1, 25)
        st = fail_sequence_update(st, list(reversed(xs[i : i + k])), CFG)
        i += k
    assert st == whole
    # A sample older than the cursor arrives after newer ones were folded: left out, counted.
    late = fail_sequence_update(whole, [Sample(ts=3.5, score=0.1, status="fail", eval_id="late")], CFG)
    assert late.late == 1 and (late.s, late.n) == (whole.s, whole.n)
    assert FailSequence.from_dict(whole.to_dict()) == whole  # round trip through the ledger's JSON


def test_reliability_fires_on_either_part_with_evidence():
    xs = stream(("p" * 9 + "f") * 16)
    r = reliability_signal(xs, CFG)
    ev = r.evidence
    assert r.fired and ev["fail_rate_state"] == "warn" and ev["fail_sequential_state"] == "firing"
    seq = ev["fail_sequential"]
    assert seq["statistic"] > seq["threshold"] == 5.0 and seq["n"] == 160 and seq["fired_at_n"] == 150
    assert (seq["healthy_fail_rate"], seq["alarm_fail_rate"]) == (0.04, 0.08) and seq["run_fail_rate"] > 0.08
    # The window rule alone, as before: 5 of the last 50 is a 10% share whose bound (0.038) never passes 8%.
    assert not reliability_signal(xs, WINDOW_ONLY).fired
    # The state handed in is what counts (the daemon's fold over every sample of the version).
    assert not reliability_signal(xs, CFG, FailSequence()).fired


def test_a_sim_agent_failing_ten_percent_gets_an_rl_run_within_a_bounded_delay():
    # The simulator's own streams (steady agents, but failing 10%): the agent, 20 of them.
    data = streams(failing_scenario(0.10), 20, 500, seed=7)
    delays = []
    for samples in data.values():
        first = judge(samples, CFG, 1, stop="reliability")
        assert "reliability" in first, first
        n = first["reliability"]
        delays.append(n)
        results = evaluate_all(samples[:n], None, CFG, fail_seq=fail_sequence_update(FailSequence(), samples[:n], CFG))
        d = decide(AgentState(), results, 1e6, RuleConfig())
        assert (d.job_kind, d.signal, d.run) == ("rl", "reliability", True)
    delays.sort()
    # docs/entry-criteria.md: median ~140, p95 ~300 evaluations at 10% (benchmarks/false_triggers.py --delay).
    assert delays[len(delays) // 2] <= 250 and delays[-1] <= 500, delays


EPOCH = Epoch(key="deployment:3", version="v2", since_ts=10.0, started_at=5000.0, change="promote")
NEVER_CHANGED = Epoch(key="model:v1", version="v1")
UNKNOWN = Epoch(key="model:", version=None)


@pytest.mark.parametrize(
    ("epoch", "ts", "version", "counts"),
    [
        (EPOCH, 11.0, "v2", True),
        (EPOCH, 11.0, "v1", False),  # the old version's late grades
        (EPOCH, 10.0, "v2", False),  # at or before the change
        (EPOCH, 11.0, None, False),  # untagged: recorded before samples carried versions, so before the change
        (NEVER_CHANGED, 1.0, "v1", True),
        (NEVER_CHANGED, 1.0, None, True),  # an agent pr1 never changed: untagged samples are its only model's
        (NEVER_CHANGED, 1.0, "v0", False),  # the platform changed the model behind pr1's back: fresh eyes too
        (UNKNOWN, 1.0, "anything", True),
    ],
)
def test_epoch_selects_the_version_in_service(epoch, ts, version, counts):
    s = Sample(ts=ts, score=0.9, status="pass", version=version)
    assert epoch.counts(s) is counts and (in_epoch([s], epoch) == [s]) is counts


def test_epoch_refuses_bad_values():
    for bad in ({"key": ""}, {"key": "k", "change": "initial"}, {"key": "k", "since_ts": math.nan}):
        with pytest.raises(ValueError):
            Epoch(**{"version": None, **bad})


def test_signals_judge_only_the_new_versions_samples():
    old = stream("f" * 60, version="v1")  # the withdrawn version failed everything
    new = stream("p" * 10, start=100.0, version="v2")
    epoch = Epoch(key="deployment:1", version="v2", since_ts=59.0, change="promote")
    before = {r.name: r.state for r in evaluate_all(old + new, None, CFG)}
    after = {r.name: r.state for r in evaluate_all(old + new, None, CFG, epoch=epoch)}
    assert before["reliability"] == "firing"
    assert after == {"weighted_score": "ok", "reliability": "insufficient_data", "drift": "insufficient_data",
                     "compliance": "insufficient_data"}
