"""`pr1d demo --until trigger` runs headless on embedded defaults and shows the trigger firing and why.

The sim grades the agent with its real (bootstrapped, cached) model; the demo scenario hands it harder
work from evaluation 150 on, and the drift signal must see the real dip and ask for the full curriculum.
The whole loop to awaiting_approval and beyond is tests/test_e2e_loop.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import BIN, pr1_env

pytest.importorskip("torch")


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
