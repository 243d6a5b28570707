"""The README's console screenshot is the snapshot test's current picture, not a stale copy."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAP = ROOT / "tests" / "tui" / "__snapshots__" / "test_tui_snapshots"


def test_readme_screenshots_match_the_snapshot_tests():
    readme = (ROOT / "README.md").read_text()
    for name, snap in (("console-dashboard.svg", "test_dashboard.svg"), ("console-runs.svg", "test_runs.svg")):
        assert f"docs/img/{name}" in readme
        assert (ROOT / "docs" / "img" / name).read_bytes() == (SNAP / snap).read_bytes(), (
            f"docs/img/{name} is stale: copy {SNAP / snap} over it"
        )
