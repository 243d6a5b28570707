"""Webhook notifications: body and retry decisions as tables, the Notifier against a local receiver, a real daemon."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pr1d.config import NOTIFY_EVENTS, ConfigError, NotifyConfig, WebhookConfig, load_config
from pr1d.notify import (
    TITLES,
    Event,
    Notifier,
    auth_headers,
    backoff_delay,
    command_for,
    drift_event,
    json_body,
    push_failing_event,
    retry_after_s,
    retryable,
    rollback_event,
    run_events,
    slack_body,
    sparse_repeat,
    summary,
    wants,
    webhook_name,
)

from .conftest import add_agents

INCONCLUSIVE = {"outcome": "inconclusive", "flagged": True,
                "reasons": ["ci_straddles_bar: candidate 0.8600 vs bar 0.8400"]}


# -- pure functions ----------------------------------------------------------------------------------
def test_every_event_has_a_title():
    assert set(TITLES) == set(NOTIFY_EVENTS)


@pytest.mark.parametrize(("run", "reason", "expected"), [
    ({"id": 7, "agent_id": "a1", "state": "awaiting_approval", "kind": "full", "gate": {"outcome": "pass"}},
     "gate passed: ...", [("awaiting_approval", (), "pr1ctl approve 7 --reason TEXT")]),
    ({"id": 7, "agent_id": "a1", "state": "awaiting_approval", "kind": "full", "gate": INCONCLUSIVE},
     "gate inconclusive", [("gate_inconclusive", ("awaiting_approval",),
                            "pr1ctl approve 7 --accept-inconclusive --reason TEXT")]),
    # flagged alone (outcome pass) is still a person's decision
    ({"id": 7, "agent_id": "a1", "state": "awaiting_approval", "gate": {"outcome": "pass", "flagged": True}},
     "x", [("gate_inconclusive", ("awaiting_approval",), "pr1ctl approve 7 --accept-inconclusive --reason TEXT")]),
    ({"id": 7, "agent_id": "a1", "state": "awaiting_approval", "gate": None}, "x",
     [("awaiting_approval", (), "pr1ctl approve 7 --reason TEXT")]),
    ({"id": 8, "agent_id": "a2", "state": "failed", "kind": "sft"}, "stage sft: exited with code 3",
     [("run_failed", (), None)]),
    ({"id": 8, "agent_id": "a2", "state": "running"}, "dispatched", []),
    ({"id": 8, "agent_id": "a2", "state": "succeeded"}, "all stages done", []),
    ({"id": 8, "agent_id": "a2", "state": "rejected"}, "gate failed", []),
    ({"id": 8, "agent_id": "a2", "state": "cancelled"}, "by bob", []),
    ({"id": 8, "agent_id": "a2", "state": "interrupted"}, "daemon stopping", []),
])
def test_run_events(run, reason, expected):
    evs = run_events(run, reason)
    assert [(e.event, e.covers, e.details.get("approve")) for e in evs] == expected
    for e in evs:
        assert (e.run, e.agent, e.state, e.reason) == (run["id"], run["agent_id"], run["state"], reason)


def test_run_events_carry_gate_reasons_and_logs_command():
    (inc,) = run_events({"id": 7, "agent_id": "a1", "state": "awaiting_approval", "gate": INCONCLUSIVE}, "r")
    assert inc.details["gate_reasons"] == INCONCLUSIVE["reasons"]
    (failed,) = run_events({"id": 8, "agent_id": "a2", "state": "failed", "kind": "sft"}, "r")
    assert failed.details == {"kind": "sft", "logs": "pr1ctl logs 8"}


@pytest.mark.parametrize(("subscribed", "event", "covers", "expected"), [
    (["run_failed"], "run_failed", (), True),
    (["rollback"], "run_failed", (), False),
    (["awaiting_approval"], "gate_inconclusive", ("awaiting_approval",), True),
    (["gate_inconclusive"], "gate_inconclusive", ("awaiting_approval",), True),
    (["gate_inconclusive", "awaiting_approval"], "gate_inconclusive", ("awaiting_approval",), True),
    (["drift", "push_failing"], "gate_inconclusive", ("awaiting_approval",), False),
])
def test_wants(subscribed, event, covers, expected):
    assert wants(subscribed, Event(event, "a1", 1, "s", "r", covers=covers)) is expected


@pytest.mark.parametrize(("run", "agent", "expected"), [
    (42, "a1", "pr1ctl show 42"),
    (42, None, "pr1ctl show 42"),
    (None, "a1", "pr1ctl deployments a1"),
    (None, None, "pr1ctl status"),
])
def test_command_for(run, agent, expected):
    assert command_for(Event("drift", agent, run, None, None)) == expected


@pytest.mark.parametrize(("event", "run", "agent", "reason", "expected"), [
    ("run_failed", 42, "a1", "stage sft: exited with code 3", "[pr1] run 42 (agent a1) failed: stage sft: exited with code 3"),
    ("awaiting_approval", 7, "a1", None, "[pr1] run 7 (agent a1) awaits approval"),
    ("gate_inconclusive", 7, "a1", "gate inconclusive (flagged)",
     "[pr1] run 7 (agent a1) awaits approval, gate inconclusive: gate inconclusive (flagged)"),
    ("push_failing", None, "a1", "HTTP 500\nfrom the agent manager",
     "[pr1] agent a1 profile push failing: HTTP 500 from the agent manager"),
    ("rollback", 3, None, "bad", "[pr1] run 3 rolled back: bad"),
    ("drift", None, None, "", "[pr1] pr1d agent manager drift"),
])
def test_summary_is_one_readable_line(event, run, agent, reason, expected):
    assert summary(Event(event, agent, run, None, reason)) == expected


def test_summary_cuts_long_reasons():
    line = summary(Event("run_failed", "a1", 1, "failed", "x" * 5000))
    assert "\n" not in line and len(line) < 400 and line.endswith("…")


def _ev() -> Event:
    return Event("run_failed", "a1", 42, "failed", "stage sft: exited with code 3",
                 details={"kind": "sft", "logs": "pr1ctl logs 42"}, ts=1700000000.0)


def test_json_body():
    assert json_body(_ev(), host="h1") == {
        "source": "pr1d", "host": "h1", "event": "run_failed",
        "summary": "[pr1] run 42 (agent a1) failed: stage sft: exited with code 3",
        "run": 42, "agent": "a1", "state": "failed", "reason": "stage sft: exited with code 3",
        "command": "pr1ctl show 42", "ts": 1700000000.0, "details": {"kind": "sft", "logs": "pr1ctl logs 42"},
    }


@pytest.mark.parametrize(("ev", "lines"), [
    (_ev(), ["[pr1] run 42 (agent a1) failed: stage sft: exited with code 3", "• state: failed", "• kind: sft",
             "• logs: pr1ctl logs 42", "• next: `pr1ctl show 42` (on h1)"]),
    (drift_event({"agent": "a1", "deployment": 5, "deployed": {"model": "v-2", "profile": "p"},
                  "reported": {"model": "base", "profile": "p"}}, "runs base", "repush", None),
     ["[pr1] agent a1 agent manager drift: runs base", "• state: drifted", "• deployment: 5", "• action: repush",
      "• deployed: model v-2, profile p", "• reported: model base, profile p",
      "• next: `pr1ctl deployments a1` (on h1)"]),
    # empty details are left out; at most five detail lines
    (Event("rollback", "a1", None, None, "r", details={"a": None, "b": "", "c": 1, "d": 2, "e": 3, "f": 4}),
     ["[pr1] agent a1 rolled back: r", "• c: 1", "• d: 2", "• e: 3", "• next: `pr1ctl deployments a1` (on h1)"]),
])
def test_slack_body(ev, lines):
    assert slack_body(ev, host="h1") == {"text": "\n".join(lines)}


def test_registry_event_builders():
    rb = rollback_event("a1", {"id": 9, "run_id": 4, "version_id": "v-1"}, "bob", "grades dropping")
    assert (rb.event, rb.run, rb.agent, rb.state, rb.reason) == ("rollback", 4, "a1", "rolled_back", "grades dropping")
    assert rb.details == {"version": "v-1", "deployment": 9, "actor": "bob"}
    pf = push_failing_event({"agent": "a1", "deployment": 9, "version": "v-1", "attempts": 4, "error": "HTTP 502"}, 4)
    assert (pf.event, pf.run, pf.state, pf.reason, pf.details["attempts"]) == ("push_failing", 4, "push_pending",
                                                                             "HTTP 502", 4)


@pytest.mark.parametrize(("tries", "u", "expected"), [
    (1, 0.0, 0.5), (1, 1.0, 1.0), (2, 0.0, 1.0), (3, 0.5, 3.0),
    (10, 0.0, 30.0), (10, 1.0, 60.0),  # capped at max_s, jitter within its upper half
    (0, 0.0, 0.5),
])
def test_backoff_delay(tries, u, expected):
    assert backoff_delay(tries, 1.0, 60.0, u) == pytest.approx(expected)


@pytest.mark.parametrize(("status", "expected"), [
    (None, True), (500, True), (502, True), (503, True), (429, True),
    (400, False), (401, False), (403, False), (404, False), (410, False),
])
def test_retryable(status, expected):
    assert retryable(status) is expected


@pytest.mark.parametrize(("value", "expected"), [
    ("3", 3.0), ("0", 0.0), ("120", 60.0), (None, None), ("soon", None), ("-1", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", None),
])
def test_retry_after_s(value, expected):
    assert retry_after_s(value, 60.0) == expected


@pytest.mark.parametrize(("n", "expected"), [(0, False), (1, True), (2, True), (3, False), (4, True), (6, False),
                                             (8, True), (1024, True), (1025, False)])
def test_sparse_repeat(n, expected):
    assert sparse_repeat(n) is expected


@pytest.mark.parametrize(("header", "secret", "expected"), [
    ("Authorization", "s3", {"Authorization": "Bearer s3"}),
    ("authorization", "s3", {"authorization": "Bearer s3"}),
    ("X-Api-Key", "s3", {"X-Api-Key": "s3"}),
    ("Authorization", None, {}),
    ("Authorization", "", {}),
])
def test_auth_headers(header, secret, expected):
    assert auth_headers(header, secret) == expected


@pytest.mark.parametrize(("url", "name", "expected"), [
    ("https://hooks.slack.com/services/T/B/SECRET", "", "hooks.slack.com"),
    ("https://hooks.slack.com/services/T/B/SECRET", "oncall", "oncall"),
])
def test_webhook_name_never_shows_the_url_path(url, name, expected):
    assert webhook_name(WebhookConfig(url=url, name=name)) == expected


# -- config -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("toml", "needle"), [
    ('[[notify.webhooks]]\nkind = "json"\n', "key `notify.webhooks.0.url`: required key is missing"),
    ('[[notify.webhooks]]\nurl = "hooks.example.com"\n', "key `notify.webhooks.0.url`: must start with http"),
    ('[[notify.webhooks]]\nurl = "http://h"\nkind = "teams"\n', "key `notify.webhooks.0.kind`: expected one of"),
    ('[[notify.webhooks]]\nurl = "http://h"\nevents = ["run_faild"]\n',
     "key `notify.webhooks.0.events.0`: expected one of 'awaiting_approval'"),
    ('[[notify.webhooks]]\nurl = "http://h"\nevents = []\n', "name at least one event"),
    ('[[notify.webhooks]]\nurl = "http://h"\nevents = ["drift", "drift"]\n', "an event is listed twice"),
    ('[[notify.webhooks]]\nurl = "http://h"\nheader = "X Key:"\n', "expected an HTTP header name"),
    ('[[notify.webhooks]]\nurl = "http://h"\nbackoff_base_s = 10.0\nbackoff_max_s = 1.0\n',
     "backoff_max_s (1.0) is below backoff_base_s (10.0)"),
    ('[[notify.webhooks]]\nurl = "http://h"\ntimeout = 3\n', "key `notify.webhooks.0.timeout`: unknown key"),
    ('[notify]\nqueue_size = 0\n', "key `notify.queue_size`: expected a value >= 1"),
])
def test_bad_notify_config_names_the_key(tmp_path, toml, needle):
    f = tmp_path / "notify.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as ei:
        load_config([f], environ={}, use_system=False)
    assert str(ei.value).startswith(str(f)) and needle in str(ei.value), str(ei.value)


def test_notify_config_from_file_and_environment(tmp_path):
    f = tmp_path / "notify.toml"
    f.write_text('[[notify.webhooks]]\nurl = "https://hooks.slack.com/x"\nkind = "slack"\nevents = ["rollback"]\n'
                 '[[notify.webhooks]]\nurl = "http://127.0.0.1:9/hook"\n')
    cfg = load_config([f], environ={}, use_system=False)
    assert [(w.kind, tuple(w.events)) for w in cfg.notify.webhooks] == [
        ("slack", ("rollback",)),
        ("json", ("awaiting_approval", "run_failed", "gate_inconclusive", "rollback", "push_failing", "drift"))]
    cfg = load_config([], environ={"PR1_NOTIFY__WEBHOOKS": '[{url = "http://127.0.0.1:9/", kind = "slack"}]'},
                      use_system=False)
    assert cfg.notify.webhooks[0].kind == "slack"


# -- a local receiver ---------------------------------------------------------------------------------
class Receiver:
    """A webhook receiver on 127.0.0.1: records each POST, answers with the next scripted status (then 200);
    with ``hang`` it holds every request open until the test ends."""

    def __init__(self, statuses: tuple[int, ...] = (), hang: bool = False):
        self.posts: list[tuple[dict, dict]] = []
        self.statuses = list(statuses)
        self.hang, self.release, self.lock = hang, threading.Event(), threading.Lock()
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with recv.lock:
                    recv.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = recv.statuses.pop(0) if recv.statuses else 200
                if recv.hang:
                    recv.release.wait(120)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:  # quiet: pytest shows failures, not access logs
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/SECRET-PART"

    def wait_posts(self, n: int, timeout: float = 20.0) -> list[tuple[dict, dict]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.posts) >= n:
                    return list(self.posts)
            time.sleep(0.02)
        raise AssertionError(f"{len(self.posts)} POSTs, expected {n}: {self.posts}")

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(*statuses: int, hang: bool = False) -> Receiver:
        r = Receiver(statuses, hang)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def _notifier(*hooks: dict, **kw) -> Notifier:
    cfg = NotifyConfig(webhooks=[WebhookConfig(**{"backoff_base_s": 0.01, "backoff_max_s": 0.05, **h})
                                 for h in hooks], **kw)
    return Notifier(cfg).start()


async def _until(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_both_kinds_posted_with_secret_header(receiver, tmp_path):
    r = receiver()
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")

    async def go() -> dict:
        n = _notifier({"url": r.url, "kind": "json", "token_file": str(secret)},
                      {"url": r.url, "kind": "slack", "header": "X-Api-Key", "token_file": str(secret)})
        n.notify(_ev())
        await _until(lambda: sum(c.sent for c in n.channels) == 2)
        await n.close()
        return n.stats()

    stats = asyncio.run(go())
    posts = sorted(r.wait_posts(2), key=lambda p: "text" in p[1])
    (jh, jb), (sh, sb) = posts
    assert jb["event"] == "run_failed" and jb["run"] == 42 and jb["command"] == "pr1ctl show 42"
    assert jh["authorization"] == "Bearer s3cret" and jh["content-type"] == "application/json"
    assert sb["text"].startswith("[pr1] run 42 (agent a1) failed") and sh["x-api-key"] == "s3cret"
    assert "authorization" not in sh
    assert [(w["sent"], w["failed"], w["dropped"]) for w in stats["webhooks"]] == [(1, 0, 0), (1, 0, 0)]


def test_retries_after_500s_then_succeeds(receiver):
    r = receiver(500, 503, 200)

    async def go() -> dict:
        n = _notifier({"url": r.url, "max_attempts": 5})
        n.notify(_ev())
        await _until(lambda: n.channels[0].sent == 1)
        await n.close()
        return n.stats()["webhooks"][0]

    st = asyncio.run(go())
    assert len(r.wait_posts(3)) == 3
    assert (st["sent"], st["failed"], st["last_error"]) == (1, 0, None)


def test_gives_up_after_max_attempts_and_never_retries_a_4xx(receiver, caplog):
    r5 = receiver(500, 500, 500, 500)
    r4 = receiver(404)

    async def go() -> dict:
        n = _notifier({"url": r5.url, "name": "flaky", "max_attempts": 3}, {"url": r4.url, "name": "wrong-url"})
        n.notify(_ev())
        await _until(lambda: all(c.failed == 1 for c in n.channels))
        await n.close()
        return {w["name"]: w for w in n.stats()["webhooks"]}

    with caplog.at_level(logging.WARNING, logger="pr1d.notify"):
        st = asyncio.run(go())
    assert len(r5.posts) == 3 and len(r4.posts) == 1
    assert (st["flaky"]["last_error"], st["wrong-url"]["last_error"]) == ("HTTP 500", "HTTP 404")
    warned = {rec.webhook: rec for rec in caplog.records if rec.levelno == logging.WARNING}
    assert set(warned) == {"flaky", "wrong-url"}
    assert (warned["flaky"].event, warned["flaky"].run, warned["flaky"].agent) == ("run_failed", 42, "a1")
    assert "after 3 tries" in warned["flaky"].getMessage()
    assert all("SECRET-PART" not in rec.getMessage() for rec in caplog.records)  # the URL is never logged


def test_events_are_filtered_per_webhook(receiver):
    r = receiver()

    async def go() -> None:
        n = _notifier({"url": r.url, "events": ["rollback"]})
        n.notify(_ev())
        n.notify(rollback_event("a1", {"id": 1, "run_id": None, "version_id": "v-0"}, "bob", "bad"))
        await _until(lambda: n.channels[0].sent == 1)
        await n.close()

    asyncio.run(go())
    assert [b["event"] for _, b in r.posts] == ["rollback"]


def test_missing_token_file_fails_the_delivery_clearly(receiver, tmp_path):
    r = receiver()

    async def go() -> dict:
        n = _notifier({"url": r.url, "token_file": str(tmp_path / "nope")})
        n.notify(_ev())
        await _until(lambda: n.channels[0].failed == 1)
        await n.close()
        return n.stats()["webhooks"][0]

    st = asyncio.run(go())
    assert r.posts == [] and st["last_error"].startswith(f"token_file {tmp_path / 'nope'}:")


def test_hanging_receiver_blocks_neither_caller_nor_other_webhooks(receiver, caplog):
    stuck, fine = receiver(hang=True), receiver()

    async def go() -> tuple[float, float, dict]:
        n = _notifier({"url": stuck.url, "name": "stuck", "timeout_s": 30.0}, {"url": fine.url, "name": "fine"},
                      queue_size=2, drain_timeout_s=0.3)
        t = time.monotonic()
        for i in range(5):  # no await in between: each queue keeps events 3 and 4, drops 0, 1 and 2
            n.notify(Event("run_failed", "a1", i, "failed", f"reason {i}"))
        took_notify = time.monotonic() - t
        await _until(lambda: len(stuck.posts) == 1 and n.channels[1].sent == 2)
        stats = {w["name"]: w for w in n.stats()["webhooks"]}
        t = time.monotonic()
        await n.close()
        return took_notify, time.monotonic() - t, stats | {"after": {w["name"]: w for w in n.stats()["webhooks"]}}

    with caplog.at_level(logging.WARNING, logger="pr1d.notify"):
        took_notify, took_close, st = asyncio.run(go())
    assert took_notify < 0.05
    assert took_close < 3.0  # the drain deadline, not the 30 s request timeout
    assert (st["stuck"]["queued"], st["stuck"]["dropped"]) == (2, 3)  # event 3 in flight, event 4 waiting
    assert [b["run"] for _, b in stuck.posts] == [3]
    assert [b["run"] for _, b in fine.posts] == [3, 4]  # not held up by the stuck webhook
    assert (st["fine"]["sent"], st["fine"]["dropped"]) == (2, 3)
    assert st["after"]["stuck"]["dropped"] == 3 + 2  # shutdown drops (and counts) what could not be sent
    assert any("queue full" in rec.getMessage() and rec.webhook == "stuck" for rec in caplog.records)
    assert any("not sent before shutdown" in rec.getMessage() for rec in caplog.records)


# -- a real daemon ------------------------------------------------------------------------------------
def _config(tmp_path: Path, url: str, **extra: object) -> Path:
    f = tmp_path / "notify.toml"
    keys = "".join(f"{k} = {json.dumps(v)}\n" for k, v in {"url": url, "name": "oncall", "backoff_base_s": 0.05,
                                                            **extra}.items())
    f.write_text(f"[notify]\ndrain_timeout_s = 1.0\n[[notify.webhooks]]\n{keys}")
    return f


def test_daemon_posts_when_a_triggered_run_fails(daemon_factory, state_dir, tmp_path, receiver):
    r = receiver(500)  # the first try fails: the daemon retries it
    add_agents(state_dir, "a1")
    d = daemon_factory(state_dir, config=_config(tmp_path, r.url)).start()
    rid = d.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "fail_at_step=0")["run"]["id"]
    assert d.wait_run(rid, {"failed", "succeeded"})["state"] == "failed"
    (_, first), (_, body) = r.wait_posts(2)
    assert first == body
    assert (body["event"], body["run"], body["agent"], body["state"]) == ("run_failed", rid, "a1", "failed")
    assert "asked to fail at step 0" in body["reason"] and body["command"] == f"pr1ctl show {rid}"
    st = d.ctl_json("status")["notify"]["webhooks"][0]
    assert (st["name"], st["sent"], st["failed"], st["dropped"]) == ("oncall", 1, 0, 0)


def test_hanging_receiver_does_not_block_the_daemon(daemon_factory, state_dir, tmp_path, receiver):
    r = receiver(hang=True)
    add_agents(state_dir, "a1")
    d = daemon_factory(state_dir, config=_config(tmp_path, r.url, timeout_s=30.0)).start()
    rid = d.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "fail_at_step=0")["run"]["id"]
    d.wait_run(rid, {"failed"})
    r.wait_posts(1)  # the receiver holds this request open
    with d.client() as c:
        t = time.monotonic()
        st = c.call("status")
        took = time.monotonic() - t
    assert took < 1.0, f"status took {took:.2f}s while a webhook hangs"
    assert st["notify"]["webhooks"][0]["queued"] == 1
    t = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - t < 10.0  # drain_timeout_s = 1: shutdown does not wait for the 30 s timeout
    assert "1 event(s) not sent before shutdown" in d.stderr() and "webhook=oncall" in d.stderr()


def test_daemon_pages_rollback_and_failing_push(daemon_factory, tmp_path, receiver):
    from pr1d.ledger.store import Ledger
    from pr1d.registry.deploy import promote, record_initial
    from pr1d.registry.versions import register_version

    from .registry.registry_kit import awaiting_run, make_model

    r = receiver()
    sd = tmp_path / "state"
    sd.mkdir()
    add_agents(sd, "a1")
    led = Ledger(sd / "ledger.sqlite")
    try:
        base = register_version(led, sd / "models", "a1", make_model(tmp_path / "base", 0))
        record_initial(led, sd / "models", "a1", base["id"])
        rid = awaiting_run(led, "a1")
        cand = register_version(led, sd / "models", "a1", make_model(tmp_path / "cand", 1), run_id=rid,
                                parent_id=base["id"])
        promote(led, sd / "models", rid, cand["id"], "alice", "lgtm")
    finally:
        led.close()
    # The agent manager: nothing listens there, so every profile push fails.
    d = daemon_factory(sd, config=_config(tmp_path, r.url, events=["rollback", "push_failing"]),
                       extra_env={"PR1_REGISTRY__AGENT_MANAGER_URL": "http://127.0.0.1:9"}).start()
    # At start the daemon retries the promotion's pending push: it fails, and pages.
    assert r.wait_posts(1)[0][1]["event"] == "push_failing"
    d.ctl("rollback", "a1", "--reason", "grades dropping since promotion")
    deadline = time.monotonic() + 20
    while not any(b["event"] == "rollback" for _, b in r.posts):
        assert time.monotonic() < deadline, r.posts
        time.sleep(0.05)
    bodies = [b for _, b in r.posts]
    rb = next(b for b in bodies if b["event"] == "rollback")
    assert (rb["run"], rb["agent"], rb["state"], rb["reason"]) == (rid, "a1", "rolled_back",
                                                                  "grades dropping since promotion")
    assert rb["details"]["version"] == base["id"] and rb["command"] == f"pr1ctl show {rid}"
    pf = [b for b in bodies if b["event"] == "push_failing"]
    assert pf and all(b["agent"] == "a1" and b["state"] == "push_pending" and b["reason"] for b in pf)


def test_sighup_applies_new_webhooks(daemon_factory, state_dir, tmp_path, receiver):
    import signal

    r = receiver()
    add_agents(state_dir, "a1")
    cfg = tmp_path / "reload.toml"
    cfg.write_text("[notify]\nqueue_size = 10\n")  # no webhooks yet
    d = daemon_factory(state_dir, config=cfg).start()
    assert d.ctl_json("status")["notify"] == {"webhooks": []}
    cfg.write_text(_config(tmp_path, r.url, kind="slack").read_text())
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not d.ctl_json("status")["notify"]["webhooks"]:
        assert time.monotonic() < deadline, d.stderr()
        time.sleep(0.05)
    rid = d.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "fail_at_step=0")["run"]["id"]
    d.wait_run(rid, {"failed"})
    (_, body), = r.wait_posts(1)
    assert body["text"].startswith(f"[pr1] run {rid} (agent a1) failed: ")
    assert f"• next: `pr1ctl show {rid}`" in body["text"]


def test_runbook_example_is_valid_config(tmp_path):
    text = (Path(__file__).resolve().parents[1] / "docs" / "runbooks" / "operations.md").read_text()
    section = text.split("## Notifications", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    f = tmp_path / "example.toml"
    f.write_text(example)
    cfg = load_config([f], environ={}, use_system=False)
    assert [w.name for w in cfg.notify.webhooks] == ["oncall-slack", "pager"]
