"""False-trigger rate and detection delay of the monitor's signals, on the simulator's own streams.

A fleet-scale monitor makes thousands of judgements an hour, so a rule that is "usually right" for
one agent fires somewhere every hour. This runs the real signals (`pr1d.monitor.signals`) and the
daemon's baseline rule over evaluation streams drawn by the real simulator (`pr1d.sim.platform`) for
a scenario, judging after every evaluation (stricter than the daemon, which judges once per poll):

    .venv/bin/python benchmarks/false_triggers.py                       # steady: 10,000 agents x 120
    .venv/bin/python benchmarks/false_triggers.py --scenario flaky --agents 500
    .venv/bin/python benchmarks/false_triggers.py --agents 2000 --evaluations 300 --old   # before/after

For a healthy scenario (``steady``) every firing is false; for a degraded one the report gives how
many agents were caught and after how many evaluations. No daemon, no HTTP: pure signal arithmetic.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pr1d.monitor.signals import Sample, SignalConfig, compute_baseline, evaluate_all  # noqa: E402
from pr1d.sim.platform import Platform  # noqa: E402
from pr1d.sim.scenarios import load_scenario  # noqa: E402

# The rule before 2026-11-26: bare std / fail-rate / mean thresholds, reliability judged from 20 samples.
OLD_RULE = SignalConfig(confidence=0.5, reliability_min_samples=20)


def streams(scenario: str, agents: int, evaluations: int, seed: int | None = None) -> dict[str, list[Sample]]:
    """Each agent's evaluations as the daemon would store them (score, status, rubric, ts, id)."""
    sc = load_scenario(scenario).with_overrides(agents=agents, seed=seed)
    p = Platform(sc)
    p.tick(evaluations)
    out = {}
    for aid in p.agent_ids:
        out[aid] = [
            Sample(
                ts=datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp(),
                score=e["weighted_score"],
                status=e["status"],
                rubric=e["rubric"],
                eval_id=e["id"],
            )
            for e in p.evaluations(aid)
        ]
    return out


def judge(samples: list[Sample], cfg: SignalConfig, every: int, start: int = 1) -> dict[str, int]:
    """The first evaluation count at which each signal fired, judging after every ``every`` evaluations
    (the daemon's baseline: the first K valid scores, frozen once they exist)."""
    first: dict[str, int] = {}
    history = cfg.history_needed()
    base = None
    for n in range(start, len(samples) + 1):
        if base is None:
            base = compute_baseline(samples[:n], cfg)
        if n % every:
            continue
        for r in evaluate_all(samples[max(0, n - history) : n], base, cfg):
            if r.state == "firing" and r.name not in first:
                first[r.name] = n
                # Which part of a two-part signal fired: reliability's std or fail rate, drift's mean or PH.
                for part in ("std_state", "fail_rate_state", "mean_state", "ph_state"):
                    if r.evidence.get(part) == "firing":
                        first.setdefault(f"{r.name}.{part.removesuffix('_state')}", n)
    return first


def run(
    scenario: str, agents: int, evaluations: int, every: int, cfg: SignalConfig, seed: int | None = None
) -> dict[str, Any]:
    t0 = time.perf_counter()
    data = streams(scenario, agents, evaluations, seed)
    fired: Counter[str] = Counter()
    any_fired = 0
    delays: dict[str, list[int]] = {}
    first_any: list[int] = []
    example: dict[str, Any] | None = None
    for aid, samples in data.items():
        first = judge(samples, cfg, every)
        for name, n in first.items():
            fired[name] += 1
            delays.setdefault(name, []).append(n)
        if first:
            any_fired += 1
            first_any.append(min(n for name, n in first.items() if "." not in name))
            if example is None:
                example = {"agent": aid, "first": first}
    return {
        "scenario": scenario,
        "agents": agents,
        "evaluations": evaluations,
        "every": every,
        "agents_fired": any_fired,
        "fired_by_signal": dict(fired),
        "median_first_firing": median(first_any) if first_any else None,
        "median_by_signal": {k: median(v) for k, v in delays.items()},
        "example": example,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="steady")
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--evaluations", type=int, default=120, help="evaluations per agent")
    ap.add_argument("--every", type=int, default=1, help="judge after every N-th evaluation")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument(
        "--confidence",
        type=float,
        nargs="+",
        default=None,
        help="compare these `confidence` settings side by side (default: the shipped one)",
    )
    ap.add_argument(
        "--old",
        action="store_true",
        help="also run the rule before the confidence bounds (bare values, 20 samples), side by side",
    )
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    cfgs = [SignalConfig(confidence=c) for c in a.confidence] if a.confidence else [SignalConfig()]
    if a.old:
        cfgs.insert(0, OLD_RULE)
    results = []
    for cfg in cfgs:
        res = run(a.scenario, a.agents, a.evaluations, a.every, cfg, a.seed)
        res["confidence"] = cfg.confidence
        results.append(res)
        if not a.json:
            label = "old rule" if cfg is OLD_RULE else f"confidence {cfg.confidence}"
            print(
                f"{res['scenario']} ({label}, min {cfg.reliability_min_samples}): {res['agents']} agents x {res['evaluations']} "
                f"evaluations, judged every {res['every']}: {res['agents_fired']} agents fired "
                f"{res['fired_by_signal']}, median first firing at evaluation {res['median_first_firing']} "
                f"({res['seconds']} s)"
            )
            if res["example"]:
                print(f"  e.g. {res['example']}")
    if a.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
