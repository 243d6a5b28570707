"""Shared fixtures: a real `pr1d serve` subprocess on a temp state dir, with a systemd notify socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.model_fixtures import tiny_model  # noqa: F401  (a session fixture for every test package)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Tests never read the machine's /etc/pr1d/pr1d.toml.
os.environ["PR1_NO_SYSTEM_CONFIG"] = "1"
os.environ.pop("PR1_SOCKET", None)

# A test run a non-interactive shell started in the background (`cmd &`, some CI wrappers) inherits SIGINT
# ignored, and so would every demo and daemon it starts: the Ctrl+C tests would then test nothing. Python's own
# handler comes back here, and with it the default disposition in every child.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pr1_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env["PR1_NO_SYSTEM_CONFIG"] = "1"
    # Daemons in tests poll only when a test points them at a `pr1d sim`.
    env.setdefault("PR1_MONITOR__ENABLED", "false")
    env.setdefault("PR1_SCOREBOARD__METRICS_PORT", "0")  # any free port: tests run daemons side by side
    env.update(extra)
    return env


class DaemonProc:
    """A running `pr1d serve` with helpers to talk to it the way users do."""

    def __init__(self, state_dir: Path, config: Path | None = None, extra_env: dict | None = None,
                 args: list[str] | None = None):
        self.state_dir = state_dir
        self.socket = state_dir / "pr1d.sock"
        self.config = config
        self.extra_env = extra_env or {}
        self.args = args or []
        self.proc: subprocess.Popen | None = None
        self.notify_path = state_dir.parent / f"notify-{state_dir.name}.sock"
        self.notifications: list[str] = []
        self._nsock: socket.socket | None = None
        self.stderr_path = state_dir.parent / f"daemon-{state_dir.name}.log"

    def start(self, wait_ready: bool = True, timeout: float = 10.0) -> DaemonProc:
        if self._nsock is None:
            if self.notify_path.exists():
                self.notify_path.unlink()
            self._nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._nsock.bind(str(self.notify_path))
            self._nsock.settimeout(0.1)
        cmd = [str(BIN / "pr1d"), "serve", "--state-dir", str(self.state_dir), *self.args]
        if self.config:
            cmd += ["--config", str(self.config)]
        env = pr1_env(NOTIFY_SOCKET=str(self.notify_path), **self.extra_env)
        self.notifications.clear()
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=open(self.stderr_path, "ab"), cwd=str(REPO))
        if wait_ready:
            self.wait_notify("READY=1", timeout)
        return self

    def wait_notify(self, needle: str, timeout: float = 10.0) -> float:
        """Seconds from start until a notification containing needle arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(needle in n for n in self.notifications):
                return time.monotonic() - self.t_start
            try:
                self.notifications.append(self._nsock.recv(65536).decode())
                continue
            except TimeoutError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"pr1d exited with {self.proc.returncode}: {self.stderr()}")
        raise AssertionError(f"no {needle!r} from pr1d within {timeout}s; got {self.notifications}; {self.stderr()}")

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text()[-4000:]
        except FileNotFoundError:
            return ""

    def ctl(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        cp = subprocess.run([str(BIN / "pr1ctl"), "--socket", str(self.socket), *args], capture_output=True,
                            text=True, timeout=timeout, env=pr1_env())
        if check and cp.returncode != 0:
            raise AssertionError(f"pr1ctl {' '.join(args)} -> {cp.returncode}: {cp.stderr}")
        return cp

    def ctl_json(self, *args: str) -> object:
        return json.loads(self.ctl(*args, "--json").stdout)

    def client(self):
        from pr1d.rpc.client import Client

        return Client(self.socket)

    def wait_run(self, run_id: int, states: set[str], timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.client() as c:
                run = c.call("runs.show", run=run_id)
            if run["state"] in states:
                return run
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} never reached {states}: {run['state']} {run.get('reason')}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"pr1d did not stop within {timeout}s after {signal.Signals(sig).name}") from None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop(signal.SIGTERM)
        if self._nsock is not None:
            self._nsock.close()
            self._nsock = None


def add_agents(state_dir: Path, *ids: str) -> None:
    """Test setup: register agents in the ledger before the daemon starts (the poller does it in production)."""
    from pr1d.ledger.store import Ledger

    led = Ledger(state_dir / "ledger.sqlite")
    led.upsert_agents([{"id": i, "model": "base-v0", "profile": "default"} for i in ids])
    led.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator:
    made: list[DaemonProc] = []

    def make(state_dir: Path | None = None, **kw) -> DaemonProc:
        sd = state_dir or (tmp_path / f"state{len(made)}")
        sd.mkdir(exist_ok=True)
        d = DaemonProc(sd, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


@pytest.fixture
def daemon(daemon_factory, state_dir: Path) -> DaemonProc:
    """A started daemon with agents a1 and a2 registered."""
    add_agents(state_dir, "a1", "a2")
    return daemon_factory(state_dir).start()
