"""Clients of the socket API: a blocking one for pr1ctl and an asyncio one for pr1tui."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import schema
from .schema import RpcError


class DaemonUnreachable(Exception):
    def __init__(self, path: Path, why: str = ""):
        super().__init__(f"pr1d is not running (no socket at {path})" if not why else f"pr1d is not reachable at {path}: {why}")
        self.path = path


# Where the systemd unit's RuntimeDirectory=pr1d puts the socket (systemd/pr1d.service). Tests point
# PR1_RUNTIME_DIR at a temp dir standing in for /run/pr1d; nothing else should set it.
SYSTEMD_RUNTIME_DIR = Path("/run/pr1d")
SOCKET_NAME = "pr1d.sock"


@dataclass(frozen=True)
class Candidate:
    """One place a client looks for the daemon: where the idea came from, the path, or why it was skipped."""

    source: str
    path: Path | None
    skipped: str = ""


def socket_candidates(flag: str | None, environ: Mapping[str, str], config: list[Candidate],
                      user_default: Path) -> list[Candidate]:
    """The ordered places to look: --socket, $PR1_SOCKET, the config, /run/pr1d/pr1d.sock, the per-user default.

    An explicit choice (--socket or $PR1_SOCKET) is the only candidate: a client told where to go
    must not quietly talk to some other daemon. ``config`` is what reading the config gave (a path,
    or a skipped entry saying why it could not be read). Paths already listed are not repeated.
    """
    if flag:
        return [Candidate("--socket", Path(flag))]
    if environ.get("PR1_SOCKET"):
        return [Candidate("$PR1_SOCKET", Path(environ["PR1_SOCKET"]))]
    runtime = Path(environ.get("PR1_RUNTIME_DIR") or SYSTEMD_RUNTIME_DIR)
    out: list[Candidate] = []
    seen: set[Path] = set()
    for c in [*config, Candidate("systemd unit (RuntimeDirectory=pr1d)", runtime / SOCKET_NAME),
              Candidate("per-user default", user_default)]:
        if c.path is not None and c.path in seen:
            continue
        if c.path is not None:
            seen.add(c.path)
        out.append(c)
    return out


def _config_candidates(config_path: str | None, environ: Mapping[str, str]) -> list[Candidate]:
    """Read the config the way the daemon would, for its socket path; an unreadable file is skipped, not fatal.

    An explicit --config that is broken is still an error (ConfigError): the user named it.
    """
    from ..config import SYSTEM_CONFIG, ConfigError, default_socket_path, load_config

    files = [Path(config_path)] if config_path else ([Path(environ["PR1_CONFIG"])] if environ.get("PR1_CONFIG") else [])
    out: list[Candidate] = []
    use_system = not environ.get("PR1_NO_SYSTEM_CONFIG")
    if use_system:
        try:
            with open(SYSTEM_CONFIG, "rb"):
                pass
        except FileNotFoundError:
            use_system = False
        except OSError as e:
            # /etc/pr1d is 0750 root:pr1d: an on-call user outside that group cannot read it.
            why = "permission denied" if isinstance(e, PermissionError) else (e.strerror or str(e))
            out.append(Candidate(f"config {SYSTEM_CONFIG}", None, f"{why}: not read"))
            use_system = False
    try:
        cfg = load_config(files, environ=dict(environ), use_system=use_system)
    except ConfigError as e:
        if config_path:
            raise
        label = ", ".join(map(str, files)) or "PR1_* environment"
        return [*out, Candidate(f"config {label}", None, str(e).splitlines()[0])]
    read = [*([str(SYSTEM_CONFIG)] if use_system else []), *map(str, files)]
    path = cfg.socket()
    # With no file read, the config is built-in defaults (plus PR1_* variables): unless those moved the
    # socket, it is the per-user default, which comes after /run/pr1d.
    if read or path != default_socket_path(None):
        out.append(Candidate("config " + (", ".join(read) or "PR1_* environment"), path))
    return out


def probe_socket(path: Path, timeout: float = 2.0) -> str | None:
    """None when a daemon accepts on ``path``; else why not, in the words the error lists."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        return None
    except FileNotFoundError:
        return "missing"
    except PermissionError:
        return "permission denied (is your user in the pr1-viewers group?)"
    except ConnectionRefusedError:
        return "connection refused (a stale socket: the daemon is not running)"
    except TimeoutError:
        return "timed out (the daemon is not accepting connections)"
    except OSError as e:
        return e.strerror or str(e)
    finally:
        s.close()


class NoDaemonFound(DaemonUnreachable):
    """No candidate socket answered: the message lists each place tried and why it failed."""

    def __init__(self, tried: list[tuple[Candidate, str]]):
        lines = ["pr1d is not reachable; tried:"]
        for c, why in tried:
            lines.append(f"  {c.path if c.path is not None else '-'}  ({c.source}): {why}")
        lines.append("Is the daemon running? `systemctl status pr1d`; or name the socket with --socket or PR1_SOCKET.")
        Exception.__init__(self, "\n".join(lines))
        self.path = next((c.path for c, _ in tried if c.path is not None), Path(SOCKET_NAME))
        self.tried = tried


def find_socket(flag: str | None = None, config_path: str | None = None, *, environ: Mapping[str, str] | None = None,
                require_answer: bool = True) -> Path:
    """The first candidate of :func:`socket_candidates` where a daemon answers.

    An explicit --socket / $PR1_SOCKET is returned as is (the client's own connect error names it).
    Otherwise, when none answers: NoDaemonFound, or with ``require_answer=False`` (the console, which
    retries until the daemon comes up) the first candidate whose socket file exists, else the first
    whose directory exists, else the per-user default.
    """
    from ..config import DaemonConfig

    env = os.environ if environ is None else environ
    if flag or env.get("PR1_SOCKET"):
        return socket_candidates(flag, env, [], Path())[0].path  # type: ignore[return-value]
    user_default = Path(os.path.expanduser(DaemonConfig().state_dir)) / SOCKET_NAME
    cands = socket_candidates(None, env, _config_candidates(config_path, env), user_default)
    tried: list[tuple[Candidate, str]] = []
    for c in cands:
        if c.path is None:
            tried.append((c, c.skipped))
            continue
        why = probe_socket(c.path)
        if why is None:
            return c.path
        tried.append((c, why))
    if not require_answer:
        paths = [c.path for c in cands if c.path is not None]
        # Where a daemon is most likely to appear: a socket file left there, else a directory made
        # for one (/run/pr1d exists on a systemd install), else the per-user default.
        return next((p for p in paths if p.exists()), next((p for p in paths if p.parent.is_dir()), paths[-1]))
    raise NoDaemonFound(tried)


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
