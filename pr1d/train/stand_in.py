"""Stand-in models from elsewhere, built without a hub: for tests, benchmarks and the GPU check.

``build_foreign_qwen2`` writes what a Hub model looks like to pr1: a Qwen2-architecture causal LM (random
init, of any shape) with *its own* byte-level BPE tokenizer, a ChatML chat template, EOS ``<|im_end|>``, no
BOS and none of the Parallel tags; ``place_in_hub_cache`` lays a folder out as huggingface_hub's cache does
(blobs, a snapshot of links, ``refs/main``), which is what ``hf download`` leaves on a host.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HUB_ID = "pr1-test/qwen2-shape"
SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2}


def build_foreign_qwen2(out: Path, *, shape: dict[str, int] | None = None, seed: int = 0,
                        vocab_size: int = 480) -> dict[str, Any]:
    """Save the stand-in model and tokenizer to ``out``; returns its size and shape."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from pr1d.evaluate.gsm_lite import format_prompt, render_sequential, train_split

    shape = dict(shape or SMALL)
    texts = [format_prompt(t["question"]) + render_sequential(t) for t in train_split(2000, seed=seed)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHATML_TEMPLATE
    config = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=1024, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return {"architecture": "Qwen2ForCausalLM", "tokenizer": "own BPE, ChatML template, no Parallel tags",
            "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer), **shape}


def place_in_hub_cache(model_dir: Path, cache: Path, repo_id: str = HUB_ID) -> Path:
    """Lay ``model_dir``'s files out under ``cache`` as huggingface_hub does; returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for f in sorted(model_dir.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / f.name
        if not link.exists():
            link.symlink_to(Path("../../blobs") / blob.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap
