"""The multi-process path: the sft stage under `accelerate launch` with 2 CPU ranks over gloo, as the daemon runs it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pr1d.pipeline.launcher import StageProcess
from pr1d.pipeline.spec import StageSpec

ROOT = Path(__file__).resolve().parents[2]
CPU_2PROC = ROOT / "config" / "accelerate" / "cpu-2proc.yaml"
RANK_VARS = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE"}


# -- rank awareness of the worker (no torch: fast) ----------------------------------------------------------


def _spec(tmp_path: Path, stage: str = "noop") -> Path:
    stage_dir = tmp_path / f"01-{stage}"
    stage_dir.mkdir(parents=True)
    return StageSpec(run_id=1, stage_id=1, stage=stage, run_dir=tmp_path, stage_dir=stage_dir,
                     checkpoint_dir=stage_dir / "checkpoints", heartbeat_s=30).dump(stage_dir / "spec.json")


def _run_with_pipe(cmd: list[str], env: dict[str, str]) -> tuple[int, list[dict]]:
    """Run ``cmd`` the way the launcher does (the pipe's write end passed by number) and read its events."""
    r, w = os.pipe()
    # A test run under some launcher must not leak its own rank into the stage.
    base = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
    env = {**base, **env, "PR1_EVENT_FD": str(w), "PR1_DAEMON_PID": str(os.getpid())}
    proc = subprocess.Popen(cmd, pass_fds=(w,), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(w)
    with os.fdopen(r) as fh:
        events = [json.loads(line) for line in fh]
    proc.wait(timeout=60)
    return proc.returncode, [e for e in events if e["type"] != "heartbeat"]


@pytest.mark.parametrize(("rank_env", "expected"), [
    ({}, ["progress", "result"]),                                     # no launcher: one process reports
    ({"RANK": "0", "WORLD_SIZE": "2"}, ["progress", "result"]),       # the main rank reports for all
    ({"RANK": "1", "WORLD_SIZE": "2"}, []),                           # torchrun's other rank: silent
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}, []),  # an MPI launcher's other rank
])
def test_only_the_main_rank_sends_events(tmp_path, rank_env, expected):
    rc, events = _run_with_pipe([sys.executable, "-m", "pr1d.stages.noop", str(_spec(tmp_path))], rank_env)
    assert rc == 0
    assert [e["type"] for e in events] == expected


def test_events_cross_a_launcher_that_closes_inherited_fds(tmp_path):
    """`accelerate launch` (simple launcher and torchrun) starts the stage with close_fds: the worker must find
    the daemon's pipe in its parent, and must not mistake the launcher for a dead daemon."""
    launcher = ("import subprocess, sys; "
                "sys.exit(subprocess.call([sys.executable, '-m', 'pr1d.stages.noop', sys.argv[1]], close_fds=True))")
    rc, events = _run_with_pipe([sys.executable, "-c", launcher, str(_spec(tmp_path))], {})
    assert rc == 0
    assert [e["type"] for e in events] == ["progress", "result"]


# -- two ranks over gloo through `accelerate launch` ----------------------------------------------------------

# The production profile's switches (LoRA, bf16, gradient checkpointing) at tiny scale: 32 records, 4 per rank
# per step, 3 steps. Two ranks split each epoch's 8 batches into 4 each.
PARAMS = {"cpu": True, "finetune": "lora", "lora_r": 4, "lora_alpha": 8, "bf16": True,
          "gradient_checkpointing": True, "n_train": 32, "batch_size": 4, "max_steps": 3, "max_length": 160,
          "checkpoint_every": 100, "eval_per_tier": 0, "threads": 1}
RANK_LINE = re.compile(r"rank (\d)/(\d) trained (\d+) steps over (\w+) on (\d+) batches per epoch; weights (\w+)")


def _launch(run_dir: Path, params: dict, *, resume: bool = False, stop_at_step: int = 0):
    """Run the sft stage as the daemon does with ``launcher = "accelerate"``; ``stop_at_step``: ask it to stop
    for a daemon shutdown once that step was reported. Returns the outcome and the events the daemon got."""
    stage_dir = run_dir / "01-sft"
    spec = StageSpec(run_id=1, stage_id=1, stage="sft", run_dir=run_dir, stage_dir=stage_dir,
                     checkpoint_dir=stage_dir / "checkpoints", params=params, resume=resume, heartbeat_s=2.0)
    events: list[dict] = []

    async def sink(ev: dict) -> None:
        events.append(ev)

    async def run():
        proc = StageProcess(spec, sink, heartbeat_timeout_s=120, stop_grace_s=30,
                            launcher="accelerate", accelerate_config=str(CPU_2PROC))
        await proc.start()
        while stop_at_step and not any(e["type"] == "progress" and e["step"] >= stop_at_step for e in events):
            await asyncio.sleep(0.1)
        if stop_at_step:
            proc.stop("shutdown")
        return await proc.wait()

    return asyncio.run(run()), events


def test_sft_stage_runs_on_two_ranks_over_gloo(tmp_path, tiny_model):
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from pr1d.train.sft import weights_fingerprint

    outcome, events = _launch(tmp_path, {"model": str(tiny_model), **PARAMS})
    stage_dir = tmp_path / "01-sft"
    log = (stage_dir / "stage.log").read_text()
    assert outcome.state == "succeeded", f"{outcome}\n{log[-3000:]}"

    # Both ranks ran, in one world of 2 over gloo, each on half of every epoch (32 records / 4 = 8 batches).
    ranks = {int(m[0]): m for m in RANK_LINE.findall(log)}
    assert sorted(ranks) == [0, 1], log[-3000:]
    for _rank, world, steps, backend, batches, _fp in ranks.values():
        assert (world, steps, backend, batches) == ("2", "3", "gloo", "4")

    # Gradients were averaged: ranks that trained on different halves ended with the same weights, and the
    # adapter the main rank saved holds exactly what rank 1 ended with. Training moved it: LoRA's B matrices
    # start at zero.
    assert ranks[0][5] == ranks[1][5]
    adapter = stage_dir / "candidate" / "adapter"
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), local_files_only=True)
    assert weights_fingerprint(PeftModel.from_pretrained(base, str(adapter))) == ranks[1][5]
    lora_b = [t for k, t in load_file(adapter / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)

    # The daemon heard one voice: one progress event per step, one candidate, one result.
    types = [e["type"] for e in events]
    assert types.count("result") == 1 and types[-1] == "result"
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3]
    assert [e["name"] for e in events if e["type"] == "artifact"] == ["candidate", "adapter"]
    assert sorted(p.name for p in stage_dir.rglob("candidate")) == ["candidate"]
    assert events[-1]["outputs"]["train"]["world_size"] == 2
    # Each rank kept its own RNG state in the checkpoint (a resumed run restores both).
    ckpt = stage_dir / "checkpoints" / "checkpoint-3"
    assert {p.name for p in ckpt.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert torch.isfinite(torch.tensor([e["value"] for e in events if e.get("name") == "sft.loss"])).all()


def test_daemon_shutdown_interrupts_both_ranks_and_they_resume(tmp_path, tiny_model):
    """SIGTERM reaches the ranks through torchrun; they checkpoint and the stage is `interrupted` (torchrun
    itself exits 1), then a resumed stage continues from that checkpoint on both ranks."""
    pytest.importorskip("accelerate")
    params = {"model": str(tiny_model), **PARAMS, "finetune": "full", "max_steps": 400}
    outcome, events = _launch(tmp_path, params, stop_at_step=2)
    log = (tmp_path / "01-sft" / "stage.log").read_text()
    assert outcome.state == "interrupted", f"{outcome}\n{log[-3000:]}"
    assert log.count("stage stopped on request after checkpointing") == 2  # each rank, not only the main one
    (ckpt_event,) = [e for e in events if e["type"] == "checkpoint"]
    stopped_at = ckpt_event["step"]
    assert "result" not in [e["type"] for e in events]

    outcome, events = _launch(tmp_path, {**params, "max_steps": stopped_at + 1}, resume=True)
    assert outcome.state == "succeeded", outcome
    train = events[-1]["outputs"]["train"]
    assert train["resumed_from"].endswith(f"checkpoint-{stopped_at}")
    assert (train["steps"], train["world_size"]) == (stopped_at + 1, 2)
