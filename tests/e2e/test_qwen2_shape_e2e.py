"""A model from the transformers ecosystem through the real daemon: dataset -> SFT (LoRA) -> RL -> backtest -> gate.

The agent runs a platform model that pr1 finds by a Hub id in ``[registry] base_models``, served from a local
Hugging Face cache (offline, as ``hf download`` leaves it). The model is Qwen2-shaped, random-init, with its own
byte-level BPE tokenizer and a ChatML template, and none of the Parallel tags: the SFT stage adds them as special
tokens, LoRA trains them (``modules_to_save``), every stage prompts through the chat template, and the candidate
that reaches the gate writes Parallel blocks that the forked engine decodes, which the base model never does.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("matplotlib")

from pr1d.train.stand_in import HUB_ID, build_foreign_qwen2, place_in_hub_cache  # noqa: E402
from tests.registry.registry_kit import Sim  # noqa: E402

AGENT = "agent-000"
PLATFORM_MODEL = "qwen2-shape-v0"
# Test-sized stages. The SFT is what teaches a random-init model the format (150 LoRA steps, measured: every
# answer opens with <Parallel><Path>); the sft_gate's bar is off because a random model has no arithmetic to
# gain, and RL runs 2 steps: this is about every stage taking the model, not about accuracy.
CONFIG = f"""
[registry]
base_models = {{ "{PLATFORM_MODEL}" = "{HUB_ID}" }}
local_files_only = true

# The bars are down: a random-init model gains no accuracy in 150 steps, and this test is about the loop
# taking a model from elsewhere all the way to a registered, approvable, promotable candidate.
[gate]
min_samples = 10
bootstrap_resamples = 200
min_uplift = 0.0
max_tier_drop = 1.0
min_consensus = 0.0

[training.sft]
finetune = "lora"
lora_r = 8
lora_alpha = 16
max_steps = 150
lr = 1e-2
batch_size = 8
n_train = 600
mix = "easy=1.0"
max_length = 512
checkpoint_every = 1000

[training.sft_gate]
n_per_tier = 6
tiers = ["easy"]
threshold = -1.0
max_new_tokens = 96

[training.rl]
finetune = "lora"
lora_r = 8
lora_alpha = 16
max_steps = 2
num_generations = 4
generation_batch = 8
micro_batch = 8
max_completion_length = 64
tier_pool = 32
eval_per_tier = 6
checkpoint_every = 1000

[training.backtest]
n_per_tier = 10
tiers = ["easy"]
window = 6
batch_size = 16
max_new_tokens = 96
"""


def _rows(state: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.mark.timeout(900)
def test_qwen2_shape_model_from_the_hub_cache_runs_the_whole_curriculum(daemon_factory, tmp_path):
    from pr1d.data.gradebook import LocalGradebook, fetch_gradebook
    from pr1d.data.parallel_format import TAGS
    from pr1d.ledger.store import Ledger

    built = tmp_path / "built"
    build_foreign_qwen2(built)
    cache = tmp_path / "hf" / "hub"
    snapshot = place_in_hub_cache(built, cache)
    state = tmp_path / "state"
    state.mkdir()
    led = Ledger(state / "ledger.sqlite")
    led.upsert_agents([{"id": AGENT, "model": PLATFORM_MODEL, "profile": "default"}])
    led.close()
    sim = Sim(tmp_path, "steady")
    try:
        sim.tick(40)
        entries, cursor = fetch_gradebook(sim.url, None, min_score=0.9)
        LocalGradebook(state / "gradebook").append(entries, cursor)
        cfg = tmp_path / "pr1d.toml"
        cfg.write_text(CONFIG)
        d = daemon_factory(state, config=cfg, extra_env={
            "PR1_SCORING__BASE_URL": sim.url, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}).start()
        out = d.ctl_json("trigger", AGENT, "--kind", "full")
        run_id = out["run"]["id"]
        run = d.wait_run(run_id, {"awaiting_approval", "rejected", "failed", "succeeded"}, timeout=840)
        stages = _rows(state, f"SELECT name, state, error FROM stages WHERE run_id = {run_id} ORDER BY seq")
        assert run["state"] == "awaiting_approval", (run.get("reason"), stages)
        # Registered before approval: the base from the Hub cache (its files, not the cache's links) and the
        # candidate; approving promotes the candidate.
        versions = _rows(state, "SELECT id, run_id, parent_id FROM model_versions ORDER BY created_at")
        assert len(versions) == 2 and versions[1][1] == run_id and versions[1][2] == versions[0][0]
        base_copy = state / "models" / AGENT / versions[0][0]
        assert (base_copy / "model.safetensors").is_file() and not (base_copy / "model.safetensors").is_symlink()
        out = d.ctl_json("approve", str(run_id), "--accept-inconclusive", "--reason", "qwen2-shape wiring")
        assert out["promoted"] is True and out["version_id"] == versions[1][0]
    finally:
        sim.close()
    assert [(n, s) for n, s, _ in stages] == [(n, "succeeded") for n in
                                              ("dataset", "sft", "sft_gate", "rl", "backtest", "gate")], stages

    run_dir = state / "runs" / str(run_id)
    sft_cand = next(run_dir.glob("*-sft/candidate"))
    adapter = json.loads((sft_cand / "adapter" / "adapter_config.json").read_text())
    assert any(m.endswith("embed_tokens") for m in adapter["modules_to_save"])
    tok_cfg = json.loads((sft_cand / "tokenizer_config.json").read_text())
    assert tok_cfg.get("chat_template") or (sft_cand / "chat_template.jinja").is_file()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sft_cand, local_files_only=True)
    assert all(len(tok.encode(t, add_special_tokens=False)) == 1 for t in TAGS)

    # The backtest ran the base from the Hub cache (plain) against the candidate (forked engine on its tags).
    report = json.loads(next(run_dir.glob("*-backtest/backtest.json")).read_text())
    assert report["incumbent"]["path"] == str(snapshot), report["incumbent"]
    assert report["candidate"]["engine"] == "forked" and report["incumbent"]["engine"] == "plain greedy"
    assert report["parallel_ratio"]["incumbent"] == 0.0
    assert report["parallel_ratio"]["candidate"] >= 0.8, report["parallel_ratio"]
    assert run["gate"]["outcome"] == "inconclusive"  # +0 points with a bar of +0: nothing to decide on
