"""Webhook notifications (`[notify]`): events that need a person, POSTed in the background with retries.

The daemon calls :meth:`Notifier.notify` (never awaited, never raising) where something happens: a run
awaits approval or fails, a gate is inconclusive, an agent is rolled back, a profile push keeps failing,
the agent manager drifts. Each webhook has its own bounded queue and sender task, so a receiver that
hangs delays only its own deliveries, never the daemon or the other webhooks; when a queue is full the
oldest event is dropped and counted. What is sent is decided by pure functions (:func:`run_events`,
:func:`json_body`, :func:`slack_body`, :func:`backoff_delay`, ...), tested with tables of cases.
No torch here: this module runs in the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from .config import NotifyConfig, WebhookConfig
from .rpc.schema import gate_inconclusive

log = logging.getLogger("pr1d.notify")

# How each event reads in a summary line ("run 42 (agent a1) <title>: <reason>").
TITLES: dict[str, str] = {
    "awaiting_approval": "awaits approval",
    "run_failed": "failed",
    "gate_inconclusive": "awaits approval, gate inconclusive",
    "rollback": "rolled back",
    "push_failing": "profile push failing",
    "drift": "agent manager drift",
}

# A pager line must stay readable: longer reasons are cut here (the full text is in `pr1ctl show`).
SUMMARY_REASON_CHARS = 300
DETAIL_LINES = 5  # detail lines of a Slack message after the summary (the JSON body carries them all)
_HOST = socket.gethostname()


@dataclass(frozen=True)
class Event:
    """One notification: what happened, to which run and agent, and why."""

    event: str  # one of NOTIFY_EVENTS
    agent: str | None
    run: int | None
    state: str | None
    reason: str | None
    details: dict[str, Any] = field(default_factory=dict)
    # Events this one stands in for: a webhook listing any of them gets it (once), e.g. an inconclusive
    # gate is also an awaiting_approval, and a webhook listing both must not be paged twice.
    covers: tuple[str, ...] = ()
    ts: float = field(default_factory=time.time)


# -- pure decisions ------------------------------------------------------------------------------------
def run_events(run: dict, reason: str | None) -> list[Event]:
    """The notifications a run's new state raises (``run`` as the ledger returns it after a transition)."""
    state = str(run.get("state"))
    base = {"agent": run.get("agent_id"), "run": run.get("id"), "state": state, "reason": reason}
    kind = {"kind": run.get("kind")} if run.get("kind") else {}
    if state == "awaiting_approval":
        gate = run.get("gate")
        if gate_inconclusive(gate):
            return [Event("gate_inconclusive", **base, covers=("awaiting_approval",),
                          details={**kind, "gate_reasons": list(gate.get("reasons") or [])[:5],
                                   "approve": f"pr1ctl approve {run.get('id')} --accept-inconclusive --reason TEXT"})]
        return [Event("awaiting_approval", **base,
                      details={**kind, "approve": f"pr1ctl approve {run.get('id')} --reason TEXT"})]
    if state == "failed":
        return [Event("run_failed", **base, details={**kind, "logs": f"pr1ctl logs {run.get('id')}"})]
    return []


def rollback_event(agent: str, deployment: dict, actor: str, reason: str) -> Event:
    """An agent switched back to an earlier version (``deployment``: the rollback's deployment row)."""
    return Event("rollback", agent=agent, run=deployment.get("run_id"), state="rolled_back", reason=reason,
                 details={"version": deployment.get("version_id"), "deployment": deployment.get("id"),
                          "actor": actor})


def push_failing_event(failure: dict, run: int | None) -> Event:
    """A profile push the agent manager did not acknowledge (``failure`` from ProfileSync's on_failure)."""
    return Event("push_failing", agent=failure.get("agent"), run=run, state="push_pending",
                 reason=failure.get("error"),
                 details={"deployment": failure.get("deployment"), "version": failure.get("version"),
                          "attempts": failure.get("attempts")})


def drift_event(drift: dict, message: str, action: str, run: int | None) -> Event:
    """The agent manager lists something else than the deployment it acknowledged (``action``: repush | warn)."""
    return Event("drift", agent=drift.get("agent"), run=run, state="drifted", reason=message,
                 details={"deployment": drift.get("deployment"), "action": action,
                          "deployed": drift.get("deployed"), "reported": drift.get("reported")})


def sparse_repeat(n: int) -> bool:
    """Whether the ``n``-th repeat of the same trouble is worth saying again: the 1st, 2nd, 4th, 8th...
    An agent manager that stays down (the n-th failed push of a deployment) or a queue that keeps
    overflowing pages and logs ever more rarely instead of at every retry."""
    return n > 0 and n & (n - 1) == 0


def wants(events: list[str] | tuple[str, ...], ev: Event) -> bool:
    """Whether a webhook subscribed to ``events`` gets ``ev``."""
    return ev.event in events or any(c in events for c in ev.covers)


def command_for(ev: Event) -> str:
    """The command to run first: the run's page, else the agent's deployments."""
    if ev.run is not None:
        return f"pr1ctl show {ev.run}"
    if ev.agent:
        return f"pr1ctl deployments {ev.agent}"
    return "pr1ctl status"


def _one_line(text: str | None, limit: int) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def summary(ev: Event) -> str:
    """One readable line: "[pr1] run 42 (agent a1) failed: stage sft: exited with code 3"."""
    who = (f"run {ev.run} (agent {ev.agent})" if ev.run is not None and ev.agent else
           f"run {ev.run}" if ev.run is not None else f"agent {ev.agent}" if ev.agent else "pr1d")
    reason = _one_line(ev.reason, SUMMARY_REASON_CHARS)
    return f"[pr1] {who} {TITLES.get(ev.event, ev.event)}" + (f": {reason}" if reason else "")


def _detail_text(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {x}" for k, x in v.items())
    if isinstance(v, list):
        return "; ".join(str(x) for x in v)
    return str(v)


def json_body(ev: Event, host: str = _HOST) -> dict[str, Any]:
    """The generic webhook body: every field a receiver may route or display on."""
    return {"source": "pr1d", "host": host, "event": ev.event, "summary": summary(ev), "run": ev.run,
            "agent": ev.agent, "state": ev.state, "reason": ev.reason, "command": command_for(ev),
            "ts": ev.ts, "details": ev.details}


def slack_body(ev: Event, host: str = _HOST) -> dict[str, Any]:
    """A Slack-compatible body: the summary line, then a few detail lines and the command to run."""
    lines = [summary(ev)]
    if ev.state:
        lines.append(f"• state: {ev.state}")
    for k, v in list(ev.details.items())[:DETAIL_LINES]:
        if v not in (None, "", [], {}):
            lines.append(f"• {k}: {_one_line(_detail_text(v), 200)}")
    lines.append(f"• next: `{command_for(ev)}` (on {host})")
    return {"text": "\n".join(lines)}


def render(kind: str, ev: Event, host: str = _HOST) -> dict[str, Any]:
    if kind == "slack":
        return slack_body(ev, host)
    if kind == "json":
        return json_body(ev, host)
    raise ValueError(f"unknown webhook kind {kind!r}; expected json or slack")


def retryable(status: int | None) -> bool:
    """Whether a failed try is worth another: transport errors and timeouts (None), 429 and 5xx. Other 4xx
    answers mean the request itself is wrong (bad URL, bad secret): repeating it cannot help."""
    return status is None or status == 429 or status >= 500


def backoff_delay(failed_tries: int, base_s: float, max_s: float, u: float) -> float:
    """Delay before the next try after ``failed_tries`` failures: ``base_s * 2**(n-1)`` capped at ``max_s``,
    with "equal jitter" (``u`` in [0, 1) picks a point in the upper half) so webhooks that failed together
    do not retry together."""
    d = min(max_s, base_s * 2 ** max(0, failed_tries - 1))
    return d / 2 + u * d / 2


def retry_after_s(value: str | None, max_s: float) -> float | None:
    """A Retry-After header in seconds (the date form is ignored), capped at ``max_s``."""
    try:
        s = float(value) if value is not None else None
    except ValueError:
        return None
    return None if s is None or s < 0 else min(s, max_s)


def auth_headers(header: str, secret: str | None) -> dict[str, str]:
    if not secret:
        return {}
    return {header: f"Bearer {secret}" if header.lower() == "authorization" else secret}


def webhook_name(hook: WebhookConfig) -> str:
    """What logs and status call a webhook: its name, else its URL's host (the URL may hold a secret)."""
    return hook.name or urlsplit(hook.url).hostname or "webhook"


# -- delivery ------------------------------------------------------------------------------------------
class _Channel:
    """One webhook's queue and sender task."""

    def __init__(self, hook: WebhookConfig, queue_size: int, client: httpx.AsyncClient,
                 rand: Callable[[], float]):
        self.hook, self.name, self.client, self.rand = hook, webhook_name(hook), client, rand
        self.queue: deque[Event] = deque()
        self.queue_size = queue_size
        self.wake = asyncio.Event()
        self.closing = False
        self.task: asyncio.Task | None = None
        self.inflight: Event | None = None
        self.sent = self.failed = self.dropped = 0
        self.last_error: str | None = None
        self.last_sent_at: float | None = None

    def put(self, ev: Event) -> None:
        if len(self.queue) >= self.queue_size:
            old = self.queue.popleft()
            self.dropped += 1
            if sparse_repeat(self.dropped):  # 1st, 2nd, 4th... drop: a flood must not flood the log
                log.warning("webhook %s: queue full (%d events), dropped the oldest (%s); %d dropped so far",
                            self.name, self.queue_size, old.event, self.dropped,
                            extra={"webhook": self.name, "event": old.event, "run": old.run, "agent": old.agent})
        self.queue.append(ev)
        self.wake.set()

    async def run(self) -> None:
        while True:
            while not self.queue:
                if self.closing:
                    return
                self.wake.clear()
                await self.wake.wait()
            self.inflight = self.queue.popleft()
            try:
                await self._deliver(self.inflight)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug here must not end the channel: the next event still goes out
                self.failed += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("webhook %s: delivering %s failed", self.name, self.inflight.event,
                              extra={"webhook": self.name, "event": self.inflight.event})
            self.inflight = None

    def _headers(self) -> dict[str, str]:
        # Read at each delivery (a few bytes, on the loop) so that a rotated secret needs no reload.
        secret = Path(self.hook.token_file).read_text().strip() if self.hook.token_file else None
        return auth_headers(self.hook.header, secret)

    async def _deliver(self, ev: Event) -> None:
        hook = self.hook
        body = render(hook.kind, ev)
        fields = {"webhook": self.name, "event": ev.event, "run": ev.run, "agent": ev.agent}
        error, attempt = "not tried", 0
        for attempt in range(1, hook.max_attempts + 1):
            try:
                headers = self._headers()
            except OSError as e:  # retrying cannot fix a missing secret file: fail now, say which file
                error = f"token_file {hook.token_file}: {e.strerror or e}"
                break
            status, wait = None, None
            try:
                # A hard bound on the whole request: httpx's timeout is per phase, and a receiver that
                # trickles its answer byte by byte would otherwise hold the channel indefinitely.
                async with asyncio.timeout(hook.timeout_s):
                    resp = await self.client.post(hook.url, json=body, headers=headers, timeout=hook.timeout_s)
                status = resp.status_code
                if status < 300:
                    self.sent += 1
                    self.last_sent_at, self.last_error = time.time(), None
                    return
                error = f"HTTP {status}"
                wait = retry_after_s(resp.headers.get("retry-after"), hook.backoff_max_s)
            except (httpx.HTTPError, TimeoutError) as e:
                # The exception text may quote the URL, which may hold a secret: name only the kind of error.
                error = "timed out" if isinstance(e, TimeoutError | httpx.TimeoutException) else type(e).__name__
            if not retryable(status) or attempt == hook.max_attempts:
                break
            delay = wait if wait is not None else backoff_delay(attempt, hook.backoff_base_s, hook.backoff_max_s,
                                                                 self.rand())
            log.info("webhook %s: %s try %d/%d failed (%s); next try in %.1fs", self.name, ev.event, attempt,
                     hook.max_attempts, error, delay, extra=fields)
            await asyncio.sleep(delay)
        self.failed += 1
        self.last_error = error
        log.warning("webhook %s: %s not delivered: %s (after %d %s)", self.name, ev.event, error, attempt,
                    "try" if attempt == 1 else "tries", extra=fields)

    def stats(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.hook.kind, "events": list(self.hook.events),
                "queued": len(self.queue) + (1 if self.inflight else 0), "sent": self.sent, "failed": self.failed,
                "dropped": self.dropped, "last_error": self.last_error, "last_sent_at": self.last_sent_at}


class Notifier:
    """Every webhook's channel; ``notify`` queues an event for each webhook that wants it and returns."""

    def __init__(self, cfg: NotifyConfig, *, transport: httpx.AsyncBaseTransport | None = None,
                 rand: Callable[[], float] = random.random):
        self.cfg = cfg
        self.client = httpx.AsyncClient(transport=transport, follow_redirects=False,
                                        headers={"User-Agent": "pr1d-notify"})
        self.channels = [_Channel(h, cfg.queue_size, self.client, rand) for h in cfg.webhooks]
        self.closed = False

    def start(self) -> Notifier:
        for ch in self.channels:
            ch.task = asyncio.create_task(ch.run(), name=f"notify:{ch.name}")
            if ch.hook.token_file and not Path(ch.hook.token_file).is_file():
                # Said at start, not first at the moment someone should have been paged.
                log.warning("webhook %s: token_file %s is missing; its deliveries will fail until it exists",
                            ch.name, ch.hook.token_file, extra={"webhook": ch.name})
        return self

    def notify(self, ev: Event) -> None:
        """Queue ``ev`` for every webhook that lists it; never blocks, never raises."""
        if self.closed:
            return
        for ch in self.channels:
            if wants(ch.hook.events, ev):
                ch.put(ev)

    def notify_all(self, events: list[Event]) -> None:
        for ev in events:
            self.notify(ev)

    def run_changed(self, run: dict, reason: str | None) -> None:
        """A run moved to a new state (the daemon's ``_set_run``): page if the state needs a person."""
        self.notify_all(run_events(run, reason))

    async def close(self) -> None:
        """Stop taking events; send what is queued for up to ``drain_timeout_s``; drop (and count) the rest."""
        if self.closed:
            return
        self.closed = True
        tasks = [ch.task for ch in self.channels if ch.task is not None]
        for ch in self.channels:
            ch.closing = True
            ch.wake.set()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self.cfg.drain_timeout_s)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)
        for ch in self.channels:
            left = len(ch.queue) + (1 if ch.inflight else 0)
            if left:
                ch.dropped += left
                log.warning("webhook %s: %d event(s) not sent before shutdown (drain_timeout_s = %s)",
                            ch.name, left, self.cfg.drain_timeout_s, extra={"webhook": ch.name})
        await self.client.aclose()

    def reconfigured(self, cfg: NotifyConfig) -> Notifier:
        """SIGHUP: this notifier when ``[notify]`` is unchanged, else a new one (this one drains meanwhile)."""
        if cfg == self.cfg:
            return self
        new = Notifier(cfg).start()
        task = asyncio.ensure_future(self.close())
        _background.add(task)
        task.add_done_callback(_background.discard)
        return new

    def stats(self) -> dict[str, Any]:
        return {"webhooks": [ch.stats() for ch in self.channels]}


_background: set[asyncio.Future] = set()  # drains of replaced notifiers (a task with no reference may vanish)
