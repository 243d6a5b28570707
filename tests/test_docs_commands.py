"""The docs' commands are the real ones: every fenced `pr1ctl`/`pr1d` line parses against the CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pr1d.cli import build_parser as pr1d_parser
from pr1d.ctl import build_parser as ctl_parser

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> list[tuple[str, str]]:
    out = []
    for f in [README, *sorted(DOCS.rglob("*.md"))]:
        in_fence = False
        for line in f.read_text().splitlines():
            if line.lstrip().startswith("```"):
                in_fence = not in_fence
                continue
            if not in_fence:
                continue
            cmd = line.split("#")[0].strip()
            cmd = re.sub(r"^(\S*/)?\.venv/bin/", "", cmd)
            # Synopsis lines (placeholders in capitals or [optional] parts, box drawing) are not commands.
            if "[" in cmd or "─" in cmd or re.search(r"\b(RUN|AGENT|VERSION|PATH|NAME|N)\b", cmd):
                continue
            for part in re.split(r"\s*&&\s*", cmd):
                if re.match(r"^(pr1ctl|pr1d)\s", part):
                    out.append((f"{f.name}", part))
    return out


COMMANDS = _commands()


def test_docs_have_commands():
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize(("doc", "cmd"), COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_command_parses(doc, cmd):
    argv = shlex.split(cmd.replace("$(date +%F)", "2026-01-01"))
    parser = ctl_parser() if argv[0] == "pr1ctl" else pr1d_parser()
    try:
        parser.parse_args(argv[1:])
    except SystemExit as e:
        raise AssertionError(f"{doc}: `{cmd}` does not parse (exit {e.code})") from None
