"""Built-in `sleep` stage: waits in steps and checkpoints each one, to exercise the stage frame end to end.

Params: seconds (total, default 2), step_s (default 0.1), fail_at_step (raise there),
silent_after_step (stop all events there, to test the heartbeat watchdog), exit_code (exit
abruptly with it at the end, to test crash handling), write_mb (write an artifact of that size
first, to test a full disk), alloc_mb (allocate that much memory first, to test out-of-memory).
"""

from __future__ import annotations

import json
import os
import time

from ..pipeline.files import writing
from .base import Worker, run_stage


def main(w: Worker) -> dict:
    seconds = float(w.params.get("seconds", 2.0))
    step_s = float(w.params.get("step_s", 0.1))
    total = max(1, round(seconds / step_s))
    state = w.checkpoint_dir / "sleep.json"
    step = 0
    if w.resume and state.exists():
        step = json.loads(state.read_text())["step"]
        w.log(f"resuming from checkpoint at step {step}/{total}")
    if w.params.get("alloc_mb"):
        hog = bytearray(int(w.params["alloc_mb"]) << 20)  # touch it all: RSS, not just address space
        w.log(f"allocated {len(hog) >> 20} MB")
    if w.params.get("write_mb"):
        out = w.stage_dir / "payload.bin"
        with writing(out), open(out, "wb") as f:
            for _ in range(int(w.params["write_mb"])):
                f.write(b"\0" * (1 << 20))
        w.artifact("payload", out)
    t0 = time.monotonic()
    start = step
    while step < total:
        if w.stop_requested.is_set():
            w.interrupt()
        if w.params.get("fail_at_step") == step:
            raise RuntimeError(f"asked to fail at step {step}")
        if w.params.get("silent_after_step") == step:
            w.silence_heartbeat()
            time.sleep(3600)
        time.sleep(step_s)
        step += 1
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step}))
        tmp.replace(state)  # atomic: a kill never leaves a torn checkpoint
        w.checkpoint(state, step)
        rate = (step - start) / max(1e-9, time.monotonic() - t0)
        w.progress(step, total, eta_s=(total - step) / rate if rate else None)
        w.metric("sleep.step", step, step)
        if step % 5 == 0 or step == total:
            w.log(f"step {step}/{total}")
    if "exit_code" in w.params:
        os._exit(int(w.params["exit_code"]))
    return {"steps": total, "resumed_from": start}


if __name__ == "__main__":
    run_stage(main)
