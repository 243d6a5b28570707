"""The simulator over real HTTP on 127.0.0.1: every scoring-API endpoint, cursors and pagination, auth,
the /_sim admin endpoints and continuous time."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from pr1d.sim.server import SimServer

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer("mixed-fleet", port=0) as s:
        yield s


@pytest.fixture
async def client(sim: SimServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=10) as c:
        yield c


async def _all_evaluations(client: httpx.AsyncClient, agent: str, limit: int) -> tuple[list[dict], str]:
    """Page through an agent's evaluations from the start (bounded loop)."""
    items: list[dict] = []
    cursor = None
    for _ in range(10_000):
        params = {"limit": limit} | ({"since": cursor} if cursor else {})
        r = await client.get(f"/v1/agents/{agent}/evaluations", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert isinstance(body["next_cursor"], str)
        items += body["evaluations"]
        cursor = body["next_cursor"]
        if len(body["evaluations"]) < limit:
            return items, cursor
    raise AssertionError("pagination never ended")


async def test_agents_endpoint(sim: SimServer, client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/agents")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    agents = r.json()["agents"]
    assert len(agents) == 20
    assert agents[0] == {"id": "agent-000", "model": "tiny-gsm-v1", "profile": "default"}
    assert [a["id"] for a in agents] == sim.platform.agent_ids


async def test_evaluations_pagination_has_no_gaps_or_duplicates(
    sim: SimServer, client: httpx.AsyncClient
) -> None:
    sim.tick(237)
    for limit in (1, 7, 100, 1000):
        items, cursor = await _all_evaluations(client, "agent-003", limit)
        assert [e["id"] for e in items] == [f"ev-agent-003-{i}" for i in range(237)]
        assert items == sim.platform.evaluations("agent-003")
        assert cursor == "e:237"
    e = items[0]
    assert set(e) == {"id", "ts", "weighted_score", "status", "rubric", "task_id", "tier"}
    assert TS.match(e["ts"])


async def test_cursor_resumes_after_new_evaluations_and_is_stable_when_idle(
    sim: SimServer, client: httpx.AsyncClient
) -> None:
    r = await client.get("/v1/agents/agent-000/evaluations")
    assert r.json() == {"evaluations": [], "next_cursor": "e:0"}  # never null: a poller stores it as is
    sim.tick(5)
    body = (await client.get("/v1/agents/agent-000/evaluations")).json()
    assert len(body["evaluations"]) == 5 and body["next_cursor"] == "e:5"
    idle = (await client.get("/v1/agents/agent-000/evaluations", params={"since": "e:5"})).json()
    assert idle == {"evaluations": [], "next_cursor": "e:5"}
    sim.tick(3)
    more = (await client.get("/v1/agents/agent-000/evaluations", params={"since": "e:5"})).json()
    assert [e["id"] for e in more["evaluations"]] == ["ev-agent-000-5", "ev-agent-000-6", "ev-agent-000-7"]
    assert more["evaluations"][0]["ts"] > body["evaluations"][-1]["ts"]
    # A cursor from beyond the end (e.g. an earlier, longer run) is kept, not rejected.
    ahead = (await client.get("/v1/agents/agent-000/evaluations", params={"since": "e:999"})).json()
    assert ahead == {"evaluations": [], "next_cursor": "e:999"}


async def test_default_and_maximum_page_sizes(sim: SimServer, client: httpx.AsyncClient) -> None:
    sim.tick(1500)
    r = await client.get("/v1/agents/agent-001/evaluations")
    assert len(r.json()["evaluations"]) == 100
    r = await client.get("/v1/agents/agent-001/evaluations", params={"limit": 5000})
    assert len(r.json()["evaluations"]) == 1000 and r.json()["next_cursor"] == "e:1000"


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("/v1/agents/nobody/evaluations", {}, 404, "unknown agent 'nobody'"),
        ("/v1/agents/agent-000/evaluations", {"since": "g:3"}, 400, "invalid cursor 'g:3'"),
        ("/v1/agents/agent-000/evaluations", {"since": "e:-1"}, 400, "invalid cursor"),
        ("/v1/agents/agent-000/evaluations", {"limit": "lots"}, 400, "invalid limit 'lots'"),
        ("/v1/agents/agent-000/evaluations", {"limit": "0"}, 400, "invalid limit"),
        ("/v1/gradebook", {"since": "e:1"}, 400, "not a gradebook cursor"),
        ("/v1/gradebook", {"min_score": "high"}, 400, "invalid min_score 'high'"),
        ("/v1/gradebook", {"agent_id": "nobody"}, 404, "unknown agent"),
    ],
)
async def test_bad_requests_get_clear_json_errors(
    sim: SimServer, client: httpx.AsyncClient, path: str, params: dict, status: int, message: str
) -> None:
    sim.tick(3)
    r = await client.get(path, params=params)
    assert r.status_code == status
    assert message in r.json()["error"]


async def test_gradebook_filters_and_pages(sim: SimServer, client: httpx.AsyncClient) -> None:
    sim.tick(40)
    # Everything graded, paged: no gaps, no duplicates, cursor resumes.
    entries, cursor = [], None
    for _ in range(1000):
        params = {"limit": 64} | ({"since": cursor} if cursor else {})
        body = (await client.get("/v1/gradebook", params=params)).json()
        entries += body["entries"]
        cursor = body["next_cursor"]
        if len(body["entries"]) < 64:
            break
    graded = sum(
        1 for a in sim.platform.agent_ids for e in sim.platform.evaluations(a) if e["status"] != "error"
    )
    assert len(entries) == graded
    assert len({(e["agent_id"], e["ts"]) for e in entries}) == graded
    e = entries[0]
    assert set(e) == {"task_id", "agent_id", "question", "transcript", "final_answer", "score", "tier", "ts"}

    # min_score=0.9: only well-graded tasks, with worked transcripts ending in their final answer.
    good = (await client.get("/v1/gradebook", params={"min_score": 0.9, "limit": 1000})).json()["entries"]
    assert good and all(x["score"] >= 0.9 for x in good)
    assert all(x["transcript"].endswith(f"Final Answer: {x['final_answer']}") for x in good)
    hard = [x for x in good if x["tier"] == "hard"]
    assert hard and all(len(x["transcript"].splitlines()) >= 4 for x in hard)  # 3+ steps, then the answer

    # agent_id filter, and the cursor moves past everything scanned even when little matched.
    mine = (await client.get("/v1/gradebook", params={"agent_id": "agent-004", "min_score": 0.9})).json()
    assert {x["agent_id"] for x in mine["entries"]} == {"agent-004"}
    assert mine["next_cursor"] == cursor
    again = (
        await client.get("/v1/gradebook", params={"agent_id": "agent-004", "since": mine["next_cursor"]})
    ).json()
    assert again["entries"] == []
    sim.tick(1)
    newer = (
        await client.get("/v1/gradebook", params={"agent_id": "agent-004", "since": mine["next_cursor"]})
    ).json()
    assert len(newer["entries"]) <= 1 and all(x["agent_id"] == "agent-004" for x in newer["entries"])


async def test_gradebook_wrong_answers_are_wrong(sim: SimServer, client: httpx.AsyncClient) -> None:
    sim.tick(100)
    entries = (await client.get("/v1/gradebook", params={"limit": 1000})).json()["entries"]
    low = [x for x in entries if x["score"] < 0.6]
    assert low
    verdicts = (
        await client.post(
            "/v1/critic/verify",
            json={"items": [{"question": x["question"], "answer": x["final_answer"]} for x in low]},
        )
    ).json()["results"]
    assert not all(v["agree"] for v in verdicts)  # most low scores are wrong answers the critic rejects


async def test_critic_verify(sim: SimServer, client: httpx.AsyncClient) -> None:
    sim.tick(20)
    good = (await client.get("/v1/gradebook", params={"min_score": 0.9, "limit": 5})).json()["entries"]
    q, a = good[0]["question"], good[0]["final_answer"]
    items = [
        {"question": q, "answer": a},
        {"question": q, "answer": f"The total is...\nFinal Answer: {a}"},
        {"question": q, "answer": str(int(a) + 1)},
        {"question": "What is the airspeed of an unladen swallow?", "answer": "11"},
        {"question": "What is the airspeed of an unladen swallow?", "answer": "it depends"},
    ]
    r = await client.post("/v1/critic/verify", json={"items": items})
    assert r.status_code == 200
    res = r.json()["results"]
    assert len(res) == 5
    assert [x["agree"] for x in res[:3]] == [True, True, False]
    assert all(x["confidence"] >= 0.95 for x in res[:3])  # the platform issued this question: it knows
    assert 0.5 <= res[3]["confidence"] <= 0.65  # unknown question: a low-confidence heuristic
    assert res[4] == {"agree": False, "confidence": 0.9}
    assert all(0.0 <= x["confidence"] <= 1.0 for x in res)
    again = (await client.post("/v1/critic/verify", json={"items": items})).json()["results"]
    assert again == res  # deterministic
    # Questions the platform could issue are known even before they appear in the gradebook.
    task = sim.platform.task("medium", 17)
    r = await client.post(
        "/v1/critic/verify", json={"items": [{"question": task["question"], "answer": task["answer"]}]}
    )
    assert r.json()["results"][0]["agree"] is True


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"items": "x"}', b'{"items": [{"answer": "1"}]}', b"[]", b""],
)
async def test_critic_rejects_bad_bodies(client: httpx.AsyncClient, body: bytes) -> None:
    r = await client.post("/v1/critic/verify", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]


async def test_profile_push_closes_the_loop() -> None:
    # The sudden-drift agents fall at evaluation 100; a new model brings them back; a rollback drops them.
    async with SimServer("sudden-drift", port=0) as sim, httpx.AsyncClient(base_url=sim.url) as c:
        aid = sim.platform.agent_ids[0]

        async def recent_mean(n: int) -> float:
            total = len(sim.platform.scores(aid))
            body = (
                await c.get(f"/v1/agents/{aid}/evaluations", params={"since": f"e:{total - n}", "limit": n})
            ).json()
            return sum(e["weighted_score"] for e in body["evaluations"]) / n

        r = await c.post("/_sim/tick", json={"n": 200})
        assert r.json() == {"generated": 600, "evaluations": 600}
        assert await recent_mean(100) < 0.82
        r = await c.post(
            f"/v1/agents/{aid}/profile",
            json={
                "profile": "parallel-4",
                "model_version": "tiny-gsm-v2",
                "policy": {"branches": 4, "temperature": 0.7},
            },
        )
        assert r.status_code == 200 and r.json()["accepted"] is True
        agents = (await c.get("/v1/agents")).json()["agents"]
        assert agents[0] == {"id": aid, "model": "tiny-gsm-v2", "profile": "parallel-4"}
        await c.post("/_sim/tick", json={"n": 100})
        assert await recent_mean(100) > 0.89
        await c.post(
            f"/v1/agents/{aid}/profile",
            json={"profile": "default", "model_version": "tiny-gsm-v1", "policy": {}},
        )
        await c.post("/_sim/tick", json={"n": 100})
        assert await recent_mean(100) < 0.82
        hist = (await c.get(f"/_sim/agents/{aid}/profile_history")).json()
        assert hist["agent_id"] == aid and hist["base_model"] == "tiny-gsm-v1"
        assert [(h["model_version"], h["profile"], h["mode"]) for h in hist["history"]] == [
            ("tiny-gsm-v2", "parallel-4", "recovered"),
            ("tiny-gsm-v1", "default", "base"),
        ]
        assert hist["history"][0]["policy"] == {"branches": 4, "temperature": 0.7}
        info = (await c.get(f"/_sim/agents/{aid}")).json()
        assert info["mode"] == "base" and info["evaluations"] == 400 and info["profile_pushes"] == 2
        # Bad pushes.
        r = await c.post(f"/v1/agents/{aid}/profile", json={"profile": "x"})
        assert r.status_code == 400 and "model_version" in r.json()["error"]
        r = await c.post("/v1/agents/nobody/profile", json={"profile": "x", "model_version": "v"})
        assert r.status_code == 404
        assert (await c.get("/_sim/agents/nobody/profile_history")).status_code == 404


async def test_admin_tick_and_state(sim: SimServer, client: httpx.AsyncClient) -> None:
    r = await client.post("/_sim/tick", json={"n": 3, "agents": ["agent-001", "agent-002"]})
    assert r.json() == {"generated": 6, "evaluations": 6}
    r = await client.post("/_sim/tick")  # no body: one evaluation per agent
    assert r.json() == {"generated": 20, "evaluations": 26}
    for bad in ({"n": -1}, {"n": "3"}, {"n": 1, "agents": "agent-001"}, [1]):
        assert (await client.post("/_sim/tick", json=bad)).status_code == 400
    assert (await client.post("/_sim/tick", json={"n": 1, "agents": ["ghost"]})).status_code == 404
    await client.get("/v1/agents")
    state = (await client.get("/_sim/state")).json()
    assert state["scenario"] == "mixed-fleet" and state["agents"] == 20 and state["evaluations"] == 26
    assert state["behaviours"] == {"breaching": 3, "degrading": 3, "drifting": 3, "flaky": 3, "healthy": 8}
    assert state["requests"] == {"agents": 1}
    assert state["faults"] == {"active": [], "injected": {}, "injected_total": 0}
    assert state["time_scale"] == 0.0 and state["auth"] is False and state["seed"] == 6


async def test_bearer_token_is_required_when_set() -> None:
    async with SimServer("steady", port=0, token="s3cret") as sim:
        async with httpx.AsyncClient(base_url=sim.url) as c:
            for path in ("/v1/agents", "/v1/gradebook", "/_sim/state", "/v1/agents/agent-000/evaluations"):
                r = await c.get(path)
                assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
                assert r.json() == {"error": "missing or wrong bearer token"}
                assert (await c.get(path, headers={"Authorization": "Bearer wrong"})).status_code == 401
        async with httpx.AsyncClient(base_url=sim.url, headers={"Authorization": "Bearer s3cret"}) as c:
            assert (await c.get("/v1/agents")).status_code == 200
            assert (await c.post("/_sim/tick", json={"n": 1})).status_code == 200


async def test_continuous_time_scale_generates_evaluations() -> None:
    async with SimServer("steady", port=0, time_scale=20.0) as sim, httpx.AsyncClient(base_url=sim.url) as c:
        for _ in range(100):  # bounded wait, ~5 s at most
            await asyncio.sleep(0.05)
            if len(sim.platform.scores("agent-000")) >= 10:
                break
        body = (await c.get("/v1/agents/agent-000/evaluations")).json()
        assert len(body["evaluations"]) >= 10
        counts = {len(sim.platform.scores(a)) for a in sim.platform.agent_ids}
        assert max(counts) - min(counts) <= 1  # every agent advances together
        assert (await c.get("/_sim/state")).json()["time_scale"] == 20.0


async def test_scenario_options_in_process() -> None:
    async with (
        SimServer("mixed-fleet", port=0, agents=50, seed=11) as sim,
        httpx.AsyncClient(base_url=sim.url) as c,
    ):
        agents = (await c.get("/v1/agents")).json()["agents"]
        assert len(agents) == 50
        assert (await c.get("/_sim/state")).json()["seed"] == 11


async def test_initial_evaluations_are_ready_at_start(tmp_path) -> None:
    (tmp_path / "warm.toml").write_text(
        'initial_evaluations = 30\n[behaviours.ok]\n[[agents]]\nid = "solo"\nbehaviour = "ok"\n'
    )
    async with (
        SimServer("warm", port=0, scenarios_dirs=[tmp_path]) as sim,
        httpx.AsyncClient(base_url=sim.url) as c,
    ):
        body = (await c.get("/v1/agents/solo/evaluations")).json()
        assert len(body["evaluations"]) == 30 and body["next_cursor"] == "e:30"
