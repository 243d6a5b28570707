"""Socket discovery: the order clients look in, why each place failed, and a systemd-layout daemon found unaided."""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pr1d.rpc.client import Candidate, NoDaemonFound, find_socket, probe_socket, socket_candidates
from tests.conftest import BIN, add_agents, pr1_env

USER = Path("/home/u/.local/state/pr1d/pr1d.sock")
RUN = Path("/run/pr1d/pr1d.sock")
CFG = Candidate("config /etc/pr1d/pr1d.toml", Path("/srv/pr1d.sock"))
CFG_UNREADABLE = Candidate("config /etc/pr1d/pr1d.toml", None, "permission denied: not read")

CASES = [
    # (flag, environ, config candidates, expected [(source prefix, path or None)])
    ("/tmp/a.sock", {"PR1_SOCKET": "/tmp/b.sock"}, [CFG], [("--socket", Path("/tmp/a.sock"))]),
    (None, {"PR1_SOCKET": "/tmp/b.sock"}, [CFG], [("$PR1_SOCKET", Path("/tmp/b.sock"))]),
    (None, {}, [CFG], [("config", CFG.path), ("systemd", RUN), ("per-user", USER)]),
    (None, {}, [], [("systemd", RUN), ("per-user", USER)]),
    # /etc/pr1d is 0750: the config is listed as skipped, the lookup goes on.
    (None, {}, [CFG_UNREADABLE], [("config", None), ("systemd", RUN), ("per-user", USER)]),
    # A config naming the unit's socket does not make the client try it twice.
    (None, {}, [Candidate("config x", RUN)], [("config", RUN), ("per-user", USER)]),
    # Tests stand a temp dir in for /run/pr1d.
    (None, {"PR1_RUNTIME_DIR": "/tmp/rt"}, [], [("systemd", Path("/tmp/rt/pr1d.sock")), ("per-user", USER)]),
    (None, {"PR1_SOCKET": ""}, [], [("systemd", RUN), ("per-user", USER)]),
]


@pytest.mark.parametrize(("flag", "environ", "config", "expected"), CASES)
def test_socket_candidates_order(flag, environ, config, expected):
    got = socket_candidates(flag, environ, config, USER)
    assert [c.path for c in got] == [path for _source, path in expected]
    for c, (source, _path) in zip(got, expected, strict=True):
        assert c.source.startswith(source), (c.source, source)


def _listening(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen()
    return s


def test_probe_reasons(tmp_path):
    assert probe_socket(tmp_path / "none.sock") == "missing"
    stale = tmp_path / "stale.sock"
    _listening(stale).close()  # the file stays, nobody accepts: what a crashed daemon leaves
    assert probe_socket(stale).startswith("connection refused")
    live = _listening(tmp_path / "live.sock")
    try:
        assert probe_socket(tmp_path / "live.sock") is None
    finally:
        live.close()


def test_first_answering_socket_wins_and_failures_are_listed(tmp_path, monkeypatch):
    monkeypatch.setattr("pr1d.config.SYSTEM_CONFIG", tmp_path)  # a directory: open() fails, like a 0750 /etc/pr1d
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    env = {"PR1_RUNTIME_DIR": str(tmp_path / "run")}
    with pytest.raises(NoDaemonFound) as e:
        find_socket(environ=env)
    msg = str(e.value)
    assert f"config {tmp_path}" in msg and "not read" in msg  # the unreadable config is skipped, not a crash
    assert f"{tmp_path / 'run' / 'pr1d.sock'}  (systemd unit (RuntimeDirectory=pr1d)): missing" in msg
    assert f"{tmp_path / 'home/.local/state/pr1d/pr1d.sock'}  (per-user default): missing" in msg
    assert "systemctl status pr1d" in msg
    (tmp_path / "run").mkdir()
    _listening(tmp_path / "run" / "pr1d.sock").close()
    with pytest.raises(NoDaemonFound, match="connection refused"):
        find_socket(environ=env)
    (tmp_path / "run" / "pr1d.sock").unlink()
    live = _listening(tmp_path / "run" / "pr1d.sock")
    try:
        assert find_socket(environ=env) == tmp_path / "run" / "pr1d.sock"
    finally:
        live.close()
    # The console waits for a daemon: no answer gives it a path to retry instead of an error.
    assert find_socket(environ=env, require_answer=False) == tmp_path / "run" / "pr1d.sock"  # a socket file
    (tmp_path / "run" / "pr1d.sock").unlink()
    assert find_socket(environ=env, require_answer=False) == tmp_path / "run" / "pr1d.sock"  # its directory
    (tmp_path / "run").rmdir()
    assert find_socket(environ=env, require_answer=False) == tmp_path / "home/.local/state/pr1d/pr1d.sock"


def test_explicit_broken_config_is_still_an_error(tmp_path):
    from pr1d.config import ConfigError

    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon\n")
    with pytest.raises(ConfigError):
        find_socket(config_path=str(bad), environ={"PR1_NO_SYSTEM_CONFIG": "1"})
    # Named by $PR1_CONFIG instead, it is skipped with its reason and the lookup goes on.
    with pytest.raises(NoDaemonFound, match="not valid TOML"):
        find_socket(environ={"PR1_NO_SYSTEM_CONFIG": "1", "PR1_CONFIG": str(bad),
                             "PR1_RUNTIME_DIR": str(tmp_path / "run")})


def test_client_finds_a_daemon_with_the_units_layout(daemon_factory, tmp_path):
    # systemd sets RUNTIME_DIRECTORY=/run/pr1d for RuntimeDirectory=pr1d; the daemon puts its socket there.
    run = tmp_path / "run"
    run.mkdir()
    sd = tmp_path / "state"
    sd.mkdir()
    add_agents(sd, "a1")
    d = daemon_factory(sd, extra_env={"RUNTIME_DIRECTORY": str(run)}).start()
    assert (run / "pr1d.sock").exists() and not (sd / "pr1d.sock").exists()
    home = tmp_path / "home"
    home.mkdir()
    # An on-call shell: no --socket, no PR1_SOCKET, no readable config, only the unit's directory.
    env = pr1_env(HOME=str(home), PR1_RUNTIME_DIR=str(run))
    env.pop("PR1_SOCKET", None)
    env.pop("PR1_CONFIG", None)
    cp = subprocess.run([str(BIN / "pr1ctl"), "status", "--json"], capture_output=True, text=True, timeout=30,
                        env=env)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["pid"] == d.proc.pid
    d.stop()
    cp = subprocess.run([str(BIN / "pr1ctl"), "status"], capture_output=True, text=True, timeout=30, env=env)
    assert cp.returncode == 3
    assert str(run / "pr1d.sock") in cp.stderr and "systemctl status pr1d" in cp.stderr
    assert str(home / ".local/state/pr1d/pr1d.sock") in cp.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: a permission failure cannot be staged")
def test_permission_denied_is_named(tmp_path):
    d = tmp_path / "locked"
    d.mkdir()
    live = _listening(d / "pr1d.sock")
    d.chmod(0o000)
    try:
        assert probe_socket(d / "pr1d.sock").startswith("permission denied")
    finally:
        d.chmod(0o700)
        live.close()


def _throwaway_user(name: str) -> bool:
    """Create a user and its same-named primary group (root only); False where the tools are missing."""
    if not (shutil.which("useradd") and shutil.which("userdel")):
        return False
    return subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
                           name], capture_output=True).returncode == 0


# Run as the other user: import the client while still root (the interpreter may live under /root),
# then drop to that user with an empty environment except the test's stand-in for /run/pr1d.
_AS_USER = r"""
import json, os, sys
import pr1d.config, pr1d.ctl, pr1d.rpc.client, rich.console, rich.table  # noqa: F401,E401  (loaded while root)
uid, gid, run = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.setgroups([gid]); os.setgid(gid); os.setuid(uid)
os.environ.clear()
os.environ.update({"PR1_RUNTIME_DIR": run, "HOME": "/nonexistent", "PR1_NO_SYSTEM_CONFIG": "1"})
sys.exit(pr1d.ctl.main(["status", "--json"]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a throwaway Unix user")
def test_a_second_unix_user_with_no_environment_reaches_the_daemon(daemon_factory, tmp_path):
    name = f"pr1t{secrets.token_hex(3)}"
    if not _throwaway_user(name):
        pytest.skip("useradd failed or is missing")
    run = Path(tempfile.mkdtemp(prefix="pr1rt", dir="/tmp"))  # pytest's tmp_path is 0700 root: not traversable
    try:
        pw = pwd.getpwnam(name)
        # The unit's layout: /run/pr1d is pr1d:pr1-viewers 2750, so the socket inherits the viewers' group.
        os.chown(run, 0, pw.pw_gid)
        run.chmod(0o2750)
        d = daemon_factory(extra_env={"RUNTIME_DIRECTORY": str(run),
                                      "PR1_AUTH__READER_GROUPS": json.dumps([grp.getgrgid(pw.pw_gid).gr_name])})
        d.start()
        assert os.stat(run / "pr1d.sock").st_gid == pw.pw_gid
        cp = subprocess.run([sys.executable, "-c", _AS_USER, str(pw.pw_uid), str(pw.pw_gid), str(run)],
                            capture_output=True, text=True, timeout=60, cwd=str(Path(__file__).parents[2]))
        assert cp.returncode == 0, cp.stderr
        assert json.loads(cp.stdout)["pid"] == d.proc.pid
        d.stop()
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)  # gone with the user on most systems
        shutil.rmtree(run, ignore_errors=True)
