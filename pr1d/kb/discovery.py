"""`create_service_discovery()`: where PostgreSQL, Weaviate and Redis are, from config, environment and compose names.

Each service is looked up in a fixed order; the first place that names it wins, and the endpoint
records which place that was (`source`), so `pr1ctl` and the logs can say why pr1 talks to a host:

| service    | 1st                                   | 2nd                         | 3rd                          | 4th |
|------------|---------------------------------------|-----------------------------|------------------------------|-----|
| PostgreSQL | env `kb.postgres_dsn_env` (DATABASE_URL), then PR1_POSTGRES_DSN | config `kb.postgres_host` | env POSTGRES_HOST (+PORT, USER, DB) | compose service |
| Weaviate   | config `kb.weaviate_url`              | env WEAVIATE_URL            | compose service              |     |
| Redis      | config `kb.redis_url`                 | env REDIS_URL               | compose service              |     |

The DSN variable comes first because it is the conventional way to hand a full connection string
(password included) to a process; `postgres_host` and POSTGRES_* build one from parts with the
password from POSTGRES_PASSWORD, POSTGRES_PASSWORD_FILE or `kb.postgres_password_file` (never config).
Compose names ("postgres", "weaviate", "redis", see `DockerInfrastructureConfig`) are tried only when
`kb.docker.enabled` or `PR1_COMPOSE=1`, and only count when they resolve (`socket.getaddrinfo`).

The store selected by `kb.store` must have an endpoint, else `DiscoveryError` lists every place that was
tried and what to set. Redis is optional: none found means the in-process LRU cache.
Nothing here connects to anything; only stdlib is imported.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from .config import KBConfig
from .protocol import KBError

TRUE = {"1", "true", "yes", "on"}


class DiscoveryError(KBError):
    """A required service endpoint could not be found; the message says where pr1 looked."""


@dataclass(frozen=True)
class Endpoint:
    """One service endpoint. `url` is the DSN for PostgreSQL; it may hold a password, so it is kept out of repr."""

    service: str
    host: str
    port: int | None
    url: str = field(repr=False)
    source: str
    grpc_port: int | None = None

    @property
    def dsn(self) -> str:
        return self.url

    @property
    def safe_url(self) -> str:
        """The URL with any password replaced by ***."""
        return redact_url(self.url)

    def describe(self) -> dict[str, Any]:
        d = {"service": self.service, "host": self.host, "port": self.port, "url": self.safe_url, "source": self.source}
        if self.grpc_port is not None:
            d["grpc_port"] = self.grpc_port
        return d


@dataclass(frozen=True)
class ServiceEndpoints:
    """What discovery found; None where a service was not found (only allowed for unselected ones)."""

    postgres: Endpoint | None
    weaviate: Endpoint | None
    redis: Endpoint | None
    compose: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            name: (ep.describe() if ep else None)
            for name, ep in (("postgres", self.postgres), ("weaviate", self.weaviate), ("redis", self.redis))
        } | {"compose": self.compose}


def redact_url(url: str) -> str:
    try:
        u = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if u.password is None:
        return url
    netloc = u.netloc.replace(f":{u.password}@", ":***@", 1)
    return urlunsplit(u._replace(netloc=netloc))


Resolver = Callable[[str, int], Any]


def _resolves(resolve: Resolver, host: str, port: int) -> bool:
    try:
        resolve(host, port)
        return True
    except (OSError, UnicodeError):  # socket.gaierror is an OSError
        return False


def _port(value: str, name: str) -> int:
    try:
        p = int(value)
    except ValueError:
        raise DiscoveryError(f"env {name}={value!r} is not a port number") from None
    if not 1 <= p <= 65535:
        raise DiscoveryError(f"env {name}={value} is not a port number (1-65535)")
    return p


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    u = urlsplit(url)
    try:
        port = u.port
    except ValueError:
        raise DiscoveryError(f"{redact_url(url)}: bad port") from None
    return u.hostname or "", port or default_port


def _postgres_password(cfg: KBConfig, env: Mapping[str, str]) -> tuple[str | None, str]:
    """(password, where from). Secrets only come from the environment or a file."""
    if env.get("POSTGRES_PASSWORD"):
        return env["POSTGRES_PASSWORD"], "env POSTGRES_PASSWORD"
    for path, label in ((env.get("POSTGRES_PASSWORD_FILE", ""), "env POSTGRES_PASSWORD_FILE"),
                        (cfg.postgres_password_file, "kb.postgres_password_file")):
        if path:
            try:
                return Path(path).expanduser().read_text().strip(), f"{label} ({path})"
            except OSError as e:
                raise DiscoveryError(f"{label}: cannot read {path}: {e.strerror}") from None
    return None, ""


def _pg_dsn(user: str, password: str | None, host: str, port: int, db: str) -> str:
    auth = quote(user, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    # IPv6 literals need brackets inside a URL.
    h = f"[{host}]" if ":" in host else host
    return f"postgresql://{auth}@{h}:{port}/{quote(db, safe='')}"


def _find_postgres(cfg: KBConfig, env: Mapping[str, str], compose: bool, resolve: Resolver,
                   tried: list[str]) -> Endpoint | None:
    for name in dict.fromkeys([cfg.postgres_dsn_env, "PR1_POSTGRES_DSN"]):
        dsn = env.get(name, "").strip()
        if dsn:
            if not dsn.startswith(("postgresql://", "postgres://")):
                raise DiscoveryError(f"env {name} must be a postgresql:// URL, got {redact_url(dsn)!r}")
            host, port = _host_port(dsn, 5432)
            return Endpoint("postgres", host or "local-socket", port, dsn, f"env {name}")
        tried.append(f"env {name} (unset)")

    def from_parts(host: str, port: int, user: str, db: str, source: str) -> Endpoint:
        password, _ = _postgres_password(cfg, env)
        return Endpoint("postgres", host, port, _pg_dsn(user, password, host, port, db), source)

    if cfg.postgres_host:
        return from_parts(cfg.postgres_host, cfg.postgres_port, cfg.postgres_user, cfg.postgres_database,
                          "config kb.postgres_host")
    tried.append("config kb.postgres_host (empty)")
    if env.get("POSTGRES_HOST"):
        port = _port(env["POSTGRES_PORT"], "POSTGRES_PORT") if env.get("POSTGRES_PORT") else 5432
        return from_parts(env["POSTGRES_HOST"], port, env.get("POSTGRES_USER") or cfg.postgres_user,
                          env.get("POSTGRES_DB") or cfg.postgres_database, "env POSTGRES_HOST")
    tried.append("env POSTGRES_HOST (unset)")
    d = cfg.docker
    if compose and _resolves(resolve, d.postgres_service, d.postgres_port):
        return from_parts(d.postgres_service, d.postgres_port, env.get("POSTGRES_USER") or cfg.postgres_user,
                          env.get("POSTGRES_DB") or cfg.postgres_database, f"compose service {d.postgres_service}")
    tried.append(_compose_note(compose, d.postgres_service))
    return None


def _compose_note(compose: bool, service: str) -> str:
    if not compose:
        return f"compose service {service!r} (compose off: set kb.docker.enabled = true or PR1_COMPOSE=1)"
    return f"compose service {service!r} (does not resolve)"


def _find_weaviate(cfg: KBConfig, env: Mapping[str, str], compose: bool, resolve: Resolver,
                   tried: list[str]) -> Endpoint | None:
    grpc_port = int(env["WEAVIATE_GRPC_PORT"]) if env.get("WEAVIATE_GRPC_PORT", "").isdigit() else cfg.weaviate_grpc_port
    for url, source in ((cfg.weaviate_url, "config kb.weaviate_url"), (env.get("WEAVIATE_URL", ""), "env WEAVIATE_URL")):
        if url:
            if not url.startswith(("http://", "https://")):
                raise DiscoveryError(f"{source} must start with http:// or https://, got {url!r}")
            host, port = _host_port(url, 443 if url.startswith("https") else 80)
            return Endpoint("weaviate", host, port, url.rstrip("/"), source, grpc_port=grpc_port)
        tried.append(f"{source} ({'empty' if source.startswith('config') else 'unset'})")
    d = cfg.docker
    if compose and _resolves(resolve, d.weaviate_service, d.weaviate_port):
        url = f"http://{d.weaviate_service}:{d.weaviate_port}"
        return Endpoint("weaviate", d.weaviate_service, d.weaviate_port, url, f"compose service {d.weaviate_service}",
                        grpc_port=d.weaviate_grpc_port)
    tried.append(_compose_note(compose, d.weaviate_service))
    return None


def _find_redis(cfg: KBConfig, env: Mapping[str, str], compose: bool, resolve: Resolver,
                tried: list[str]) -> Endpoint | None:
    for url, source in ((cfg.redis_url, "config kb.redis_url"), (env.get("REDIS_URL", ""), "env REDIS_URL")):
        if url:
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise DiscoveryError(f"{source} must start with redis://, rediss:// or unix://, got {redact_url(url)!r}")
            host, port = _host_port(url, 6379) if not url.startswith("unix://") else (urlsplit(url).path, None)
            return Endpoint("redis", host, port, url, source)
        tried.append(f"{source} ({'empty' if source.startswith('config') else 'unset'})")
    d = cfg.docker
    if compose and _resolves(resolve, d.redis_service, d.redis_port):
        return Endpoint("redis", d.redis_service, d.redis_port, f"redis://{d.redis_service}:{d.redis_port}/0",
                        f"compose service {d.redis_service}")
    tried.append(_compose_note(compose, d.redis_service))
    return None


def create_service_discovery(
    cfg: KBConfig,
    environ: Mapping[str, str] | None = None,
    *,
    resolve: Resolver | None = None,
) -> ServiceEndpoints:
    """Resolve the endpoints of PostgreSQL, Weaviate and Redis; raise DiscoveryError if the selected store has none.

    `environ` defaults to `os.environ`; `resolve(host, port)` to `socket.getaddrinfo` (tests pass their own).
    """
    env = os.environ if environ is None else environ
    resolve = resolve or (lambda host, port: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    compose = cfg.docker.enabled or env.get("PR1_COMPOSE", "").strip().lower() in TRUE
    tried: dict[str, list[str]] = {"postgres": [], "weaviate": [], "redis": []}
    pg = _find_postgres(cfg, env, compose, resolve, tried["postgres"])
    wv = _find_weaviate(cfg, env, compose, resolve, tried["weaviate"])
    rd = _find_redis(cfg, env, compose, resolve, tried["redis"])
    if cfg.store == "pgvector" and pg is None:
        raise DiscoveryError(
            "kb.store = 'pgvector' but no PostgreSQL endpoint was found. Tried: " + "; ".join(tried["postgres"])
            + f". Set {cfg.postgres_dsn_env} to a postgresql:// DSN, or kb.postgres_host / POSTGRES_HOST, "
            "or run under compose with a 'postgres' service."
        )
    if cfg.store == "weaviate" and wv is None:
        raise DiscoveryError(
            "kb.store = 'weaviate' but no Weaviate endpoint was found. Tried: " + "; ".join(tried["weaviate"])
            + ". Set WEAVIATE_URL (http://host:8080) or kb.weaviate_url, or run under compose with a 'weaviate' service."
        )
    return ServiceEndpoints(postgres=pg, weaviate=wv, redis=rd, compose=compose)
