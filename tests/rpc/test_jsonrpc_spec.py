"""JSON-RPC 2.0 as written: every example of the specification's section 7, replayed on the daemon's socket.

The spec's methods (subtract, sum, update, get_data, ...) are not ours: each is replaced by a read-only
method of ours taking params of the same shape (positional `[]`, named `{...}`, none); the error cases
keep the spec's exact bytes. Also: operator methods sent as notifications are not executed.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from pr1d.rpc import schema

SENTINEL_ID = "sentinel"


class Raw:
    """One raw connection: send a line, read reply lines; `no_reply()` proves silence with a follow-up call."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(str(path))
        self.s.settimeout(10)
        self.buf = b""

    def send(self, text: str | bytes) -> None:
        self.s.sendall((text.encode() if isinstance(text, str) else text) + b"\n")

    def reply(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(1 << 16)
            assert chunk, "daemon closed the connection"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def no_reply(self) -> None:
        # Requests on one connection are answered in order, so if the next line is the sentinel's
        # answer, nothing was sent for what came before.
        self.send(json.dumps({"jsonrpc": "2.0", "method": "whoami", "id": SENTINEL_ID}))
        got = self.reply()
        assert got.get("id") == SENTINEL_ID and "result" in got, f"expected no reply, got {got}"

    def close(self) -> None:
        self.s.close()


@pytest.fixture
def raw(daemon):
    r = Raw(daemon.socket)
    yield r
    r.close()


def _error(msg, code, id_):
    assert msg["jsonrpc"] == "2.0" and "result" not in msg, msg
    assert msg["error"]["code"] == code and msg["id"] == id_, msg


def _result(msg, id_):
    assert msg["jsonrpc"] == "2.0" and "error" not in msg and msg["id"] == id_, msg
    return msg["result"]


def test_rpc_call_with_positional_parameters(raw, daemon):
    # --> {"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}
    raw.send('{"jsonrpc": "2.0", "method": "status", "params": [], "id": 1}')
    assert _result(raw.reply(), 1)["pid"] == daemon.proc.pid
    # A method that takes params wants them by name: positional ones are invalid params, not a crash.
    raw.send('{"jsonrpc": "2.0", "method": "runs.show", "params": [42], "id": 2}')
    _error(raw.reply(), schema.INVALID_PARAMS, 2)


def test_rpc_call_with_named_parameters(raw):
    # --> {"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}
    raw.send('{"jsonrpc": "2.0", "method": "runs.list", "params": {"limit": 1, "agent": "a1"}, "id": 3}')
    assert isinstance(_result(raw.reply(), 3), (list, dict))
    # --> {"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}
    raw.send('{"jsonrpc": "2.0", "method": "runs.list", "params": {"agent": "a1", "limit": 1}, "id": 4}')
    assert isinstance(_result(raw.reply(), 4), (list, dict))


def test_a_notification(raw):
    # --> {"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}
    raw.send('{"jsonrpc": "2.0", "method": "status", "params": []}')
    raw.no_reply()
    # --> {"jsonrpc": "2.0", "method": "foobar"}  (not a method: still no reply, the spec forbids one)
    raw.send('{"jsonrpc": "2.0", "method": "foobar"}')
    raw.no_reply()
    # Invalid params in a notification: silently dropped as well.
    raw.send('{"jsonrpc": "2.0", "method": "runs.show", "params": {"run": "x"}}')
    raw.no_reply()


def test_rpc_call_of_non_existent_method(raw):
    raw.send('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}')
    _error(raw.reply(), schema.METHOD_NOT_FOUND, "1")


def test_rpc_call_with_invalid_json(raw):
    raw.send('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    _error(raw.reply(), schema.PARSE_ERROR, None)


def test_rpc_call_with_invalid_request_object(raw):
    raw.send('{"jsonrpc": "2.0", "method": 1, "params": "bar"}')
    _error(raw.reply(), schema.INVALID_REQUEST, None)
    # Not in section 7, but the same rule: the wrong protocol version is an invalid request.
    raw.send('{"jsonrpc": "1.0", "method": "status", "id": 9}')
    _error(raw.reply(), schema.INVALID_REQUEST, 9)


def test_rpc_call_batch_invalid_json(raw):
    raw.send('[\n  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},\n  {"jsonrpc": "2.0", "method"\n]'
             .replace("\n", " "))
    msg = raw.reply()
    assert isinstance(msg, dict)  # one error, not an array
    _error(msg, schema.PARSE_ERROR, None)


def test_rpc_call_with_an_empty_array(raw):
    raw.send("[]")
    msg = raw.reply()
    assert isinstance(msg, dict)
    _error(msg, schema.INVALID_REQUEST, None)


def test_rpc_call_with_an_invalid_batch_but_not_empty(raw):
    raw.send("[1]")
    msg = raw.reply()
    assert isinstance(msg, list) and len(msg) == 1
    _error(msg[0], schema.INVALID_REQUEST, None)


def test_rpc_call_with_invalid_batch(raw):
    raw.send("[1,2,3]")
    msg = raw.reply()
    assert isinstance(msg, list) and len(msg) == 3
    for m in msg:
        _error(m, schema.INVALID_REQUEST, None)


def test_rpc_call_batch(raw, daemon):
    raw.send(json.dumps([
        {"jsonrpc": "2.0", "method": "status", "params": [], "id": "1"},                  # sum [1,2,4]
        {"jsonrpc": "2.0", "method": "whoami", "params": []},                              # notify_hello [7]
        {"jsonrpc": "2.0", "method": "runs.list", "params": {"limit": 1}, "id": "2"},     # subtract
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "whoami", "id": "9"},                                # get_data
    ]))
    msg = raw.reply()
    assert isinstance(msg, list) and len(msg) == 5  # the notification has no response
    by_id = {m["id"]: m for m in msg if m["id"] is not None}
    assert _result(by_id["1"], "1")["pid"] == daemon.proc.pid
    _result(by_id["2"], "2")
    _error(by_id["5"], schema.METHOD_NOT_FOUND, "5")
    assert _result(by_id["9"], "9")["role"] == "operator"
    [invalid] = [m for m in msg if m["id"] is None]
    _error(invalid, schema.INVALID_REQUEST, None)


def test_rpc_call_batch_all_notifications(raw):
    raw.send('[{"jsonrpc": "2.0", "method": "status", "params": []}, {"jsonrpc": "2.0", "method": "whoami"}]')
    raw.no_reply()  # nothing at all: not even an empty array


def test_operator_method_as_notification_is_not_executed(raw, daemon):
    hold = {"jsonrpc": "2.0", "method": "agents.hold", "params": {"agent": "a1", "reason": "no id"}}
    raw.send(json.dumps(hold))
    raw.no_reply()
    raw.send(json.dumps([hold, {"jsonrpc": "2.0", "method": "agents.list", "id": 1}]))
    [listing] = raw.reply()
    assert not next(a for a in _result(listing, 1) if a["id"] == "a1")["hold"]
    deadline = time.monotonic() + 5
    while "agents.hold sent as a notification" not in daemon.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "agents.hold sent as a notification" in daemon.stderr()
    # With an id the same call is executed and answered.
    raw.send(json.dumps({**hold, "id": 2}))
    _result(raw.reply(), 2)
    raw.send(json.dumps({"jsonrpc": "2.0", "method": "agents.list", "id": 3}))
    assert next(a for a in _result(raw.reply(), 3) if a["id"] == "a1")["hold"]


def test_oversized_batch_is_one_error(raw):
    raw.send(json.dumps([1] * (schema.MAX_BATCH + 1)))
    msg = raw.reply()
    assert isinstance(msg, dict)
    _error(msg, schema.INVALID_REQUEST, None)
    raw.no_reply()
