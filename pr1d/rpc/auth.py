"""Who is calling: SO_PEERCRED uid -> Unix user -> role (operator, reader, or refused)."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
import time
from dataclasses import dataclass

from ..config import AuthConfig


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    user: str
    role: str | None  # "operator" | "reader" | None (refused)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket, from the kernel."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


class RoleResolver:
    """Maps a uid to a role from config; group look-ups are cached briefly (NSS can be slow)."""

    CACHE_S = 30.0

    def __init__(self, auth: AuthConfig, daemon_uid: int | None = None):
        self.auth = auth
        self.daemon_uid = os.getuid() if daemon_uid is None else daemon_uid
        self._cache: dict[int, tuple[float, str, str | None]] = {}

    def update(self, auth: AuthConfig) -> None:
        self.auth = auth
        self._cache.clear()

    def _groups(self, uid: int, name: str) -> set[str]:
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:
            return set()
        names = set()
        for gid in os.getgrouplist(name, pw.pw_gid):
            try:
                names.add(grp.getgrgid(gid).gr_name)
            except KeyError:
                continue
        return names

    def resolve(self, uid: int) -> tuple[str, str | None]:
        hit = self._cache.get(uid)
        now = time.monotonic()
        if hit and now - hit[0] < self.CACHE_S:
            return hit[1], hit[2]
        name = user_name(uid)
        role: str | None = None
        if uid == self.daemon_uid or name in self.auth.operator_users:
            role = "operator"
        else:
            groups = self._groups(uid, name)
            if groups & set(self.auth.operator_groups):
                role = "operator"
            elif name in self.auth.reader_users or groups & set(self.auth.reader_groups):
                role = "reader"
        self._cache[uid] = (now, name, role)
        return name, role
