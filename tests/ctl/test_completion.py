"""Shell completion for pr1d, pr1ctl and pr1tui: generated from the parsers, valid bash, and it completes."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from pr1d.cli import build_parser as pr1d_parser
from pr1d.completion import bash_script, command_tree, zsh_script
from pr1d.ctl import build_parser as ctl_parser
from tests.conftest import BIN, pr1_env

PROGRAMS = {"pr1d": ["completion"], "pr1ctl": ["completion"], "pr1tui": ["--completion"]}


def _script(prog: str, shell: str, tmp_path: Path) -> Path:
    cp = subprocess.run([str(BIN / prog), *PROGRAMS[prog], shell], capture_output=True, text=True, timeout=60,
                        env=pr1_env(PR1_SOCKET=str(tmp_path / "no-daemon.sock")))
    assert cp.returncode == 0, cp.stderr  # no daemon needed
    out = tmp_path / f"{prog}.{shell}"
    out.write_text(cp.stdout)
    return out


@pytest.mark.parametrize("shell", ["bash", "zsh"])
@pytest.mark.parametrize("prog", list(PROGRAMS))
def test_script_is_valid_bash_and_registers_the_program(prog, shell, tmp_path):
    path = _script(prog, shell, tmp_path)
    cp = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    text = path.read_text()
    assert f"complete -o bashdefault -o default -F _{prog}_complete {prog}" in text
    assert ("bashcompinit" in text) is (shell == "zsh")


@pytest.mark.parametrize(("prog", "build", "expected"), [
    ("pr1d", pr1d_parser, {(): {"serve", "restore", "config", "completion", "eval", "model"}, ("config",): {"check"}}),
    ("pr1ctl", ctl_parser, {(): {"status", "backup", "completion", "ledger", "kb"}, ("ledger",): {"backup", "compact"}}),
])
def test_every_subcommand_is_in_the_script(prog, build, expected, tmp_path):
    text = _script(prog, "bash", tmp_path).read_text()
    tree = command_tree(build())
    for path, subs in expected.items():
        assert subs <= set(tree[path].subcommands)
    for path, level in tree.items():
        for sub in level.subcommands:
            assert f'"{" ".join(path)}|{sub}") path=' in text, (path, sub)


CASES = [
    ("pr1ctl", ["led"], ["ledger"]),
    ("pr1ctl", ["ledger", ""], ["backup", "compact", "-h", "--help", "--json", "--socket", "--config"]),
    ("pr1ctl", ["--socket", "/x", "ledger", "b"], ["backup"]),  # an option's value is not a subcommand
    ("pr1ctl", ["completion", ""], ["bash", "zsh", "-h", "--help"]),
    ("pr1ctl", ["backup", "/tmp/x", "--max"], ["--max-run-file-mb"]),
    ("pr1ctl", ["runs", "--agent", ""], []),  # a free value: left to the shell's file completion
    ("pr1ctl", ["runs", "--state", "awa"], ["awaiting_approval"]),  # an option with choices completes them
    ("pr1d", ["config", ""], ["check", "-h", "--help"]),
    ("pr1d", ["restore", "/bk", "--st"], ["--state-dir"]),
    ("pr1d", ["model", ""], ["bootstrap", "-h", "--help"]),
    ("pr1tui", ["--re"], ["--read-only"]),
    ("pr1tui", ["--completion", ""], ["bash", "zsh"]),
]


@pytest.mark.parametrize(("prog", "words", "want"), CASES, ids=[" ".join([p, *w]) for p, w, _ in CASES])
def test_completes(prog, words, want, tmp_path):
    script = _script(prog, "bash", tmp_path)
    quoted = " ".join(f"'{w}'" for w in [prog, *words])
    run = (f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words)}; _{prog}_complete; "
           'printf "%s\\n" "${COMPREPLY[@]}"')
    cp = subprocess.run(["bash", "-c", run], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    assert [w for w in cp.stdout.splitlines() if w] == want


def test_a_word_the_script_cannot_quote_is_refused():
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--mode", choices=["a b"])
    with pytest.raises(ValueError, match="cannot go into a completion script"):
        bash_script("x", p)
    assert "bashcompinit" in zsh_script("x", argparse.ArgumentParser(prog="x"))
