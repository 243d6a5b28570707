"""False-trigger rate and detection delay of the monitor's signals, on the simulator's own streams.

A fleet-scale monitor makes thousands of judgements an hour, so a rule that is "usually right" for
one agent fires somewhere every hour. This runs the real signals (`pr1d.monitor.signals`) and the
daemon's baseline rule over evaluation streams drawn by the real simulator (`pr1d.sim.platform`) for
a scenario, judging after every evaluation (stricter than the daemon, which judges once per poll):

    .venv/bin/python benchmarks/false_triggers.py                       # steady: 10,000 agents x 120
    .venv/bin/python benchmarks/false_triggers.py --scenario flaky --agents 500
    .venv/bin/python benchmarks/false_triggers.py --agents 2000 --evaluations 300 --old   # before/after
    .venv/bin/python benchmarks/false_triggers.py --delay 0.10 0.12 0.15 --agents 300 --evaluations 800

For a healthy scenario (``steady``) every firing is false; for a degraded one the report gives how
many agents were caught and after how many evaluations. ``--delay`` measures the reliability signal's
detection delay (median and p95 evaluations to fire) on fleets like ``steady`` but failing at the given
rates, with the window rule alone and with the sequential fail-rate test. No daemon, no HTTP: pure
signal arithmetic.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pr1d.monitor.signals import (  # noqa: E402
    FailSequence,
    Sample,
    SignalConfig,
    compute_baseline,
    evaluate_all,
    fail_sequence_update,
)
from pr1d.sim.platform import Platform  # noqa: E402
from pr1d.sim.scenarios import Scenario, load_scenario, parse_scenario  # noqa: E402

# The rule before 2026-11-26: bare std / fail-rate / mean thresholds, reliability judged from 20 samples.
# (The sequential fail-rate test came later; a fail_cusum_h this high keeps it out of the comparison.)
OLD_RULE = SignalConfig(confidence=0.5, reliability_min_samples=20, fail_cusum_h=1000.0)
# The window rule alone, as before the sequential fail-rate test (2026-11-27).
WINDOW_ONLY = SignalConfig(fail_cusum_h=1000.0)


def failing_scenario(fail_rate: float) -> Scenario:
    """``steady``'s healthy agents, but failing at ``fail_rate``: a sustained fail rate above the bar."""
    return parse_scenario(
        {"description": f"steady, failing {fail_rate:.0%}", "seed": 3,
         "behaviours": {"failing": {"mean": 0.91, "sd": 0.03, "fail_rate": fail_rate}},
         "fleet": {"count": 3, "mix": {"failing": 1}}},
        name=f"fail-{fail_rate:g}", source="benchmarks/false_triggers.py",
    )


def streams(scenario: str | Scenario, agents: int, evaluations: int, seed: int | None = None) -> dict[str, list[Sample]]:
    """Each agent's evaluations as the daemon would store them (score, status, rubric, ts, id)."""
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    sc = sc.with_overrides(agents=agents, seed=seed)
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


def judge(samples: list[Sample], cfg: SignalConfig, every: int, start: int = 1, stop: str | None = None) -> dict[str, int]:
    """The first evaluation count at which each signal fired, judging after every ``every`` evaluations
    (the daemon's baseline: the first K valid scores, frozen once they exist; the daemon's sequential
    fail-rate test: folded over every evaluation, not only the window). ``stop``: stop judging once
    that signal fired (only its delay is wanted)."""
    first: dict[str, int] = {}
    history = cfg.history_needed()
    base = None
    seq = FailSequence()
    for n in range(start, len(samples) + 1):
        if base is None:
            base = compute_baseline(samples[:n], cfg)
        seq = fail_sequence_update(seq, samples[n - 1 : n], cfg)
        if seq.fired_at_n is not None and "reliability.fail_sequential" not in first:
            # The sequential test is folded at every evaluation, so its first alarm counts even between
            # judgements (stricter than the daemon, which sees it only if it still holds at the next poll).
            first["reliability.fail_sequential"] = n
            first.setdefault("reliability", n)
        if n % every:
            continue
        for r in evaluate_all(samples[max(0, n - history) : n], base, cfg, fail_seq=seq):
            if r.state == "firing" and r.name not in first:
                first[r.name] = n
                # Which part of a multi-part signal fired: reliability's std, fail rate or sequential test,
                # drift's mean or PH.
                for part in ("std_state", "fail_rate_state", "fail_sequential_state", "mean_state", "ph_state"):
                    if r.evidence.get(part) == "firing":
                        first.setdefault(f"{r.name}.{part.removesuffix('_state')}", n)
        if stop is not None and stop in first:
            break
    return first


def _pct(xs: list[int], q: float) -> float | None:
    """The q-quantile (nearest rank) of xs, or None."""
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def delays(fail_rate: float, agents: int, evaluations: int, cfg: SignalConfig, seed: int | None = None) -> dict[str, Any]:
    """Evaluations until the reliability signal fires for a fleet failing at ``fail_rate`` (judged after
    every evaluation): how many agents were caught within ``evaluations``, median and p95 delay."""
    t0 = time.perf_counter()
    data = streams(failing_scenario(fail_rate), agents, evaluations, seed)
    got = [f["reliability"] for f in (judge(x, cfg, 1, stop="reliability") for x in data.values())
           if "reliability" in f]
    return {"fail_rate": fail_rate, "agents": agents, "evaluations": evaluations, "caught": len(got),
            "median": median(got) if got else None, "p95": _pct(got, 0.95),
            "p95_of_all": _pct(got + [evaluations + 1] * (agents - len(got)), 0.95),
            "seconds": round(time.perf_counter() - t0, 1)}


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
    ap.add_argument(
        "--delay",
        type=float,
        nargs="+",
        default=None,
        metavar="FAIL_RATE",
        help="measure the reliability signal's detection delay at these fail rates (window rule alone vs shipped)",
    )
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.delay:
        rows = []
        for rate in a.delay:
            for label, cfg in (("window rule only", WINDOW_ONLY), ("shipped (window + sequential)", SignalConfig())):
                res = {"rule": label, **delays(rate, a.agents, a.evaluations, cfg, a.seed)}
                rows.append(res)
                if not a.json:
                    print(f"fail rate {rate:.0%}, {label}: {res['caught']}/{res['agents']} caught within "
                          f"{res['evaluations']}, median {res['median']}, p95 {res['p95']} evaluations "
                          f"(p95 counting the missed as {res['evaluations'] + 1}: {res['p95_of_all']}; "
                          f"{res['seconds']} s)")
        if a.json:
            print(json.dumps(rows, indent=1))
        return 0
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
