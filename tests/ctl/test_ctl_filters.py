"""pr1ctl list filters: an unknown state, kind, entity or agent is an error naming what is allowed, never an empty list."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from pr1d import ctl
from pr1d.rpc import schema
from pr1d.rpc.client import Client


@pytest.mark.parametrize("model,field,value,ok", [
    (schema.RunsListParams, "state", "awaiting_approval", True),
    (schema.RunsListParams, "state", "awaiting-approval", False),
    (schema.RunsListParams, "state", "bogus", False),
    (schema.RunsListParams, "kind", "targeted-sft", True),
    (schema.RunsListParams, "kind", "bogus", False),
    (schema.AuditParams, "entity", "run", True),
    (schema.AuditParams, "entity", "model_version", True),
    (schema.AuditParams, "entity", "bogus", False),
])
def test_filter_values_at_the_schema(model, field, value, ok):
    if ok:
        assert getattr(model.model_validate({field: value}), field) == value
        return
    with pytest.raises(ValidationError) as e:
        model.model_validate({field: value})
    assert "allowed:" in str(e.value) and repr(value) in str(e.value)


def test_filter_lists_match_their_sources():
    from pr1d.ledger.states import RunState
    from pr1d.pipeline.plans import PLANS

    assert set(schema.RUN_STATES) == {s.value for s in RunState}
    assert set(schema.RUN_KINDS) == set(PLANS)


@pytest.mark.parametrize("args,ok", [
    (["runs", "--limit", str(schema.RUNS_LIST_MAX)], True),
    (["runs", "--limit", str(schema.RUNS_LIST_MAX + 1)], False),
    (["runs", "--limit", "2000"], False),
    (["runs", "--state", "awaiting-approval"], False),
    (["runs", "--state", "awaiting_approval"], True),
    (["runs", "--kind", "bogus"], False),
    (["audit", "--entity", "bogus"], False),
    (["audit", "--entity", "deployment"], True),
])
def test_client_rejects_what_the_daemon_would(args, ok, capsys):
    p = ctl.build_parser()
    if ok:
        assert isinstance(p.parse_args(args), argparse.Namespace)
        return
    with pytest.raises(SystemExit) as e:
        p.parse_args(args)
    assert e.value.code == 2


def test_daemon_says_invalid_params_and_no_such_agent(daemon):
    with Client(str(daemon.socket)) as c:
        for method, params in (("runs.list", {"state": "bogus"}), ("runs.list", {"kind": "bogus"}),
                               ("audit.list", {"entity": "bogus"})):
            with pytest.raises(schema.RpcError) as e:
                c.call(method, **params)
            assert e.value.code == schema.INVALID_PARAMS and "allowed:" in e.value.message, (method, e.value)
    for cmd in ("triggers", "deployments", "hold"):
        cp = daemon.ctl(cmd, "nosuchagent", check=False)
        assert cp.returncode == 1 and "no such agent: nosuchagent" in cp.stderr, (cmd, cp.stderr)
    assert daemon.ctl("triggers", "a1").returncode == 0
    assert daemon.ctl("deployments", "a1").returncode == 0


def test_status_lines_table():
    base = {"scoreboard": {"alerts": [], "url": None, "error": "port 9464 in use"},
            "registry": {"pending_pushes": [{"agent": "a2"}, {"agent": "a1"}],
                         "approvals": [{"run": 7, "agent": "a1"}]},
            "notify": {"webhooks": [{"name": "ops", "sent": 3, "failed": 1, "dropped": 0, "queued": 2,
                                     "last_error": "HTTP 500"}]}}
    assert dict(ctl.status_lines(base)) == {
        "/metrics": "not listening: port 9464 in use",
        "pending pushes": "2: a1, a2",
        "pending approvals": "1: run 7 (a1)",
        "webhook ops": "sent 3, failed 1, dropped 0, queued 2, last error: HTTP 500",
    }
    on = dict(ctl.status_lines({"scoreboard": {"url": "http://127.0.0.1:9464/metrics"}, "registry": None,
                                "notify": None}))
    assert on == {"/metrics": "http://127.0.0.1:9464/metrics", "pending pushes": "0", "pending approvals": "0",
                  "webhooks": "none"}
    assert dict(ctl.status_lines({}))["/metrics"] == "off"


def test_audit_entities_cover_every_entity_the_code_writes():
    """A new audit entity in the code without its name here would make `pr1ctl audit --entity` refuse it."""
    import re
    from pathlib import Path

    from pr1d.rpc.schema import AUDIT_ENTITIES

    root = Path(__file__).resolve().parents[2] / "pr1d"
    calls = re.compile(r'(?:\.audit\(|_audit\(s,|db_call\(self\.ledger\.audit,)\s*[^,()]+,\s*"[a-z_]+",\s*"([a-z_]+)"')
    written = {m.group(1) for f in root.rglob("*.py") for m in calls.finditer(f.read_text())}
    assert {"run", "stage", "kb", "deployment"} <= written, written  # the pattern still finds the calls
    assert written <= set(AUDIT_ENTITIES), written - set(AUDIT_ENTITIES)
