"""Throughput sanity check: 10,000 agents x 50 new evaluations are generated and served over loopback
fast enough for the daemon's polling benchmark (figures are printed; the bound is deliberately loose)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

AGENTS = 10_000
PER_AGENT = 50


async def _poll_all(url: str, concurrency: int) -> tuple[int, int, float]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/v1/agents") as r:
            agents = [a["id"] for a in (await r.json())["agents"]]
        sem = asyncio.Semaphore(concurrency)
        received = 0

        async def one(agent: str) -> None:
            nonlocal received
            async with sem, s.get(f"{url}/v1/agents/{agent}/evaluations", params={"limit": "100"}) as r:
                body = await r.json()
                received += len(body["evaluations"])
                assert body["next_cursor"] == f"e:{PER_AGENT}"

        t = time.perf_counter()
        await asyncio.gather(*(one(a) for a in agents))
        return len(agents), received, time.perf_counter() - t


def test_ten_thousand_agents_fifty_evaluations_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port_file = tmp_path / "sim.port"
    t0 = time.perf_counter()
    # A separate process, as in the benchmark: the server gets its own core and event loop.
    proc = subprocess.Popen(
        [sys.executable, "-m", "pr1d.sim", "--scenario", "mixed-fleet", "--agents", str(AGENTS),
         "--time-scale", "0", "--port", "0", "--port-file", str(port_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _ in range(600):  # bounded: 30 s
            if port_file.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert port_file.exists(), proc.stderr.read() if proc.stderr else ""
        url = f"http://127.0.0.1:{int(port_file.read_text())}"
        startup = time.perf_counter() - t0

        async def scenario() -> tuple[float, tuple[int, int, float]]:
            async with aiohttp.ClientSession() as s:
                t = time.perf_counter()
                async with s.post(f"{url}/_sim/tick", json={"n": PER_AGENT}) as r:
                    assert (await r.json())["generated"] == AGENTS * PER_AGENT
                gen = time.perf_counter() - t
            return gen, await _poll_all(url, concurrency=16)

        gen, (n_agents, received, poll) = asyncio.run(scenario())
    finally:
        proc.terminate()
        proc.wait(10)
    assert n_agents == AGENTS and received == AGENTS * PER_AGENT
    with capsys.disabled():
        print(
            f"\n[sim throughput] {AGENTS} agents: startup {startup:.2f}s; generate {received} evaluations {gen:.2f}s "
            f"({received / gen:,.0f}/s); poll {n_agents} pages {poll:.2f}s ({n_agents / poll:,.0f} req/s, "
            f"{received / poll:,.0f} evaluations/s)"
        )
    # Generous: the daemon benchmark budget for all of this plus the daemon's own work is 30 s.
    assert startup + gen + poll < 30
