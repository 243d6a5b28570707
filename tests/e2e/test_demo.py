"""`pr1d demo`: the trigger and why (`--until trigger`), Ctrl+C / SIGTERM / SIGHUP, resume, its output and commands.

The sim grades the agent with its real (bootstrapped, cached) model; the demo scenario hands it harder
work from evaluation 150 on, and the drift signal must see the real dip and ask for the full curriculum.
The whole loop to awaiting_approval and beyond is tests/e2e/test_e2e_loop.py. The signal and "next" tests
train nothing: `--until ready` on a stand-in model folder starts the sim and the daemon and grades nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from rich.console import Console

from pr1d import demo
from pr1d.ctl import build_parser
from tests.conftest import BIN, pr1_env

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="the demo's model training needs the [train] extra")


@needs_torch
@pytest.mark.timeout(1800)  # the first run on a fresh machine bootstraps the demo model (~4 minutes)
def test_demo_shows_the_trigger_and_why(tmp_path):
    cp = subprocess.run([str(BIN / "pr1d"), "demo", "--quick", "--until", "trigger", "--exit-when-done",
                         "--state-dir", str(tmp_path / "s")],
                        capture_output=True, text=True, timeout=1700, env=pr1_env(COLUMNS="200"))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    out = cp.stdout
    assert "trigger: agent agent-000" in out
    assert re.search(r"drift\s+│ firing │ recent mean 0\.\d+, baseline 0\.\d+", out), out
    assert "job asked for: full" in out
    m = re.search(r"recent mean (0\.\d+), baseline (0\.\d+)", out)
    recent, baseline = float(m.group(1)), float(m.group(2))
    assert recent < 0.8 * baseline, "the model's real grades fell by more than the 20% the demo watches for"
    assert (tmp_path / "s" / "ledger.sqlite").exists()  # --state-dir keeps it, resumable
    assert (tmp_path / "s" / "resume.sh").exists()


@needs_torch
@pytest.mark.timeout(1800)
def test_kb_dip_demo_loads_the_store_pages_and_triggers_on_the_new_family(tmp_path):
    """Store-catalogue questions join arithmetic at evaluation 150: the arithmetic-only model fails them for real
    (the sim shows it the product's page), the daemon's drift signal fires, and the KB holds the store pages."""
    state = tmp_path / "s"
    cp = subprocess.run([str(BIN / "pr1d"), "demo", "--quick", "--scenario", "kb-dip", "--until", "trigger",
                         "--exit-when-done", "--state-dir", str(state)],
                        capture_output=True, text=True, timeout=1700, env=pr1_env(COLUMNS="200"))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    out = cp.stdout
    assert re.search(r"knowledge base: the store catalogue, 1153 files, 115\d chunks \(sqlite\)", out), out
    assert "trigger: agent agent-000" in out
    m = re.search(r"recent mean (0\.\d+), baseline (0\.\d+)", out)
    assert m and float(m.group(1)) < 0.8 * float(m.group(2)), out
    toml = (state / "demo.toml").read_text()
    assert '[tasks.families.kb_facts]' in toml and 'heldout = "builtin:kb_facts"' in toml and "max_length = 512" in toml
    assert "PR1_DATASET__TEACHER_URL" not in toml  # the sim's address is the environment's, not the file's


def test_demo_config_for_a_kb_scenario(tmp_path):
    assert demo.scenario_families("kb-dip") == {"gsm_lite", "kb_facts"}
    assert demo.scenario_families("demo") == {"gsm_lite"} and demo.scenario_families("no-such") == set()
    plain = demo.write_config(tmp_path, quick=True).read_text()
    assert "[tasks" not in plain and "max_length" not in plain
    kb = demo.write_config(tmp_path, quick=True, families={"gsm_lite", "kb_facts"}).read_text()
    from pr1d.config import load_config

    cfg = load_config([tmp_path / "demo.toml"], environ={}, use_system=False)
    assert cfg.tasks.families["kb_facts"].heldout == "builtin:kb_facts" and not cfg.tasks.gsm_lite_kb_context
    assert cfg.kb.top_k == 1 and cfg.training.sft.max_length == 512 and "[training.sft]" in kb
    # Arithmetic keeps its GSM-only share of samples next to the store records (benchmarks/kb_family_gsm8000.md).
    assert cfg.training.sft.n_train == 11000 and cfg.training.sft.max_steps == 2750
    assert (demo.store_corpus() / "README.md").is_file()


# Plumbing settings: enough SFT steps to interrupt it mid-stage after a checkpoint, tiny evaluations.
# No uplift to show (the SFT gate may well refuse); this is about Ctrl+C and resuming, not learning.
PLUMBING = {
    "sft": {"max_steps": 400, "checkpoint_every": 25},
    "sft_gate": {"n_per_tier": 4},
    "rl": {"max_steps": 2, "eval_per_tier": 2},
    "backtest": {"n_per_tier": 4, "window": 20},
}


def _ledger_rows(state: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _processes_using(state: Path) -> list[str]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(state) in cmd and f"--resume {state}" not in cmd:
            out.append(f"{p.name}: {cmd}")
    return out


@needs_torch
@pytest.mark.timeout(1800)
def test_ctrl_c_keeps_the_state_and_resume_finishes_the_same_run(tmp_path):
    # No --state-dir and no --keep: the default a user gets. TMPDIR puts the demo's temporary dir here.
    env = pr1_env(COLUMNS="200", TMPDIR=str(tmp_path), PR1_DEMO_SETTINGS=json.dumps(PLUMBING))
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        # Its own process group, like a shell job: Ctrl+C is SIGINT to the demo, its sim and its daemon.
        demo = subprocess.Popen([str(BIN / "pr1d"), "demo", "--quick"], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 1500
        state: Path | None = None
        while True:
            assert demo.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            m = re.search(r"state dir: (\S+)", log.read_text())
            if m and state is None:
                state = Path(m.group(1))
            if state is not None and (state / "ledger.sqlite").exists():
                rows = _ledger_rows(state, "SELECT name, state, progress FROM stages WHERE name = 'sft'")
                if rows and rows[0][1] == "running" and (rows[0][2] or 0) >= 0.25:
                    break  # mid-SFT, with checkpoints behind it
            time.sleep(1)
        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(120) == 130, log.read_text()[-4000:]
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    text = log.read_text()
    assert "interrupted" in text and "state kept in" in text, text[-3000:]
    text = " ".join(text.split())  # rich may wrap a long path
    assert "interrupted" in text and f"pr1d demo --resume {state}" in text, text[-3000:]
    assert state.is_dir() and (state / "ledger.sqlite").exists() and (state / "resume.sh").exists()
    assert _processes_using(state) == [], "the sim, the daemon and the stage worker are gone"
    ((run_id, run_state),) = _ledger_rows(state, "SELECT id, state FROM runs")
    assert run_state not in ("failed", "cancelled", "succeeded"), run_state
    (sft_before,) = _ledger_rows(state, "SELECT attempt, checkpoint FROM stages WHERE name = 'sft'")
    assert sft_before[1], "the SFT stage had reported a checkpoint before the interruption"

    # The resume script the demo printed: the sim replayed to where it stopped, the daemon on the state dir.
    cp = subprocess.run(["sh", str(state / "resume.sh"), "--exit-when-done"], capture_output=True, text=True,
                        timeout=1200, env=pr1_env(COLUMNS="200", PR1_DEMO_SETTINGS=json.dumps(PLUMBING)))
    assert cp.returncode == 0, cp.stdout[-4000:] + cp.stderr[-4000:]
    assert f"resuming run {run_id}" in cp.stdout, cp.stdout[-3000:]
    runs = _ledger_rows(state, "SELECT id, state FROM runs")
    assert [r[0] for r in runs] == [run_id], f"the same run carried on, none duplicated: {runs}"
    assert runs[0][1] in ("awaiting_approval", "rejected", "failed"), runs
    (sft_after,) = _ledger_rows(state, "SELECT attempt, state, result FROM stages WHERE name = 'sft'")
    assert sft_after[1] == "succeeded" and sft_after[0] > sft_before[0], (sft_before, sft_after)
    # The SFT worker resumed from its checkpoint instead of starting over.
    train = json.loads(sft_after[2])["train"]
    assert train["resumed_from"] and "checkpoint-" in train["resumed_from"], train
    # Evaluations were replayed, not duplicated: each id once.
    ((n, distinct),) = _ledger_rows(state, "SELECT count(*), count(DISTINCT eval_id) FROM score_samples")
    assert n == distinct


# -- output for a log, and commands that run as printed -----------------------------------------------------


@pytest.mark.parametrize(("last", "frac", "now", "due"), [
    (None, 0.0, 0.0, True),            # the first report of a bar
    ((0.0, 0.0), 0.05, 1.0, False),    # under a step and under a minute
    ((0.0, 0.0), 0.1, 1.0, True),      # a 10% step
    ((0.3, 0.0), 0.45, 5.0, True),     # more than a step at once
    ((0.3, 0.0), 0.35, 61.0, True),    # slow: a line a minute while it moves
    ((0.3, 0.0), 0.3, 600.0, False),   # no movement, no line
    ((0.95, 0.0), 1.0, 1.0, True),     # the end
    ((1.0, 0.0), 1.0, 1.0, False),     # the end once
    ((0.5, 0.0), 0.4, 1.0, False),     # a stage restarted lower: no line until it moves past
])
def test_progress_line_due(last, frac, now, due):
    assert demo.progress_line_due(last, frac, now) is due


def test_progress_without_a_terminal_prints_lines_as_it_goes():
    out = io.StringIO()
    con = Console(file=out, width=100)  # a file: not a terminal, as under nohup, tee or CI
    now = [0.0]
    bar = demo._progress(con, unit=" steps")
    assert isinstance(bar, demo.LineProgress)
    bar.clock = lambda: now[0]
    with bar:
        t = bar.add_task("bootstrapping", total=2000)
        for step in range(0, 2001, 50):
            now[0] = step / 10  # 10 steps a second
            bar.update(t, completed=step)
            if step == 1000:
                assert "1000/2000 steps" in out.getvalue(), "lines arrive while it runs, not only at the end"
        stage = bar.add_task("03 sft", total=1.0)
        bar.update(stage, completed=0.5)
        now[0] += 65
        bar.update(stage, completed=1.0, description="03 sft ✓")
    lines = out.getvalue().splitlines()
    assert lines[0] == "  bootstrapping: 0/2000 steps (0s)"
    assert lines[10] == "  bootstrapping: 2000/2000 steps (3m20s)"
    assert sum("bootstrapping" in line for line in lines) == 11  # 0%, every 10%, no more
    assert lines[-2:] == ["  03 sft: 50% (0s)", "  03 sft ✓: 100% (1m05s)"]


@pytest.mark.parametrize(("on_path", "expected"), [
    ("/opt/pr1/bin/pr1ctl", "pr1ctl"),                # the venv is on PATH: the bare name runs this one
    (None, "/opt/pr1/bin/pr1ctl"),                    # not on PATH (.venv/bin/pr1d demo): the full path
    ("/usr/local/bin/pr1ctl", "/opt/pr1/bin/pr1ctl"),  # another install first on PATH: not that one
])
def test_command_for(on_path, expected):
    assert demo.command_for("pr1ctl", Path("/opt/pr1/bin"), on_path) == expected


@pytest.mark.parametrize(("until", "run_id", "decided", "subcommands"), [
    ("ready", None, None, ["status", "agents"]),
    ("trigger", 3, None, ["status", "show"]),
    ("decision", 3, {"id": 3, "state": "rejected", "agent_id": "agent-000"}, ["status", "show"]),
    ("decision", 3, {"id": 3, "state": "awaiting_approval", "agent_id": "agent-000",
                     "gate": {"outcome": "pass"}}, ["status", "show", "backtest", "approve", "rollback"]),
    ("decision", 3, {"id": 3, "state": "awaiting_approval", "agent_id": "agent 0",
                     "gate": {"outcome": "inconclusive"}}, ["status", "show", "backtest", "approve", "rollback"]),
])
def test_next_commands_parse_as_printed(until, run_id, decided, subcommands):
    sock = Path("/tmp/pr1 demo [x]/pr1d.sock")  # spaces and brackets: quoting, and no rich markup
    cmds = demo.next_commands(sock, until=until, run_id=run_id, decided=decided, bin_dir=Path("/v/bin"),
                              which=lambda name: None)
    assert shlex.split(cmds[-1]) == ["/v/bin/pr1tui", "--socket", str(sock)]
    parser = build_parser()
    seen = []
    for cmd in cmds[:-1]:
        argv = shlex.split(cmd)
        assert argv[0] == "/v/bin/pr1ctl"
        a = parser.parse_args(argv[1:])  # pr1ctl's own parser: exits (SystemExit) on anything it would refuse
        assert a.socket == str(sock)
        seen.append(a.cmd)
        if a.cmd == "approve":
            assert a.accept_inconclusive is (decided["gate"]["outcome"] == "inconclusive")
        if a.cmd == "rollback":
            assert a.agent == decided["agent_id"]
    assert seen == subcommands


# -- SIGTERM and SIGHUP stop it like Ctrl+C, and the printed commands run ------------------------------------


@pytest.mark.parametrize(("sig", "rc"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_a_signal_mid_demo_interrupts_it_like_ctrl_c(tmp_path, monkeypatch, capsys, sig, rc):
    def signalled_while_bootstrapping(con, seed=0):
        os.kill(os.getpid(), sig)
        time.sleep(5)
        raise AssertionError(f"{sig.name} did not interrupt the demo")

    monkeypatch.setattr(demo, "ensure_base_model", signalled_while_bootstrapping)
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, *demo.STOP_SIGNALS)}
    assert demo.run(parser.parse_args(["--state-dir", str(tmp_path / "s")])) == rc
    out = " ".join(capsys.readouterr().out.split())
    assert f"interrupted ({'Ctrl+C' if sig == signal.SIGINT else sig.name})" in out, out
    assert f"demo --resume {tmp_path / 's'}" in out, "the state dir is kept, resumable"
    assert {s: signal.getsignal(s) for s in before} == before, "the caller's signal handlers are back"


def test_base_seed_gives_the_agent_its_own_cached_base_model_and_is_recorded(tmp_path, monkeypatch):
    """`--base-seed N` measures the curriculum on another base model: bootstrap seed N, cached apart from the
    demo's own, and named in demo.json so `--resume` and the benchmark read the same seed."""
    monkeypatch.setenv("PR1_CACHE_DIR", str(tmp_path / "cache"))
    assert demo.base_model_dir(2) != demo.base_model_dir(0)
    asked: list[int] = []

    def bootstrap_stand_in(dest, *, seed=0, log=None):  # the real bootstrap trains for ~5 minutes
        asked.append(seed)
        dest.mkdir(parents=True)
        record = {"seed": seed, "heldout_accuracy": {"easy": 0.9}}
        (dest / "bootstrap.json").write_text(json.dumps(record))
        return record

    monkeypatch.setattr(demo, "bootstrap_into", bootstrap_stand_in)
    con = Console(file=io.StringIO(), width=200)
    path, record = demo.ensure_base_model(con, 2)
    assert path == demo.base_model_dir(2) and asked == [2] and record["cached"] is False
    assert "base model (bootstrap seed 2) bootstrapped" in con.file.getvalue()
    path, record = demo.ensure_base_model(con, 2)  # cached now: not bootstrapped again
    assert path == demo.base_model_dir(2) and asked == [2] and record["cached"] is True

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    state, meta = demo._open_state(parser.parse_args(["--state-dir", str(tmp_path / "s"), "--base-seed", "2"]))
    assert meta["base_seed"] == 2 and json.loads((state / "demo.json").read_text())["base_seed"] == 2
    assert demo._open_state(parser.parse_args(["--state-dir", str(tmp_path / "d")]))[1]["base_seed"] == 0
    with pytest.raises(SystemExit, match="--base-seed must be 0 or more, not -1"):
        demo._open_state(parser.parse_args(["--state-dir", str(tmp_path / "bad"), "--base-seed", "-1"]))
    assert not (tmp_path / "bad").exists()


@pytest.fixture
def stand_in_model(tmp_path, monkeypatch) -> Path:
    """A model folder where the demo looks for its cached base model: enough for `--until ready`, which loads
    no model (the sim loads one only to grade, and nothing is graded)."""
    monkeypatch.setenv("PR1_CACHE_DIR", str(tmp_path / "cache"))
    d = demo.base_model_dir()
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "bootstrap.json").write_text(json.dumps({"heldout_accuracy": {"easy": 0.9, "medium": 0.2}}))
    return d


def _wait_for(log: Path, proc: subprocess.Popen, needle: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text()
        if needle in text:
            return text
        assert proc.poll() is None, f"the demo exited with {proc.returncode}:\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"no {needle!r} within {timeout}s:\n{text[-3000:]}"
        time.sleep(0.2)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_the_demo_its_daemon_and_stage_workers(tmp_path, stand_in_model, sig):
    state = tmp_path / "s"
    log = tmp_path / "demo.log"
    env = pr1_env(COLUMNS="200", PR1_CACHE_DIR=os.environ["PR1_CACHE_DIR"])
    with open(log, "w") as out:
        # stdout is a file: the demo must say what it does line by line. Its own session: the signal goes to
        # the demo alone (as `kill PID` or systemd's main-process signal), not to its children as well.
        proc = subprocess.Popen([str(BIN / "pr1d"), "demo", "--until", "ready", "--state-dir", str(state)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        text = _wait_for(log, proc, "keep running")
        assert "pr1d knows the platform's agents: agent-000" in text
        assert "\r" not in text and "\x1b[" not in text, "plain lines in a log, no spinners or colours"

        # Every "next" command runs as printed (pr1tui: its --help, it is a full-screen program).
        nxt = text.split("next", 1)[1].split("\n\n")[0]
        cmds = [line.strip() for line in nxt.splitlines() if line.startswith("  ")]
        assert len(cmds) == 3, nxt
        for cmd in cmds:
            run = cmd + " --help" if shlex.split(cmd)[0].endswith("pr1tui") else cmd
            cp = subprocess.run(["sh", "-c", run], capture_output=True, text=True, timeout=60, env=env, cwd="/")
            assert cp.returncode == 0, f"{run}: {cp.stdout}{cp.stderr}"
        assert "agent-000" in subprocess.run(["sh", "-c", cmds[1]], capture_output=True, text=True, timeout=60,
                                             env=env, cwd="/").stdout
        resume = re.search(r"resume with: (.+ --resume \S+)\)", " ".join(text.split())).group(1)
        cp = subprocess.run(["sh", "-c", resume + " --help"], capture_output=True, text=True, timeout=60, env=env)
        assert cp.returncode == 0 and "--resume" in cp.stdout, cp.stderr

        # A stage worker to stop: the `sleep` diagnostic plan, no training.
        ctl = shlex.split(cmds[0])[:-1]  # the printed pr1ctl with its --socket
        cp = subprocess.run([*ctl, "trigger", "agent-000", "--kind", "sleep", "--param", "seconds=600"],
                            capture_output=True, text=True, timeout=60, env=env)
        assert cp.returncode == 0, cp.stderr
        deadline = time.monotonic() + 60
        while not any("pr1d.stages.sleep" in p for p in _processes_using(state)):
            assert time.monotonic() < deadline, "the sleep stage never started"
            time.sleep(0.2)

        t0 = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == 0, text[-3000:]  # a deliberate stop of a demo that was done
    assert took < 15, f"stopping took {took:.1f}s"
    assert f"stopping the daemon and the sim ({sig.name})" in text
    assert "state kept in" in text
    assert _processes_using(state) == [], "the sim, the daemon and the stage worker are gone"
    # The daemon stopped the stage the resumable way, not as a crash.
    assert _ledger_rows(state, "SELECT name, state FROM stages") == [("sleep", "interrupted")]
