"""Test kit for the registry tests: a real `pr1d sim` subprocess, a ledger, synthetic model folders, runs."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pr1d.ledger import samples
from pr1d.ledger.store import Ledger
from tests.conftest import BIN, pr1_env

BASE_MODEL = "tiny-gsm-v1"  # what the shipped scenarios' agents run before any push


def safetensors_bytes(values: list[float], name: str = "w") -> bytes:
    """A valid safetensors file with one F32 tensor (written by hand: no training stack in these tests)."""
    data = struct.pack(f"<{len(values)}f", *values)
    header = json.dumps({name: {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, len(data)]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data


def make_model(folder: Path, seed: int, *, config: dict | None = None, extra: dict[str, bytes] | None = None) -> Path:
    """A small model folder: adapter weights, adapter config, tokenizer config."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_model.safetensors").write_bytes(safetensors_bytes([seed + i / 10 for i in range(64)]))
    (folder / "adapter_config.json").write_text(json.dumps(config or {"r": 8, "lora_alpha": 16,
                                                                     "peft_type": "LORA"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
    for name, data in (extra or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


class Sim:
    """`pr1d sim` in a subprocess, started as the monitor's end-to-end tests do (time only moves on tick)."""

    def __init__(self, tmp: Path, scenario: str = "slow-degradation", *extra: str):
        self.log = tmp / f"sim-{scenario}.log"
        port_file = tmp / f"sim-{scenario}.port"
        self.proc = subprocess.Popen(
            [str(BIN / "pr1d"), "sim", "--port", "0", "--port-file", str(port_file), "--scenario", scenario,
             "--time-scale", "0", *extra],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"), env=pr1_env())
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "sim did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def get(self, path: str) -> dict:
        r = self.http.get(path)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: dict) -> dict:
        r = self.http.post(path, json=body)
        r.raise_for_status()
        return r.json()

    def tick(self, n: int) -> None:
        self.post("/_sim/tick", {"n": n})

    def fail_profile_pushes(self) -> None:
        self.post("/_sim/faults", {"kind": "http_error", "rate": 1.0, "endpoints": ["profile"]})

    def clear_faults(self) -> None:
        self.http.delete("/_sim/faults").raise_for_status()

    def history(self, agent: str) -> list[dict]:
        return self.get(f"/_sim/agents/{agent}/profile_history")["history"]

    def agent(self, agent: str) -> dict:
        return self.get(f"/_sim/agents/{agent}")

    def close(self) -> None:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


@pytest.fixture(name="sim")
def sim_fixture(tmp_path: Path) -> Iterator[Sim]:
    s = Sim(tmp_path)
    yield s
    s.close()


# The slow-degradation scenario's fleet, as `GET /v1/agents` lists it before any push.
AGENTS = [{"id": f"agent-{i:03d}", "model": BASE_MODEL, "profile": "default"} for i in range(3)]


@pytest.fixture(name="ledger")
def ledger_fixture(tmp_path: Path) -> Iterator[Ledger]:
    """A fresh ledger holding the sim's agents (as the poller would register them; tests that need the
    sim itself ask for it, the others run without one)."""
    led = Ledger(tmp_path / "state" / "ledger.sqlite")
    led.upsert_agents(AGENTS)
    yield led
    led.close()


@pytest.fixture(name="models")
def models_fixture(tmp_path: Path) -> Path:
    return tmp_path / "state" / "models"


def ingest(ledger: Ledger, sim: Sim, agents: list[str] | None = None) -> int:
    """Poll the sim's evaluations into the ledger through the daemon's own poller and ingest path."""
    import asyncio

    from pr1d.config import ScoringConfig
    from pr1d.monitor.poller import Poller, agent_health

    cursors = samples.agent_cursors(ledger)
    wanted = {a: cursors[a] for a in (agents or list(cursors))}

    async def go() -> tuple[list, list]:
        poller = Poller(ScoringConfig(base_url=sim.url, backoff_base_s=0.01), None)
        try:
            return await poller.fetch_agents(), await poller.poll_agents(wanted)
        finally:
            await poller.close()

    listed, polls = asyncio.run(go())
    assert not [p.error for p in polls if p.error]
    models = {a["id"]: a["model"] for a in listed}  # samples are tagged with the model the platform lists
    return samples.ingest_polls(ledger, [{"agent_id": p.agent_id, "cursor": p.cursor, "samples": p.samples,
                                        "model_version": models.get(p.agent_id),
                                        "health": agent_health(wanted[p.agent_id]["health"], p)} for p in polls])


def awaiting_run(ledger: Ledger, agent: str, expected: float | None = 0.92, gate: dict | None = None) -> int:
    """A run that went through its stages and now awaits approval, with gate evidence."""
    run, _ = ledger.create_run(agent, "full", "tester", stages=[])
    ledger.transition_run(run["id"], "running", "daemon", "dispatched")
    ev = gate if gate is not None else {"outcome": "pass", "flagged": False, "expected_score": expected}
    ledger.transition_run(run["id"], "awaiting_approval", "daemon", "gate passed", gate=ev)
    return run["id"]


def count(ledger: Ledger, sql: str, *params) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.exec_driver_sql(sql, params).scalar())
