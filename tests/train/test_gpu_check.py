"""scripts/gpu-check: the GPU check's code path, run here on the CPU in its smoke shape (the real run needs a GPU)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]


def test_smoke_runs_sft_rl_and_generation_and_reports_them(tmp_path):
    cp = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check"), "--smoke", "--out", str(tmp_path)],
                        capture_output=True, text=True, timeout=600)
    assert cp.returncode == 0, cp.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["ok"] and report["device"] == "cpu" and report["model"]["architecture"] == "Qwen2ForCausalLM"
    assert report["sft"]["steps"] == 4 and report["sft"]["tokens_per_s"] > 0
    assert report["rl"]["steps"] == 2 and report["rl"]["completions_per_s"] > 0
    gen = report["generation"]
    assert gen["plain"]["tokens_per_s"] > 0 and gen["forked"]["tokens_per_s"] > 0
    assert json.loads(cp.stdout) == report  # what it prints is what it writes
    assert (tmp_path / "sft-candidate" / "config.json").is_file()
    foreign = report["foreign"]  # a model from elsewhere: by Hub id from a local cache, LoRA, the tags added
    assert foreign["ok"] and foreign["resolved_from"] == "pr1-test/qwen2-shape" and foreign["tags_added"] == 6
    assert foreign["finetune"] == "lora" and foreign["forked_tokens_per_s"] > 0
    assert report["rl_vllm"] == {"ok": True, "skipped": "no GPU"}


def test_without_a_gpu_the_full_check_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the full check would run")
    cp = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check")], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 2 and "no CUDA device visible" in cp.stderr and "--smoke" in cp.stderr


def test_a_failing_part_is_named_and_exits_1(monkeypatch, capsys):
    from pr1d.train import gpu_check

    def broken(*_a, **_k):
        raise RuntimeError("CUDA out of memory (injected)")

    # A fault this machine cannot cause: the part after the model fails.
    monkeypatch.setattr(gpu_check, "run_sft", broken)
    assert gpu_check.main(["--smoke"]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["ok"] is False and report["sft"] == {"ok": False, "error": "RuntimeError: CUDA out of memory (injected)"}
    assert "gpu-check: FAILED in sft" in err


def test_models_load_without_the_hubs_kernels(tiny_model):
    # What the GPU check found: transformers 5 kernelizes from the Hub by default on CUDA (and fails offline).
    from pr1d.inference.generate import load_model
    from pr1d.params import SFTParams
    from pr1d.train.sft import load_trainable

    model, _ = load_model(tiny_model)
    assert model.use_kernels is False
    model, _ = load_trainable(tiny_model, SFTParams())
    model.train()
    assert model.use_kernels is False


def test_rl_precision_settings_reach_trl(tmp_path):
    # RL shares bf16 and gradient checkpointing with SFT (LoraParams); TRL turns both on unless told, so both
    # are always explicit, and bf16 never applies on the CPU (it only slows the tiny model there).
    from pr1d.params import RLParams
    from pr1d.train.grpo import grpo_args

    args = grpo_args(RLParams(bf16=True, gradient_checkpointing=True), tmp_path, use_cpu=True)
    assert (args.bf16, args.gradient_checkpointing) == (False, True)
    args = grpo_args(RLParams(), tmp_path, use_cpu=True)
    assert (args.bf16, args.gradient_checkpointing, args.fp16) == (False, False, False)
