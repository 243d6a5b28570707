"""Parallel SFT on the tiny model: format learnt, accuracy kept, LoRA adapter reloads, SIGTERM + resume."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

from pr1d.data.parallel_format import TAGS  # noqa: E402
from pr1d.evaluate.gsm_lite import train_split  # noqa: E402
from pr1d.params import SFTParams  # noqa: E402
from pr1d.train.sft import (  # noqa: E402
    encode_records,
    evaluate_model,
    make_records,
    save_candidate,
    train_sft,
    write_records,
)
from tests.stage_io import read_events, write_stage_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EVAL_N = 30  # easy problems: the tiny model knows one-step problems only
ACC_TOLERANCE = 0.10  # 3 of 30 problems: the noise of a small n, stated up front


def _records(n: int, seed: int = 0):
    tasks = train_split(n, seed=seed, mix={"easy": 1.0})
    random.Random(seed).shuffle(tasks)
    return make_records(tasks, parallel=True, branches=2)


def _tag_rows(model, tokenizer):
    ids = tokenizer.convert_tokens_to_ids(list(TAGS))
    return model.get_input_embeddings().weight[ids].detach().clone()


def test_config_errors_say_how_to_fix():
    with pytest.raises(ValueError, match="at least two paths"):
        SFTParams(branches=1)
    with pytest.raises(ValueError, match="'full' or 'lora'"):
        SFTParams(finetune="qlora")


def test_cli_flags_mirror_config():
    import argparse

    from pr1d.train.sft import add_config_arguments

    p = argparse.ArgumentParser()
    add_config_arguments(p)
    assert "--max-steps" in p.format_help()  # help strings with "%" ("5% warm-up") must not break --help
    a = p.parse_args(["--no-parallel-format", "--branches", "3", "--finetune", "lora", "--max-steps", "7",
                      "--mix", "easy=1,hard=1"])
    assert (a.parallel_format, a.branches, a.finetune, a.max_steps) == (False, 3, "lora", 7)
    from pr1d.params import params_from_args

    assert params_from_args(SFTParams, a).mix == {"easy": 1.0, "hard": 1.0}


def test_prompt_is_masked(tiny_model):
    from pr1d.train.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_model)
    rec = _records(1)[0]
    enc = encode_records(tok, [rec], 512)[0]
    n_prompt = len(tok(rec["prompt"])["input_ids"])
    assert enc["input_ids"][0] == tok.bos_token_id and enc["input_ids"][-1] == tok.eos_token_id
    assert enc["completion_mask"][:n_prompt] == [0] * n_prompt
    assert all(enc["completion_mask"][n_prompt:])
    assert tok.decode(enc["input_ids"][n_prompt:-1]) == rec["completion"]


def test_full_sft_learns_format_and_keeps_accuracy(tiny_model, tmp_path):
    from pr1d.inference.generate import load_model

    torch.set_num_threads(2)
    base, tok = load_model(tiny_model)
    before = evaluate_model(base, tok, EVAL_N, tiers=("easy",))
    tags_before = _tag_rows(base, tok)
    cfg = SFTParams(max_steps=1200, batch_size=16, lr=1e-3, checkpoint_every=5000, eval_per_tier=0)
    model, tok, summary = train_sft(tiny_model, _records(8000), tmp_path / "ckpt", cfg)
    assert summary["steps"] == 1200 and summary["final_loss"] < summary["first_loss"]
    model.eval()
    after = evaluate_model(model, tok, EVAL_N, tiers=("easy",))
    print(
        "full SFT", json.dumps({"before": before, "after": after, "train": summary["train_s"]}, default=str)
    )
    assert before["parallel_adherence"] <= 0.05
    assert after["parallel_adherence"] >= 0.9, (after["format_errors"], after["samples"])
    assert after["accuracy"]["easy"] >= before["accuracy"]["easy"] - ACC_TOLERANCE
    assert not torch.allclose(_tag_rows(model, tok), tags_before)
    paths = save_candidate(model, tok, tmp_path / "candidate")
    assert (tmp_path / "candidate" / "model.safetensors").exists() and "adapter" not in paths


def test_lora_trains_tags_freezes_base_and_reloads(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pr1d.inference.generate import load_model

    torch.set_num_threads(2)
    base, tok = load_model(tiny_model)
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    tags_before = _tag_rows(base, tok)
    cfg = SFTParams(finetune="lora", max_steps=40, lr=2e-3, checkpoint_every=1000, eval_per_tier=0)
    model, tok, _ = train_sft(tiny_model, _records(640), tmp_path / "ckpt", cfg)
    model.eval()
    # The frozen base weights did not move; the LoRA factors and the tag embeddings did.
    inner = model.get_base_model()
    checked = 0
    for name, p in inner.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        key = name.replace(".base_layer", "").replace(".original_module", "")
        if key in frozen:
            assert torch.equal(p.detach(), frozen[key]), name
            checked += 1
    assert checked >= 10  # every projection and norm of the two layers
    assert not torch.allclose(_tag_rows(model, tok), tags_before)
    ids = tok(
        ["Question: Ann has 3 apples. She gets 4 more. How many apples does Ann have now?\nAnswer:\n"],
        return_tensors="pt",
    )
    with torch.no_grad():
        want = model(**ids).logits
    paths = save_candidate(model, tok, tmp_path / "candidate")
    # Reload: the base (resized to the tokenizer, a no-op here) + the adapter gives the same logits.
    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_model), local_files_only=True)
    fresh.resize_token_embeddings(len(tok))
    reloaded = PeftModel.from_pretrained(fresh, paths["adapter"]).eval()
    with torch.no_grad():
        got = reloaded(**ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    merged, _ = load_model(tmp_path / "candidate")
    with torch.no_grad():
        torch.testing.assert_close(merged(**ids).logits, want, rtol=1e-4, atol=1e-4)
    assert not list((tmp_path / "candidate").rglob("*.bin"))


def _spec(tmp_path: Path, model: Path, data: Path, resume: bool) -> Path:
    params = {
        "model": str(model),
        "data": str(data),
        "max_steps": 40,
        "checkpoint_every": 4,
        "batch_size": 8,
        "eval_per_tier": 0,
        "cpu": True,
    }
    return write_stage_spec(tmp_path, "02-sft", params, resume)


def test_stage_sigterm_then_resume(tiny_model, tmp_path):
    data = tmp_path / "records.jsonl"
    write_records(_records(200), data)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PR1_EVENT_FD", None)
    cmd = [sys.executable, "-m", "pr1d.stages.sft"]
    proc = subprocess.Popen(
        [*cmd, str(_spec(tmp_path, tiny_model, data, False))],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        first = read_events(proc, timeout=120.0, until=lambda e: e["type"] == "checkpoint")
        assert first and first[-1]["type"] == "checkpoint", first[-3:]
        proc.send_signal(signal.SIGTERM)
        rest = read_events(proc, timeout=120.0)
        assert proc.wait(timeout=60) == 75
    finally:
        if proc.poll() is None:
            proc.kill()
    ckpts = [e for e in first + rest if e["type"] == "checkpoint"]
    stopped_at = ckpts[-1]["step"]
    assert 0 < stopped_at < 40 and Path(ckpts[-1]["path"]).is_dir()
    assert not any(e["type"] == "result" for e in rest)

    proc = subprocess.run(
        [*cmd, str(_spec(tmp_path, tiny_model, data, True))],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    steps = [e["step"] for e in events if e["type"] == "progress"]
    assert steps[0] == stopped_at + 1 and steps[-1] == 40
    result = next(e for e in events if e["type"] == "result")["outputs"]
    assert result["train"]["resumed_from"].endswith(f"checkpoint-{stopped_at}")
    assert Path(result["candidate"], "model.safetensors").exists()
    assert any(
        e["type"] == "artifact" and e["name"] == "candidate" and len(e["sha256"]) == 64 for e in events
    )
    # the candidate ships a policy whose budgets fit what it was trained to write (the backtest reads it)
    policy = json.loads(Path(result["candidate"], "policy.json").read_text())
    logged = next(e["message"] for e in events if e["type"] == "log" and "candidate policy:" in e.get("message", ""))
    longest_path = int(re.search(r"longest trained: path (\d+)", logged).group(1))
    assert 0 < longest_path and policy["max_path_tokens"] >= 1.25 * longest_path and policy["max_path_tokens"] >= 64
