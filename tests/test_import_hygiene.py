"""The daemon and both clients never load the training stack; the daemon never loads textual."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ["torch", "transformers", "trl", "peft", "accelerate", "datasets"]

PROBE = """
import json, sys, importlib
for m in sys.argv[1].split(","):
    importlib.import_module(m)
{extra}
print(json.dumps(sorted(k for k in sys.modules if k.split(".")[0] in {heavy!r})))
"""


def _loaded(modules: list[str], extra: str = "", heavy: list[str] = HEAVY) -> list[str]:
    cp = subprocess.run([sys.executable, "-c", PROBE.format(extra=extra, heavy=set(heavy)), ",".join(modules)],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("modules", [
    ["pr1d.cli", "pr1d.daemon.core", "pr1d.rpc.server", "pr1d.ledger.store", "pr1d.pipeline.launcher",
     "pr1d.monitor.signals", "pr1d.monitor.rules", "pr1d.config"],
    ["pr1d.ctl", "pr1d.rpc.client"],
    ["pr1tui.app"],
    # what the daemon and the registry use of inference and evaluation: the policy, the statistics, the gate
    ["pr1d.inference.policy", "pr1d.stats", "pr1d.evaluate.gate", "pr1d.evaluate.backtest"],
])
def test_no_training_stack(modules):
    assert _loaded(modules) == []


def test_daemon_never_loads_textual():
    assert _loaded(["pr1d.cli", "pr1d.daemon.core", "pr1d.ctl"], heavy=["textual"]) == []


def test_running_the_cli_parsers_loads_nothing_heavy():
    extra = "from pr1d.cli import build_parser; build_parser()\nfrom pr1d.ctl import build_parser as b; b()"
    assert _loaded(["pr1d.cli"], extra=extra) == []


def test_running_daemon_maps_no_torch(daemon):
    maps = open(f"/proc/{daemon.proc.pid}/maps").read()
    assert "torch" not in maps
    mods = _loaded(["pr1d.daemon.core"])
    assert mods == []
