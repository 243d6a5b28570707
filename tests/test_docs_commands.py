"""The docs' commands are real: fenced `pr1ctl`/`pr1d`/`python -m` lines parse, every entry point has `--help`."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pr1d.cli import build_parser as pr1d_parser
from pr1d.ctl import build_parser as ctl_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
# Synopsis lines (placeholders in capitals or [optional] parts, box drawing) are not commands.
_SYNOPSIS = re.compile(r"\b(RUN|AGENT|VERSION|PATH|NAME|N)\b")
# `python -m X`, `.venv/bin/python -m X`, `accelerate launch ... -m X`: the module a line runs.
_MODULE = re.compile(r"(?:^|\s)-m\s+(pr1d[\w.]*|pr1tui[\w.]*)")
# Stage workers take one SPEC.json written by the daemon, not flags (`usage: python -m pr1d.stages.X SPEC.json`);
# the docs name them to explain what the daemon spawns, not as commands to run by hand.
_NOT_A_CLI = ("pr1d.stages.",)


def _doc_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _fenced_lines() -> list[tuple[str, str]]:
    out = []
    for f in _doc_files():
        in_fence = False
        for line in f.read_text().splitlines():
            if line.lstrip().startswith("```"):
                in_fence = not in_fence
                continue
            if in_fence:
                out.append((f.name, line.split("#")[0].strip()))
    return out


def _commands() -> list[tuple[str, str]]:
    out = []
    for doc, cmd in _fenced_lines():
        cmd = re.sub(r"^(\S*/)?\.venv/bin/", "", cmd)
        if "[" in cmd or "─" in cmd or _SYNOPSIS.search(cmd):
            continue
        for part in re.split(r"\s*&&\s*", cmd):
            if re.match(r"^(pr1ctl|pr1d)\s", part):
                out.append((doc, part))
    return out


def _module_commands() -> dict[str, list[tuple[str, list[str]]]]:
    """Every module the docs run with `-m` (fenced or inline), with the fenced lines' arguments to parse."""
    named: dict[str, list[tuple[str, list[str]]]] = {}
    for f in _doc_files():
        for m in _MODULE.finditer(f.read_text().replace("`", " ")):
            if importlib.util.find_spec(m.group(1)) is not None:  # pr1d.stages.X and NAME are placeholders
                named.setdefault(m.group(1), [])
    for doc, cmd in _fenced_lines():
        cmd = re.sub(r"^(\S*/)?\.venv/bin/", "", cmd)
        m = re.match(r"^python3?\s+-m\s+(pr1d[\w.]*)\s*(.*)$", cmd)
        if not m or "[" in cmd or _SYNOPSIS.search(cmd):
            continue
        named.setdefault(m.group(1), []).append((doc, shlex.split(m.group(2))))
    return {k: v for k, v in sorted(named.items()) if not k.startswith(_NOT_A_CLI)}


COMMANDS = _commands()
MODULES = _module_commands()

# Run in a subprocess per module: `--help` first, then each documented argument list. parse_args is
# patched to stop right after parsing, so a documented training command is parsed, never run.
_PROBE = r"""
import argparse, json, runpy, sys

class Parsed(Exception):
    pass

_parse = argparse.ArgumentParser.parse_args

def _stop(self, args=None, namespace=None):
    _parse(self, args, namespace)
    raise Parsed

module, runs = sys.argv[1], json.loads(sys.argv[2])
argparse.ArgumentParser.parse_args = _stop
results = []
for argv in runs:
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        # A hand-rolled `--help` that prints and returns is fine; a documented command must stop at parsing.
        results.append(0 if argv == ["--help"] else "ran without parsing its arguments")
    except Parsed:
        results.append(0)
    except SystemExit as e:
        results.append(e.code if isinstance(e.code, int) else 1)
print("PROBE-RESULT " + json.dumps(results))
"""


def test_docs_have_commands():
    assert len(COMMANDS) >= 20
    # The fine-tune and RL runbooks tell on-call to run these: they must stay covered.
    assert {"pr1d.train.sft", "pr1d.train.grpo"} <= set(MODULES)


@pytest.mark.parametrize(("doc", "cmd"), COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_command_parses(doc, cmd):
    argv = shlex.split(cmd.replace("$(date +%F)", "2026-01-01"))
    parser = ctl_parser() if argv[0] == "pr1ctl" else pr1d_parser()
    try:
        parser.parse_args(argv[1:])
    except SystemExit as e:
        raise AssertionError(f"{doc}: `{cmd}` does not parse (exit {e.code})") from None


@pytest.mark.parametrize("module", list(MODULES))
def test_module_help_and_documented_lines_parse(module):
    runs = [["--help"], *(argv for _doc, argv in MODULES[module])]
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, module, json.dumps(runs)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    tail = [line for line in proc.stdout.splitlines() if line.startswith("PROBE-RESULT ")]
    assert tail, f"python -m {module}: probe crashed:\n{proc.stderr[-3000:]}"
    results = json.loads(tail[-1].removeprefix("PROBE-RESULT "))
    assert results[0] == 0, f"`python -m {module} --help` exited {results[0]}:\n{proc.stderr[-3000:]}"
    assert "usage:" in proc.stdout
    for (doc, argv), code in zip(MODULES[module], results[1:], strict=True):
        assert code == 0, f"{doc}: `python -m {module} {shlex.join(argv)}` does not parse ({code}):\n{proc.stderr[-2000:]}"


@pytest.mark.parametrize("script", ["pr1d", "pr1ctl", "pr1tui"])
def test_console_script_help(script):
    exe = Path(sys.executable).parent / script
    if not exe.exists():
        pytest.skip(f"{script} is not installed next to {sys.executable}")
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def _subparsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _subparsers(sub)


@pytest.mark.parametrize("build", [pr1d_parser, ctl_parser], ids=["pr1d", "pr1ctl"])
def test_every_subcommand_help_formats(build):
    # `pr1ctl X --help` for every X, in-process: a stray % in any help string crashes argparse here.
    for sub in _subparsers(build()):
        assert "usage:" in sub.format_help()
