"""Garbage on the socket never hurts the daemon or other clients: bytes, huge lines, floods, slow readers."""

from __future__ import annotations

import json
import os
import random
import socket
import time

from pr1d.config import RpcConfig
from pr1d.rpc import schema


def _raw(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    s.settimeout(10)
    return s


def _read_msgs(s: socket.socket, n: int) -> list[dict]:
    buf, out = b"", []
    while len(out) < n:
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            out.append(json.loads(line))
    return out


def _status_ok(daemon) -> None:
    with daemon.client() as c:
        assert c.call("status")["pid"] == daemon.proc.pid


def test_random_bytes(daemon):
    rng = random.Random(7)
    for _ in range(50):
        s = _raw(daemon.socket)
        s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096))) + b"\n")
        s.close()
    _status_ok(daemon)


def test_ten_mib_line_closes_that_connection_only(daemon):
    other = daemon.client()
    s = _raw(daemon.socket)
    try:
        s.sendall(b"x" * (10 << 20) + b"\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon may hang up before we finish writing: that is the point
    # The daemon answers "exceeds" and hangs up; when it hangs up before we finished writing, the kernel may
    # discard that answer with the connection (a reset). Either way this connection ends, and it ends fast.
    try:
        msgs = _read_msgs(s, 2)  # only one ever comes: reading on proves the daemon closed the connection
    except ConnectionResetError:
        msgs = []
    assert len(msgs) <= 1
    if msgs:
        assert msgs[0]["error"]["code"] == schema.INVALID_REQUEST
        assert "exceeds" in msgs[0]["error"]["message"]
    s.close()
    assert other.call("status")["pid"] == daemon.proc.pid
    other.close()
    _status_ok(daemon)


def test_thousand_malformed_requests_each_get_an_error(daemon):
    bad = [
        b"{", b"[]", b"42", b'"x"', b"null",
        b'{"jsonrpc":"2.0","id":1}',
        b'{"jsonrpc":"1.0","id":1,"method":"status"}',
        b'{"jsonrpc":"2.0","id":1,"method":"nope"}',
        b'{"jsonrpc":"2.0","id":1,"method":"runs.show","params":{"run":"x"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"runs.show","params":{"run":1,"extra":1}}',
        b'{"jsonrpc":"2.0","id":1,"method":"runs.list","params":[1,2]}',
        b'{"jsonrpc":"2.0","id":{"a":1},"method":"status"}',
        b'{"jsonrpc":"2.0","id":1,"method":"runs.list","params":{"limit":100000}}',
        b"[" * 5000 + b"]" * 5000,
    ]
    s = _raw(daemon.socket)
    payload = b"".join(bad[i % len(bad)] + b"\n" for i in range(1000))
    s.sendall(payload)
    msgs = _read_msgs(s, 1000)
    assert len(msgs) == 1000
    assert all("error" in m for m in msgs)
    codes = {m["error"]["code"] for m in msgs}
    assert {schema.PARSE_ERROR, schema.INVALID_REQUEST, schema.METHOD_NOT_FOUND, schema.INVALID_PARAMS} <= codes
    # the same connection still works after all that
    s.sendall(schema.request("status", {}, 5))
    assert _read_msgs(s, 1)[0]["result"]["pid"] == daemon.proc.pid
    s.close()
    _status_ok(daemon)


def test_client_that_never_reads_is_dropped_others_served(daemon):
    s = _raw(daemon.socket)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(2)
    req = schema.request("runs.list", {"limit": 1000}, 1) * 200
    sent = 0
    try:
        for _ in range(50):
            s.sendall(req)
            sent += 200
            _status_ok(daemon)  # others are served while this client's replies pile up
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass  # the daemon stopped taking requests from it (full buffers) or already dropped it
    _status_ok(daemon)
    # A reply it cannot write within write_timeout_s (5 s by default) drops the client. Wait past that without
    # reading; then reading finds the end of the connection (EOF or reset) after fewer replies than requests.
    # (A daemon that kept it would go on writing as we read, and this recv would get every reply.)
    time.sleep(RpcConfig().write_timeout_s + 1.5)
    _status_ok(daemon)
    s.settimeout(30)
    got, buf = 0, b""
    try:
        while chunk := s.recv(1 << 16):
            buf += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError("the never-reading client is still connected after the write timeout") from None
    got = buf.count(b"\n")
    assert sent and got < sent, f"{got} replies to {sent} requests: the never-reading client was not dropped"
    s.close()
    # a connect-and-idle client does not block anyone either
    idle = [_raw(daemon.socket) for _ in range(20)]
    _status_ok(daemon)
    for x in idle:
        x.close()


def test_subscription_pushes_run_events(daemon):
    with daemon.client() as sub:
        sub.call("events.subscribe", topics=["run", "progress"])
        rid = daemon.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "seconds=0.5")["run"]["id"]
        seen: list[dict] = []
        deadline = time.monotonic() + 20
        for ev in sub.events():
            seen.append(ev)
            if ev["topic"] == "run" and ev["state"] == "succeeded" or time.monotonic() > deadline:
                break
    states = [e["state"] for e in seen if e["topic"] == "run" and e["run"] == rid]
    assert states == ["queued", "running", "succeeded"]
    assert any(e["topic"] == "progress" and e["run"] == rid for e in seen)


def test_unknown_topic_is_invalid_params(daemon):
    from pr1d.rpc.schema import RpcError

    with daemon.client() as c:
        try:
            c.call("events.subscribe", topics=["gossip"])
        except RpcError as e:
            assert e.code == schema.INVALID_PARAMS
        else:
            raise AssertionError("accepted an unknown topic")
    assert os.path.exists(daemon.socket)


def test_batches_and_notifications_under_load(daemon):
    s = _raw(daemon.socket)
    # A full batch: one reply line holding every response, in any order.
    s.sendall(json.dumps([{"jsonrpc": "2.0", "method": "status", "id": i} for i in range(schema.MAX_BATCH)]).encode()
              + b"\n")
    [reply] = _read_msgs(s, 1)
    assert isinstance(reply, list) and sorted(m["id"] for m in reply) == list(range(schema.MAX_BATCH))
    # 2,000 notifications, valid or not, get no reply at all; the next call's answer comes next.
    note = [b'{"jsonrpc":"2.0","method":"status"}', b'{"jsonrpc":"2.0","method":"nope"}',
            b'{"jsonrpc":"2.0","method":"agents.hold","params":{"agent":"a1"}}', b'[{"jsonrpc":"2.0","method":"whoami"}]']
    s.sendall(b"".join(note[i % len(note)] + b"\n" for i in range(2000)) + schema.request("status", {}, "last"))
    [after] = _read_msgs(s, 1)
    assert after["id"] == "last" and after["result"]["pid"] == daemon.proc.pid
    # 500 refused operator notifications: one warning per connection and method, not 500.
    assert daemon.stderr().count("agents.hold sent as a notification") == 1
    s.close()
    _status_ok(daemon)
