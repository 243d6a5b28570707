"""The loop closed, headless: `pr1d demo --quick` to awaiting_approval, then approve, recover, roll back.

The sim grades the agent with its real model (`--grade-with-model`): the trigger is the base model's real
weakness, the approval must push the new version's profile, the grades must recover because the new model
answers better, and the rollback must bring the old model (and its grades) back. Every operator action
goes through `pr1ctl` and must be audited under the Unix user who ran it.
"""

from __future__ import annotations

import getpass
import json
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import BIN, pr1_env

pytest.importorskip("torch")

DEMO_TIMEOUT_S = 40 * 60  # bootstrap on a fresh machine (~4 min) plus the quick curriculum


def _get(url: str) -> dict | list:
    with urllib.request.urlopen(url, timeout=600) as r:
        return json.loads(r.read())


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read() or b"{}")


class Demo:
    def __init__(self, state: Path):
        self.state = state
        self.out: list[str] = []
        self.proc = subprocess.Popen([str(BIN / "pr1d"), "demo", "--quick", "--state-dir", str(state)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=pr1_env(COLUMNS="160"))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(line)

    def text(self) -> str:
        return "".join(self.out)

    def wait_for(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.proc.poll() is None, f"demo exited {self.proc.returncode}:\n{self.text()[-6000:]}"
            assert time.monotonic() < deadline, f"no {needle!r} within {timeout:.0f}s:\n{self.text()[-6000:]}"
            time.sleep(1)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "pr1ctl"), "--socket", str(self.state / "pr1d.sock"), *args],
                              capture_output=True, text=True, timeout=300, env=pr1_env())

    def ctl_json(self, *args: str):
        cp = self.ctl(*args, "--json")
        assert cp.returncode == 0, cp.stdout + cp.stderr
        return json.loads(cp.stdout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _evaluations(url: str) -> list[float]:
    page = _get(f"{url}/v1/agents/agent-000/evaluations?limit=1000")
    out, recs = [], page["evaluations"]
    while recs:
        out += [e["weighted_score"] for e in recs]
        page = _get(f"{url}/v1/agents/agent-000/evaluations?limit=1000&since={page['next_cursor']}")
        recs = page["evaluations"]
    return out


@pytest.mark.timeout(DEMO_TIMEOUT_S + 600)
def test_quick_demo_approve_recover_rollback(tmp_path):
    demo = Demo(tmp_path / "s")
    try:
        demo.wait_for("─ next ─", DEMO_TIMEOUT_S)
        out = demo.text()
        assert "job asked for: full" in out, out
        runs = demo.ctl_json("runs", "--state", "awaiting_approval")
        assert len(runs) == 1, (runs, out)
        run = runs[0]
        # The SFT gate's uplift is real and above its threshold; the promotion gate passed or flagged.
        m = re.search(r"uplift ([+-][\d.]+) points", out)
        assert m and float(m.group(1)) >= 5.0, out
        detail = demo.ctl_json("show", str(run["id"]))
        assert [s["name"] for s in detail["stages"]] == ["dataset", "sft", "sft_gate", "rl", "backtest", "gate"]
        assert detail["gate"]["outcome"] in ("pass", "inconclusive"), detail["gate"]
        url = f"http://127.0.0.1:{int((demo.state / 'sim.port').read_text())}"
        # How the agent does on the harder work with the base model in service (after the sim's tier shift
        # at evaluation 150). Measured on a few hundred grades: the pool is small (40 tasks a tier) and one
        # grade is 0.1 or 1.0, so 50 grades alone are +-0.07.
        _post(f"{url}/_sim/tick", {"n": 200})
        before = _evaluations(url)
        dip = before[150:]
        assert len(dip) >= 250

        # 1. approve through pr1ctl: the sim receives the new version's profile
        accept = ["--accept-inconclusive"] if detail["gate"]["outcome"] == "inconclusive" else []
        cp = demo.ctl("approve", str(run["id"]), *accept, "--reason", "e2e: gate passed")
        assert cp.returncode == 0, cp.stdout + cp.stderr
        deps = demo.ctl_json("deployments", "agent-000")
        new_version = deps[0]["version_id"]
        hist = _get(f"{url}/_sim/agents/agent-000/profile_history")["history"]
        deadline = time.monotonic() + 120
        while not hist or hist[-1]["model_version"] != new_version:
            assert time.monotonic() < deadline, f"the sim never got {new_version}: {hist}"
            time.sleep(1)
            hist = _get(f"{url}/_sim/agents/agent-000/profile_history")["history"]

        # 2. the grades recover, graded with the new model (on the demo's pool: base 0.48, quick model 0.59)
        _post(f"{url}/_sim/tick", {"n": 300})
        after = _evaluations(url)[len(before):]
        assert len(after) == 300
        dip_mean, after_mean = sum(dip) / len(dip), sum(after) / len(after)
        assert after_mean > dip_mean, (dip_mean, after_mean)

        # 3. roll back through pr1ctl: the previous version is current and the sim got the old profile
        cp = demo.ctl("rollback", "agent-000", "--reason", "e2e: back to the base")
        assert cp.returncode == 0, cp.stdout + cp.stderr
        deps = demo.ctl_json("deployments", "agent-000")
        assert deps[0]["version_id"] != new_version and deps[0]["action"] == "rollback", deps
        deadline = time.monotonic() + 120
        hist = _get(f"{url}/_sim/agents/agent-000/profile_history")["history"]
        while hist[-1]["model_version"] != "tiny-gsm-v1":
            assert time.monotonic() < deadline, f"the sim never got the old profile back: {hist}"
            time.sleep(1)
            hist = _get(f"{url}/_sim/agents/agent-000/profile_history")["history"]
        _post(f"{url}/_sim/tick", {"n": 300})
        rolled = _evaluations(url)[len(before) + 300:]
        assert len(rolled) == 300
        assert sum(rolled) / len(rolled) < after_mean, ("the base model is back, and so are its grades",
                                                        sum(rolled) / len(rolled), after_mean)

        # 4. the audit log names the Unix user for each action
        me = getpass.getuser()
        audit = demo.ctl_json("audit", "--limit", "200")
        actions = {(a["action"], a["actor"]) for a in audit}
        assert ("approve", me) in actions and ("rollback", me) in actions, audit
    finally:
        demo.stop()
