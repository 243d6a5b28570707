"""The installed `pr1tui` entry point in a real terminal: tmux runs it against a real daemon, we send keys
and read the screen back with `tmux capture-pane`."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.conftest import BIN, pr1_env

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]


class Tmux:
    """One private tmux server (-L), so the test never touches anyone's sessions."""

    def __init__(self, name: str):
        self.name = name

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.name, *args], capture_output=True, text=True, check=check,
                              timeout=10, env=pr1_env())

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "tui").stdout

    def wait_for(self, *needles: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if all(n in text for n in needles):
                return text
            time.sleep(0.1)
        raise AssertionError(f"{needles} never appeared on the screen:\n{text}")


@pytest.fixture
def tmux():
    t = Tmux(f"pr1tui-test-{os.getpid()}")
    yield t
    t.run("kill-server", check=False)


def test_installed_pr1tui_runs_in_a_real_terminal(daemon, tmux):
    binary = BIN / "pr1tui"
    assert binary.exists(), f"{binary} missing: is the project installed in this venv?"
    # PR1_SOCKET exercises the lookup order's second step (no --socket flag).
    cmd = f"env PR1_NO_SYSTEM_CONFIG=1 PR1_SOCKET={daemon.socket} {binary}; echo pr1tui-exit=$?; sleep 30"
    tmux.run("new-session", "-d", "-x", "120", "-y", "40", "-s", "tui", cmd)
    dash = tmux.wait_for("1 Dashboard", "a1", "a2", "operator", "q Quit")
    assert "idle" in dash and "no data" in dash

    tmux.run("send-keys", "-t", "tui", "2")
    runs = tmux.wait_for("runs loaded", "sort id")
    assert "end of history" in runs

    tmux.run("send-keys", "-t", "tui", "?")
    tmux.wait_for("Close help", "Command palette")
    tmux.run("send-keys", "-t", "tui", "Escape")
    tmux.wait_for("runs loaded")

    tmux.run("send-keys", "-t", "tui", "q")
    tmux.wait_for("pr1tui-exit=0", timeout=10)  # quit cleanly, terminal restored
