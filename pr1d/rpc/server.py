"""The daemon side of the socket API: connections, framing, auth, dispatch and event pushes.

Every connection has a bounded outgoing queue drained by its own writer task, so a client that
stops reading is disconnected instead of holding daemon memory, and one bad client never blocks
another. Bad input gets a JSON-RPC error; input we cannot resync from (an over-long line) closes
the connection. Batches and notifications follow JSON-RPC 2.0 as written (tests/rpc/test_jsonrpc_spec.py
replays the specification's examples).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..config import RpcConfig
from . import schema
from .auth import Peer, RoleResolver, peer_credentials
from .schema import RpcError

log = logging.getLogger("pr1d.rpc")

Handler = Callable[["Connection", Any], Awaitable[Any]]
_CLOSE = object()


class Connection:
    def __init__(self, server: RpcServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer):
        self.server, self.reader, self.writer, self.peer = server, reader, writer, peer
        self.out: asyncio.Queue[bytes | object] = asyncio.Queue(maxsize=server.cfg.client_queue)
        self.topics: frozenset[str] = frozenset()
        self.run_filter: int | None = None
        self.closed = False
        # Operator methods this client sent as notifications: warned about once each, so that a
        # client looping on them cannot flood the journal.
        self.refused_notifications: set[str] = set()

    @property
    def user(self) -> str:
        return self.peer.user

    def send(self, data: bytes) -> None:
        """Queue bytes for this client; a client too slow to keep up is dropped, never waited on."""
        if self.closed:
            return
        try:
            self.out.put_nowait(data)
        except asyncio.QueueFull:
            log.warning("dropping client %s (pid %s): stopped reading, %d messages queued",
                        self.user, self.peer.pid, self.out.qsize())
            self.server.dropped_slow += 1
            self.abort()

    def wants(self, topic: str, run: int | None) -> bool:
        return topic in self.topics and (self.run_filter is None or run is None or run == self.run_filter)

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.transport.abort()

    async def writer_loop(self) -> None:
        timeout = self.server.cfg.write_timeout_s
        try:
            while True:
                data = await self.out.get()
                if data is _CLOSE:
                    break
                self.writer.write(data)  # type: ignore[arg-type]
                await asyncio.wait_for(self.writer.drain(), timeout)
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            self.abort()


class RpcServer:
    def __init__(self, path: Path, cfg: RpcConfig, resolver: RoleResolver, handlers: dict[str, Handler]):
        self.path, self.cfg, self.resolver, self.handlers = path, cfg, resolver, handlers
        self.conns: set[Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self.accepting = True
        self.dropped_slow = 0
        self.errors_sent = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_socket() or self.path.exists():
            # We hold the state-dir lock, so a socket file here is stale from a crashed daemon.
            self.path.unlink()
        old = os.umask(0o117)  # socket born 0660: no window in which it is world-connectable
        try:
            self._server = await asyncio.start_unix_server(
                self._on_connect, path=str(self.path), limit=self.cfg.max_line_bytes + 1
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        self.accepting = False
        if self._server is not None:
            self._server.close()
        for c in list(self.conns):
            c.abort()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def broadcast(self, topic: str, data: dict, run: int | None = None) -> None:
        msg: bytes | None = None
        for c in list(self.conns):
            if c.wants(topic, run):
                if msg is None:
                    msg = schema.notification(topic, data)
                c.send(msg)

    def subscribers(self, topic: str) -> int:
        return sum(1 for c in self.conns if topic in c.topics)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock: socket.socket = writer.get_extra_info("socket")
        try:
            pid, uid, gid = peer_credentials(sock)
        except OSError:
            writer.transport.abort()
            return
        user, role = self.resolver.resolve(uid)
        conn = Connection(self, reader, writer, Peer(pid, uid, gid, user, role))
        wtask = asyncio.create_task(conn.writer_loop())
        try:
            if role is None:
                conn.send(schema.error_response(None, RpcError(
                    schema.PERMISSION_DENIED,
                    f"permission denied: Unix user {user} (uid {uid}) is not allowed to use pr1d; "
                    "ask an admin to add you to a group in auth.reader_groups or auth.operator_groups",
                )))
                return
            if len(self.conns) >= self.cfg.max_clients or not self.accepting:
                conn.send(schema.error_response(None, RpcError(schema.OVERLOADED, "too many clients; try again")))
                return
            self.conns.add(conn)
            await self._serve(conn)
        finally:
            self.conns.discard(conn)
            if not conn.closed:
                try:
                    conn.out.put_nowait(_CLOSE)
                except asyncio.QueueFull:
                    conn.abort()
                try:
                    await asyncio.wait_for(wtask, self.cfg.write_timeout_s)
                except (TimeoutError, asyncio.CancelledError):
                    conn.abort()
            else:
                wtask.cancel()

    async def _serve(self, conn: Connection) -> None:
        while not conn.closed:
            try:
                line = await conn.reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                # Over-long line: we cannot find the next message boundary safely, so say why and hang up.
                self.errors_sent += 1
                conn.send(schema.error_response(None, RpcError(
                    schema.INVALID_REQUEST, f"request line exceeds {self.cfg.max_line_bytes} bytes; closing")))
                return
            except (ConnectionError, OSError):
                return
            if not line:
                return
            if not line.strip():
                continue
            await self._handle_line(conn, line)

    async def _handle_line(self, conn: Connection, line: bytes) -> None:
        """One line: a request object or a batch (JSON-RPC 2.0, section 6); notifications get no reply."""
        try:
            msg = schema.decode(line)
            if isinstance(msg, list):
                schema.check_batch(msg)
        except RpcError as e:
            self.errors_sent += 1
            conn.send(schema.error_response(None, e))
            return
        if not isinstance(msg, list):
            reply = await self._handle_one(conn, msg)
            if reply is not None:
                conn.send(schema.encode(reply))
            return
        # Each request of a batch is checked and run alone, in order; one reply array holds the
        # responses, and a batch of notifications only is answered with nothing at all.
        replies = [r for r in [await self._handle_one(conn, m) for m in msg] if r is not None]
        if replies:
            conn.send(schema.encode(replies))

    async def _handle_one(self, conn: Connection, msg: Any) -> dict | None:
        """Run one request object; its response, or None for a notification."""
        notify = schema.is_notification(msg)
        id_: Any = None
        try:
            id_, method, params = schema.check_request(msg, notification=notify)
            spec = schema.METHODS[method]
            if notify and spec.role == "operator":
                # Nothing changes without an answer: the caller could not learn whether it worked.
                if method in conn.refused_notifications:
                    return None
                conn.refused_notifications.add(method)
                log.warning("ignored %s sent as a notification (no id) by %s (pid %s): operator methods "
                            "need an id", method, conn.user, conn.peer.pid)
                return None
            if schema.ROLE_RANK[conn.peer.role or "reader"] < schema.ROLE_RANK[spec.role]:
                raise RpcError(schema.PERMISSION_DENIED,
                               f"permission denied: {method} needs the operator role; {conn.user} is a {conn.peer.role}")
            handler = self.handlers.get(method)
            if handler is None:
                raise RpcError(schema.UNAVAILABLE, f"{method} is not available in this daemon")
            result = await handler(conn, params)
            return None if notify else schema.response_obj(id_, result)
        except RpcError as e:
            if notify:  # the spec forbids replying, even with an error
                log.debug("notification failed: %s", e.message)
                return None
            self.errors_sent += 1
            return schema.error_obj(getattr(e, "request_id", id_), e)
        except Exception as e:  # a handler bug must not take the daemon down
            log.exception("internal error handling %s", repr(msg)[:200])
            if notify:
                return None
            self.errors_sent += 1
            return schema.error_obj(id_, RpcError(schema.INTERNAL_ERROR, f"internal error: {type(e).__name__}: {e}"))
