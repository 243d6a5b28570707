"""Socket authorization with a real second Unix user: file mode, SO_PEERCRED roles, audit names the user."""

from __future__ import annotations

import os
import pwd
import subprocess

import pytest

from tests.conftest import add_agents

USER = "pr1-test-viewer"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a second Unix user")


@pytest.fixture(scope="module")
def second_user():
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
    yield pwd.getpwnam(USER)
    subprocess.run(["userdel", USER], check=False)


def _as_user(user, sock, method, params="{}"):
    """Call the daemon from a forked child that has become `user` (the venv's python is not reachable
    by other users under /root, so we fork the already-loaded interpreter instead of exec'ing one)."""
    import json

    from pr1d.rpc.client import Client
    from pr1d.rpc.schema import RpcError

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            try:
                with Client(sock, timeout=10) as c:
                    out = {"ok": c.call(method, **json.loads(params))}
            except RpcError as e:
                out = {"code": e.code, "message": e.message}
            except Exception as e:
                out = {"exc": type(e).__name__, "message": str(e)}
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


def _open_dirs(path):
    # tmp dirs are 0700; let the other user reach the socket so the daemon's own check is what we test
    for parent in list(path.parents)[:-1]:
        if str(parent).startswith("/tmp/"):
            os.chmod(parent, os.stat(parent).st_mode | 0o011)


def test_other_user_refused_by_mode_then_by_daemon_then_reader(second_user, daemon_factory, state_dir, tmp_path):
    add_agents(state_dir, "a1")
    d = daemon_factory(state_dir).start()
    _open_dirs(d.socket)
    # 1. the socket's 0660 mode keeps a stranger out at the filesystem
    out = _as_user(second_user, d.socket, "status")
    assert "permission denied" in out["message"]
    # 2. with the mode relaxed, the daemon itself refuses the uid by name
    os.chmod(d.socket, 0o666)
    out = _as_user(second_user, d.socket, "status")
    assert out["code"] == -32001 and f"Unix user {USER}" in out["message"]
    d.stop()
    # 3. listed as a reader: may read, may not operate
    cfg = tmp_path / "auth.toml"
    cfg.write_text(f'[auth]\nreader_users = ["{USER}"]\n')
    d2 = daemon_factory(state_dir, config=cfg).start()
    os.chmod(d2.socket, 0o666)
    assert _as_user(second_user, d2.socket, "whoami")["ok"] == {"user": USER, "uid": second_user.pw_uid,
                                                                 "role": "reader"}
    assert _as_user(second_user, d2.socket, "runs.list")["ok"] == []
    out = _as_user(second_user, d2.socket, "runs.trigger", '{"agent": "a1", "kind": "noop"}')
    assert out["code"] == -32001 and "needs the operator role" in out["message"]
    d2.stop()
    # 4. an operator by name: the audit row carries that user
    cfg.write_text(f'[auth]\noperator_users = ["{USER}"]\n')
    d3 = daemon_factory(state_dir, config=cfg).start()
    os.chmod(d3.socket, 0o666)
    out = _as_user(second_user, d3.socket, "agents.hold", '{"agent": "a1", "reason": "maint"}')
    assert out.get("ok", {}).get("hold_by") == USER, out
    audit = d3.ctl_json("audit", "--entity", "agent")
    assert audit[-1]["actor"] == USER and audit[-1]["action"] == "hold"
