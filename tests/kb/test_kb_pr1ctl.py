"""`pr1ctl kb ingest` through the daemon: the stage worker embeds, the daemon stays torch-free."""

from __future__ import annotations

from pathlib import Path

import pr1d


def test_pr1ctl_kb_ingest_is_idempotent(daemon):
    corpus = Path(pr1d.__file__).parent / "kb" / "corpus"
    first = daemon.ctl_json("kb", "ingest", str(corpus))
    assert first["upserted"] > 0 and first["total_chunks"] == first["chunks"]
    again = daemon.ctl_json("kb", "ingest", str(corpus))
    assert again["upserted"] == 0 and again["skipped_unchanged"] == first["chunks"]
    assert again["total_chunks"] == first["total_chunks"]
    assert (daemon.state_dir / "kb.sqlite").exists()
    maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
    assert "torch" not in maps
    assert daemon.ctl_json("audit", "--entity", "kb")[-1]["action"] == "kb_ingest"


def test_pr1ctl_kb_ingest_missing_path_is_a_clear_error(daemon, tmp_path):
    cp = daemon.ctl("kb", "ingest", str(tmp_path / "nope"), check=False)
    assert cp.returncode == 1 and "no such file or folder" in cp.stderr
