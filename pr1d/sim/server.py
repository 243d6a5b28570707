"""The simulator's HTTP server (aiohttp): the scoring API routes, the /_sim admin routes, bearer-token
checking, fault effects on the wire, the continuous-time ticker, and `SimServer` for in-process use.

    async with SimServer("sudden-drift", seed=3) as sim:
        sim.platform.tick(50)
        httpx.get(f"{sim.url}/v1/agents")
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import socket
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from pr1d.sim import models
from pr1d.sim.faults import (
    FAULT_KINDS,
    FaultPlan,
    FaultSpec,
    mutate_next_offset,
    mutate_records,
    truncate_body,
)
from pr1d.sim.platform import MAX_TICK, Grader, Page, Platform, PlatformError
from pr1d.sim.scenarios import Scenario, ScenarioError, load_scenario

JSON = "application/json"
# Cap on the evaluations generated in one step of continuous mode: past it the ticker drops the
# backlog rather than stall the event loop (and with it every request) for seconds.
_MAX_STEP_EVALS = 200_000


def _json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type=JSON, headers=headers)


def _error(status: int, message: str) -> web.Response:
    return _json_response({"error": message}, status=status)


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise PlatformError("expected a JSON request body")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise PlatformError(f"request body is not valid JSON: {e}") from None


def _fault_specs(body: Any) -> list[FaultSpec]:
    """A runtime fault request: one fault object or ``{"faults": [...]}``, validated like the TOML."""
    raw = body.get("faults") if isinstance(body, dict) and "faults" in body else [body]
    if not isinstance(raw, list):
        raise PlatformError('faults: expected a fault object or {"faults": [fault, ...]}')
    specs = []
    for k, item in enumerate(raw):
        try:
            specs.append(FaultSpec.model_validate(item))
        except ValidationError as e:
            msgs = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'fault'}: "
                f"{'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}"
                for err in e.errors()
            )
            raise PlatformError(f"faults[{k}]: {msgs}") from None
    return specs


class SimServer:
    """The simulated agent platform served over HTTP; use ``async with`` (or `start` / `close`).

    ``scenario`` is a loaded `Scenario`, a shipped name or a path to a .toml file. ``port=0`` picks a
    free port (read it back from `port` / `url`). ``time_scale`` > 0 adds that many evaluations per
    agent per real second; 0 leaves time to `platform.tick()` and ``POST /_sim/tick``.
    """

    def __init__(
        self,
        scenario: Scenario | str | Path = "steady",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        agents: int | None = None,
        token: str | None = None,
        time_scale: float = 0.0,
        scenarios_dirs: Sequence[Path] = (),
        grader: Grader | None = None,
    ) -> None:
        if not isinstance(scenario, Scenario):
            scenario = load_scenario(scenario, tuple(Path(d) for d in scenarios_dirs))
        if seed is not None or agents is not None:
            scenario = scenario.with_overrides(seed=seed, agents=agents)
        if time_scale < 0:
            raise ScenarioError(f"time scale must be >= 0, got {time_scale}")
        self.scenario = scenario
        self.host = host
        self.requested_port = port
        self.token = token or None
        self.time_scale = time_scale
        self.platform = Platform(scenario, grader=grader)
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    # --- life cycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("SimServer is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def make_app(self) -> web.Application:
        middlewares = [self._auth] if self.token else []
        # client_max_size: critic batches and profile policies are small; 4 MiB leaves ample room.
        app = web.Application(middlewares=middlewares, client_max_size=4 << 20)
        r = app.router
        r.add_get("/v1/agents", self._agents)
        r.add_get("/v1/agents/{id}/evaluations", self._evaluations)
        r.add_post("/v1/agents/{id}/profile", self._profile)
        r.add_get("/v1/gradebook", self._gradebook)
        r.add_post("/v1/critic/verify", self._critic)
        r.add_post("/v1/chat/completions", self._chat)
        r.add_post("/v1/completions", self._completions)
        r.add_post("/_sim/tick", self._tick)
        r.add_get("/_sim/state", self._state)
        r.add_get("/_sim/agents/{id}", self._agent_info)
        r.add_get("/_sim/agents/{id}/profile_history", self._profile_history)
        r.add_get("/_sim/faults", self._faults_get)
        r.add_post("/_sim/faults", self._faults_post)
        r.add_delete("/_sim/faults", self._faults_delete)
        return app

    async def start(self) -> SimServer:
        self._closing.clear()
        # access_log=None: a log line per request would cost more than serving a page. A short shutdown
        # timeout: hung requests (the timeout fault) are woken by `_closing` anyway.
        self._runner = web.AppRunner(
            self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        self.port = int(self._runner.addresses[0][1])
        if self.time_scale > 0:
            self._ticker = asyncio.create_task(self._run_ticker(), name="pr1d-sim-ticker")
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SimServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def tick(self, n: int = 1) -> int:
        return self.platform.tick(n)

    async def _run_ticker(self) -> None:
        """Continuous mode: keep each agent at ``time_scale`` evaluations per real second."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        done = 0
        n_agents = max(1, len(self.platform.agent_ids))
        step_cap = max(1, _MAX_STEP_EVALS // n_agents)
        period = min(1.0, max(0.05, 1.0 / self.time_scale))
        while True:
            await asyncio.sleep(period)
            due = int((loop.time() - t0) * self.time_scale) - done
            if due > 0:
                self.platform.tick(min(due, step_cap, MAX_TICK))
                done += due  # a backlog beyond the cap is dropped, not queued (see _MAX_STEP_EVALS)

    # --- plumbing --------------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        expected = f"Bearer {self.token}"
        if not hmac.compare_digest(header.encode(), expected.encode()):
            return web.Response(
                body=json.dumps({"error": "missing or wrong bearer token"}).encode(),
                status=401,
                content_type=JSON,
                headers={"WWW-Authenticate": 'Bearer realm="pr1d-sim"'},
            )
        return await handler(request)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the server closes (so a hung request never delays shutdown)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)

    async def _before(self, plan: FaultPlan | None, request: web.Request) -> web.StreamResponse | None:
        """Delay and terminal faults; returns the response that replaces the real one, if any."""
        if plan is None:
            return None
        if plan.delay_s:
            await self._sleep(plan.delay_s)
        t = plan.terminal
        if t is None:
            return None
        if t.kind == "http_error":
            headers = {} if t.retry_after is None else {"Retry-After": f"{t.retry_after:g}"}
            return _json_response(
                {"error": f"injected fault: HTTP {t.status}"}, status=t.status, headers=headers
            )
        if t.kind == "timeout":
            # Hang past the client's timeout, then answer normally: the client has long given up.
            await self._sleep(t.hang_seconds())
            return None
        # reset: SO_LINGER 0 makes close() send a TCP RST, which clients report as "connection reset".
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return web.Response(status=500)  # never reaches the client

    @staticmethod
    def _finish(body: bytes, plan: FaultPlan | None, status: int = 200) -> web.Response:
        if plan is not None and plan.mutates("malformed_json"):
            body = truncate_body(body)
        return web.Response(body=body, status=status, content_type=JSON)

    def _plan(self, endpoint: str, agent_id: str | None = None) -> FaultPlan | None:
        p = self.platform
        p.requests[endpoint] += 1
        return p.faults.plan(endpoint, agent_id) if p.faults else None

    def _paged(self, page: Page, plan: FaultPlan | None, endpoint: str) -> web.Response:
        if plan is None or not (
            plan.mutations and any(s.kind != "malformed_json" for s, _ in plan.mutations)
        ):
            return self._finish(page.body(), plan)
        records = mutate_records(page.records(), plan, endpoint)
        nxt = mutate_next_offset(page.next_offset, page.since, page.limit, len(page.fragments), plan)
        body = json.dumps({page.key: records, "next_cursor": f"{page.prefix}{nxt}"}).encode()
        return self._finish(body, plan)

    # --- scoring API -----------------------------------------------------------------------------

    async def _agents(self, request: web.Request) -> web.StreamResponse:
        plan = self._plan("agents")
        if (early := await self._before(plan, request)) is not None:
            return early
        body = self.platform.agents_body()
        if plan is not None and plan.mutates("bad_fields"):
            records = mutate_records(json.loads(body)["agents"], plan, "agents")
            body = json.dumps({"agents": records}).encode()
        return self._finish(body, plan)

    async def _evaluations(self, request: web.Request) -> web.StreamResponse:
        agent_id = request.match_info["id"]
        plan = self._plan("evaluations", agent_id)
        if (early := await self._before(plan, request)) is not None:
            return early
        q = request.rel_url.query
        try:
            page = self.platform.evaluations_page(agent_id, q.get("since"), q.get("limit"))
        except PlatformError as e:
            return _error(e.status, str(e))
        return self._paged(page, plan, "evaluations")

    async def _gradebook(self, request: web.Request) -> web.StreamResponse:
        q = request.rel_url.query
        agent_id = q.get("agent_id") or None
        plan = self._plan("gradebook", agent_id)
        if (early := await self._before(plan, request)) is not None:
            return early
        try:
            page = self.platform.gradebook_page(q.get("since"), q.get("min_score"), agent_id, q.get("limit"))
        except PlatformError as e:
            return _error(e.status, str(e))
        return self._paged(page, plan, "gradebook")

    async def _critic(self, request: web.Request) -> web.StreamResponse:
        plan = self._plan("critic")
        if (early := await self._before(plan, request)) is not None:
            return early
        try:
            results = self.platform.critic_verify(await _read_json(request))
        except PlatformError as e:
            return _error(e.status, str(e))
        if plan is not None and plan.mutates("bad_fields"):
            results = mutate_records(results, plan, "critic")
        return self._finish(json.dumps({"results": results}).encode(), plan)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._model_call(request, "teacher",
                                      lambda body: models.chat_completion(body, gsm=self.platform.gsm_task))

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._model_call(request, "sampler", models.completion)

    async def _model_call(self, request: web.Request, endpoint: str, fn: Any) -> web.StreamResponse:
        plan = self._plan(endpoint)
        if (early := await self._before(plan, request)) is not None:
            return early
        try:
            result = fn(await _read_json(request))
        except (PlatformError, models.ModelRequestError) as e:
            return _error(400, str(e))
        return self._finish(json.dumps(result).encode(), plan)

    async def _profile(self, request: web.Request) -> web.StreamResponse:
        agent_id = request.match_info["id"]
        plan = self._plan("profile", agent_id)
        if (early := await self._before(plan, request)) is not None:
            return early
        try:
            result = self.platform.push_profile(agent_id, await _read_json(request))
        except PlatformError as e:
            return _error(e.status, str(e))
        return self._finish(json.dumps(result).encode(), plan)

    # --- admin (/_sim): never faulted, same token ------------------------------------------------

    async def _tick(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await _read_json(request) if request.can_read_body else {}
            if not isinstance(body, dict):
                raise PlatformError('tick: expected {"n": K} with optional "agents": [ids]')
            agents = body.get("agents")
            if agents is not None and not (
                isinstance(agents, list) and all(isinstance(a, str) for a in agents)
            ):
                raise PlatformError("tick: 'agents' must be a list of agent ids")
            generated = self.platform.tick(body.get("n", 1), agents)
        except PlatformError as e:
            return _error(e.status, str(e))
        return _json_response({"generated": generated, "evaluations": self.platform.total_evaluations})

    async def _state(self, request: web.Request) -> web.StreamResponse:
        state = self.platform.state()
        state["time_scale"] = self.time_scale
        state["auth"] = self.token is not None
        return _json_response(state)

    async def _agent_info(self, request: web.Request) -> web.StreamResponse:
        try:
            return _json_response(self.platform.agent_info(request.match_info["id"]))
        except PlatformError as e:
            return _error(e.status, str(e))

    async def _profile_history(self, request: web.Request) -> web.StreamResponse:
        try:
            return _json_response(self.platform.profile_history(request.match_info["id"]))
        except PlatformError as e:
            return _error(e.status, str(e))

    def _faults_view(self) -> dict[str, Any]:
        f = self.platform.faults
        return {"faults": f.describe(), "injected": {k: v for k, v in f.injected.items() if v}}

    async def _faults_get(self, request: web.Request) -> web.StreamResponse:
        return _json_response(self._faults_view())

    async def _faults_post(self, request: web.Request) -> web.StreamResponse:
        try:
            specs = _fault_specs(await _read_json(request))
            known = set(self.platform.agent_ids)
            for s in specs:
                missing = [a for a in s.agents if a not in known]
                if missing:
                    raise PlatformError(f"faults: unknown agent(s) {', '.join(missing)}")
        except PlatformError as e:
            return _error(e.status, str(e))
        for s in specs:
            self.platform.faults.add(s)
        return _json_response(self._faults_view())

    async def _faults_delete(self, request: web.Request) -> web.StreamResponse:
        kind = request.rel_url.query.get("kind") or None
        if kind is not None and kind not in FAULT_KINDS:
            return _error(400, f"unknown fault kind {kind!r} (expected one of {', '.join(FAULT_KINDS)})")
        removed = self.platform.faults.clear(kind)
        return _json_response({"removed": removed, **self._faults_view()})
