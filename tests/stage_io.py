"""Reading a stage worker's JSON event stream in tests that run `python -m pr1d.stages.<stage>` directly."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def read_events(
    proc: subprocess.Popen, until: Callable[[dict], bool] | None = None, timeout: float = 120.0
) -> list[dict]:
    """The events a worker prints on stdout, up to the first one ``until`` accepts (or EOF, or ``timeout``)."""
    events, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("{"):
            events.append(json.loads(line))
            if until and until(events[-1]):
                return events
        if time.monotonic() > deadline:
            break
    return events


def write_stage_spec(tmp_path: Path, stage_dir_name: str, params: dict, resume: bool, **sections) -> Path:
    """A stage worker's spec file for a run under ``tmp_path/run`` (one per ``resume`` value), its stage dir made.

    Built with the daemon's own :class:`~pr1d.pipeline.spec.StageSpec`, so a test spec cannot drift from the
    contract; ``sections`` are further StageSpec fields (``scoring=Scoring(...)``, ``run_kind="rl"``, ...).
    """
    from pr1d.pipeline.spec import StageSpec

    run_dir = tmp_path / "run"
    stage_dir = run_dir / stage_dir_name
    spec = StageSpec(run_id=1, stage_id=1, stage=stage_dir_name.split("-", 1)[-1], run_dir=run_dir,
                     stage_dir=stage_dir, checkpoint_dir=stage_dir / "checkpoints", resume=resume, heartbeat_s=30,
                     params=params, **sections)
    stage_dir.mkdir(parents=True, exist_ok=True)
    return spec.dump(tmp_path / f"spec-{int(resume)}.json")


def run_worker(stage: str, spec: Path, timeout: float = 600.0) -> tuple[list[dict], dict]:
    """Run ``python -m pr1d.stages.<stage> SPEC`` to its end (events on stdout, no event fd); asserts it exited 0
    (showing its stderr otherwise). Returns every event and the result event's outputs."""
    import os
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("PR1_EVENT_FD", None)
    proc = subprocess.run([sys.executable, "-m", f"pr1d.stages.{stage}", str(spec)], capture_output=True, text=True,
                          env=env, cwd=root, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    return events, next(e for e in events if e["type"] == "result")["outputs"]
