"""Bootstrap of the tiny agent model: tokenizer, saved folder, learning on held-out GSM-lite, evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.conftest import TINY_CONFIG

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pr1d.evaluate.gsm_eval import evaluate_tasks  # noqa: E402
from pr1d.evaluate.gsm_lite import eval_split, format_prompt  # noqa: E402
from pr1d.inference.generate import generate, load_model  # noqa: E402
from pr1d.train.model import PretrainConfig, bootstrap, make_model, sha256_file  # noqa: E402
from pr1d.train.tokenizer import PARALLEL_TAGS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _auto(path):
    tok = transformers.AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=False)
    return model, tok


def _easy(n=100):
    return [t for t in eval_split(n) if t["tier"] == "easy"]


# --------------------------------------------------------------------------------------------------
# The saved folder
# --------------------------------------------------------------------------------------------------


def test_folder_loads_with_auto_classes(tiny_model):
    model, tok = _auto(tiny_model)
    assert model.config.model_type == "llama"
    # Our own tokenizer came back (not a substitute chosen from the model type).
    assert len(tok) == model.config.vocab_size
    assert tok.pad_token == "<pad>" and tok.bos_token == "<s>" and tok.eos_token == "</s>"
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id


def test_safetensors_only_and_sha256_recorded(tiny_model):
    names = {p.name for p in tiny_model.iterdir()}
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    record = json.loads((tiny_model / "bootstrap.json").read_text())
    assert record["model_sha256"] == sha256_file(tiny_model / "model.safetensors")


def test_bootstrap_json_records_the_run(tiny_model):
    record = json.loads((tiny_model / "bootstrap.json").read_text())
    assert record["size"] == "tiny" and record["seed"] == 1 and record["minutes"] == TINY_CONFIG["minutes"]
    assert 0 < record["steps"] <= 2000
    assert record["tokens_per_s"] > 0 and record["train_s"] <= TINY_CONFIG["minutes"] * 60 + 5
    assert set(record["heldout_accuracy"]) == {"easy", "medium", "hard"}
    assert record["params"] == sum(p.numel() for p in _auto(tiny_model)[0].parameters())


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------


def test_parallel_tags_are_single_tokens(tiny_model):
    _, tok = _auto(tiny_model)
    for tag in PARALLEL_TAGS:
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1, tag
    text = "<Parallel><Path>12 + 30 = 42</Path><Path>30 + 12 = 42</Path><Summary>42</Summary></Parallel>"
    tokens = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    assert [t for t in tokens if t.startswith("<")] == [
        "<Parallel>", "<Path>", "</Path>", "<Path>", "</Path>", "<Summary>", "</Summary>", "</Parallel>",
    ]
    # Tags survive decoding, so the format module can parse generated text.
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_digits_are_split_one_per_token(tiny_model):
    _, tok = _auto(tiny_model)
    text = "Mia has 1234 apples and $56.\n1234 + 56 = 1290\nFinal Answer: 1290"
    tokens = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    for token in tokens:
        digits = [c for c in token if c.isdigit()]
        assert len(digits) <= 1 and (not digits or token == digits[0]), token
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_encoding_starts_with_bos(tiny_model):
    _, tok = _auto(tiny_model)
    assert tok("Question: hi")["input_ids"][0] == tok.bos_token_id


# --------------------------------------------------------------------------------------------------
# Learning
# --------------------------------------------------------------------------------------------------


def test_pretraining_beats_random_init_on_held_out_easy(tiny_model):
    model, tok = load_model(tiny_model)
    tasks = _easy()
    trained = evaluate_tasks(model, tok, tasks, max_new_tokens=24)["tiers"]["easy"]["greedy"]
    fresh = make_model(len(tok), "tiny", tok, seed=1)
    untrained = evaluate_tasks(fresh, tok, tasks, max_new_tokens=24)["tiers"]["easy"]["greedy"]
    assert untrained <= 0.05
    assert trained >= 0.5, f"held-out easy accuracy {trained} after tiny pretraining"
    # The folder holds the model that was measured.
    record = json.loads((tiny_model / "bootstrap.json").read_text())
    assert abs(record["heldout_accuracy"]["easy"] - trained) <= 0.02


def test_progress_callback_reports_phases_and_loop(tmp_path):
    events = []
    cfg = PretrainConfig(minutes=1.0, max_steps=6, corpus_size=300, log_every=2, seed=3)
    record = bootstrap(tmp_path / "m", size="tiny", cfg=cfg, eval_per_tier=0, on_progress=events.append)
    phases = [e["phase"] for e in events]
    assert phases[0] == "corpus" and phases[-1] == "done" and "evaluate" in phases
    loop = [e for e in events if e["phase"] == "pretrain" and "step" in e]
    assert [e["step"] for e in loop] == [2, 4, 6]
    assert all({"loss", "tokens_per_s", "eta_s", "progress", "lr"} <= set(e) for e in loop)
    assert record["steps"] == 6 and record["heldout_accuracy"] == {}


def test_step_budget_alone_shapes_the_schedule_and_the_clock_only_cuts_short(tmp_path, monkeypatch):
    """A busy machine must get the same model: with max_steps set, the learning rate at each step is the
    step's alone, however slow the clock says the loop is; the backstop stops the loop and says so."""
    import itertools

    import pr1d.train.model as model_mod

    def run(clock_step_s: float, minutes: float) -> tuple[dict, list[dict]]:
        ticks = itertools.count()
        monkeypatch.setattr(model_mod.time, "monotonic", lambda: next(ticks) * clock_step_s)
        events: list[dict] = []
        cfg = PretrainConfig(minutes=minutes, max_steps=8, corpus_size=300, log_every=1, seed=3, warmup_steps=2)
        tok, examples = model_mod.build_corpus(cfg)
        model = make_model(len(tok), "tiny", tok, cfg.seed)
        loop = model_mod.pretrain(model, tok, examples, cfg, on_progress=events.append)
        return loop, events

    quiet, quiet_ev = run(0.001, 60.0)
    busy, busy_ev = run(20.0, 60.0)  # every clock read 20 s later: the old rule ran the schedule ahead
    assert quiet["steps"] == busy["steps"] == 8 and not quiet["cut_short"] and not busy["cut_short"]
    assert [e["lr"] for e in quiet_ev] == [e["lr"] for e in busy_ev]
    assert busy["final_loss"] == quiet["final_loss"]  # the same updates, so the same model
    cut, _ = run(60.0, 1.0)  # the 1-minute backstop is reached after a couple of steps
    assert cut["cut_short"] and cut["steps"] < 8


def test_pretrain_config_refuses_no_budget():
    with pytest.raises(ValueError, match="needs a budget"):
        PretrainConfig(minutes=0, max_steps=None)


# --------------------------------------------------------------------------------------------------
# Generation and evaluation
# --------------------------------------------------------------------------------------------------


def test_left_padded_batches_match_one_by_one(tiny_model):
    model, tok = load_model(tiny_model)
    prompts = [format_prompt(t["question"]) for t in eval_split(4)]
    batched = generate(model, tok, prompts, max_new_tokens=24, batch_size=16)
    single = generate(model, tok, prompts, max_new_tokens=24, batch_size=1)
    # Prompts of all tiers, so the batch really is padded; the answers must not notice.
    assert len({len(tok(p)["input_ids"]) for p in prompts}) > 1
    assert [c[0].text for c in batched] == [c[0].text for c in single]
    for (c,) in batched:
        assert c.n_tokens > 0
        assert c.finished or c.n_tokens == 24  # unfinished means it ran out of budget


def test_evaluation_is_reproducible_for_a_seed(tiny_model):
    model, tok = load_model(tiny_model)
    tasks = eval_split(6)
    a = evaluate_tasks(model, tok, tasks, k=3, seed=5, max_new_tokens=32)
    b = evaluate_tasks(model, tok, tasks, k=3, seed=5, max_new_tokens=32)
    a.pop("elapsed_s"), b.pop("elapsed_s")
    assert a == b
    for row in a["tiers"].values():
        assert 0 <= row["mean_at_k"] <= row["pass_at_k"] <= 1
        assert row["tokens_per_answer"] > 0
    assert a["tiers"]["overall"]["n"] == 18


def test_greedy_refuses_several_samples(tiny_model):
    model, tok = load_model(tiny_model)
    with pytest.raises(ValueError, match="do_sample"):
        generate(model, tok, ["Question: x\nAnswer:\n"], num_samples=2)


def test_adapter_is_applied_when_given(tiny_model, tmp_path):
    peft = pytest.importorskip("peft")
    model, tok = load_model(tiny_model)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(str(tmp_path / "adapter"))
    adapted, _ = load_model(tiny_model, adapter=tmp_path / "adapter")
    assert isinstance(adapted, peft.PeftModel)
    # A fresh LoRA adapter starts as the identity, so the answers are the base model's.
    tasks = eval_split(3)
    base = evaluate_tasks(load_model(tiny_model)[0], tok, tasks, max_new_tokens=24)
    assert evaluate_tasks(adapted, tok, tasks, max_new_tokens=24)["tiers"] == base["tiers"]


def _run(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, env=env, **kw)


def test_gsm_eval_cli_json_and_tasks_file(tiny_model, tmp_path):
    tasks = tmp_path / "mine.jsonl"
    tasks.write_text(json.dumps({"question": eval_split(1)[0]["question"], "answer": "1", "tier": "mine"}) + "\n")
    proc = _run(["pr1d.evaluate.gsm_eval", "--model", str(tiny_model), "--n", "3", "--k", "2", "--json"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report["tiers"]) == {"easy", "medium", "hard", "overall"}
    assert {"greedy", "mean_at_k", "pass_at_k", "tokens_per_answer"} <= set(report["tiers"]["easy"])
    proc = _run(["pr1d.evaluate.gsm_eval", "--model", str(tiny_model), "--tasks", str(tasks), "--k", "0", "--json"])
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)["tiers"]) == {"mine", "overall"}
    proc = _run(["pr1d.evaluate.gsm_eval", "--model", str(tmp_path / "missing"), "--json"])
    assert proc.returncode == 1 and "cannot load model" in proc.stderr and proc.stdout == ""


def test_bootstrap_cli(tmp_path):
    out = tmp_path / "cli"
    proc = _run(
        ["pr1d.train.model", "bootstrap", "--out", str(out), "--size", "tiny", "--max-steps", "3",
         "--corpus-size", "200", "--eval-per-tier", "2", "--seed", "4", "--json"]
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["steps"] == 3 and record["seed"] == 4
    assert json.loads((out / "bootstrap.json").read_text()) == record
    assert "step" in proc.stderr or "[pretrain]" in proc.stderr  # progress goes to stderr, not stdout


def test_pr1d_eval_gsm_lite_entry_point_is_reproducible(tiny_model):
    import json
    import subprocess
    import sys
    from pathlib import Path

    pr1d = str(Path(sys.executable).parent / "pr1d")
    outs = []
    for _ in range(2):
        cp = subprocess.run([pr1d, "eval", "gsm-lite", "--model", str(tiny_model), "--n", "8", "--k", "2",
                             "--seed", "3", "--json"], capture_output=True, text=True, timeout=300)
        assert cp.returncode == 0, cp.stderr
        outs.append(json.loads(cp.stdout))
    a, b = outs
    assert a["tiers"] == b["tiers"] if "tiers" in a else a == b
