"""Socket API latency at fleet scale: p50/p99 of `status` and of 100-run `runs` pages, plus daemon RSS.

Fills a fresh ledger by bulk SQL with A agents (default 10,000) and N runs (default 100,000), a registry
(P agents promoted, some promoted twice or rolled back, their model folders and pointers, profile pushes
pending, watches, runs awaiting approval) and the run metrics the scoreboard reads (a few below their
thresholds, so it has alerts). Then starts a real `pr1d serve` and times C calls (default 1,000) of each
method over one connection. Targets: `status` p99 < 5 ms, `runs` pages p99 < 10 ms; exits 1 when one is
missed. Also the daemon's start on that ledger, from exec to systemd's READY=1 (target < 2 s:
`systemctl start` returns then, and `Type=notify` restarts wait on it).

    .venv/bin/python benchmarks/rpc_latency.py [--runs 100000] [--agents 10000] [--promoted 1000] [--calls 1000]
    .venv/bin/python benchmarks/rpc_latency.py --profile 200   # cProfile of 200 status calls, in process
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pr1d.ledger.store import Ledger
from pr1d.rpc.client import Client

STATUS_P99_MS, RUNS_P99_MS, READY_S = 5.0, 10.0, 2.0
TERMINAL = ("succeeded", "failed", "cancelled", "rejected", "promoted", "rolled_back")
KPI_METRICS = ("eval.path_diversity", "eval.consensus_rate", "eval.parallel_ratio", "eval.format_adherence")


def fill(state: Path, runs: int, agents: int = 10_000, promoted: int = 1_000) -> dict:
    """A ledger of ``agents`` agents and ``runs`` ended runs, of which the first ``promoted`` agents have a
    registry history; returns what was made."""
    Ledger(state / "ledger.sqlite").close()  # schema
    con = sqlite3.connect(state / "ledger.sqlite")
    now = time.time()
    ids = [f"agent-{i:05d}" for i in range(agents)]
    con.executemany("INSERT INTO agents (id, model, profile, hold, created_at, updated_at) VALUES (?,?,?,0,?,?)",
                    [(a, "base", "default", now, now) for a in ids])
    con.executemany("INSERT INTO runs (agent_id, kind, state, reason, created_by, created_at, updated_at, finished_at) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    [(ids[i % agents], ("sft", "rl", "full", "targeted-sft")[i % 4], TERMINAL[i % len(TERMINAL)],
                      "seeded", "bench", now - runs + i, now - runs + i, now - runs + i) for i in range(runs)])
    models = state / "models"
    made = {"deployments": 0, "pending_pushes": 0, "awaiting_approval": 0, "open_watches": 0, "short_watches": 0, "kpi_alerts": 0}
    for k in range(min(promoted, agents)):
        agent = ids[k]
        # Every agent promoted once; every other one promoted again; every tenth rolled back after that.
        history = [("promote", f"v{k:05d}a")]
        if k % 2:
            history.append(("promote", f"v{k:05d}b"))
            if k % 10 == 1:
                history.append(("rollback", f"v{k:05d}a"))
        for version in dict.fromkeys(v for _a, v in history):
            (models / agent / version).mkdir(parents=True)
            run_id = con.execute(
                "INSERT INTO runs (agent_id, kind, state, reason, created_by, created_at, updated_at, finished_at) "
                "VALUES (?, 'full', 'promoted', 'approved', 'bench', ?, ?, ?)", (agent, now, now, now)).lastrowid
            con.execute("INSERT INTO model_versions (id, agent_id, run_id, path, sha256, created_at, meta) "
                        "VALUES (?,?,?,?,?,?,?)", (version, agent, run_id, str(models / agent / version), "0" * 64,
                                                   now, json.dumps({"profile": "default"})))
            low = k % 100 == 7  # 1 agent in 100 has a version whose format adherence is below 0.9: an alert
            made["kpi_alerts"] += low and version == history[-1][1]
            con.executemany("INSERT INTO metrics (run_id, name, value, ts) VALUES (?,?,?,?)",
                            [(run_id, m, 0.8 if low else 0.95, now) for m in KPI_METRICS])
        for n, (action, version) in enumerate(history):
            newest = n == len(history) - 1
            pending = newest and k % 50 == 3  # 2 %: the agent manager has not acknowledged the newest push
            run_id = con.execute("SELECT run_id FROM model_versions WHERE id = ?", (version,)).fetchone()[0]
            dep = con.execute(
                "INSERT INTO deployments (agent_id, version_id, action, ts, actor, reason, run_id, profile_pushed) "
                "VALUES (?,?,?,?,?,?,?,?)", (agent, version, action, now - 100 + n, "bench", "seeded",
                                             run_id if action == "promote" else None, 0 if pending else 1)).lastrowid
            watch = None
            if newest and action == "promote":
                # 1 in 100 fell short; 1 in 10 is still watching; the others finished and held.
                short = k % 100 == 13
                made["short_watches"] += short
                made["open_watches"] += short or k % 10 == 5
                watch = {"state": "short" if short else "ok", "complete": not short and k % 10 != 5,
                         "evidence": {"n": 60, "mean": 0.7 if short else 0.85, "expected": 0.84},
                         "reference": {"n": 200, "mean": 0.84, "sd": 0.1, "version": "base"},
                         "alert": f"watch: agent {agent} ({version}) fell short" if short else None}
            con.execute(
                "INSERT INTO deployment_state (deployment_id, agent_id, version_id, body, push_attempts, push_error, "
                "last_attempt_at, pushed_at, since_ts, expected_score, watch) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (dep, agent, version, json.dumps({"profile": "default", "model_version": version, "policy": {}}),
                 1, "connection refused" if pending else None, now, None if pending else now, now - 100 + n, 0.84,
                 json.dumps(watch) if watch else None))
            made["deployments"] += 1
            made["pending_pushes"] += pending
        current = history[-1][1]
        (models / agent / "current").symlink_to(current)
        con.execute("UPDATE agents SET current_version = ? WHERE id = ?", (current, agent))
    # Runs awaiting approval, on agents with no registry history (at most one active run per agent).
    for k in range(min(promoted, agents), min(promoted + 20, agents)):
        run_id = con.execute(
            "INSERT INTO runs (agent_id, kind, state, reason, created_by, created_at, updated_at, finished_at, gate) "
            "VALUES (?, 'full', 'awaiting_approval', 'gate passed', 'daemon', ?, ?, ?, ?)",
            (ids[k], now, now, now, json.dumps({"outcome": "pass", "expected_score": 0.85}))).lastrowid
        if k % 2:
            con.execute("INSERT INTO approvals (run_id, user, reason, ts) VALUES (?, 'alice', 'looks good', ?)",
                        (run_id, now))
        made["awaiting_approval"] += 1
    con.commit()
    made["runs"] = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    con.close()
    return made


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def daemon_env(notify: Path | None) -> dict:
    env = dict(os.environ, PR1_NO_SYSTEM_CONFIG="1", PR1_MONITOR__ENABLED="false",
               # Any free port for /metrics, and an agent manager that refuses at once (the pending pushes
               # retried at start fail fast instead of reaching whatever listens on the default port).
               PR1_SCOREBOARD__METRICS_PORT="0", PR1_REGISTRY__AGENT_MANAGER_URL="http://127.0.0.1:9")
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify)
    return env


def group_by(led: Ledger) -> dict:
    with led.engine.connect() as conn:
        return dict(conn.exec_driver_sql("SELECT state, count(*) FROM runs GROUP BY state").all())


def profile_status(state: Path, calls: int) -> None:
    """What one `status` costs, part by part (the ledger reads run on the daemon's ledger thread, which a
    profile of the event loop does not see), then a cProfile of the ledger-thread part."""
    import cProfile
    import pstats

    from pr1d.config import load_config
    from pr1d.registry import approvals, push, watch
    from pr1d.registry.status import RegistryStatusCache, registry_status
    from pr1d.rpc import schema
    from pr1d.scoreboard import ParallelScoreboard, compute_kpis

    cfg = load_config(overrides={"daemon": {"state_dir": str(state)}}, environ=daemon_env(None))
    led = Ledger(state / "ledger.sqlite")
    board = ParallelScoreboard(led, cfg.scoreboard)
    t = time.perf_counter()
    board.kpis = compute_kpis(led, cfg.scoreboard)
    print(f"scoreboard refresh (compute_kpis, not per status call): {time.perf_counter() - t:.2f} s")
    reg = registry_status(led, cfg.approvals, cfg.registry)
    cache = RegistryStatusCache()
    reply = {"runs_by_state": led.count_runs_by_state(), "registry": reg,
             "scoreboard": {"alerts": board.alerts, **board.snapshot()["metrics"]}}
    parts = {
        "ledger.count_runs_by_state": led.count_runs_by_state,
        "  (a GROUP BY over runs instead)": lambda: group_by(led),
        "registry status, cached": lambda: cache.get(led, cfg.approvals, cfg.registry),
        "registry_status, computed": lambda: registry_status(led, cfg.approvals, cfg.registry),
        "  pending_pushes": lambda: push.pending_pushes(led, cfg.registry),
        "  pending_approvals": lambda: approvals.pending_approvals(led, cfg.approvals),
        "  watch_status": lambda: watch.watch_status(led),
        "scoreboard.snapshot": board.snapshot,
        "encode the reply": lambda: schema.response(1, reply),
    }
    print(f"{'part of status':34} {'mean ms':>8}")
    for name, fn in parts.items():
        fn()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        print(f"{name:34} {(time.perf_counter() - t) / calls * 1000:8.3f}")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):  # what a status call costs after a registry change
        registry_status(led, cfg.approvals, cfg.registry)
    prof.disable()
    print("cProfile of registry_status (computed: after each registry change)")
    pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    led.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--promoted", type=int, default=1_000, help="agents with a registry history")
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--profile", type=int, default=0, metavar="CALLS",
                    help="profile CALLS status handler calls in process instead of timing the socket")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        t0 = time.monotonic()
        made = fill(state, a.runs, a.agents, a.promoted)
        print(f"filled ledger in {time.monotonic() - t0:.1f}s: {a.agents} agents, " + ", ".join(
            f"{v} {k.replace('_', ' ')}" for k, v in made.items()))
        if a.profile:
            profile_status(state, a.profile)
            return 0
        notify = Path(tmp) / "notify.sock"
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(str(notify))
        ns.settimeout(60)
        t_start = time.monotonic()
        proc = subprocess.Popen([str(Path(sys.executable).parent / "pr1d"), "serve", "--state-dir", str(state)],
                                env=daemon_env(notify), stderr=subprocess.DEVNULL)
        try:
            while b"READY=1" not in ns.recv(4096):
                pass
            ready_s = time.monotonic() - t_start
            with Client(state / "pr1d.sock") as c:
                for _ in range(50):  # warm caches
                    st = c.call("status")
                    c.call("runs.list", limit=100)
                res = {}
                for name, call in (("status", lambda: c.call("status")),
                                   ("runs page of 100", lambda: c.call("runs.list", limit=100)),
                                   ("runs page of 100 (agent filter)",
                                    lambda: c.call("runs.list", limit=100, agent="agent-00042"))):
                    lat = []
                    for _ in range(a.calls):
                        t = time.perf_counter()
                        call()
                        lat.append(time.perf_counter() - t)
                    res[name] = lat
                st = c.call("status")
            rss = next(int(x.split()[1]) for x in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                       if x.startswith("VmRSS:")) / 1024
        finally:
            proc.terminate()
            proc.wait(30)
    reg, sb = st["registry"], st["scoreboard"]
    print(f"status reports {sum(st['runs_by_state'].values())} runs, {len(reg['pending_pushes'])} pending pushes, "
          f"{len(reg['approvals'])} approvals, {len(reg['watches'])} watches listed "
          f"({reg.get('watches_closed', 0)} closed ones counted), {len(reg['alerts'])} registry alerts, "
          f"{len(sb['alerts'])} scoreboard alerts; reply {len(json.dumps(st)) / 1024:.0f} KiB")
    print(f"{'call':34} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name, lat in res.items():
        print(f"{name:34} {pct(lat, .5):8.2f} {pct(lat, .99):8.2f} {statistics.mean(lat) * 1000:8.2f}")
    print(f"daemon RSS after the run: {rss:.1f} MB; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ok = True
    for label, met in (
        (f"start to READY=1: {ready_s:.2f} s (target < {READY_S:g} s)", ready_s < READY_S),
        (f"status p99 {pct(res['status'], .99):.2f} ms (target < {STATUS_P99_MS:g} ms)",
         pct(res["status"], .99) < STATUS_P99_MS),
        (f"runs pages worst p99 {max(pct(v, .99) for k, v in res.items() if k != 'status'):.2f} ms "
         f"(target < {RUNS_P99_MS:g} ms)", max(pct(v, .99) for k, v in res.items() if k != "status") < RUNS_P99_MS),
    ):
        print(f"{label}: {'met' if met else 'MISSED'}")
        ok = ok and met
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
