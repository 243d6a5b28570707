"""`pr1d demo --until trigger` runs headless on embedded defaults and shows the trigger firing and why.

The sim grades the agent with its real (bootstrapped, cached) model; the demo scenario hands it harder
work from evaluation 150 on, and the drift signal must see the real dip and ask for the full curriculum.
The whole loop to awaiting_approval and beyond is tests/test_e2e_loop.py.
"""

from __future__ import annotations

import re
import subprocess

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
