"""Load a model for inference and generate from it: left-padded batches, greedy or k samples each, token counts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .prompting import render_prompts


@dataclass(frozen=True)
class Completion:
    """One generated continuation: its text and how many tokens the model spent on it (EOS excluded)."""

    text: str
    n_tokens: int
    finished: bool  # the model emitted EOS before max_new_tokens


# How pr1 loads every model: from local files, never running code from the Hub. That includes the Hub's
# kernels: transformers 5 turns `use_kernels` on by default and, on CUDA, swaps layers (Qwen2's RoPE) for
# kernels-community code when the model enters train() or eval(), which asks the Hub for the publisher's trust
# status and fails on an offline host (found by scripts/gpu-check on an H200).
LOCAL_ONLY = {"trust_remote_code": False, "local_files_only": True, "use_kernels": False}


def load_model(path: str | Path, adapter: str | Path | None = None, device: str = "cpu"):
    """``(model, tokenizer)`` from a local folder, never running remote code; PEFT only when asked."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
    if tokenizer.pad_token is None:  # Llama-family tokenizers ship none; batches pad with EOS (left, masked)
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(path), **LOCAL_ONLY)
    if adapter is not None:
        # peft is heavy and only needed for adapters: import it here, not at module level.
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    model.to(device).eval()
    return model, tokenizer


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    num_samples: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 64,
    seed: int | None = None,
) -> list[list[Completion]]:
    """``num_samples`` completions for each prompt, in prompt order.

    ``prompts`` are plain prompt texts: a tokenizer with a chat template wraps each in a user turn first
    (:mod:`pr1d.inference.prompting`), as training did.

    Prompts are sorted by length before batching so that a batch carries little padding, and left-padded
    so that every row's last prompt token sits at the same position and new tokens line up. With
    ``seed`` set, sampling is reproducible: the RNG is seeded once before the first batch and batches
    are visited in a fixed order.
    """
    if not prompts:
        return []
    if num_samples < 1:
        raise ValueError("num_samples must be at least 1")
    if not do_sample and num_samples > 1:
        raise ValueError("greedy decoding gives one completion per prompt; set do_sample=True for k > 1")
    if seed is not None:
        torch.manual_seed(seed)
    prompts = render_prompts(tokenizer, prompts)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    results: list[list[Completion]] = [[] for _ in prompts]
    # Each prompt is repeated num_samples times, so the batch holds batch_size // k distinct prompts.
    per_batch = max(1, batch_size // num_samples)
    gen_kwargs = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "num_return_sequences": num_samples,
    }
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    try:
        for start in range(0, len(order), per_batch):
            idx = order[start : start + per_batch]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            out = model.generate(**enc, **gen_kwargs)
            new = out[:, enc["input_ids"].shape[1] :].tolist()
            for row, tokens in enumerate(new):
                # generate() pads a row only after its EOS, so cutting at EOS removes all padding.
                finished = eos_id in tokens
                if finished:
                    tokens = tokens[: tokens.index(eos_id)]
                text = tokenizer.decode(tokens, skip_special_tokens=False)
                results[idx[row // num_samples]].append(Completion(text, len(tokens), finished))
    finally:
        tokenizer.padding_side = old_side
        if was_training:
            model.train()
    return results
