"""`pr1d config check [FILE]`: the daemon's own loader, exit 0 or 78, one line per problem naming the key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pr1d.cli import EXIT_CONFIG, main
from tests.conftest import BIN, REPO, pr1_env

DATA = Path(__file__).parents[1] / "fixtures" / "config"


def _check(capsys, *args: str) -> tuple[int, list[str], list[str]]:
    code = main(["config", "check", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def test_shipped_config_is_valid(capsys):
    code, out, err = _check(capsys, str(REPO / "config" / "pr1d.toml"), "--only-file")
    assert (code, err) == (0, [])
    assert len(out) == 1 and out[0].startswith(f"{REPO / 'config' / 'pr1d.toml'}: ok")


@pytest.mark.parametrize(("fixture", "line"), [
    ("unknown_key", "key `daemon.max_training_stagez`: unknown key"),
    ("wrong_type", "key `daemon.heartbeat_timeout_s`: expected a number, got 'fast'"),
    ("out_of_range", "key `daemon.max_training_stages`: expected a value >= 1, got 0"),
    ("not_toml", "not valid TOML"),
])
def test_bad_file_is_78_with_the_key_and_the_problem(capsys, fixture, line):
    path = DATA / f"{fixture}.toml"
    code, out, err = _check(capsys, str(path), "--only-file")
    assert code == EXIT_CONFIG and out == []
    assert len(err) == 1 and err[0].startswith(f"pr1d: config error: {path}") and line in err[0], err


def test_one_line_per_problem(capsys, tmp_path):
    f = tmp_path / "three.toml"
    f.write_text('[daemon]\nmax_training_stagez = 2\nheartbeat_timeout_s = "fast"\n[bogus]\nx = 1\n')
    code, _out, err = _check(capsys, str(f), "--only-file")
    assert code == EXIT_CONFIG
    assert sorted(e.split("key ", 1)[1].split(":")[0] for e in err) == [
        "`bogus`", "`daemon.heartbeat_timeout_s`", "`daemon.max_training_stagez`"]


def test_environment_layer_counts_unless_only_file(capsys, monkeypatch):
    monkeypatch.setenv("PR1_DAEMON__BOGUS", "1")
    path = str(REPO / "config" / "pr1d.toml")
    code, _out, err = _check(capsys, path)
    assert code == EXIT_CONFIG and err == ["pr1d: config error: environment (PR1_*): key `daemon.bogus`: unknown key"]
    assert _check(capsys, path, "--only-file")[0] == 0


def test_missing_file_and_no_file(capsys, tmp_path):
    code, _out, err = _check(capsys, str(tmp_path / "nope.toml"))
    assert code == EXIT_CONFIG and "config file not found" in err[0]
    code, out, _err = _check(capsys)  # no FILE: what `pr1d serve` alone would load
    assert code == 0 and out[0].startswith("built-in defaults: ok")


def test_exit_status_of_the_installed_command():
    cp = subprocess.run([str(BIN / "pr1d"), "config", "check", str(DATA / "unknown_key.toml")],
                        capture_output=True, text=True, timeout=60, env=pr1_env())
    assert cp.returncode == 78 and "daemon.max_training_stagez" in cp.stderr
