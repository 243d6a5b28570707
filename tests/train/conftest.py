"""Shared fixtures for training tests: a tiny GSM-lite model pretrained once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

# The tiny fixture's recipe. Bounded by steps (deterministic for a seed: 2000 steps take ~40 s on two
# quiet cores). The wall-clock cap is only a backstop: at one minute, a busy machine cut training short
# and the model learned nothing (easy 0.03), so the cap sits well above the quiet-machine time.
TINY_CONFIG = {
    "minutes": 5.0,
    "max_steps": 2000,
    "seed": 1,
    "lr": 2e-3,
    "batch_size": 16,
    "corpus_size": 20_000,
    "mix": {"easy": 1.0},
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Folder of a tiny pretrained model (``from_pretrained``-loadable, with ``bootstrap.json``).

    Trained on one-step problems only: held-out easy accuracy is ~0.9, medium and hard near zero.
    Tests must treat the folder as read-only; copy it to change it.
    """
    torch = pytest.importorskip("torch")
    from pr1d.train.model import PretrainConfig, bootstrap

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("tiny_model")
    bootstrap(out, size="tiny", cfg=PretrainConfig(**TINY_CONFIG), eval_per_tier=100)
    return out
