"""Pieces the benchmarks share: the project's tokenizer on a GSM-lite sample, an untrained demo-size model."""

from __future__ import annotations

import tempfile
from pathlib import Path


def gsm_tokenizer(seed: int = 1):
    """The project's tokenizer trained on 2,000 GSM-lite training problems (benchmarks need its vocabulary)."""
    from pr1d.evaluate.gsm_lite import format_prompt, render_sequential, train_split
    from pr1d.train.tokenizer import build_tokenizer

    tasks = train_split(2000, seed=seed)
    return build_tokenizer([format_prompt(t["question"]) + render_sequential(t) for t in tasks])


def random_demo_model(prefix: str) -> str:
    """A randomly initialised demo-size model with that tokenizer, saved to a new temporary folder."""
    from pr1d.train.model import make_model, save_model

    out = Path(tempfile.mkdtemp(prefix=prefix))
    tok = gsm_tokenizer(seed=1)
    save_model(make_model(len(tok), "demo", tok, 0), tok, out)
    return str(out)


def qwen2_shape_model(prefix: str, hidden: int = 256, layers: int = 4) -> str:
    """A randomly initialised Qwen2-architecture model from elsewhere: its own byte-level BPE tokenizer with a
    ChatML template and no Parallel tags (pr1d.train.stand_in, as the tests build it), in a new folder."""
    from pr1d.train.stand_in import build_foreign_qwen2

    out = Path(tempfile.mkdtemp(prefix=prefix)) / "model"
    build_foreign_qwen2(out, shape={"hidden_size": hidden, "intermediate_size": 2 * hidden,
                                    "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2})
    return str(out)
