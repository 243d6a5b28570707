"""`scripts/setup` refuses what it cannot install on (old Python, not Linux) with a message that says how to fix it.

Only the checks run here, never an install: each case either stops before the first change or passes `--check`
(which installs nothing). Fake interpreters and a fake `uname` on a PATH of our own stand in for other machines.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "setup"
# What the script itself runs besides the interpreter: linked into the fake PATH so that nothing else is found.
TOOLS = ("bash", "dirname", "uname", "id", "sed", "printf")


def _fake(bin_dir: Path, name: str, body: str) -> Path:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def _python(bin_dir: Path, name: str, version: str) -> Path:
    # Answers the version probe with `version` and every other -c (the ensurepip probe) with success.
    return _fake(bin_dir, name, f'echo {version}')


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found and not (d / tool).exists():
            (d / tool).symlink_to(found)
    return d


def _setup(*args: str, path: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "PR1_TORCH")}
    if path is not None:
        e["PATH"] = str(path)
    e.update(env)
    return subprocess.run([shutil.which("bash") or "bash", str(SETUP), *args], capture_output=True, text=True,
                          timeout=60, env=e)


def test_the_script_parses():
    cp = subprocess.run(["bash", "-n", str(SETUP)], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr


@pytest.mark.parametrize(("version", "ok"), [
    ("3.10.12", False),
    ("3.9.2", False),
    ("2.7.18", False),
    ("3.11.0", True),
    ("3.13.1", True),
    ("4.0.0", True),
])
def test_python_given_in_PYTHON_must_be_3_11_or_newer(fake_bin, version, ok):
    py = _python(fake_bin, "python-under-test", version)
    cp = _setup("--check", path=fake_bin, PYTHON=str(py))
    if ok:
        assert cp.returncode == 0, cp.stderr
        assert f"Python {version} ({py})" in cp.stdout
        assert "nothing installed" in cp.stdout
    else:
        assert cp.returncode == 1, cp.stdout + cp.stderr
        # Which interpreter, which version, and how to get a good one.
        assert f"PYTHON={py} is {py}, Python {version}" in cp.stderr, cp.stderr
        assert "Python 3.11 or newer" in cp.stderr
        assert "apt-get install python3.11 python3.11-venv" in cp.stderr
        assert "PYTHON=/path/to/python3.11 bash scripts/setup" in cp.stderr
        assert cp.stdout == ""  # stopped before saying or doing anything else


def test_old_python3_on_path_is_refused_with_what_was_found(fake_bin):
    py = _python(fake_bin, "python3", "3.10.12")
    cp = _setup("--dev", path=fake_bin)  # no --check: it must stop before apt, the venv or pip
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert f"found only: {py} (Python 3.10.12)" in cp.stderr, cp.stderr
    assert "uv python install" in cp.stderr
    assert not (fake_bin.parent / ".venv").exists()


def test_a_newer_python3_x_beside_an_old_python3_is_used(fake_bin):
    _python(fake_bin, "python3", "3.10.12")
    newer = _python(fake_bin, "python3.12", "3.12.3")
    cp = _setup("--check", path=fake_bin)
    assert cp.returncode == 0, cp.stderr
    assert f"Python 3.12.3 ({newer})" in cp.stdout


def test_no_python_at_all(fake_bin):
    cp = _setup(path=fake_bin)
    assert cp.returncode == 1
    assert "no python3 on PATH" in cp.stderr and "Python 3.11 or newer" in cp.stderr


def test_PYTHON_that_does_not_exist(fake_bin):
    cp = _setup(path=fake_bin, PYTHON="/nonexistent/python3.12")
    assert cp.returncode == 1
    assert "PYTHON=/nonexistent/python3.12: no such interpreter" in cp.stderr


def test_not_linux_is_refused_with_the_reasons(fake_bin):
    (fake_bin / "uname").unlink()
    _fake(fake_bin, "uname", "echo Darwin")
    _python(fake_bin, "python3", "3.12.3")
    cp = _setup(path=fake_bin)
    assert cp.returncode == 1
    assert "pr1 runs on Linux only (this is Darwin)" in cp.stderr
    for why in ("SO_PEERCRED", "systemd", "pysqlite3-binary"):
        assert why in cp.stderr


def test_check_says_what_it_would_download(fake_bin):
    _python(fake_bin, "python3", "3.11.7")
    cp = _setup("--check", path=fake_bin, PR1_TORCH="cpu")
    assert cp.returncode == 0, cp.stderr
    assert "torch 2.13.0, CPU build: a 190 MB wheel" in cp.stdout, cp.stdout
    assert "[train]" in cp.stdout and "[kb]" in cp.stdout and "[dev]" not in cp.stdout
    cp = _setup("--check", "--dev", path=fake_bin, PR1_TORCH="cuda")
    assert "CUDA build" in cp.stdout and "[dev]" in cp.stdout


@pytest.mark.parametrize(("args", "env", "needle"), [
    (("--bogus",), {}, "unknown argument --bogus"),
    (("--check",), {"PR1_TORCH": "rocm"}, "PR1_TORCH=rocm: expected cpu, cuda or auto"),
])
def test_bad_arguments(fake_bin, args, env, needle):
    _python(fake_bin, "python3", "3.11.7")
    cp = _setup(*args, path=fake_bin, **env)
    assert cp.returncode in (1, 2)
    assert needle in cp.stderr


@pytest.fixture
def fresh_checkout(tmp_path: Path) -> Path:
    """The script and the pyproject it reads, without a .venv: the state of a fresh clone."""
    d = tmp_path / "checkout"
    (d / "scripts").mkdir(parents=True)
    shutil.copy2(SETUP, d / "scripts" / "setup")
    shutil.copy2(REPO / "pyproject.toml", d / "pyproject.toml")
    return d


def _python_without_venv(bin_dir: Path, name: str, version: str) -> Path:
    # A distribution Python without its -venv package: the ensurepip probe fails, so does `-m venv`.
    return _fake(bin_dir, name, f'case "$*" in *ensurepip*|*venv*) exit 1 ;; esac\necho {version}')


def test_missing_venv_as_a_user_says_which_package(fake_bin, fresh_checkout):
    _python_without_venv(fake_bin, "python3", "3.12.3")
    _fake(fake_bin, "id", "echo 1000")
    cp = subprocess.run(["bash", str(fresh_checkout / "scripts" / "setup")], capture_output=True, text=True,
                        timeout=60, env={"PATH": str(fake_bin)})
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "cannot make a virtual environment (no ensurepip)" in cp.stderr
    assert "sudo apt-get install python3.12-venv" in cp.stderr
    assert not (fresh_checkout / ".venv").exists()


def test_missing_venv_as_root_with_apt_installs_python3_x_venv(fake_bin, fresh_checkout):
    _python_without_venv(fake_bin, "python3", "3.12.3")
    calls = fresh_checkout / "apt-calls"
    _fake(fake_bin, "id", "echo 0")
    _fake(fake_bin, "apt-get", f'echo "$*" >> {calls}')  # records instead of installing
    cp = subprocess.run(["bash", str(fresh_checkout / "scripts" / "setup")], capture_output=True, text=True,
                        timeout=60, env={"PATH": str(fake_bin)})
    # The fake python still has no venv after the (fake) install: the script stops at `python3 -m venv`.
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "installing with apt-get: python3.12-venv" in cp.stdout
    lines = calls.read_text().splitlines()
    assert lines[0] == "update -qq"
    assert lines[1].startswith("install -y -qq python3.12-venv")
    cp = subprocess.run(["bash", str(fresh_checkout / "scripts" / "setup"), "--check"], capture_output=True,
                        text=True, timeout=60, env={"PATH": str(fake_bin)})
    assert cp.returncode == 0 and "would install with apt-get: python3.12-venv" in cp.stdout
    assert len(calls.read_text().splitlines()) == 2, "--check ran apt-get"
