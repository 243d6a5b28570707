"""Load soak: 10,000 agents polled for an hour of simulated time, then `status` latency at ~10M samples.

1. `pr1d sim` (steady fleet, time moves only on `/_sim/tick`) and a real `pr1d serve` with monitoring on.
2. `status` p50/p99 over the socket on the young ledger.
3. The soak: an hour of simulated time (the sim grades each agent every 60 simulated seconds, so 60
   evaluations per agent) in `--cycles` poll cycles, each a tick then one `monitor.poll`; per cycle the
   wall time, evaluations stored, daemon RSS, and triggers (the fleet is healthy: any trigger is false).
4. The ledger is filled to `--samples` (default 10 million) through the ledger API (`samples.ingest_polls`,
   the poller's own batched write, with the daemon stopped: it is the only writer while it runs),
   synthetic history older than the soak's evaluations.
5. The daemon restarts on the big ledger: `status` p50/p99 again, one more poll cycle, RSS, ledger size.

Target (issue 10): `status` p99 at ~10M samples within 2x of the young ledger's. Results go to
`--out` (default `$PR1_RELIABILITY_OUT/soak.json`, else `./soak.json`) for scripts/reliability_report.py.

    .venv/bin/python benchmarks/soak.py                # 10,000 agents, 1 simulated hour, 10M samples
    .venv/bin/python benchmarks/soak.py --quick        # CI-sized: 300 agents, 3 cycles, 200,000 samples
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pr1d.ledger import samples, store
from pr1d.ledger.store import Ledger
from pr1d.rpc.client import Client

BIN = Path(sys.executable).parent
INTERVAL_S = 60  # the steady scenario's simulated seconds between two evaluations of an agent


def _post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"{}")


def _proc_kb(pid: int, key: str) -> int:
    return int(next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(key)).split()[1])


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 3)


def status_latency(sock: Path, calls: int, repeats: int = 3) -> dict:
    """p50/p99 (ms) of `status` over one connection, after a short warm-up; `repeats` rounds, and the
    round with the median p99 is reported (on a shared machine one round can catch another job's burst)."""
    rounds = []
    with Client(sock, timeout=60) as c:
        for _ in range(min(50, calls)):
            c.call("status")
        for _ in range(repeats):
            times = []
            for _ in range(calls):
                t = time.perf_counter()
                c.call("status")
                times.append(time.perf_counter() - t)
            rounds.append({"p50_ms": _pct(times, 0.5), "p99_ms": _pct(times, 0.99), "max_ms": _pct(times, 1.0)})
    mid = sorted(rounds, key=lambda r: r["p99_ms"])[len(rounds) // 2]
    return {"calls": calls, **mid, "p99_ms_rounds": [r["p99_ms"] for r in rounds]}


class Daemon:
    def __init__(self, state: Path, url: str, concurrency: int):
        self.state, self.url, self.concurrency = state, url, concurrency
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        notify = self.state.parent / "notify.sock"
        notify.unlink(missing_ok=True)
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(str(notify))
        ns.settimeout(120)
        env = dict(os.environ, PR1_NO_SYSTEM_CONFIG="1", NOTIFY_SOCKET=str(notify), PR1_SCORING__BASE_URL=self.url,
                   PR1_MONITOR__ENABLED="true", PR1_SCHEDULER__POLL_INTERVAL_S="86400",
                   PR1_SCORING__CONCURRENCY=str(self.concurrency), PR1_SCOREBOARD__METRICS_PORT="0")
        self.proc = subprocess.Popen([str(BIN / "pr1d"), "serve", "--state-dir", str(self.state)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=open(self.state.parent / "daemon.log", "ab"))
        try:
            while b"READY=1" not in ns.recv(4096):
                pass
        finally:
            ns.close()
        # The scheduler's first poll starts at once: let it finish so measurements do not overlap it.
        with Client(self.sock, timeout=3600) as c:
            while c.call("status")["monitor"]["last_cycle"] is None:
                time.sleep(0.5)

    @property
    def sock(self) -> Path:
        return self.state / "pr1d.sock"

    def rss_mb(self) -> float:
        return round(_proc_kb(self.proc.pid, "VmRSS:") / 1024, 1)

    def peak_mb(self) -> float:
        return round(_proc_kb(self.proc.pid, "VmHWM:") / 1024, 1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            self.proc.wait(120)


def fill(ledger_path: Path, agents: list[str], target: int, per_agent_batch: int = 100) -> dict:
    """Add synthetic history until the ledger holds `target` samples, through the poller's batched write."""
    led = Ledger(ledger_path)
    have = samples.sample_count(led)
    cursors = samples.agent_cursors(led)
    rng = random.Random(0)
    t0, added, rnd = time.monotonic(), 0, 0
    base_ts = 1.6e9  # 2020: older than the sim's 2025 clock, so the soak's samples stay the newest
    chunk = max(1, 100_000 // per_agent_batch)  # agents per ingest call: ~100k samples per transaction
    while have + added < target:
        for i in range(0, len(agents), chunk):
            group = agents[i:i + chunk]
            left = target - have - added
            if left <= 0:
                break
            n = min(per_agent_batch, -(-left // len(group)))
            polls = [{"agent_id": aid, "cursor": cursors[aid]["cursor"], "health": cursors[aid]["health"] or {},
                      "samples": [{"eval_id": f"hist-{rnd}-{k}", "ts": base_ts + (rnd * per_agent_batch + k) * INTERVAL_S,
                                   "weighted_score": round(rng.gauss(0.91, 0.03), 4), "status": "pass",
                                   "rubric": {"compliance": True, "safety": True}, "task_id": f"gsm-easy-{k}",
                                   "tier": "easy"} for k in range(n)]} for aid in group]
            added += samples.ingest_polls(led, polls)
        rnd += 1
        print(f"  fill: {have + added:,} samples ({added / (time.monotonic() - t0):,.0f}/s)", flush=True)
    with led.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    out = {"added": added, "seconds": round(time.monotonic() - t0, 1), "per_s": round(added / (time.monotonic() - t0))}
    led.close()
    return out


def hold_fleet(state: Path, url: str) -> None:
    """Register the sim's fleet on hold: a trigger is still evaluated and recorded (so false triggers are
    counted) but starts no run, so no training stage competes with the measurement once those stages exist.
    One bulk UPDATE (benchmark setup, no audit row per agent: 10,000 fsynced transactions would take minutes)."""
    with urllib.request.urlopen(f"{url}/v1/agents", timeout=600) as r:
        agents = json.loads(r.read())["agents"]
    led = Ledger(state / "ledger.sqlite")
    led.upsert_agents(agents)
    with led.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE agents SET hold = 1, hold_reason = 'soak benchmark', hold_by = 'soak'")
    led.close()


def trigger_breakdown(state: Path) -> tuple[dict[str, int], dict | None]:
    """Triggers by signal, and the first one's evidence: on a healthy fleet each one is a false trigger."""
    led = Ledger(state / "ledger.sqlite")
    try:
        rows = store.triggers(led, limit=100_000)
    finally:
        led.close()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["signal"]] = counts.get(r["signal"], 0) + 1
    first = rows[-1] if rows else None
    return counts, ({"agent": first["agent_id"], "signal": first["signal"], "job_kind": first["job_kind"],
                     "evidence": (first["evidence"] or {}).get("primary", {}).get("evidence")} if first else None)


def ledger_bytes(state: Path) -> int:
    return sum(p.stat().st_size for p in state.glob("ledger.sqlite*"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--hours", type=float, default=1.0, help="simulated hours of polling")
    ap.add_argument("--cycles", type=int, default=6, help="poll cycles the simulated time is split into")
    ap.add_argument("--samples", type=int, default=10_000_000, help="ledger size for the second measurement")
    ap.add_argument("--calls", type=int, default=1000, help="status calls per latency measurement")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="CI-sized: 300 agents, 3 cycles, 200,000 samples")
    ap.add_argument("--no-hold", dest="hold_fleet", action="store_false",
                    help="leave the fleet unheld: a (false) trigger then queues a real run")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="keep the state dir here (it is a temp dir otherwise)")
    a = ap.parse_args()
    if a.quick:
        a.agents, a.cycles, a.samples, a.calls = 300, 3, 200_000, 300
    out_path = a.out or Path(os.environ.get("PR1_RELIABILITY_OUT") or ".") / "soak.json"
    evals_total = int(round(a.hours * 3600 / INTERVAL_S))
    per_cycle = [evals_total // a.cycles + (1 if i < evals_total % a.cycles else 0) for i in range(a.cycles)]
    tmp_ctx = tempfile.TemporaryDirectory() if a.keep is None else None
    root = Path(tmp_ctx.name) if tmp_ctx else a.keep
    root.mkdir(parents=True, exist_ok=True)
    state = root / "state"
    state.mkdir(exist_ok=True)
    result: dict = {"agents": a.agents, "simulated_hours": a.hours, "cycles": [], "quick": a.quick,
                    "machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}, "daemon_crashes": 0}
    port_file = root / "sim.port"
    port_file.unlink(missing_ok=True)
    sim = subprocess.Popen([str(BIN / "pr1d"), "sim", "--port", "0", "--port-file", str(port_file), "--scenario",
                            "steady", "--agents", str(a.agents), "--time-scale", "0"],
                           env=dict(os.environ, PR1_NO_SYSTEM_CONFIG="1"), stdout=subprocess.DEVNULL)
    d = None
    try:
        while not port_file.exists():
            if sim.poll() is not None:
                raise SystemExit("pr1d sim exited")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{int(port_file.read_text())}"
        if a.hold_fleet:
            hold_fleet(state, url)
        d = Daemon(state, url, a.concurrency)
        d.start()
        result["status_small"] = {**status_latency(d.sock, a.calls), "samples": 0}
        print(f"status on the young ledger: {result['status_small']}", flush=True)

        # The soak: simulated time in cycles, one poll each.
        for i, n in enumerate(per_cycle):
            _post(f"{url}/_sim/tick", {"n": n})
            t = time.monotonic()
            with Client(d.sock, timeout=3600) as c:
                rep = c.call("monitor.poll")
                trig = len(c.call("monitor.triggers", limit=5000))
            row = {"cycle": i, "evaluations_per_agent": n, "duration_s": round(time.monotonic() - t, 2),
                   "inserted": rep["inserted"], "ok": rep["ok"], "http_s": rep.get("http_s"),
                   "ingest_s": rep.get("ingest_s"), "evaluate_s": rep.get("evaluate_s"), "rss_mb": d.rss_mb(),
                   "triggers_so_far": trig}
            result["cycles"].append(row)
            print(f"cycle {i}: {row}", flush=True)
        led = Ledger(state / "ledger.sqlite")
        result["samples_after_soak"] = samples.sample_count(led)
        led.close()
        result["expected_after_soak"] = a.agents * evals_total
        result["false_triggers"] = result["cycles"][-1]["triggers_so_far"]
        result["rss_mb_after_soak"], result["peak_rss_mb_soak"] = d.rss_mb(), d.peak_mb()
        d.stop()

        # Grow the ledger to the target size, then measure again on a restarted daemon.
        led = Ledger(state / "ledger.sqlite")
        agents = [x["id"] for x in led.list_agents()]
        led.close()
        print(f"filling the ledger to {a.samples:,} samples ...", flush=True)
        result["fill"] = fill(state / "ledger.sqlite", agents, a.samples)
        d.start()
        led = Ledger(state / "ledger.sqlite")
        big = samples.sample_count(led)
        led.close()
        result["status_big"] = {**status_latency(d.sock, a.calls), "samples": big}
        print(f"status at {big:,} samples: {result['status_big']}", flush=True)
        _post(f"{url}/_sim/tick", {"n": per_cycle[0]})
        t = time.monotonic()
        with Client(d.sock, timeout=3600) as c:
            rep = c.call("monitor.poll")
            result["false_triggers"] = len(c.call("monitor.triggers", limit=5000))
        result["cycle_at_big"] = {"duration_s": round(time.monotonic() - t, 2), "inserted": rep["inserted"],
                                  "ok": rep["ok"]}
        result["false_trigger_signals"], result["false_trigger_example"] = trigger_breakdown(state)
        result["rss_mb_big"], result["peak_rss_mb_big"] = d.rss_mb(), d.peak_mb()
        result["ledger_bytes"] = ledger_bytes(state)
        result["ledger_samples"] = big + rep["inserted"]
        ratio = result["status_big"]["p99_ms"] / max(result["status_small"]["p99_ms"], 1e-6)
        result["status_p99_ratio"] = round(ratio, 2)
        result["target_status_p99_within_2x"] = ratio <= 2.0
        result["nothing_lost"] = result["samples_after_soak"] == result["expected_after_soak"]
        if not d.alive():
            result["daemon_crashes"] = 1
    finally:
        if d is not None:
            if d.proc is not None and d.proc.poll() not in (None, 0, -15):
                result["daemon_crashes"] = 1
            d.stop()
        sim.terminate()
        sim.wait(60)
        result["machine"]["load_avg_end"] = os.getloadavg()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1))
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    print(json.dumps({k: result.get(k) for k in ("samples_after_soak", "expected_after_soak", "false_triggers",
                                                  "status_small", "status_big", "status_p99_ratio",
                                                  "target_status_p99_within_2x", "ledger_bytes", "peak_rss_mb_big")},
                     indent=1))
    print(f"results: {out_path}")
    return 0 if result.get("target_status_p99_within_2x") and result.get("nothing_lost") else 1


if __name__ == "__main__":
    sys.exit(main())
