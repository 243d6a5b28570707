"""The daemon and both clients never load the training stack; the daemon never loads textual."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

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


# -- the layer rules docs/architecture.md states -------------------------------------------------------------
# Static: every import statement in the source, lazy ones inside functions included (a lazy import is still a
# dependency). Stage modules named in strings (`python -m pr1d.stages.X`) are process boundaries, not imports.

ROOT = Path(__file__).resolve().parents[1]


def _imports() -> dict[str, set[str]]:
    """``{module: {imported module, ...}}`` for every module of pr1d and pr1tui, relative imports resolved."""
    out: dict[str, set[str]] = {}
    for pkg in ("pr1d", "pr1tui"):
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            mod = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            here = mod if parts[-1] == "__init__" else mod.rpartition(".")[0]
            targets = out.setdefault(mod, set())
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if isinstance(node, ast.Import):
                    targets.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = here.split(".")[: len(here.split(".")) - node.level + 1]
                        target = ".".join(base + ([node.module] if node.module else []))
                        # `from . import x`: x may be a module of that package
                        targets.update(f"{target}.{a.name}" for a in node.names)
                    else:
                        target = node.module or ""
                        targets.update(f"{target}.{a.name}" for a in node.names)
                    targets.add(target)
    return out


def _within(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


# (importer package, packages it must not import, why)
LAYER_RULES = [
    ("pr1d", ["pr1d.stages"], "stages are worker entry points: only the launcher starts them, by name"),
    ("pr1d.evaluate", ["pr1d.train", "pr1d.daemon", "pr1d.registry"], "evaluation measures models; it does not train"),
    ("pr1d.inference", ["pr1d.train", "pr1d.evaluate", "pr1d.daemon", "pr1d.registry"],
     "inference sits under evaluation and training, which both use it"),
    ("pr1d.train", ["pr1d.daemon", "pr1d.ledger", "pr1d.registry", "pr1d.rpc", "pr1d.monitor"],
     "training runs in stage workers, which talk to the daemon only through their spec and event pipe"),
    ("pr1d.ledger", ["pr1d.daemon", "pr1d.registry", "pr1d.monitor", "pr1d.rpc", "pr1d.pipeline", "pr1d.train"],
     "the ledger is the bottom of the daemon's stack"),
    ("pr1d.rpc", ["pr1d.daemon", "pr1d.registry", "pr1d.train", "pr1d.monitor"],
     "the wire protocol is shared by the daemon and its clients"),
    ("pr1tui", ["pr1d.daemon", "pr1d.ledger", "pr1d.registry", "pr1d.train", "pr1d.inference", "pr1d.monitor",
                "pr1d.stages", "pr1d.data", "pr1d.evaluate"], "the console talks to the daemon over its socket only"),
    ("pr1d.ctl", ["pr1d.daemon", "pr1d.ledger", "pr1d.registry", "pr1d.train", "pr1d.inference", "pr1d.monitor",
                  "pr1d.stages"], "pr1ctl talks to the daemon over its socket only"),
]


@pytest.mark.parametrize(("importer", "banned", "why"), LAYER_RULES, ids=[r[0] for r in LAYER_RULES])
def test_layer_rules(importer, banned, why):
    bad = sorted(f"{mod} imports {t}" for mod, targets in _imports().items() if _within(mod, importer)
                 for t in targets for b in banned if _within(t, b) and not _within(mod, b))
    assert not bad, f"{why}:\n" + "\n".join(bad)


def test_only_the_cli_imports_the_daemon():
    allowed = ("pr1d.daemon", "pr1d.cli")
    bad = sorted(f"{mod} imports {t}" for mod, targets in _imports().items() if not any(_within(mod, a) for a in allowed)
                 for t in targets if _within(t, "pr1d.daemon"))
    assert not bad, "the daemon is the top of its stack; parts it composes must not reach back into it:\n" + "\n".join(bad)


def test_the_import_scanner_sees_lazy_and_relative_imports():
    imports = _imports()
    # a lazy relative import inside a function (pr1d/stages/backtest.py: resolve_sides)
    assert "pr1d.inference.policy" in imports["pr1d.stages.backtest"]
    assert "pr1d.inference.policy.ParallelExecutionPolicy" in imports["pr1d.stages.backtest"]
