"""tests/ mirrors the packages (docs/architecture.md): tests/<name>/ holds the tests of pr1d/<name>/ or pr1d/<name>.py
(tui: pr1tui),
and only three folders cut across them: faults (fault injection into the running system), e2e (the whole loop)
and fixtures (data files). Tests of a top-level module (pr1d/stats.py) and whole-repo checks sit in tests/."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACROSS = {"faults", "e2e", "fixtures"}


def test_every_test_folder_is_a_package_or_says_why_not():
    # a package, or a module big enough for a folder of tests (pr1d/ctl.py, pr1d/config.py)
    packages = {p.name for p in (ROOT / "pr1d").iterdir() if (p / "__init__.py").exists()}
    packages |= {p.stem for p in (ROOT / "pr1d").glob("*.py")}
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert folders - packages - ACROSS - {"tui"} == set(), "a tests/ folder that mirrors no package"


def test_basenames_are_unique():
    # The test folders are not packages (pytest imports a test module by its file name), so two test files
    # of the same name in different folders would collide.
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
