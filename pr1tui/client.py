"""The console's link to pr1d: one socket connection with identity, subscription and reconnect backoff.

A thin wrapper around `pr1d.rpc.client.AsyncClient`. The app owns exactly one `ConsoleClient`; its
connection worker calls `connect()` until it succeeds (sleeping `backoff.next()` in between), then
drains `events` until the daemon goes away, then starts over. Each successful `connect()` opens a fresh
socket, asks `whoami` and re-subscribes, so a daemon restart costs the console nothing but the banner.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pr1d.rpc.client import AsyncClient, DaemonUnreachable
from pr1d.rpc.schema import TOPICS, RpcError

__all__ = ["Backoff", "ConsoleClient", "DaemonUnreachable", "Identity", "RpcError"]

# Marker the AsyncClient puts on its queue when the socket closes (see pr1d/rpc/client.py).
DISCONNECTED = "_disconnected"
# The console's main subscription: everything but log lines. Those come only for the run being viewed,
# on a connection of the run page's own (see RunDetailScreen._follow_log), so a chatty training log
# costs the console nothing unless someone is reading it.
MAIN_TOPICS = tuple(t for t in TOPICS if t != "log")


@dataclass(frozen=True)
class Identity:
    """Who the daemon says we are (from SO_PEERCRED on its side): decides which actions we offer."""

    user: str
    uid: int
    role: str  # "operator" | "reader"

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


class Backoff:
    """Exponential retry delays: quick first retries (a restart takes about a second), capped low.

    The cap stays at a couple of seconds because a unix-socket connect attempt costs nothing and an
    on-call engineer watching the banner wants the console back as soon as the daemon is.
    """

    def __init__(self, first: float = 0.2, cap: float = 2.0, factor: float = 2.0):
        self.first, self.cap, self.factor = first, cap, factor
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * self.factor**self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


class ConsoleClient:
    """One live connection to pr1d at a time; `call` fails fast with DaemonUnreachable while down."""

    def __init__(self, path: Path | str, topics: tuple[str, ...] = MAIN_TOPICS):
        self.path = Path(path)
        self.topics = topics
        self._client: AsyncClient | None = None
        self.identity: Identity | None = None
        self.last_error: str = ""
        # The most recent requests (method, params), newest last: what the console asked the daemon,
        # for tests and for anyone debugging "why did it do that".
        self.calls: deque[tuple[str, dict]] = deque(maxlen=1000)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    @property
    def events(self) -> asyncio.Queue[dict]:
        """Events of the current connection; ends with {"topic": "_disconnected"} when it drops."""
        if self._client is None:
            raise DaemonUnreachable(self.path, "not connected")
        return self._client.events

    async def connect(self) -> Identity:
        """Open a new connection, learn who we are, subscribe to every topic. Raises when the daemon is away."""
        await self.close()
        client = AsyncClient(self.path)
        try:
            await client.connect()
            who = await client.call("whoami")
            await client.call("events.subscribe", topics=list(self.topics))
        except PermissionError:
            await client.close()
            self.last_error = f"permission denied opening {self.path}: your user is not in the socket's group"
            raise DaemonUnreachable(self.path, "permission denied") from None
        except (DaemonUnreachable, RpcError, OSError) as e:
            await client.close()
            self.last_error = str(e)
            raise
        self._client = client
        self.last_error = ""
        self.identity = Identity(user=str(who.get("user", "?")), uid=int(who.get("uid", -1)),
                                 role=str(who.get("role") or "reader"))
        return self.identity

    async def call(self, method: str, **params: Any) -> Any:
        """One request on the live connection; RpcError carries the daemon's code and message."""
        if self._client is None or not self._client.connected:
            raise DaemonUnreachable(self.path, "not connected")
        self.calls.append((method, params))
        return await self._client.call(method, **params)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
