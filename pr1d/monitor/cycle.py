"""The monitor's poll cycle: every agent's new samples from the scoring API into the ledger, then signals.

One cycle lists the agents, polls them in chunks of 1,000 (HTTP for chunk k+1 overlaps the ledger
thread's ingest and evaluation of chunk k), and announces what the rules decided: trigger alerts and
queued runs. The daemon runs it on its scheduler (scheduler.poll_interval_s) and on `pr1ctl poll`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..config import MonitorConfig
from ..ledger import samples
from ..ledger.store import Ledger
from .evaluate import evaluate_agents
from .poller import Poller, PollError, agent_health

log = logging.getLogger("pr1d")


class PollCycle:
    """Polls through ``poller`` and writes through ``db_call`` (the daemon's ledger thread); one cycle at a time."""

    def __init__(self, poller: Poller, ledger: Ledger, cfg: MonitorConfig, *,
                 db_call: Callable[..., Awaitable[Any]], publish: Callable[..., None], wake: Callable[[], None],
                 record: Callable[[dict], None], registry: Any = None):
        self.poller, self.ledger, self.cfg = poller, ledger, cfg  # cfg: replaced on config reload
        self.db_call = db_call
        self.publish = publish  # events to subscribers: (topic, data, run)
        self.wake = wake  # the run dispatcher: runs were queued
        self.record = record  # the daemon's own metrics: the cycle's report
        self.registry = registry  # pr1d.registry.service.RegistryService: agent-manager drift, watches
        self._lock = asyncio.Lock()

    async def run(self) -> dict:
        """One poll of every agent: ingest new samples with their cursors, then evaluate signals."""
        async with self._lock:
            t0, cpu0 = time.monotonic(), time.process_time()
            report: dict[str, Any] = {"started_at": time.time(), "ok": True}
            try:
                agents = await self.poller.fetch_agents()
            except PollError as e:
                report.update(ok=False, error=str(e), duration_s=round(time.monotonic() - t0, 3))
                self.poller.last_cycle = report
                self.record(report)
                log.warning("poll cycle skipped: %s", e)
                return report
            await self.db_call(self.ledger.upsert_agents, agents)
            if self.registry is not None:
                try:
                    report["agent_manager_drift"] = len(await self.registry.check_agent_manager(agents, report["started_at"]))
                except Exception as e:  # the samples still go in: this check waits for the next cycle
                    log.exception("agent manager drift check failed")
                    report["agent_manager_drift_error"] = f"{type(e).__name__}: {e}"
            known = await self.db_call(samples.agent_cursors, self.ledger)
            wanted = {a["id"]: known[a["id"]] for a in agents if a["id"] in known}
            listed = {a["id"]: a["model"] or None for a in agents}
            # Chunks of 1,000 agents, pipelined: while the ledger thread ingests chunk k and evaluates its
            # signals, the loop already fetches chunk k+1. Memory stays bounded at any fleet size, and a
            # kill mid-cycle loses at most HTTP work (samples and cursors commit together).
            polls, outcomes, inserted, t_http, t_db, t_eval = [], [], 0, 0.0, 0.0, 0.0
            mcfg = self.cfg
            ids = list(wanted)
            pending: asyncio.Future | None = None

            async def settle() -> None:
                nonlocal inserted, t_db, t_eval
                if pending is not None:
                    n, ti, outs, te = await pending
                    inserted, t_db, t_eval = inserted + n, t_db + ti, t_eval + te
                    outcomes.extend(outs)

            for i in range(0, len(ids), 1000):
                th = time.monotonic()
                chunk = await self.poller.poll_agents({a: wanted[a] for a in ids[i:i + 1000]})
                t_http += time.monotonic() - th
                # Each sample is tagged with the model the platform listed for its agent this cycle (unless
                # the evaluation names its own): the monitor judges one version at a time.
                batch = [{"agent_id": p.agent_id, "cursor": p.cursor, "samples": p.samples,
                          "model_version": listed.get(p.agent_id),
                          "health": agent_health(wanted[p.agent_id]["health"], p)} for p in chunk]
                changed = [p.agent_id for p in chunk if p.samples]
                await settle()
                pending = asyncio.ensure_future(self.db_call(_ingest_and_evaluate, self.ledger, batch, changed, mcfg))
                for p in chunk:  # keep a summary; the samples live only in `batch` until written
                    p.samples = [None] * len(p.samples)
                polls.extend(chunk)
            await settle()
            if self.registry is not None:
                await self.registry.check_watches()
            for o in outcomes:
                log.info("trigger %s: agent %s %s -> %s%s", o.trigger_id, o.agent_id, o.signal, o.job_kind,
                         f" (suppressed: {o.suppressed})" if o.suppressed else f", run {o.run_id}",
                         extra={"agent": o.agent_id, "run": o.run_id, "trigger": o.trigger_id})
                self.publish("alert", {"kind": "trigger", "agent": o.agent_id, "signal": o.signal,
                                       "job_kind": o.job_kind, "run": o.run_id, "suppressed": o.suppressed})
                if o.run_id:
                    self.publish("run", {"run": o.run_id, "agent": o.agent_id, "state": "queued", "kind": o.job_kind,
                                         "actor": "daemon", "reason": f"{o.signal} signal fired"}, o.run_id)
                    self.wake()
            invalid: dict[str, int] = {}
            for p in polls:
                for k, v in p.invalid.items():
                    invalid[k] = invalid.get(k, 0) + v
            fetched = sum(len(p.samples) for p in polls)
            report.update(
                agents=len(agents), fetched=fetched, inserted=inserted, invalid=invalid,
                agent_errors=sum(1 for p in polls if p.error), triggers=len(outcomes),
                runs_created=[o.run_id for o in outcomes if o.run_id], duration_s=round(time.monotonic() - t0, 3),
                http_s=round(t_http, 3), ingest_s=round(t_db, 3),
                ingest_per_s=round(inserted / t_db) if t_db > 0 else None,
                evaluate_s=round(t_eval, 3), cpu_s=round(time.process_time() - cpu0, 3),
            )
            self.poller.last_cycle = report
            self.record(report)
            self.publish("agent", {"kind": "poll", "agents": len(agents), "inserted": inserted})
            return report


def _ingest_and_evaluate(ledger: Ledger, batch: list[dict], changed: list[str], mcfg: MonitorConfig) -> tuple:
    """Ledger-thread half of a poll chunk: write samples+cursors, then evaluate the changed agents."""
    t = time.monotonic()
    n = samples.ingest_polls(ledger, batch)
    ti = time.monotonic() - t
    outs = evaluate_agents(ledger, changed, mcfg)
    return n, ti, outs, time.monotonic() - t - ti
