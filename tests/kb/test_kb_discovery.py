"""create_service_discovery(): endpoints from config, environment and compose names, and its errors, as tables."""

from __future__ import annotations

import socket

import pytest

from pr1d.kb.config import DockerInfrastructureConfig, KBConfig
from pr1d.kb.discovery import DiscoveryError, create_service_discovery, redact_url


def resolver(known: set[str]):
    """A getaddrinfo stand-in: only `known` host names resolve."""

    def resolve(host: str, port: int):
        if host not in known:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.2", port))]

    return resolve


NOTHING = resolver(set())
COMPOSE = resolver({"postgres", "weaviate", "redis"})


@pytest.mark.parametrize(
    ("cfg", "env", "resolve", "expected"),
    [
        # The DSN variable wins, and the source names it.
        ({}, {"DATABASE_URL": "postgresql://u:pw@db.internal:6543/kb", "POSTGRES_HOST": "other"}, NOTHING,
         ("db.internal", 6543, "postgresql://u:pw@db.internal:6543/kb", "env DATABASE_URL")),
        # A renamed DSN variable.
        ({"postgres_dsn_env": "KB_DSN"}, {"KB_DSN": "postgresql://u@h/kb", "DATABASE_URL": "postgresql://x@y/z"},
         NOTHING, ("h", 5432, "postgresql://u@h/kb", "env KB_DSN")),
        ({}, {"PR1_POSTGRES_DSN": "postgres://u@h:1/d"}, NOTHING, ("h", 1, "postgres://u@h:1/d", "env PR1_POSTGRES_DSN")),
        # Config host, password from the environment (never from config).
        ({"postgres_host": "pg.lan", "postgres_user": "kb", "postgres_database": "kbdb"},
         {"POSTGRES_PASSWORD": "p@ss word"}, NOTHING,
         ("pg.lan", 5432, "postgresql://kb:p%40ss%20word@pg.lan:5432/kbdb", "config kb.postgres_host")),
        # POSTGRES_* parts.
        ({}, {"POSTGRES_HOST": "10.1.1.1", "POSTGRES_PORT": "5433", "POSTGRES_USER": "app", "POSTGRES_DB": "a"},
         NOTHING, ("10.1.1.1", 5433, "postgresql://app@10.1.1.1:5433/a", "env POSTGRES_HOST")),
        # Compose: the service name resolves.
        ({}, {"PR1_COMPOSE": "1", "POSTGRES_PASSWORD": "pw"}, COMPOSE,
         ("postgres", 5432, "postgresql://postgres:pw@postgres:5432/postgres", "compose service postgres")),
        ({"docker": {"enabled": True, "postgres_service": "db", "postgres_port": 15432}}, {}, resolver({"db"}),
         ("db", 15432, "postgresql://postgres@db:15432/postgres", "compose service db")),
    ],
)
def test_postgres_endpoint(cfg, env, resolve, expected):
    ep = create_service_discovery(KBConfig(store="pgvector", **cfg), env, resolve=resolve).postgres
    assert (ep.host, ep.port, ep.dsn, ep.source) == expected


def test_password_file_from_env_and_config(tmp_path):
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    ep = create_service_discovery(KBConfig(store="pgvector", postgres_host="h"), {"POSTGRES_PASSWORD_FILE": str(f)}).postgres
    assert ep.dsn == "postgresql://postgres:from-file@h:5432/postgres"
    cfg = KBConfig(store="pgvector", postgres_host="h", postgres_password_file=str(f))
    assert create_service_discovery(cfg, {}).postgres.dsn == "postgresql://postgres:from-file@h:5432/postgres"
    with pytest.raises(DiscoveryError, match="POSTGRES_PASSWORD_FILE: cannot read"):
        create_service_discovery(cfg, {"POSTGRES_PASSWORD_FILE": str(tmp_path / "missing")})


def test_missing_postgres_names_every_place_tried():
    with pytest.raises(DiscoveryError) as e:
        create_service_discovery(KBConfig(store="pgvector"), {}, resolve=NOTHING)
    msg = str(e.value)
    assert "kb.store = 'pgvector' but no PostgreSQL endpoint" in msg
    for place in ("env DATABASE_URL (unset)", "env PR1_POSTGRES_DSN (unset)", "kb.postgres_host (empty)",
                  "env POSTGRES_HOST (unset)", "compose off: set kb.docker.enabled = true or PR1_COMPOSE=1"):
        assert place in msg
    # Compose on, but the service name does not resolve: said so.
    with pytest.raises(DiscoveryError, match="compose service 'postgres' \\(does not resolve\\)"):
        create_service_discovery(KBConfig(store="pgvector"), {"PR1_COMPOSE": "true"}, resolve=NOTHING)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": "mysql://x@y/z"}, "env DATABASE_URL must be a postgresql:// URL"),
        ({"POSTGRES_HOST": "h", "POSTGRES_PORT": "http"}, "POSTGRES_PORT='http' is not a port number"),
        ({"POSTGRES_HOST": "h", "POSTGRES_PORT": "70000"}, "not a port number"),
    ],
)
def test_malformed_postgres_settings(env, message):
    with pytest.raises(DiscoveryError, match=message):
        create_service_discovery(KBConfig(store="pgvector"), env)


@pytest.mark.parametrize(
    ("cfg", "env", "resolve", "expected"),
    [
        ({"weaviate_url": "http://wv:8081"}, {"WEAVIATE_URL": "http://other:8080"}, NOTHING,
         ("wv", 8081, "http://wv:8081", "config kb.weaviate_url", 50051)),
        ({}, {"WEAVIATE_URL": "https://wv.example.org/", "WEAVIATE_GRPC_PORT": "443"}, NOTHING,
         ("wv.example.org", 443, "https://wv.example.org", "env WEAVIATE_URL", 443)),
        ({"docker": {"enabled": True}}, {}, COMPOSE,
         ("weaviate", 8080, "http://weaviate:8080", "compose service weaviate", 50051)),
    ],
)
def test_weaviate_endpoint(cfg, env, resolve, expected):
    ep = create_service_discovery(KBConfig(store="weaviate", **cfg), env, resolve=resolve).weaviate
    assert (ep.host, ep.port, ep.url, ep.source, ep.grpc_port) == expected


def test_missing_weaviate_is_an_error_only_when_selected():
    with pytest.raises(DiscoveryError, match="no Weaviate endpoint.*Set WEAVIATE_URL"):
        create_service_discovery(KBConfig(store="weaviate"), {}, resolve=NOTHING)
    eps = create_service_discovery(KBConfig(store="sqlite"), {}, resolve=NOTHING)
    assert (eps.postgres, eps.weaviate, eps.redis, eps.compose) == (None, None, None, False)


@pytest.mark.parametrize(
    ("cfg", "env", "resolve", "expected"),
    [
        ({"redis_url": "redis://cache:6380/2"}, {"REDIS_URL": "redis://x"}, NOTHING,
         ("cache", 6380, "config kb.redis_url")),
        ({}, {"REDIS_URL": "redis://:pw@r.lan/0"}, NOTHING, ("r.lan", 6379, "env REDIS_URL")),
        ({}, {"PR1_COMPOSE": "yes"}, COMPOSE, ("redis", 6379, "compose service redis")),
        ({}, {}, COMPOSE, None),  # compose off: names are not even tried
    ],
)
def test_redis_endpoint_is_optional(cfg, env, resolve, expected):
    ep = create_service_discovery(KBConfig(**cfg), env, resolve=resolve).redis
    assert (ep and (ep.host, ep.port, ep.source)) == expected


def test_passwords_never_show_in_repr_or_describe():
    env = {"DATABASE_URL": "postgresql://u:topsecret@db/kb", "REDIS_URL": "redis://:hunter2@r:6379/0"}
    eps = create_service_discovery(KBConfig(store="pgvector"), env)
    text = repr(eps) + repr(eps.describe())
    assert "topsecret" not in text and "hunter2" not in text
    assert eps.describe()["postgres"]["url"] == "postgresql://u:***@db/kb"
    assert redact_url("redis://r:6379/0") == "redis://r:6379/0"


def test_compose_service_names_are_config():
    d = DockerInfrastructureConfig()
    assert (d.postgres_service, d.weaviate_service, d.redis_service) == ("postgres", "weaviate", "redis")
    with pytest.raises(ValueError):
        KBConfig(docker={"enabled": True, "typo": 1})


def test_real_resolver_finds_localhost_as_a_compose_name():
    cfg = KBConfig(store="pgvector", docker={"enabled": True, "postgres_service": "localhost"})
    assert create_service_discovery(cfg, {}).postgres.source == "compose service localhost"
