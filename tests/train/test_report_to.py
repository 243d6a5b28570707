"""Experiment tracking (``report_to``): strict params, a missing tracker named before training, TensorBoard
event files in the stage's folder, recorded as an artifact that `pr1ctl show` names; the default reports nowhere."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pr1d.params import REPORTERS, ParamsError, RLParams, SFTParams, params_from, validate_run_params
from tests.stage_io import write_stage_spec

ROOT = Path(__file__).resolve().parents[2]


# -------------------------------------------------------------------------------------------------
# Params
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (None, []),  # not given: no tracker
    ([], []),
    ("none", []),
    (["none"], []),
    ("tensorboard", ["tensorboard"]),
    ("TensorBoard", ["tensorboard"]),
    ("tensorboard,wandb", ["tensorboard", "wandb"]),
    (["wandb", "mlflow", "wandb"], ["wandb", "mlflow"]),
    (["trackio"], ["trackio"]),
    ("tensorbord", "unknown tracker(s) 'tensorbord'; use some of tensorboard, trackio, wandb, mlflow, or none"),
    (["mlflow", "comet_ml"], "unknown tracker(s) 'comet_ml'"),
    ("all", "unknown tracker(s) 'all'"),  # transformers' "all" would report to whatever happens to be installed
    ([3], "unknown tracker(s) 3"),
    (True, "expected a list of trackers or one name, got True"),
])
@pytest.mark.parametrize("model", [SFTParams, RLParams])
def test_report_to_values(model, value, expected):
    data = {} if value is None else {"report_to": value}
    if isinstance(expected, list):
        assert params_from(model, data, "[training.sft]").report_to == expected
    else:
        with pytest.raises(ParamsError) as e:
            params_from(model, data, "[training.sft]")
        assert str(e.value).startswith("[training.sft].report_to: ")
        assert expected in str(e.value)


def test_every_tracker_names_its_pip_package():
    from typing import get_args

    ann = SFTParams.model_fields["report_to"].annotation
    assert set(get_args(get_args(ann)[0])) == set(REPORTERS)


def test_report_to_as_a_flag_and_a_run_param():
    from pr1d.params import add_param_arguments, params_from_args

    p = argparse.ArgumentParser()
    add_param_arguments(p, SFTParams)
    assert params_from_args(SFTParams, p.parse_args([])).report_to == []
    assert params_from_args(SFTParams, p.parse_args(["--report-to", "tensorboard,mlflow"])).report_to == [
        "tensorboard", "mlflow"]
    validate_run_params("full", {"report_to": "tensorboard"})
    validate_run_params("rl", {"report_to": ["wandb"]})
    with pytest.raises(ParamsError, match="stage sft.report_to: unknown tracker"):
        validate_run_params("sft", {"report_to": "tensorbaord"})


def test_one_flat_report_to_tracks_both_stages_of_a_full_run(tmp_path):
    from pr1d.pipeline.spec import StageSpec
    from pr1d.stages.rl import stage_config

    spec = StageSpec.load(write_stage_spec(tmp_path, "04-rl", {"report_to": "tensorboard", "lr": 1e-3}, False,
                                           run_kind="full"))
    cfg = stage_config(spec)
    assert cfg.report_to == ["tensorboard"]
    assert cfg.lr == RLParams().lr  # the sft stage's flat lr still stays out of RL


def test_the_default_reports_nowhere(tmp_path):
    from pr1d.train.sft import report_args

    assert SFTParams().report_to == [] and RLParams().report_to == []
    assert report_args(SFTParams(), None) == {"report_to": []}
    pytest.importorskip("trl")
    from pr1d.train.grpo import grpo_args

    assert grpo_args(RLParams(), tmp_path, use_cpu=True).report_to == []
    named = grpo_args(RLParams(report_to=["wandb"]), tmp_path, use_cpu=True, run_name="pr1-run7-rl")
    assert (named.report_to, named.run_name) == (["wandb"], "pr1-run7-rl")


# -------------------------------------------------------------------------------------------------
# A tracker that is not installed
# -------------------------------------------------------------------------------------------------


@pytest.fixture
def without(monkeypatch):
    """``without("wandb")``: find_spec answers that the package is not installed (whether it is or not)."""
    import importlib.util

    real = importlib.util.find_spec

    def hide(*names: str) -> None:
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, **k: None if name in names else real(name, *a, **k))

    return hide


def test_a_missing_tracker_is_named_with_its_pip_package(without):
    from pr1d.train.sft import TrackerMissing, check_reporters

    without("wandb", "mlflow")
    check_reporters([])
    with pytest.raises(TrackerMissing) as e:
        check_reporters(["wandb", "mlflow"])
    msg = str(e.value)
    assert "report_to asks for wandb, mlflow but their packages are not installed" in msg
    assert "pip install wandb mlflow, or take wandb, mlflow out of report_to" in msg
    without("tensorboard")
    with pytest.raises(TrackerMissing, match=r"pip install tensorboard \(tensorboard comes with pip install"):
        check_reporters(["tensorboard"])


def test_training_refuses_a_missing_tracker_before_it_loads_the_model(without, tmp_path):
    pytest.importorskip("trl")
    from pr1d.train.grpo import build_trainer
    from pr1d.train.sft import TrackerMissing, train_sft

    without("mlflow")
    nowhere = tmp_path / "no-model-here"  # loading it would fail with an OSError: the check must come first
    with pytest.raises(TrackerMissing, match="pip install mlflow"):
        train_sft(nowhere, [], tmp_path / "ckpt", SFTParams(report_to=["mlflow"]))
    with pytest.raises(TrackerMissing, match="pip install mlflow"):
        build_trainer(nowhere, tmp_path / "ckpt", RLParams(report_to=["mlflow"]))


def test_the_sft_stage_fails_at_start_naming_the_package(tmp_path):
    missing = next((name for name in ("trackio", "mlflow", "wandb") if not _installed(name)), None)
    if missing is None:
        pytest.skip("trackio, mlflow and wandb are all installed: no tracker is missing in a subprocess")
    spec = write_stage_spec(tmp_path, "02-sft", {"model": str(tmp_path / "model"), "report_to": missing}, False)
    proc = _run_stage("sft", spec, timeout=120)
    assert proc.returncode == 1
    errors = [e for e in _events(proc) if e["type"] == "error"]
    assert len(errors) == 1 and f"pip install {missing}" in errors[0]["message"], proc.stderr[-2000:]
    assert errors[0]["message"].startswith("TrackerMissing: report_to asks for")
    assert not (tmp_path / "run" / "02-sft" / "training_tasks.jsonl").exists()  # failed before the data


# -------------------------------------------------------------------------------------------------
# TensorBoard
# -------------------------------------------------------------------------------------------------


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _records(n: int):
    from pr1d.evaluate.gsm_lite import train_split
    from pr1d.train.sft import make_records

    return make_records(train_split(n, seed=0, mix={"easy": 1.0}), parallel=True, branches=2)


def _scalars(folder: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _needs_tensorboard():
    pytest.importorskip("torch")
    pytest.importorskip("trl")
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard; it is in "
                                              "pr1[train])")


def test_sft_writes_tensorboard_curves_into_the_logging_dir(tiny_model, tmp_path):
    _needs_tensorboard()
    from pr1d.train.sft import train_sft

    cfg = SFTParams(max_steps=3, batch_size=4, checkpoint_every=50, report_to=["tensorboard"])
    board = tmp_path / "stage" / "tensorboard"
    _model, _tok, summary = train_sft(tiny_model, _records(24), tmp_path / "ckpt", cfg, use_cpu=True,
                                      logging_dir=board, run_name="pr1-run1-sft")
    assert summary["steps"] == 3
    assert list(board.glob("events.out.tfevents.*")), sorted(p.name for p in board.parent.rglob("*"))
    scalars = _scalars(board)
    assert scalars["train/loss"] == [1, 2, 3], scalars  # logged every step of a 3-step run
    assert "train/learning_rate" in scalars
    assert not (tmp_path / "ckpt" / "runs").exists()  # not transformers' default under the checkpoint folder


@pytest.mark.slow
def test_the_sft_stage_records_its_tensorboard_folder(tiny_model, tmp_path):
    _needs_tensorboard()
    from pr1d.train.sft import write_records

    data = tmp_path / "records.jsonl"
    write_records(_records(24), data)
    params = {"model": str(tiny_model), "data": str(data), "max_steps": 2, "batch_size": 4, "n_train": 8,
              "eval_per_tier": 0, "cpu": True, "report_to": "tensorboard"}
    proc = _run_stage("sft", write_stage_spec(tmp_path, "02-sft", params, False), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    board = tmp_path / "run" / "02-sft" / "tensorboard"
    arts = [e for e in _events(proc) if e["type"] == "artifact" and e["kind"] == "tensorboard"]
    assert [(a["name"], a["path"]) for a in arts] == [("tensorboard", str(board))]
    assert _scalars(board)["train/loss"] == [1, 2]


def test_tracking_names_the_run_and_the_stage_folder(tmp_path):
    from pr1d.stages.sft import record_curves, tracking

    recorded = []
    w = SimpleNamespace(stage_dir=tmp_path / "04-rl", run_id=7, spec=SimpleNamespace(stage="rl"),
                        artifact=lambda name, path, kind: recorded.append((name, Path(path), kind)))
    assert tracking(w) == {"logging_dir": tmp_path / "04-rl" / "tensorboard", "run_name": "pr1-run7-rl"}
    record_curves(w, ["tensorboard"])  # no event files written (the run stopped before its first log)
    assert recorded == []
    (tmp_path / "04-rl" / "tensorboard").mkdir(parents=True)
    record_curves(w, ["wandb"])
    assert recorded == []
    record_curves(w, ["wandb", "tensorboard"])
    assert recorded == [("tensorboard", tmp_path / "04-rl" / "tensorboard", "tensorboard")]


def test_show_names_the_tensorboard_folder(capsys, monkeypatch):
    from pr1d.ctl import Out, cmd_show

    run = {"id": 3, "agent_id": "a1", "kind": "full", "state": "awaiting_approval", "created_at": 0,
           "created_by": "cli", "params": {"report_to": "tensorboard"}, "stages": [], "metrics_last": {},
           "audit": [], "artifacts": [
               {"name": "candidate", "kind": "model", "sha256": "a" * 64, "path": "/s/runs/3/02-sft/candidate"},
               {"name": "tensorboard", "kind": "tensorboard", "sha256": "b" * 64,
                "path": "/s/runs/3/02-sft/tensorboard"},
               {"name": "tensorboard", "kind": "tensorboard", "sha256": "c" * 64,
                "path": "/s/runs/3/04-rl/tensorboard"}]}
    client = SimpleNamespace(call=lambda method, **_: run)
    monkeypatch.setenv("COLUMNS", "200")
    assert cmd_show(client, argparse.Namespace(run=3), Out(as_json=False)) == 0
    out = capsys.readouterr().out
    assert "artifacts (curves: tensorboard --logdir /s/runs/3)" in out
    assert "/s/runs/3/02-sft/tensorboard" in out and "/s/runs/3/04-rl/tensorboard" in out
    without_boards = {**run, "artifacts": run["artifacts"][:1]}
    client = SimpleNamespace(call=lambda method, **_: without_boards)
    cmd_show(client, argparse.Namespace(run=3), Out(as_json=False))
    assert "curves:" not in capsys.readouterr().out


# -------------------------------------------------------------------------------------------------
# Helpers
# -------------------------------------------------------------------------------------------------


def _run_stage(stage: str, spec: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PR1_EVENT_FD", None)
    return subprocess.run([sys.executable, "-m", f"pr1d.stages.{stage}", str(spec)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)


def _events(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
