"""The critic client against a real `pr1d sim` on loopback: verdicts, cache (LRU and real Redis), outages.

The sim counts the critic requests it serves (`/_sim/state` -> requests.critic), so "served from the
cache" is proved by that count not moving, and by the answers still coming after the sim is stopped.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from types import SimpleNamespace

import pytest

from pr1d.params import RewardParams
from pr1d.sim.platform import Platform
from pr1d.sim.scenarios import load_scenario
from pr1d.train.critic import CACHE_PREFIX, CriticClient, critic_key, make_critic_cache
from pr1d.train.rewards import make_reward_funcs
from tests.kb.conftest import RedisServer
from tests.monitor.test_monitor_e2e import Sim

# The questions the sim's critic knows: its task pool, rebuilt in-process from the same scenario.
_POOL = Platform(load_scenario("steady"))
TASKS = [_POOL.task("easy", i) for i in range(6)] + [_POOL.task("medium", 0)]


def wrong(answer: str) -> str:
    return str(int(answer) + 1)


@pytest.fixture
def sim(tmp_path):
    s = Sim(tmp_path, "steady")
    yield s
    if s.proc.poll() is None:
        s.close()


@pytest.fixture
def redis_server(tmp_path):
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def critic_requests(sim: Sim) -> int:
    with urllib.request.urlopen(sim.url + "/_sim/state", timeout=10) as r:
        return json.loads(r.read())["requests"].get("critic", 0)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connection refused


def test_agrees_with_right_answers_only(sim):
    t0, t1 = TASKS[0], TASKS[1]
    with CriticClient(sim.url) as c:
        got = c.verify([(t0["question"], t0["answer"]), (t0["question"], wrong(t0["answer"])),
                        (t1["question"], f"${t1['answer']}.")])
    assert [r.agree for r in got] == [True, False, True]
    assert all(r.confidence >= 0.95 and not r.cached for r in got)
    assert c.stats.requests == 1 and c.stats.misses == 3 and c.stats.hits == 0


def test_repeat_is_served_from_the_lru_without_calling_the_sim(sim):
    items = [(t["question"], t["answer"]) for t in TASKS[:3]]
    with CriticClient(sim.url) as c:
        first = c.verify(items)
        served = critic_requests(sim)
        assert served == 1
        # Same content, other spelling of the numbers: the normalised answer is the key.
        again = c.verify([(q, f" {a}.0 ") for q, a in items])
        assert critic_requests(sim) == served
        sim.close()
        after_stop = c.verify(items)
    assert [r.agree for r in again] == [r.agree for r in first] == [r.agree for r in after_stop]
    assert all(r.cached for r in again + after_stop)
    assert (c.stats.hits, c.stats.misses, c.stats.requests) == (6, 3, 1)


def test_one_request_per_call_deduplicated_and_split_at_the_batch_size(sim):
    items = [(t["question"], t["answer"]) for t in TASKS[:5]]
    with CriticClient(sim.url, batch_size=2) as c:
        got = c.verify(items + items[:2])  # a GRPO group often repeats an answer
    assert all(r.agree for r in got)
    assert critic_requests(sim) == 3  # 5 distinct items in batches of 2
    assert c.stats.requested == 5


def test_redis_cache_outlives_the_client_and_the_sim(sim, redis_server):
    import redis

    items = [(t["question"], t["answer"]) for t in TASKS[:3]] + [(TASKS[3]["question"], wrong(TASKS[3]["answer"]))]
    with CriticClient(sim.url, cache=make_critic_cache(redis_server.url)) as c:
        first = c.verify(items)
        assert c.cache.backend == "redis"
    r = redis.Redis.from_url(redis_server.url)
    keys = sorted(k.decode() for k in r.keys(CACHE_PREFIX + "*"))
    assert keys == sorted(CACHE_PREFIX + critic_key(q, a) for q, a in items)
    sim.close()
    # A new client (a new worker, a resumed run): a fresh process-local state, the same Redis.
    with CriticClient(sim.url, cache=make_critic_cache(redis_server.url)) as c2:
        again = c2.verify(items)
    assert [x.agree for x in again] == [x.agree for x in first] == [True, True, True, False]
    assert all(x.cached for x in again) and c2.stats.requests == 0


def test_redis_dying_mid_run_falls_back_to_the_lru(sim, redis_server, caplog):
    with CriticClient(sim.url, cache=make_critic_cache(redis_server.url)) as c:
        c.verify([(TASKS[0]["question"], TASKS[0]["answer"])])
        redis_server.kill()
        with caplog.at_level(logging.WARNING):
            got = c.verify([(TASKS[1]["question"], TASKS[1]["answer"])])
        assert got[0].agree and c.cache.stats.degraded
        assert c.verify([(TASKS[1]["question"], TASKS[1]["answer"])])[0].cached  # now in the LRU
    assert "continuing with the in-process LRU" in caplog.text


def test_unreachable_critic_gives_none_and_cools_down(caplog):
    now = [100.0]
    items = [(TASKS[0]["question"], TASKS[0]["answer"]), (TASKS[1]["question"], "12")]
    with caplog.at_level(logging.WARNING), CriticClient(closed_port_url(), cooldown_s=30, clock=lambda: now[0]) as c:
        assert c.verify(items) == [None, None]
        assert "ConnectError" in c.last_error
        assert c.stats.failures == 1 and c.stats.unavailable == 2
        # Within the cool-down no connection is even tried.
        assert c.verify(items) == [None, None]
        assert c.stats.requests == 1 and c.stats.skipped_calls == 1
        now[0] += 31
        assert c.verify(items) == [None, None]
        assert c.stats.requests == 2
    assert caplog.text.count("unavailable") == 1  # one warning per outage, not per step


@pytest.mark.parametrize(("fault", "reason"), [
    ({"kind": "http_error", "status": 503}, "HTTP 503"),
    ({"kind": "malformed_json"}, "malformed JSON"),
    # A reset reads as either, depending on whether the request was still being written.
    ({"kind": "reset"}, ("Server disconnected", "Connection reset")),
    ({"kind": "timeout", "seconds": 5}, "ReadTimeout"),
])
def test_sim_faults_give_none_then_recovery(sim, fault, reason):
    items = [(TASKS[0]["question"], TASKS[0]["answer"]), (TASKS[1]["question"], TASKS[1]["answer"])]
    sim.post("/_sim/faults", {**fault, "endpoints": ["critic"], "max_count": 1})
    with CriticClient(sim.url, timeout=0.5, cooldown_s=0) as c:
        assert c.verify(items) == [None, None]
        assert any(r in c.last_error for r in ((reason,) if isinstance(reason, str) else reason)), c.last_error
        assert c.stats.unavailable == 2
        # The fault fired once; the next call is answered, and nothing of the failure was cached.
        assert [r.agree for r in c.verify(items)] == [True, True]
        assert c.stats.hits == 0


def test_one_malformed_record_leaves_only_that_item_none(sim):
    sim.post("/_sim/faults", {"kind": "bad_fields", "endpoints": ["critic"], "mode": "missing", "max_count": 1})
    items = [(t["question"], t["answer"]) for t in TASKS[:4]]
    with CriticClient(sim.url) as c:
        got = c.verify(items)
        assert sum(r is None for r in got) == 1
        assert all(r.agree for r in got if r is not None)
        assert "agree" in c.last_error
        assert all(r is not None for r in c.verify(items))  # asked again, not cached as broken


# --- the reward term over the client -------------------------------------------------------------

def _batch(n_correct: int):
    """Completions for TASKS[0..3]: the first n_correct answer right, then one wrong, then one without answer."""
    completions, questions = [], []
    for i, t in enumerate(TASKS[:4]):
        if i < n_correct:
            completions.append(f"{t['steps'][0]}\nFinal Answer: {t['answer']}")
        elif i == n_correct:
            completions.append(f"Final Answer: {wrong(t['answer'])}")
        else:
            completions.append("I am not sure.")
        questions.append(t["question"])
    return completions, questions


def _critic_func(client):
    funcs = make_reward_funcs(RewardParams(critic_weight=0.5), None, critic=client)
    fn = next(f for f in funcs if f.__name__ == "reward_critic")
    return funcs, fn


def test_critic_reward_scores_agreement(sim):
    completions, questions = _batch(2)
    with CriticClient(sim.url) as client:
        funcs, fn = _critic_func(client)
        got = fn(prompts=questions, completions=completions, question=questions, answer=["x"] * 4,
                 trainer_state=SimpleNamespace(global_step=0))
    # right, right, wrong (critic disagrees), no answer (0 without asking)
    assert got == [0.5, 0.5, 0.0, 0.0]
    assert client.stats.requested == 3
    assert funcs.metrics.critic_unavailable_total == 0


@pytest.mark.parametrize("down", ["closed_port", "sim_fault"])
def test_critic_reward_dropped_not_zero_when_the_critic_is_down(sim, down, caplog):
    completions, questions = _batch(3)
    logged: list[tuple[str, float]] = []
    url = closed_port_url() if down == "closed_port" else sim.url
    if down == "sim_fault":
        sim.post("/_sim/faults", {"kind": "http_error", "status": 502, "endpoints": ["critic"]})
    with CriticClient(url, timeout=1.0, cooldown_s=0) as client:
        funcs, fn = _critic_func(client)
        with caplog.at_level(logging.WARNING, logger="pr1d.train.rewards"):
            for _ in range(2):
                got = fn(prompts=questions, completions=completions, question=questions, answer=["x"] * 4,
                         log_metric=lambda name, value: logged.append((name, value)))
                assert got == [None] * 4  # TRL turns None into NaN and leaves the term out; never 0
    assert funcs.metrics.critic_unavailable_total == 2
    assert logged == [("critic_unavailable_total", 1.0), ("critic_unavailable_total", 2.0)]
    assert caplog.text.count("critic reward dropped for this step") == 2
    assert ("HTTP 502" if down == "sim_fault" else "ConnectError") in funcs.metrics.critic_last_error


def test_critic_client_refuses_bad_settings():
    with pytest.raises(ValueError, match="http"):
        CriticClient("127.0.0.1:8765")
    with pytest.raises(ValueError, match="batch_size"):
        CriticClient("http://127.0.0.1:1", batch_size=1001)
