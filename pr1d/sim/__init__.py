"""pr1d sim: a simulated agent platform (scoring API, gradebook, critic, agent manager).

Modules: `scenarios` (TOML schema and lookup), `platform` (the state: agents, evaluations, gradebook,
critic, profile pushes), `faults` (fault schema and decisions), `tasks` (GSM-lite-style problems),
`server` (aiohttp app and `SimServer`), `cli` (`pr1d sim`). The names below are imported lazily so
that importing a light module (e.g. `pr1d.sim.scenarios`) does not load aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pr1d.sim.platform import Platform, PlatformError
    from pr1d.sim.scenarios import Scenario, ScenarioError, load_scenario
    from pr1d.sim.server import SimServer

__all__ = ["Platform", "PlatformError", "Scenario", "ScenarioError", "SimServer", "load_scenario"]

_WHERE = {
    "Platform": "pr1d.sim.platform",
    "PlatformError": "pr1d.sim.platform",
    "Scenario": "pr1d.sim.scenarios",
    "ScenarioError": "pr1d.sim.scenarios",
    "load_scenario": "pr1d.sim.scenarios",
    "SimServer": "pr1d.sim.server",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'pr1d.sim' has no attribute {name!r}")
