"""The Slurm launcher (pr1d/pipeline/slurm.py): the batch script and the event file here; stages through a real
one-host Slurm (tests/pipeline/slurm_cluster.py: skipped with the reason where slurm-wlm or root is missing);
and a real daemon SIGKILLed while its stage's job runs, whose successor re-attaches to the job."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from pr1d.config import ConfigError, SlurmConfig, load_config
from pr1d.pipeline.slurm import (
    EventFile,
    SlurmError,
    SlurmStageProcess,
    batch_script,
    job_state,
    pending_job,
    sbatch_args,
)
from pr1d.pipeline.spec import StageSpec
from tests.conftest import add_agents
from tests.pipeline.slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)

JOB_TIMEOUT_S = 60  # every job here takes seconds: a hung one fails its test instead of stalling the suite


def _spec(tmp_path: Path, params: dict, stage: str = "sleep", run_id: int = 1) -> StageSpec:
    run_dir = tmp_path / "runs" / str(run_id)
    stage_dir = run_dir / f"01-{stage}"
    return StageSpec(run_id=run_id, stage_id=1, stage=stage, run_dir=run_dir, stage_dir=stage_dir,
                     checkpoint_dir=stage_dir / "checkpoints", heartbeat_s=0.5, params=params)


# == without Slurm ============================================================================================
def test_one_node_job_runs_the_stage_under_srun_with_plain_python(tmp_path):
    spec = _spec(tmp_path, {})
    cfg = SlurmConfig(partition="gpu", time_limit="1:00:00", extra_args=["--account=ml"])
    args = sbatch_args(spec, cfg)
    assert {"--nodes=1", "--ntasks-per-node=1", "--partition=gpu", "--time=1:00:00", "--account=ml", "--parsable",
            f"--output={spec.stage_dir / 'stage.log'}", "--open-mode=append"} <= set(args)
    assert not any(a.startswith("--gpus-per-node") for a in args)
    script = batch_script(spec, spec.stage_dir / "spec.json", cfg, python="/opt/py/bin/python")
    assert f"srun --kill-on-bad-exit=1 /opt/py/bin/python -m pr1d.stages.sleep {spec.stage_dir / 'spec.json'}" in script
    assert "accelerate" not in script
    assert f'export PR1_EVENT_FILE={spec.stage_dir}/events."$SLURM_JOB_ID".jsonl' in script
    assert f'echo "$rc" > {spec.stage_dir}/exit."$SLURM_JOB_ID"' in script
    _bash_syntax_ok(tmp_path, script)


def test_several_nodes_run_accelerate_with_each_node_rank_and_the_first_host_as_main(tmp_path):
    spec = _spec(tmp_path, {}, stage="sft")
    cfg = SlurmConfig(nodes=2, gpus_per_node=8, main_process_port=29600)
    args = sbatch_args(spec, cfg)
    assert "--nodes=2" in args and "--gpus-per-node=8" in args
    script = batch_script(spec, spec.stage_dir / "spec.json", cfg, python="/py", accelerate_config="/etc/acc.yaml")
    assert 'PR1_MAIN_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in script
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    # Single-quoted: $SLURM_NODEID is expanded on each node by the shell srun starts there.
    assert srun.startswith("srun --kill-on-bad-exit=1 bash -c '/py -m accelerate.commands.launch --config_file "
                           "/etc/acc.yaml --num_machines \"$SLURM_NNODES\" --machine_rank \"$SLURM_NODEID\"")
    assert "--main_process_ip \"$PR1_MAIN_HOST\" --main_process_port 29600" in srun
    assert "--num_processes $(( SLURM_NNODES * 8 ))" in srun and srun.endswith("spec.json'")
    _bash_syntax_ok(tmp_path, script)


def _bash_syntax_ok(tmp_path: Path, script: str) -> None:
    path = tmp_path / "job.sh"
    path.write_text(script)
    cp = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr


def test_the_event_file_is_read_by_whole_lines_from_an_offset(tmp_path):
    path = tmp_path / "events.jsonl"
    ev = EventFile(path)
    assert ev.read_lines() == []  # not written yet
    path.write_bytes(b'{"type":"heartbeat"}\n{"type":"log","lev')
    hb, lg = b'{"type":"heartbeat"}', b'{"type":"log","level":"info","message":"x"}'
    assert ev.read_lines() == [(hb, len(hb) + 1)]  # each line with the offset just past it
    assert ev.read_lines() == []  # the second line is not finished: it waits
    with open(path, "ab") as f:
        f.write(b'el":"info","message":"x"}\n{"type":"heartbeat"}\n')
    assert ev.read_lines() == [(lg, len(hb) + len(lg) + 2), (hb, 2 * len(hb) + len(lg) + 3)]
    again = EventFile(path, ev.offset)  # a re-attaching daemon starts where the last one stopped
    assert again.read_lines() == [] and again.offset == path.stat().st_size


def test_the_slurm_launcher_is_checked_like_any_config(tmp_path):
    with pytest.raises(ConfigError, match="shared_run_folder = true"):
        load_config([], environ={"PR1_DAEMON__LAUNCHER": "slurm"})
    with pytest.raises(ConfigError, match=r"daemon\.slurm\.partiton`: unknown key"):
        load_config([], environ={"PR1_DAEMON__SLURM__PARTITON": "gpu"})
    with pytest.raises(ConfigError, match="expected a Slurm time"):
        load_config([], environ={"PR1_DAEMON__SLURM__TIME_LIMIT": "2h"})
    with pytest.raises(ConfigError, match="expected sbatch options"):
        load_config([], environ={"PR1_DAEMON__SLURM__EXTRA_ARGS": '["account=ml"]'})
    cfg = load_config([], environ={"PR1_DAEMON__LAUNCHER": "slurm", "PR1_DAEMON__SLURM__SHARED_RUN_FOLDER": "true",
                                   "PR1_DAEMON__SLURM__NODES": "2"})
    assert cfg.daemon.launcher == "slurm" and cfg.daemon.slurm.nodes == 2


# == through a real Slurm =====================================================================================
def _proc(spec: StageSpec, events: list[dict], grace: float = 10.0) -> SlurmStageProcess:
    async def sink(ev: dict) -> None:
        events.append(ev)

    return SlurmStageProcess(spec, sink, heartbeat_timeout_s=30, stop_grace_s=grace, slurm=SlurmConfig(poll_s=0.2))


async def _until(pred, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.usefixtures("slurm_cluster")
def test_a_stage_runs_through_sbatch_to_success_with_its_events(tmp_path):
    spec = _spec(tmp_path, {"seconds": 0.6, "step_s": 0.1})
    events: list[dict] = []
    proc = _proc(spec, events)

    async def go():
        await proc.start()
        return await asyncio.wait_for(proc.wait(), JOB_TIMEOUT_S)

    out = asyncio.run(go())
    assert out.state == "succeeded", out
    assert out.exit_code == 0 and out.result == {"steps": 6, "resumed_from": 0}
    assert [e["step"] for e in events if e["type"] == "metric"] == [1, 2, 3, 4, 5, 6]
    assert any(e["type"] == "checkpoint" for e in events)
    assert "step 5/6" in proc.log_path.read_text()  # the job's output is the stage log
    assert pending_job(spec.stage_dir) == proc.job_id  # until the daemon says the ledger has its end
    proc.mark_recorded()
    assert pending_job(spec.stage_dir) is None


@pytest.mark.usefixtures("slurm_cluster")
def test_cancel_lets_the_stage_checkpoint_then_it_ends_cancelled(tmp_path):
    spec = _spec(tmp_path, {"seconds": 60, "step_s": 0.1})
    events: list[dict] = []
    proc = _proc(spec, events)

    async def go():
        await proc.start()
        waiter = asyncio.create_task(proc.wait())
        await _until(lambda: any(e["type"] == "metric" for e in events))
        t0 = time.monotonic()
        proc.stop("cancel")
        out = await asyncio.wait_for(waiter, JOB_TIMEOUT_S)
        return out, time.monotonic() - t0

    out, took = asyncio.run(go())
    assert out.state == "cancelled" and out.error == "cancelled"
    assert out.exit_code == 75  # scancel --signal=TERM reached the stage: it checkpointed and left
    assert took < 10
    assert "stage stopped on request after checkpointing" in proc.log_path.read_text()
    assert asyncio.run(job_state(proc.job_id)).state in ("COMPLETED", "FAILED")  # ended, not just signalled


@pytest.mark.usefixtures("slurm_cluster")
def test_a_failing_worker_fails_the_stage_with_its_error(tmp_path):
    spec = _spec(tmp_path, {"seconds": 2, "step_s": 0.1, "fail_at_step": 2})
    proc = _proc(spec, [])

    async def go():
        await proc.start()
        return await asyncio.wait_for(proc.wait(), JOB_TIMEOUT_S)

    out = asyncio.run(go())
    assert out.state == "failed" and out.exit_code == 1
    assert out.error == "RuntimeError: asked to fail at step 2"


@pytest.mark.usefixtures("slurm_cluster")
def test_a_silent_job_fails_on_the_heartbeat_watchdog_and_is_cancelled(tmp_path):
    spec = _spec(tmp_path, {"seconds": 60, "step_s": 0.1, "silent_after_step": 3})
    events: list[dict] = []
    proc = SlurmStageProcess(spec, lambda ev: asyncio.sleep(0, events.append(ev)), heartbeat_timeout_s=2,
                             stop_grace_s=1, slurm=SlurmConfig(poll_s=0.2))

    async def go():
        await proc.start()
        return await asyncio.wait_for(proc.wait(), JOB_TIMEOUT_S)

    out = asyncio.run(go())
    assert out.state == "failed" and out.error == "missed heartbeat: no event for 2 s"
    assert [e["step"] for e in events if e["type"] == "metric"] == [1, 2, 3]
    assert asyncio.run(job_state(proc.job_id)).state == "CANCELLED"  # the stuck stage ignored TERM: hard cancel


@pytest.mark.usefixtures("slurm_cluster")
def test_a_job_sbatch_refuses_says_why(tmp_path):
    proc = SlurmStageProcess(_spec(tmp_path, {}), _proc(_spec(tmp_path, {}), []).sink, heartbeat_timeout_s=30,
                             stop_grace_s=1, slurm=SlurmConfig(partition="nosuch"))
    with pytest.raises(SlurmError, match="sbatch refused the stage's job: .*[Ii]nvalid partition"):
        asyncio.run(proc.start())
    assert proc.job_id is None and pending_job(proc.spec.stage_dir) is None


@pytest.mark.usefixtures("slurm_cluster")
def test_a_detached_job_is_followed_again_from_where_it_was_read(tmp_path):
    """A daemon shutdown lets go of the job; another process re-attaches and gets each event exactly once."""
    spec = _spec(tmp_path, {"seconds": 2, "step_s": 0.1})
    first: list[dict] = []
    second: list[dict] = []
    proc = _proc(spec, first)

    async def go():
        await proc.start()
        waiter = asyncio.create_task(proc.wait())
        await _until(lambda: len([e for e in first if e["type"] == "metric"]) >= 3)
        proc.stop("shutdown")
        detached = await asyncio.wait_for(waiter, JOB_TIMEOUT_S)
        again = _proc(spec, second)
        assert again.attach() == proc.job_id
        return detached, await asyncio.wait_for(again.wait(), JOB_TIMEOUT_S)

    detached, out = asyncio.run(go())
    assert detached.state == "interrupted" and proc.detached and "keeps running" in detached.error
    assert out.state == "succeeded", out
    steps = [e["step"] for e in first + second if e["type"] == "metric"]
    assert steps == list(range(1, 21)) and second  # nothing lost, nothing twice


# == real daemons, SIGKILLed and stopped while their Slurm job runs ============================================
@pytest.mark.usefixtures("slurm_cluster")
def test_a_sigkilled_daemon_reattaches_to_the_running_slurm_job(daemon_factory, state_dir):
    """SIGKILL: the next daemon re-attaches; SIGTERM: the daemon lets go of the job, the next one re-attaches."""
    add_agents(state_dir, "a1")
    env = {"PR1_DAEMON__LAUNCHER": "slurm", "PR1_DAEMON__SLURM__SHARED_RUN_FOLDER": "true",
           "PR1_DAEMON__SLURM__POLL_S": "0.2"}
    d1 = daemon_factory(state_dir, extra_env=env).start()
    run = d1.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "seconds=6", "--param", "step_s=0.1")["run"]["id"]
    ledger = state_dir / "ledger.sqlite"

    def metric_steps() -> list[int]:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as con:
            return [r[0] for r in con.execute("SELECT step FROM metrics WHERE run_id = ? AND name = 'sleep.step' "
                                              "ORDER BY step", (run,))]

    def wait_steps(n: int, d) -> list[int]:
        deadline = time.monotonic() + 30
        while len(steps := metric_steps()) < n:
            assert time.monotonic() < deadline, f"no events from the job: {d.stderr()}"
            time.sleep(0.05)
        return steps

    wait_steps(3, d1)
    stage_dir = next((state_dir / "runs" / str(run)).glob("*-sleep"))
    job = json.loads((stage_dir / "slurm.json").read_text())["job"]
    d1.proc.send_signal(signal.SIGKILL)
    d1.proc.wait(10)
    killed_at = metric_steps()[-1]
    time.sleep(0.5)
    assert asyncio.run(job_state(job)).state == "RUNNING"  # the job does not die with its daemon

    d2 = daemon_factory(state_dir, extra_env=env).start()
    wait_steps(killed_at + 8, d2)  # the job's events again, through the new daemon
    running = d2.ctl_json("status")["running"]
    assert running == [{"run": run, "stage": "sleep", "pid": None, "slurm_job": job}], running
    assert f"run {run} sleep (Slurm job {job})" in d2.ctl("status").stdout
    assert d2.stop() == 0  # SIGTERM: lets go of the job
    stopped_at = metric_steps()[-1]
    assert asyncio.run(job_state(job)).state == "RUNNING"
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as con:
        assert con.execute("SELECT state FROM runs WHERE id = ?", (run,)).fetchone()[0] == "interrupted"

    d3 = daemon_factory(state_dir, extra_env=env).start()
    done = d3.wait_run(run, {"succeeded", "failed", "cancelled", "interrupted"}, timeout=60)
    assert done["state"] == "succeeded", (done, d3.stderr())
    # All three daemons' events: none lost, each once but for at most the one event the SIGKILL caught between
    # its ledger write and saving the offset (docs/multi_gpu.md: at least once); the SIGTERM loses nothing.
    steps = metric_steps()
    assert killed_at < stopped_at < 60 and sorted(set(steps)) == list(range(1, 61)) and len(steps) <= 61, steps
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as con:
        reasons = [r[0] for r in con.execute("SELECT reason FROM audit WHERE entity = 'stage' ORDER BY id")]
        attempt = con.execute("SELECT attempt FROM stages WHERE run_id = ?", (run,)).fetchone()[0]
    assert reasons == [f"started as Slurm job {job}", "daemon restarted while the stage ran",
                       f"re-attached to Slurm job {job}",
                       f"daemon stopped; Slurm job {job} keeps running and is re-attached at the next start",
                       f"re-attached to Slurm job {job}", None], reasons
    assert attempt == 1  # one job, one attempt, three daemons
    assert f"re-attaching to Slurm job {job} after a restart" in [a["reason"] for a in done["audit"]]  # pr1ctl show
    assert pending_job(stage_dir) is None  # its end is in the ledger: a fourth start leaves it alone
    assert d3.stop() == 0
