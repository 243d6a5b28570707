"""Clients of the socket API: a blocking one for pr1ctl and an asyncio one for pr1tui."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from . import schema
from .schema import RpcError


class DaemonUnreachable(Exception):
    def __init__(self, path: Path, why: str = ""):
        super().__init__(f"pr1d is not running (no socket at {path})" if not why else f"pr1d is not reachable at {path}: {why}")
        self.path = path


def find_socket(flag: str | None = None, config_path: str | None = None) -> Path:
    """--socket, then PR1_SOCKET, then the config (file or /etc/pr1d), then the default path."""
    if flag:
        return Path(flag)
    env = os.environ.get("PR1_SOCKET")
    if env:
        return Path(env)
    from ..config import ConfigError, default_socket_path, load_config

    paths = [Path(config_path)] if config_path else ([Path(os.environ["PR1_CONFIG"])] if os.environ.get("PR1_CONFIG") else [])
    try:
        return load_config(paths).socket()
    except ConfigError:
        if config_path:
            raise
        return default_socket_path(None)


def _raise_error(msg: dict) -> None:
    err = msg.get("error") or {}
    raise RpcError(int(err.get("code", schema.INTERNAL_ERROR)), str(err.get("message", "unknown error")), err.get("data"))


class Client:
    """Blocking client: one connection, request/response, optional event stream."""

    def __init__(self, path: Path | str, timeout: float | None = 30.0):
        self.path = Path(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(self.path))
        except FileNotFoundError:
            self.sock.close()
            raise DaemonUnreachable(self.path) from None
        except ConnectionRefusedError:
            self.sock.close()
            raise DaemonUnreachable(self.path, "connection refused (stale socket?)") from None
        except PermissionError:
            self.sock.close()
            raise RpcError(schema.PERMISSION_DENIED,
                           f"permission denied opening {self.path}: your user is not in the socket's group") from None
        self._buf = b""
        self._ids = itertools.count(1)
        self._pending_events: list[dict] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _readline(self) -> dict:
        while b"\n" not in self._buf:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise DaemonUnreachable(self.path, "timed out waiting for a reply") from None
            if not chunk:
                raise DaemonUnreachable(self.path, "connection closed by the daemon")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, method: str, **params: Any) -> Any:
        id_ = next(self._ids)
        try:
            self.sock.sendall(schema.request(method, {k: v for k, v in params.items() if v is not None}, id_))
        except (BrokenPipeError, ConnectionResetError):
            # The daemon may have refused us (permission denied) and hung up before reading: its
            # reason is still in our receive buffer, and it is worth more than "broken pipe".
            try:
                msg = self._readline()
            except (DaemonUnreachable, OSError, ValueError):
                raise DaemonUnreachable(self.path, "connection closed by the daemon") from None
            if "error" in msg:
                _raise_error(msg)
            raise DaemonUnreachable(self.path, "connection closed by the daemon") from None
        while True:
            msg = self._readline()
            if msg.get("method") == "event":
                self._pending_events.append(msg["params"])
                continue
            if msg.get("id") not in (id_, None):
                continue
            if "error" in msg:
                _raise_error(msg)
            return msg.get("result")

    def events(self) -> Iterator[dict]:
        """Yield pushed events after events.subscribe (blocks; the socket timeout is lifted)."""
        self.sock.settimeout(None)
        while self._pending_events:
            yield self._pending_events.pop(0)
        while True:
            msg = self._readline()
            if msg.get("method") == "event":
                yield msg["params"]
            elif "error" in msg:
                _raise_error(msg)


class AsyncClient:
    """asyncio client: concurrent calls matched by id, events delivered to a queue."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._ids = itertools.count(1)
        self._waiters: dict[int, asyncio.Future] = {}
        self.events: asyncio.Queue[dict] = asyncio.Queue()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self.connected = False

    async def connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(str(self.path), limit=64 << 20)
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonUnreachable(self.path) from None
        self.connected = True
        self._task = asyncio.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                msg = json.loads(line)
                if msg.get("method") == "event":
                    self.events.put_nowait(msg["params"])
                    continue
                fut = self._waiters.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            self.connected = False
            for fut in self._waiters.values():
                if not fut.done():
                    fut.set_exception(DaemonUnreachable(self.path, "connection closed by the daemon"))
            self._waiters.clear()
            self.events.put_nowait({"topic": "_disconnected"})

    async def call(self, method: str, **params: Any) -> Any:
        if not self.connected or self._writer is None:
            raise DaemonUnreachable(self.path, "not connected")
        id_ = next(self._ids)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiters[id_] = fut
        self._writer.write(schema.request(method, {k: v for k, v in params.items() if v is not None}, id_))
        await self._writer.drain()
        msg = await fut
        if "error" in msg:
            _raise_error(msg)
        return msg.get("result")

    async def iter_events(self) -> AsyncIterator[dict]:
        while True:
            yield await self.events.get()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
        self.connected = False
