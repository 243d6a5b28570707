"""The daemon's handler table comes from the schema, and the daemon names every ledger call it makes.

pr1d/daemon/handlers.py answers each method of pr1d/rpc/schema.py's METHODS with the method of the same
name (dots as underscores); a method without a handler, or a handler without a method, stops the daemon
as it starts. Ledger calls go by reference (``db_call(self.ledger.get_agent, ...)``), never by a string
that tools cannot follow.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest

from pr1d.config import load_config
from pr1d.daemon.core import Daemon
from pr1d.daemon.handlers import HandlerMismatch, Handlers, check_handlers, handler_name
from pr1d.rpc import schema

ROOT = Path(__file__).resolve().parents[2]


def _public_coroutines(cls: type) -> set[str]:
    return {n for n, f in vars(cls).items() if not n.startswith("_") and inspect.iscoroutinefunction(f)}


def test_every_schema_method_has_a_handler_and_every_handler_a_method():
    check_handlers()
    assert _public_coroutines(Handlers) == {handler_name(m) for m in schema.METHODS}


@pytest.mark.parametrize(("method", "handler"), [
    ("status", "status"), ("runs.show", "runs_show"), ("monitor.triggers", "monitor_triggers"),
])
def test_handler_names_follow_the_method_names(method, handler):
    assert handler_name(method) == handler


def test_the_table_maps_each_method_to_its_handler():
    d = SimpleNamespace(ledger=object(), registry=object(), state_dir=Path("/nonexistent"), db_call=None,
                        publish=None, stopping=None, wakeup=None)
    h = Handlers(d)
    table = h.table()
    assert list(table) == list(schema.METHODS)
    for method, fn in table.items():
        assert fn.__wrapped__ == getattr(h, handler_name(method)), method  # wrapped only to map errors


def test_a_schema_method_without_a_handler_is_named():
    spec = schema.MethodSpec(params=schema.NoParams, role="reader", doc="new")
    with pytest.raises(HandlerMismatch, match=r"'runs\.frobnicate' has no handler \(expected Handlers\.runs_frobnicate\)"):
        check_handlers(methods={**schema.METHODS, "runs.frobnicate": spec})


def test_a_handler_without_a_schema_method_is_named():
    class Extra(Handlers):
        async def runs_frobnicate(self, conn, p):
            return {}

        async def _helper(self):  # private: not a handler
            return None

    with pytest.raises(HandlerMismatch, match=r"Extra\.runs_frobnicate answers no schema method"):
        check_handlers(Extra)


def test_the_daemon_refuses_to_start_when_they_disagree(tmp_path, monkeypatch):
    cfg = load_config([], environ={"PR1_NO_SYSTEM_CONFIG": "1"},
                      overrides={"daemon": {"state_dir": str(tmp_path), "socket_path": str(tmp_path / "s")}})
    Daemon(cfg)  # they agree: it constructs
    monkeypatch.setitem(schema.METHODS, "runs.frobnicate",
                        schema.MethodSpec(params=schema.NoParams, role="reader", doc="new"))
    with pytest.raises(HandlerMismatch, match="runs.frobnicate"):
        Daemon(cfg)


# -- ledger calls by reference -------------------------------------------------------------------------------

def _string_named_ledger_calls(tree: ast.AST) -> list[int]:
    """Lines calling something with a method name as a string: ``x.db("get_agent", ...)``, or ``getattr`` on a
    ledger (``getattr(self.ledger, name)``)."""
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        f, first = node.func, node.args[0]
        if (isinstance(f, ast.Attribute) and f.attr in ("db", "db_call") and isinstance(first, ast.Constant)
                and isinstance(first.value, str)):
            bad.append(node.lineno)
        elif isinstance(f, ast.Name) and f.id == "getattr" and "ledger" in ast.unparse(first).lower():
            bad.append(node.lineno)
    return bad


def test_no_ledger_method_is_called_by_name():
    bad = [f"{f.relative_to(ROOT)}:{line}" for f in sorted((ROOT / "pr1d").rglob("*.py"))
           for line in _string_named_ledger_calls(ast.parse(f.read_text(), str(f)))]
    assert not bad, "call ledger methods by reference (db_call(self.ledger.name, ...)):\n" + "\n".join(bad)
    assert not hasattr(Daemon, "db"), "the string-named Daemon.db() helper is gone; use db_call"


@pytest.mark.parametrize("src", [
    'await self.db("get_agent", a)',
    "await self.db_call(getattr(self.ledger, name), a)",
    "getattr(ledger, 'stages')(1)",
])
def test_the_scan_finds_string_named_calls(src):
    assert _string_named_ledger_calls(ast.parse(src)) == [1]


def test_the_scan_passes_calls_by_reference():
    assert _string_named_ledger_calls(ast.parse("await self.db_call(self.ledger.get_agent, a)")) == []
