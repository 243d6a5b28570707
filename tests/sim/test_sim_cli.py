"""`pr1d sim` command line: starts a real server in a subprocess, writes --port-file, prints its one
ready line, stops cleanly on SIGTERM/SIGINT, and reports bad options clearly."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pr1d.sim import cli

# The lead's `pr1d sim` calls exactly these two functions; run them the same way here.
LAUNCH = (
    "import argparse, sys\n"
    "from pr1d.sim.cli import add_arguments, run\n"
    "p = argparse.ArgumentParser(prog='pr1d sim')\n"
    "add_arguments(p)\n"
    "sys.exit(run(p.parse_args(sys.argv[1:])))\n"
)


def _start(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_port(proc: subprocess.Popen[str], port_file: Path, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists():
            return int(port_file.read_text())
        if proc.poll() is not None:
            raise AssertionError(
                f"sim exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
            )
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no port file within the timeout")


def _get(url: str, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_writes_port_file_and_stops_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    port_file = tmp_path / "run" / "sim.port"
    proc = _start(
        "--port", "0", "--port-file", str(port_file), "--scenario", "sudden-drift", "--seed", "9",
        "--time-scale", "0", "--token", "tok",
    )  # fmt: skip
    try:
        port = _wait_port(proc, port_file)
        url = f"http://127.0.0.1:{port}"
        assert _get(f"{url}/v1/agents")[0] == 401
        status, body = _get(f"{url}/v1/agents", "tok")
        assert status == 200 and len(body["agents"]) == 3
        state = _get(f"{url}/_sim/state", "tok")[1]
        assert state["scenario"] == "sudden-drift" and state["seed"] == 9 and state["evaluations"] == 0
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.splitlines() == [f"pr1d sim: listening on http://127.0.0.1:{port} (scenario sudden-drift)"]
    assert not port_file.exists()  # removed on a clean stop, like a pid file


def test_continuous_mode_by_default(tmp_path: Path) -> None:
    port_file = tmp_path / "sim.port"
    proc = _start("--port", "0", "--port-file", str(port_file), "--time-scale", "10")
    try:
        port = _wait_port(proc, port_file)
        for _ in range(100):  # bounded: ~5 s
            if _get(f"http://127.0.0.1:{port}/_sim/state")[1]["evaluations"] >= 6:
                break
            time.sleep(0.05)
        assert _get(f"http://127.0.0.1:{port}/_sim/state")[1]["evaluations"] >= 6
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_python_dash_m_entry_point_lists_scenarios() -> None:
    cp = subprocess.run(
        [sys.executable, "-m", "pr1d.sim", "--list-scenarios"], capture_output=True, text=True, timeout=30
    )
    assert cp.returncode == 0, cp.stderr
    names = [line.split()[0] for line in cp.stdout.splitlines()]
    assert {"steady", "slow-degradation", "sudden-drift", "flaky", "compliance-breach", "mixed-fleet"} <= set(
        names
    )


def _parse(*args: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_args(list(args))


def test_defaults() -> None:
    a = _parse()
    assert (a.port, a.host, a.scenario, a.seed, a.token, a.time_scale) == (
        8765,
        "127.0.0.1",
        "steady",
        None,
        None,
        1.0,
    )
    assert a.grade_with_model is False and a.port_file is None and a.scenarios_dir == [] and a.agents is None


@pytest.mark.parametrize(
    "args", [["--port", "70000"], ["--port", "x"], ["--time-scale", "-1"], ["--agents", "-3"]]
)
def test_bad_option_values_are_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse(*args)
    assert exc.value.code == 2
    assert "expected" in capsys.readouterr().err


def test_unknown_scenario_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(_parse("--scenario", "nope", "--port", "0")) == 1
    err = capsys.readouterr().err
    assert err.startswith("pr1d sim: unknown scenario 'nope'; available:") and "steady" in err


def test_invalid_scenario_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "typo.toml"
    bad.write_text("[behaviours.ok]\nmaen = 0.9\n[fleet]\ncount = 1\nmix = { ok = 1 }\n")
    assert cli.run(_parse("--scenario", str(bad), "--port", "0")) == 1
    assert f"{bad}: behaviours.ok.maen: unknown key" in capsys.readouterr().err


def test_port_in_use_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert cli.run(_parse("--port", str(port), "--time-scale", "0")) == 1
    assert f"pr1d sim: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_grade_with_model_needs_models(capsys: pytest.CaptureFixture[str]) -> None:
    # The real grading module, given no model to grade with: a clear error and exit 1, not a traceback.
    assert cli.run(_parse("--grade-with-model", "--port", "0")) == 1
    err = capsys.readouterr().err
    assert err.startswith("pr1d sim: --grade-with-model") and "--model-dir" in err and "--models-root" in err


def test_grade_with_model_without_grading_module(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # A build without the grading module (a fault this checkout cannot cause otherwise): None in
    # sys.modules makes the import fail as a missing module does.
    monkeypatch.setitem(sys.modules, cli.GRADING_MODULE, None)
    assert cli.run(_parse("--grade-with-model", "--port", "0")) == 1
    err = capsys.readouterr().err
    assert "--grade-with-model" in err and "pr1d.sim.grading" in err and "is missing" in err


def test_grade_with_model_uses_the_grading_module(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    fake = types.ModuleType("pr1d.sim.grading")
    seen = {}

    def load_model_grader(args: argparse.Namespace):  # noqa: ANN202
        seen["args"] = args
        return lambda agent_id, model_version, task: 0.5

    fake.load_model_grader = load_model_grader  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pr1d.sim.grading", fake)
    args = _parse("--grade-with-model")
    grader = cli.load_model_grader(args)
    assert seen["args"] is args and grader("a", "v", {}) == 0.5
