"""Any causal LM: a Qwen2-shaped model with its own tokenizer and chat template learns the Parallel format.

The model comes from elsewhere (pr1d/train/stand_in.py builds it without downloads): its tokenizer has no
Parallel tags, no BOS and a ChatML template. Loading it for training adds the tags as special tokens with
mean-initialised rows, LoRA trains the embeddings through ``modules_to_save`` (tied ones stay tied), the prompt
goes through the chat template in training and at inference, and a Hub id resolves through the local cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from pr1d.data.parallel_format import TAGS  # noqa: E402
from pr1d.train.stand_in import HUB_ID, build_foreign_qwen2, place_in_hub_cache  # noqa: E402


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qwen2") / "base"
    build_foreign_qwen2(out)
    return out


def test_tags_become_special_tokens_with_mean_initialised_rows(qwen2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pr1d.train.tokenizer import add_parallel_tags, missing_parallel_tags

    tok = AutoTokenizer.from_pretrained(qwen2_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(qwen2_dir, local_files_only=True)
    old = len(tok)
    assert missing_parallel_tags(tok) == list(TAGS)  # split into pieces by a tokenizer that never saw them
    before = model.get_input_embeddings().weight.detach().clone()
    assert add_parallel_tags(model, tok) == list(TAGS)
    assert len(tok) == old + len(TAGS) and missing_parallel_tags(tok) == []
    ids = tok.encode("x<Parallel><Path>1</Path></Parallel>", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids)[1:3] == ["<Parallel>", "<Path>"]
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == len(tok) == model.config.vocab_size
    assert torch.equal(emb[:old], before)  # the model's own rows are untouched
    for row in range(old, len(tok)):
        assert torch.allclose(emb[row], before.mean(dim=0))
    assert model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()  # still tied
    assert add_parallel_tags(model, tok) == [] and len(tok) == old + len(TAGS)  # idempotent


def test_untied_output_rows_are_mean_initialised_too(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from pr1d.train.tokenizer import add_parallel_tags

    src = tmp_path / "tied"
    build_foreign_qwen2(src)
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    cfg = Qwen2Config.from_pretrained(src)
    cfg.tie_word_embeddings = False
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(cfg)
    out_before = model.get_output_embeddings().weight.detach().clone()
    add_parallel_tags(model, tok)
    out = model.get_output_embeddings().weight
    assert out.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert torch.allclose(out[-1], out_before.mean(dim=0)) and torch.equal(out[: out_before.shape[0]], out_before)
    assert AutoModelForCausalLM is not None


def test_chat_template_wraps_prompts_in_training_and_inference(qwen2_dir, tiny_model):
    from transformers import AutoTokenizer

    from pr1d.inference.prompting import render_prompt, render_prompts
    from pr1d.train.sft import encode_records
    from pr1d.train.tokenizer import load_tokenizer

    tok = AutoTokenizer.from_pretrained(qwen2_dir, local_files_only=True)
    text = render_prompt(tok, "Question: 2 + 2?\nAnswer:\n")
    assert text == "<|im_start|>user\nQuestion: 2 + 2?\nAnswer:\n<|im_end|>\n<|im_start|>assistant\n"
    [rec] = encode_records(tok, [{"prompt": "Question: 2 + 2?\nAnswer:\n", "completion": "Final Answer: 4"}], 512)
    n_prompt = rec["completion_mask"].index(1)
    assert tok.decode(rec["input_ids"][:n_prompt]) == text  # the template is the prompt, never trained on
    assert tok.decode(rec["input_ids"][n_prompt:]) == "Final Answer: 4<|im_end|>"
    # The tiny GSM-lite model has no template: its prompts are what it was pretrained on.
    tiny = load_tokenizer(tiny_model)
    assert render_prompts(tiny, ["Question: q\nAnswer:\n"]) == ["Question: q\nAnswer:\n"]


def test_lora_trains_the_new_rows_keeps_the_tie_and_learns_the_format(qwen2_dir, tmp_path):
    """150 LoRA steps on a random-init Qwen2 model: it writes `<Parallel><Path>` in its assistant turn."""
    from pr1d.evaluate.gsm_lite import format_prompt, train_split
    from pr1d.inference.generate import generate, load_model
    from pr1d.params import SFTParams
    from pr1d.train.sft import make_records, save_candidate, train_sft

    tasks = train_split(600, seed=0, mix={"easy": 1.0})
    cfg = SFTParams(max_steps=150, batch_size=8, lr=1e-2, finetune="lora", lora_r=8, lora_alpha=16,
                    checkpoint_every=100_000, eval_per_tier=0, max_length=512)
    base_model, base_tok = load_model(qwen2_dir)
    prompts = [format_prompt(t["question"]) for t in train_split(16, seed=7, mix={"easy": 1.0})]
    before = generate(base_model, base_tok, prompts, max_new_tokens=8)
    assert not any(c[0].text.startswith("<Parallel>") for c in before)

    model, tok, _ = train_sft(qwen2_dir, make_records(tasks, parallel=True), tmp_path / "ckpt", cfg)
    paths = save_candidate(model, tok, tmp_path / "cand")
    adapter_cfg = json.loads((Path(paths["adapter"]) / "adapter_config.json").read_text())
    # The embeddings are trained and saved with the adapter; PEFT keeps the tied lm_head on the same copy.
    assert any(m.endswith("embed_tokens") for m in adapter_cfg["modules_to_save"])
    assert adapter_cfg["ensure_weight_tying"] is True
    cand, ctok = load_model(tmp_path / "cand")
    assert ctok.chat_template == base_tok.chat_template and [ctok.encode(t, add_special_tokens=False) for t in TAGS] \
        == [[i] for i in range(len(base_tok), len(base_tok) + len(TAGS))]
    emb = cand.get_input_embeddings().weight
    assert cand.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    new_rows = emb[len(base_tok):]
    assert not torch.allclose(new_rows[0], new_rows[1])  # trained apart from their common mean start
    after = generate(cand, ctok, prompts, max_new_tokens=8)
    assert sum(c[0].text.startswith("<Parallel><Path>") for c in after) >= 12, [c[0].text for c in after]


def test_hub_id_resolves_through_the_local_cache_only(qwen2_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    from pr1d.inference.source import ModelNotFound, is_hub_id, resolve_model

    cache = tmp_path / "hub"
    snap = place_in_hub_cache(qwen2_dir, cache)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_hub_id(HUB_ID) and not is_hub_id(str(qwen2_dir)) and not is_hub_id("../x/y")
    assert resolve_model(qwen2_dir) == qwen2_dir
    got = resolve_model(HUB_ID, local_files_only=True)
    assert got == snap and (got / "model.safetensors").is_file()
    with pytest.raises(ModelNotFound, match="not in the local Hugging Face cache.*hf download pr1-test/absent"):
        resolve_model("pr1-test/absent", local_files_only=True)
    with pytest.raises(ModelNotFound, match="no such folder, and not a Hub id"):
        resolve_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve_model(tmp_path / "empty")
