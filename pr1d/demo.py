"""`pr1d demo`: the whole loop this build has, headless, on embedded defaults.

Starts `pr1d sim` with a degradation scenario and `pr1d serve` on a fresh state dir (built-in
defaults, SQLite ledger), advances the simulated platform, and shows the monitor noticing the
agent's trouble: which signal fired, on what numbers, and which curriculum job it asks for. Runs
are then carried as far as the stages this build has. The sim and the daemon stay up until Ctrl+C
so you can look around with `pr1ctl` or `pr1tui`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

BIN = Path(sys.executable).parent


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="smallest settings (fewer evaluations per step)")
    p.add_argument("--keep", action="store_true", help="keep the state dir (printed at the end)")
    p.add_argument("--scenario", default="slow-degradation", help="sim scenario (default slow-degradation)")
    p.add_argument("--exit-when-done", action="store_true",
                   help="stop the sim and daemon once the demo has run, instead of waiting for Ctrl+C")
    p.add_argument("--state-dir", help="state dir to use (default: a new temporary one)")


def _wait_file(path: Path, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise SystemExit(f"pr1d demo: {what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"pr1d demo: {what} did not start within {timeout:.0f}s")
        time.sleep(0.05)


def _tick(url: str, n: int) -> None:
    import httpx

    httpx.post(f"{url}/_sim/tick", json={"n": n}, timeout=10).raise_for_status()


def run(args: argparse.Namespace) -> int:
    from .rpc.client import Client

    con = Console(highlight=False)
    state = Path(args.state_dir or tempfile.mkdtemp(prefix="pr1-demo-")).resolve()
    state.mkdir(parents=True, exist_ok=True)
    logs = state / "demo-logs"
    logs.mkdir(exist_ok=True)
    env = dict(os.environ, PR1_NO_SYSTEM_CONFIG="1")
    procs: list[subprocess.Popen] = []
    con.rule("[bold]pr1 demo")
    con.print(f"state dir: {state}")
    try:
        # 1. the simulated agent platform
        port_file = state / "sim.port"
        port_file.unlink(missing_ok=True)
        sim = subprocess.Popen([str(BIN / "pr1d"), "sim", "--port", "0", "--port-file", str(port_file),
                                "--scenario", args.scenario, "--time-scale", "0"],
                               stdout=subprocess.DEVNULL, stderr=open(logs / "sim.log", "ab"), env=env)
        procs.append(sim)
        _wait_file(port_file, sim, "pr1d sim")
        url = f"http://127.0.0.1:{int(port_file.read_text())}"
        con.print(f"[green]✓[/] pr1d sim on {url} (scenario {args.scenario})")
        # 2. the daemon, on built-in defaults; only the sim's address and a quick poll are set
        denv = dict(env, PR1_SCORING__BASE_URL=url, PR1_MONITOR__ENABLED="true",
                    PR1_SCHEDULER__POLL_INTERVAL_S="3600")  # the demo polls on its own beat, below
        sock = state / "pr1d.sock"
        daemon = subprocess.Popen([str(BIN / "pr1d"), "serve", "--state-dir", str(state)],
                                  stdout=subprocess.DEVNULL, stderr=open(logs / "daemon.log", "ab"), env=denv)
        procs.append(daemon)
        _wait_file(sock, daemon, "pr1d serve")
        con.print(f"[green]✓[/] pr1d serve (pid {daemon.pid}), socket {sock}")
        # 3. the platform grades agents; the daemon polls and evaluates the signals
        step, steps = (40, 12) if args.quick else (25, 24)
        fired: list[dict] = []
        with Client(sock, timeout=120) as c, Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} evaluations"),
            TimeRemainingColumn(), console=con,
        ) as bar:
            task = bar.add_task("grading agents, polling scores", total=step * steps)
            for _ in range(steps):
                _tick(url, step)
                report = c.call("monitor.poll")
                bar.advance(task, step)
                fired = c.call("monitor.triggers")
                if fired:
                    bar.update(task, description=f"trigger after {report.get('fetched')} new evaluations")
                    break
        _show_trigger(con, fired)
        _follow_runs(con, sock, fired)
        con.rule("[bold]next")
        con.print(f"  pr1ctl --socket {sock} status")
        con.print(f"  pr1ctl --socket {sock} agents")
        con.print(f"  pr1tui --socket {sock}")
        if args.exit_when_done:
            return 0 if fired else 1
        con.print("\nThe sim and the daemon keep running; Ctrl+C stops them.")
        try:
            while all(p.poll() is None for p in procs):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        if args.keep or args.state_dir:
            con.print(f"state kept in {state}; resume with: pr1d serve --state-dir {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)


def _show_trigger(con: Console, fired: list[dict]) -> None:
    if not fired:
        con.print("[yellow]no signal fired in this run of the demo[/]")
        return
    t = fired[-1]
    ev = t["evidence"]
    con.rule(f"[bold]trigger: agent {t['agent_id']}")
    table = Table(show_header=True)
    table.add_column("signal")
    table.add_column("state")
    table.add_column("why")
    for name, sig in ev.get("signals", {}).items():
        state = sig.get("state") if isinstance(sig, dict) else sig
        table.add_row(name, str(state), _why(name, t, ev))
    con.print(table)
    con.print(f"job asked for: [bold]{t['job_kind']}[/] (signal {t['signal']}; precedence {' > '.join(ev['precedence'])})")
    if t.get("suppressed"):
        con.print(f"[yellow]no run queued:[/] {t['suppressed']}")
    else:
        con.print(f"[green]run {t['run_id']} queued[/]")


def _why(name: str, t: dict, ev: dict) -> str:
    if ev["primary"]["signal"] != name:
        also = {a["signal"]: a for a in ev.get("also_fired", [])}
        return "also fired" if name in also else ""
    e = ev["primary"]["evidence"]
    if name == "weighted_score":
        return f"{e.get('streak')} consecutive below {e.get('target')}: {e.get('streak_scores')}"
    if name == "drift":
        return f"recent mean {e.get('recent_mean')}, baseline {(e.get('baseline') or {}).get('mean')}"
    if name == "reliability":
        return f"std {e.get('std')}, fail rate {e.get('fail_rate')}"
    return f"{e.get('failures') or e.get('rubric_failures') or ''}"


def _follow_runs(con: Console, sock: Path, fired: list[dict]) -> None:
    from .rpc.client import Client

    runs = [t["run_id"] for t in fired if t.get("run_id")]
    if not runs:
        return
    with Client(sock, timeout=None) as c:
        c.call("events.subscribe", topics=["run", "progress"], run=runs[-1])
        state = c.call("runs.show", run=runs[-1])["state"]
        if state in ("queued", "running", "interrupted"):
            for ev in c.events():
                if ev["topic"] == "progress":
                    con.print(f"  run {ev['run']}: step {ev['step']}/{ev.get('total')}")
                elif ev["topic"] == "run":
                    con.print(f"  run {ev['run']}: {ev['state']} ({ev.get('reason')})")
                    if ev["state"] not in ("queued", "running", "interrupted"):
                        break
