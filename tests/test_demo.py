"""`pr1d demo --quick` runs headless on embedded defaults and shows the trigger firing and why."""

from __future__ import annotations

import subprocess

from .conftest import BIN, pr1_env


def test_demo_quick_shows_the_trigger(tmp_path):
    cp = subprocess.run([str(BIN / "pr1d"), "demo", "--quick", "--exit-when-done", "--state-dir", str(tmp_path / "s")],
                        capture_output=True, text=True, timeout=300, env=pr1_env(COLUMNS="200"))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    out = cp.stdout
    assert "trigger: agent" in out
    assert "weighted_score │ firing" in out.replace("  ", " ") or "weighted_score" in out
    assert "job asked for: sft" in out
    assert "consecutive below 0.82" in out
    assert (tmp_path / "s" / "ledger.sqlite").exists()  # --state-dir keeps it, resumable by pr1d serve
