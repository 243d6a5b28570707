"""Socket API latency at ledger scale: p50/p99 of `status` and of a 100-run `runs` page, plus daemon RSS.

Fills a fresh ledger with N runs (default 100,000) by bulk SQL, starts a real `pr1d serve`, and
times C calls (default 1,000) of each method over one connection. Target: p99 < 10 ms for both.
Also the daemon's start on that ledger, from exec to systemd's READY=1 (target < 2 s: `systemctl start`
returns then, and `Type=notify` restarts wait on it).

    .venv/bin/python benchmarks/rpc_latency.py [--runs 100000] [--calls 1000]
"""

from __future__ import annotations

import argparse
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


def fill(state: Path, n: int) -> None:
    Ledger(state / "ledger.sqlite").close()  # schema
    con = sqlite3.connect(state / "ledger.sqlite")
    now = time.time()
    con.executemany("INSERT INTO agents (id, model, profile, hold, created_at, updated_at) VALUES (?,?,?,0,?,?)",
                    [(f"agent-{i:03d}", "base", "default", now, now) for i in range(100)])
    states = ["succeeded", "failed", "cancelled", "rejected", "promoted", "rolled_back"]
    rows = [(f"agent-{i % 100:03d}", ("sft", "rl", "full", "targeted-sft")[i % 4], states[i % len(states)],
             "seeded", "bench", now - n + i, now - n + i) for i in range(n)]
    con.executemany("INSERT INTO runs (agent_id, kind, state, reason, created_by, created_at, updated_at) "
                    "VALUES (?,?,?,?,?,?,?)", rows)
    con.commit()
    con.close()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--calls", type=int, default=1000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        t0 = time.monotonic()
        fill(state, a.runs)
        print(f"filled ledger with {a.runs} runs in {time.monotonic() - t0:.1f}s")
        notify = Path(tmp) / "notify.sock"
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(str(notify))
        ns.settimeout(30)
        env = dict(os.environ, NOTIFY_SOCKET=str(notify), PR1_NO_SYSTEM_CONFIG="1", PR1_MONITOR__ENABLED="false")
        t_start = time.monotonic()
        proc = subprocess.Popen([str(Path(sys.executable).parent / "pr1d"), "serve", "--state-dir", str(state)],
                                env=env, stderr=subprocess.DEVNULL)
        try:
            while b"READY=1" not in ns.recv(4096):
                pass
            ready_s = time.monotonic() - t_start
            with Client(state / "pr1d.sock") as c:
                for _ in range(50):  # warm caches
                    c.call("status")
                    c.call("runs.list", limit=100)
                res = {}
                for name, call in (("status", lambda: c.call("status")),
                                   ("runs page of 100", lambda: c.call("runs.list", limit=100)),
                                   ("runs page of 100 (agent filter)",
                                    lambda: c.call("runs.list", limit=100, agent="agent-042"))):
                    lat = []
                    for _ in range(a.calls):
                        t = time.perf_counter()
                        call()
                        lat.append(time.perf_counter() - t)
                    res[name] = lat
            rss = next(int(x.split()[1]) for x in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                       if x.startswith("VmRSS:")) / 1024
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"{'call':34} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name, lat in res.items():
        print(f"{name:34} {pct(lat, .5):8.2f} {pct(lat, .99):8.2f} {statistics.mean(lat) * 1000:8.2f}")
    print(f"daemon RSS after the run: {rss:.1f} MB")
    print(f"start to READY=1 on a ledger of {a.runs} runs: {ready_s:.2f} s "
          f"(target < 2 s: {'met' if ready_s < 2 else 'MISSED'})")
    worst = max(pct(lat, .99) for lat in res.values())
    print(f"target p99 < 10 ms: {'met' if worst < 10 else 'MISSED'} (worst p99 {worst:.2f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
