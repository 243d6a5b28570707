"""The monitor after a change of model, through the daemon's own ledger path (ingest -> evaluate_agents).

A promotion or rollback starts a new epoch: the signals judge only the new version's samples, the drift
baseline is re-frozen from its first K platform scores (never the gate's expectation), the sequential
fail test starts over, and the cooldown counts from the change, not from `awaiting_approval`.
"""

from __future__ import annotations

import time

import pytest

from pr1d.config import MonitorConfig
from pr1d.ledger import store
from pr1d.ledger.samples import ingest_polls
from pr1d.ledger.store import Ledger
from pr1d.monitor.evaluate import evaluate_agents
from pr1d.monitor.signals import FailSequence, Sample, SignalConfig, fail_sequence_update
from pr1d.registry.approvals import approve
from pr1d.registry.deploy import record_initial, rollback
from pr1d.registry.versions import register_version
from tests.registry.registry_kit import awaiting_run, make_model

AGENT, BASE = "a1", "base-v1"  # BASE: the platform's name for the model the agent ran before pr1
HOUR = 3600.0


class Platform:
    """Feeds evaluations into the ledger as the poller would, tagged with the model the platform lists."""

    def __init__(self, ledger: Ledger):
        self.ledger, self.ts, self.n = ledger, 1_000_000.0, 0

    def feed(self, listed: str, scores: list[float], status: str = "pass", rubric: dict | None = None) -> None:
        samples = []
        for sc in scores:
            self.ts += 60.0
            self.n += 1
            samples.append({"eval_id": f"ev-{self.n:05d}", "ts": self.ts, "weighted_score": sc, "status": status,
                            "rubric": rubric, "task_id": None, "tier": None})
        ingest_polls(self.ledger, [{"agent_id": AGENT, "cursor": f"e:{self.n}", "samples": samples,
                                          "model_version": listed, "health": {}}])


@pytest.fixture
def env(tmp_path):
    led = Ledger(tmp_path / "ledger.sqlite")
    led.upsert_agents([{"id": AGENT, "model": BASE, "profile": ""}])
    models = tmp_path / "models"
    base = register_version(led, models, AGENT, make_model(tmp_path / "base", 0), served_as=BASE)
    record_initial(led, models, AGENT, base["id"])
    yield led, models, Platform(led), base
    led.close()


def signals(led: Ledger) -> dict:
    return {k: v["state"] for k, v in led.get_agent(AGENT)["signals"].items()}


def test_promotion_and_rollback_give_the_monitor_fresh_eyes(env, tmp_path):
    led, models, platform, base = env
    mcfg = MonitorConfig()
    # The old model is failing its target: weighted score fires, an SFT run starts.
    platform.feed(BASE, [0.5] * 40)
    (out,) = evaluate_agents(led, [AGENT], mcfg)
    assert (out.signal, out.job_kind) == ("weighted_score", "sft") and out.run_id
    assert led.get_agent(AGENT)["baseline"]["epoch"] == f"model:{BASE}"
    led.update_run_fields(out.run_id, state="cancelled")  # (the run itself is not the point here)

    # A candidate waits three hours for its approval: the old cooldown (from awaiting_approval) has run out.
    run_id = awaiting_run(led, AGENT, expected=0.99)  # the gate's expectation, on pr1's own grading
    led.update_run_fields(run_id, finished_at=time.time() - 3 * HOUR)
    v2 = register_version(led, models, AGENT, make_model(tmp_path / "cand", 1), run_id=run_id)
    res = approve(led, models, run_id, "alice", "looks good")  # no pusher: the push stays pending
    promoted_at = res.deployment["ts"]
    agent = led.get_agent(AGENT)
    assert agent["baseline"] is None and agent["monitor"] is None  # reset with the deployment

    # Until the push lands the platform still runs (and lists) the old model: its grades are not the new one's.
    platform.feed(BASE, [0.5] * 10)
    assert evaluate_agents(led, [AGENT], mcfg, now=promoted_at + 60) == []
    assert signals(led) == {"weighted_score": "insufficient_data", "reliability": "insufficient_data",
                            "drift": "insufficient_data", "compliance": "insufficient_data"}

    # The new version's first grades, one with a compliance failure: a targeted-SFT run is wanted, but the
    # cooldown counts from the promotion, not from awaiting_approval three hours ago.
    platform.feed(v2["id"], [0.93] * 9)
    platform.feed(v2["id"], [0.93], rubric={"compliance": False, "safety": True})
    (out,) = evaluate_agents(led, [AGENT], mcfg, now=promoted_at + 60)
    assert (out.job_kind, out.suppressed, out.run_id) == ("targeted-sft", "cooldown", None)
    (trig,) = store.triggers(led, AGENT, limit=1)
    cd = trig["evidence"]["cooldown"]
    assert cd["from"] == cd["model_changed_at"] == promoted_at and cd["remaining_s"] == pytest.approx(HOUR - 60)
    assert trig["evidence"]["epoch"]["version"] == v2["id"] and trig["evidence"]["epoch"]["change"] == "promote"
    ws = led.get_agent(AGENT)["signals"]["weighted_score"]["evidence"]
    assert ws["valid_scores"] == 10 and ws["version"] == v2["id"]  # the old model's 0.5s are not in the window

    # The drift baseline is the new version's own first K platform scores, never the gate's 0.99.
    platform.feed(v2["id"], [0.91] * 25)
    evaluate_agents(led, [AGENT], mcfg, now=promoted_at + 120)
    b = led.get_agent(AGENT)["baseline"]
    k = SignalConfig().baseline_k
    assert b["source"] == "first_k" and b["n"] == k and b["epoch"].startswith("deployment:")
    assert b["mean"] == pytest.approx((9 * 0.93 + 0.93 + 20 * 0.91) / k)
    # The sequential fail test, folded poll by poll, covers exactly the new version's graded samples.
    seq = led.get_agent(AGENT)["monitor"]["fail_seq"]
    assert seq["n"] == 35 and seq["fails"] == 0

    # Rollback: the restored version's grades after the rollback are judged; the withdrawn one's are not.
    dep = rollback(led, models, AGENT, "bob", "grades look wrong")
    assert led.get_agent(AGENT)["baseline"] is None
    platform.feed(v2["id"], [0.2] * 5)  # late grades of the withdrawn version
    platform.feed(BASE, [0.88] * 6)
    assert evaluate_agents(led, [AGENT], mcfg, now=dep["ts"] + 30) == []
    ev = led.get_agent(AGENT)["signals"]["weighted_score"]["evidence"]
    assert ev["version"] == BASE and ev["valid_scores"] == 6 and ev["last_score"] == 0.88
    assert led.get_agent(AGENT)["monitor"]["fail_seq"]["n"] == 6


def test_the_sequential_state_persists_across_polls(env):
    led, _models, platform, _base = env
    # Every 8th evaluation fails (12.5%), seven per poll: the window rule's bound never passes 8% (7 of 50),
    # the sequential test, folded poll by poll from the ledger, fires and asks for RL.
    statuses = ["fail" if i % 8 == 3 else "pass" for i in range(210)]
    fired_at = None
    for i in range(0, len(statuses), 7):
        for st in statuses[i : i + 7]:
            platform.feed(BASE, [0.9], status=st)
        outs = evaluate_agents(led, [AGENT], MonitorConfig())
        if outs and fired_at is None:
            fired_at = i + 7
            assert (outs[0].signal, outs[0].job_kind, bool(outs[0].run_id)) == ("reliability", "rl", True)
            ev = store.triggers(led, AGENT, limit=1)[0]["evidence"]["primary"]["evidence"]
            assert ev["fail_rate_state"] != "firing" and ev["fail_sequential_state"] == "firing"
    whole = fail_sequence_update(FailSequence(), [Sample(ts=float(i), score=0.9, status=st, eval_id=str(i))
                                                  for i, st in enumerate(statuses)], SignalConfig())
    stored = FailSequence.from_dict(led.get_agent(AGENT)["monitor"]["fail_seq"])
    assert (stored.s, stored.n, stored.fails, stored.run_n, stored.fired_at_n) == \
        (pytest.approx(whole.s), whole.n, whole.fails, whole.run_n, whole.fired_at_n)
    # The daemon judges once per poll: it sees the alarm at the first poll at which the statistic still
    # holds above the threshold (here 5.03 at evaluation 92 decays under 5 by the poll at 98).
    assert fired_at is not None and whole.fired_at_n <= fired_at <= whole.fired_at_n + 14
