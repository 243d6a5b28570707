"""Fault injection as a client sees it: each fault kind observed through httpx, targeting, limits,
determinism by seed, runtime control through /_sim/faults and the counters in /_sim/state."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from pr1d.sim.server import SimServer


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer("mixed-fleet", port=0) as s:
        s.tick(30)
        yield s


@pytest.fixture
async def client(sim: SimServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=5) as c:
        yield c


async def _add(client: httpx.AsyncClient, **fault: object) -> None:
    r = await client.post("/_sim/faults", json=fault)
    assert r.status_code == 200, r.text


async def _evals(client: httpx.AsyncClient, agent: str = "agent-000", **params: object) -> httpx.Response:
    return await client.get(f"/v1/agents/{agent}/evaluations", params=params)


async def test_latency(client: httpx.AsyncClient) -> None:
    await _add(client, kind="latency", seconds=0.3, endpoints=["agents"])
    t = time.monotonic()
    assert (await client.get("/v1/agents")).status_code == 200
    assert time.monotonic() - t >= 0.3
    t = time.monotonic()
    await _evals(client)
    assert time.monotonic() - t < 0.3  # other endpoints are not delayed


async def test_http_error_with_retry_after(client: httpx.AsyncClient) -> None:
    await _add(client, kind="http_error", status=503, retry_after=2, endpoints=["evaluations"])
    r = await _evals(client)
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert "injected" in r.json()["error"]
    await _add(client, kind="http_error", status=500, endpoints=["gradebook"])
    r = await client.get("/v1/gradebook")
    assert r.status_code == 500 and "retry-after" not in r.headers


async def test_timeout_hangs_past_the_client_and_does_not_block_shutdown() -> None:
    sim = await SimServer("steady", port=0).start()
    try:
        async with httpx.AsyncClient(base_url=sim.url, timeout=0.3) as c:
            await _add(c, kind="timeout", seconds=30, endpoints=["agents"])
            with pytest.raises(httpx.ReadTimeout):
                await c.get("/v1/agents")
            assert (await c.get("/v1/gradebook")).status_code == 200
    finally:
        t = time.monotonic()
        await sim.close()
        assert time.monotonic() - t < 3.0


async def test_connection_reset(client: httpx.AsyncClient) -> None:
    await _add(client, kind="reset", endpoints=["evaluations"], max_count=1)
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        await _evals(client)
    assert (await _evals(client)).status_code == 200  # max_count=1: the retry succeeds


async def test_malformed_json(client: httpx.AsyncClient) -> None:
    await _add(client, kind="malformed_json", endpoints=["evaluations", "agents"])
    for r in (await _evals(client), await client.get("/v1/agents")):
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        with pytest.raises(json.JSONDecodeError):
            r.json()


async def test_wrong_type_and_missing_fields(client: httpx.AsyncClient) -> None:
    await _add(client, kind="bad_fields", mode="wrong_type", endpoints=["evaluations"], max_count=1)
    evs = (await _evals(client)).json()["evaluations"]
    assert [e["weighted_score"] for e in evs].count("abc") == 1
    await _add(client, kind="bad_fields", mode="missing", endpoints=["evaluations"], max_count=1)
    evs = (await _evals(client)).json()["evaluations"]
    assert sum("id" not in e for e in evs) == 1
    await _add(client, kind="bad_fields", field="rubric.compliance", endpoints=["evaluations"], max_count=1)
    evs = (await _evals(client)).json()["evaluations"]
    assert sum(e["rubric"]["compliance"] == "yes" for e in evs) == 1
    await _add(client, kind="bad_fields", endpoints=["gradebook", "agents", "critic"], max_count=3)
    assert any(isinstance(e["score"], str) for e in (await client.get("/v1/gradebook")).json()["entries"])
    assert any(isinstance(a["model"], int) for a in (await client.get("/v1/agents")).json()["agents"])
    res = (await client.post("/v1/critic/verify", json={"items": [{"question": "q", "answer": "1"}]})).json()
    assert res["results"][0]["confidence"] == "abc"
    # Faults change what is served, never what is stored: the next response is clean.
    evs = (await _evals(client)).json()["evaluations"]
    assert all(isinstance(e["weighted_score"], float) and "id" in e for e in evs)


async def test_duplicates_within_and_across_pages(client: httpx.AsyncClient) -> None:
    await _add(client, kind="duplicates", endpoints=["evaluations"], max_count=1)
    first = (await _evals(client, limit=10)).json()
    ids = [e["id"] for e in first["evaluations"]]
    assert len(ids) == 11 and len(set(ids)) == 10  # one record served twice in the page
    assert first["next_cursor"] == "e:9"  # and the next page starts one early
    second = (await _evals(client, since=first["next_cursor"], limit=10)).json()
    assert second["evaluations"][0]["id"] == "ev-agent-000-9" == ids[-1]


async def test_out_of_order_timestamps(client: httpx.AsyncClient) -> None:
    await _add(client, kind="out_of_order", endpoints=["evaluations"], max_count=1)
    evs = (await _evals(client, limit=20)).json()["evaluations"]
    ts = [e["ts"] for e in evs]
    assert ts != sorted(ts) and sorted(ts) == sorted(
        e["ts"] for e in (await _evals(client, limit=20)).json()["evaluations"]
    )


async def test_cursor_goes_backwards(client: httpx.AsyncClient) -> None:
    await _add(client, kind="cursor_backwards", endpoints=["evaluations"], max_count=1)
    body = (await _evals(client, since="e:20", limit=5)).json()
    assert [e["id"] for e in body["evaluations"]] == [f"ev-agent-000-{i}" for i in range(20, 25)]
    assert int(body["next_cursor"].removeprefix("e:")) < 20
    await _add(client, kind="cursor_backwards", endpoints=["gradebook"], max_count=1)
    body = (await client.get("/v1/gradebook", params={"since": "g:50", "limit": 10})).json()
    assert int(body["next_cursor"].removeprefix("g:")) < 50


async def test_faults_can_target_agents(client: httpx.AsyncClient) -> None:
    await _add(client, kind="http_error", status=502, agents=["agent-001"])
    assert (await _evals(client, "agent-001")).status_code == 502
    assert (await _evals(client, "agent-002")).status_code == 200
    assert (await client.get("/v1/agents")).status_code == 200  # no agent in the request: not targeted
    assert (await client.get("/v1/gradebook", params={"agent_id": "agent-001"})).status_code == 502
    r = await client.post("/v1/agents/agent-001/profile", json={"profile": "p", "model_version": "v2"})
    assert r.status_code == 502


async def _status_sequence(seed: int) -> list[int]:
    async with SimServer("steady", port=0, seed=seed) as sim, httpx.AsyncClient(base_url=sim.url) as c:
        await _add(c, kind="http_error", rate=0.5)
        return [(await c.get("/v1/agents")).status_code for _ in range(40)]


async def test_fault_choice_is_deterministic_by_seed() -> None:
    a, b, c = await _status_sequence(1), await _status_sequence(1), await _status_sequence(2)
    assert a == b
    assert a != c
    assert 8 <= a.count(503) <= 32


async def test_runtime_fault_control_and_counters(sim: SimServer, client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/_sim/faults",
        json={
            "faults": [{"kind": "latency", "seconds": 0.01}, {"kind": "http_error", "endpoints": ["critic"]}]
        },
    )
    assert [f["kind"] for f in r.json()["faults"]] == ["latency", "http_error"]
    await client.get("/v1/agents")
    await client.post("/v1/critic/verify", json={"items": []})
    # Admin endpoints are never faulted.
    state = (await client.get("/_sim/state")).json()
    assert state["faults"]["injected"] == {"latency": 2, "http_error": 1}
    assert state["faults"]["injected_total"] == 3
    assert [f["injected"] for f in state["faults"]["active"]] == [2, 1]
    r = await client.delete("/_sim/faults", params={"kind": "latency"})
    assert r.json()["removed"] == 1 and [f["kind"] for f in r.json()["faults"]] == ["http_error"]
    r = await client.delete("/_sim/faults")
    assert r.json()["removed"] == 1 and r.json()["faults"] == []
    assert r.json()["injected"] == {"latency": 2, "http_error": 1}  # counters survive removal
    assert (await client.post("/v1/critic/verify", json={"items": []})).status_code == 200
    assert (await client.delete("/_sim/faults", params={"kind": "meteor"})).status_code == 400


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"kind": "explode"}, "kind"),
        ({"kind": "latency", "sconds": 1}, "sconds: unknown key"),
        ({"kind": "duplicates", "endpoints": ["agents"]}, "cannot act on endpoint(s) agents"),
        ({"kind": "latency", "rate": 2}, "rate"),
        ({"kind": "latency", "agents": ["ghost"]}, "unknown agent(s) ghost"),
        ({"faults": "x"}, "expected a fault object"),
    ],
)
async def test_runtime_fault_validation(client: httpx.AsyncClient, fault: dict, message: str) -> None:
    r = await client.post("/_sim/faults", json=fault)
    assert r.status_code == 400
    assert message in r.json()["error"]
    assert (await client.get("/_sim/faults")).json()["faults"] == []


async def test_scenario_faults_are_active_from_the_start() -> None:
    async with (
        SimServer("unreliable-api", port=0) as sim,
        httpx.AsyncClient(base_url=sim.url, timeout=5) as c,
    ):
        sim.tick(20)
        outcomes = []
        for _ in range(150):
            try:
                r = await c.get("/v1/agents/agent-000/evaluations")
                try:
                    r.json()
                    outcomes.append(r.status_code)
                except json.JSONDecodeError:
                    outcomes.append("bad-json")
            except httpx.TransportError:
                outcomes.append("reset")
        assert 503 in outcomes and 200 in outcomes
        injected = (await c.get("/_sim/state")).json()["faults"]["injected"]
        assert {"http_error", "latency", "duplicates", "out_of_order"} <= set(injected)
