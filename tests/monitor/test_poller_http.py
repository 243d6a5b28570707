"""The poller's HTTP side against the simulator: pages until caught up, the token, timeouts, bad JSON, retries."""

from __future__ import annotations

import pytest

from pr1d.config import ScoringConfig
from pr1d.monitor.poller import Poller, PollError
from pr1d.sim.faults import FaultSpec
from pr1d.sim.server import SimServer


def _cfg(sim: SimServer, **kw) -> ScoringConfig:
    return ScoringConfig(base_url=sim.url, backoff_base_s=0.01, backoff_max_s=0.05, **kw)


# (new evaluations, page_limit, evaluation requests expected, why)
PAGES = [
    (0, 10, 1, "nothing new: one empty page"),
    (5, 10, 2, "a short page, then an empty one confirms the end"),
    (25, 10, 4, "two full pages, a short one, an empty one"),
    (30, 10, 4, "three full pages, then an empty one"),
]


@pytest.mark.parametrize("new, limit, requests, why", PAGES, ids=[p[3] for p in PAGES])
async def test_polls_until_an_empty_page(new, limit, requests, why):
    async with SimServer("steady", port=0, agents=1) as sim:
        sim.tick(new)
        poller = Poller(_cfg(sim, page_limit=limit), None)
        try:
            (p,) = await poller.poll_agents({"agent-000": {"cursor": None}})
            assert p.error is None and len(p.samples) == new and p.pages == requests, why
            assert sim.platform.requests["evaluations"] == requests, why
            assert p.cursor == f"e:{new}"
            sim.tick(3)  # the cursor resumes where the last page ended
            (again,) = await poller.poll_agents({"agent-000": {"cursor": p.cursor}})
            assert [s["eval_id"] for s in again.samples] == [e["id"] for e in sim.platform.evaluations("agent-000")[new:]]
        finally:
            await poller.close()


async def test_bearer_token_and_a_refused_one():
    async with SimServer("steady", port=0, agents=2, token="s3cret") as sim:
        good, bad = Poller(_cfg(sim), "s3cret"), Poller(_cfg(sim), "wrong")
        try:
            assert [a["id"] for a in await good.fetch_agents()] == ["agent-000", "agent-001"]
            with pytest.raises(PollError, match="401: the scoring API refused our token"):
                await bad.fetch_agents()
            assert bad.client.health["agents"].consecutive_failures == 1
        finally:
            await good.close()
            await bad.close()


# (fault, config, expected error, expected retries)
FAULTS = [
    (FaultSpec(kind="timeout", seconds=2.0), {"timeout_s": 0.2, "max_attempts": 2}, "timed out after 0.2s", 1),
    (FaultSpec(kind="http_error", status=503), {"max_attempts": 3}, "HTTP 503 (after 3 attempts)", 2),
    (FaultSpec(kind="http_error", status=404), {"max_attempts": 3}, "HTTP 404", 0),
    (FaultSpec(kind="reset"), {"max_attempts": 2}, "connection error", 1),
    (FaultSpec(kind="malformed_json"), {"max_attempts": 3}, "malformed JSON in response", 0),
]


@pytest.mark.parametrize("fault, cfg, error, retries", FAULTS, ids=[f[2] for f in FAULTS])
async def test_failures_become_a_poll_error_in_health(fault, cfg, error, retries):
    async with SimServer("steady", port=0, agents=1) as sim:
        sim.tick(5)
        sim.platform.faults.add(fault.model_copy(update={"endpoints": ["evaluations"]}))
        poller = Poller(_cfg(sim, **cfg), None)
        try:
            (p,) = await poller.poll_agents({"agent-000": {"cursor": None}})
            assert p.error is not None and error in p.error and p.samples == []
            h = poller.client.health["evaluations"]
            assert h.retries == retries and h.consecutive_failures == 1 and error.split(" (after")[0] in h.last_error
        finally:
            await poller.close()


async def test_a_base_url_path_prefix_is_kept():
    async with SimServer("steady", port=0, agents=1) as sim:
        poller = Poller(ScoringConfig(base_url=sim.url + "/prefix/", max_attempts=1), None)
        try:
            with pytest.raises(PollError, match="HTTP 404"):  # /prefix/v1/agents, not /v1/agents
                await poller.fetch_agents()
        finally:
            await poller.close()
