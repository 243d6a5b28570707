"""The tiny GSM-lite model fixture, shared by every test package (tests/conftest.py registers it)."""

from __future__ import annotations

from pathlib import Path

import pytest

# The tiny fixture's recipe. Bounded by steps (deterministic for a seed: 2000 steps take ~40 s on two
# quiet cores). The wall-clock cap is only a backstop: at one minute (and once at five, with the cores
# shared by several test sessions) a busy machine cut training short and the model learned nothing (easy
# 0.04), so the cap sits far above the quiet-machine time, and a model cut short is never cached.
TINY_CONFIG = {
    "minutes": 30.0,
    "max_steps": 2000,
    "seed": 1,
    "lr": 2e-3,
    "batch_size": 16,
    "corpus_size": 20_000,
    "mix": {"easy": 1.0},
}


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return build_tiny_model()


def build_tiny_model() -> Path:
    """Folder of a tiny pretrained model (``from_pretrained``-loadable, with ``bootstrap.json``).

    Trained on one-step problems only: held-out easy accuracy is ~0.9, medium and hard near zero.
    Tests must treat the folder as read-only; copy it to change it. Built once and cached under
    ``$PR1_CACHE_DIR`` (default ``~/.cache/pr1``) by the recipe's hash, the way ``pr1d demo`` caches its
    model: every test session (and every engineer's) reuses it; a change to the recipe or the training
    code builds a new one.
    """
    torch = pytest.importorskip("torch")
    import fcntl
    import hashlib
    import json
    import os
    import shutil
    import tempfile

    from pr1d.demo import cache_root, recipe_key
    from pr1d.train.model import PretrainConfig, bootstrap

    key = hashlib.sha256((recipe_key() + json.dumps(TINY_CONFIG, sort_keys=True)).encode()).hexdigest()[:12]
    dest = cache_root() / "test-models" / f"tiny-{key}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".tiny-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions wait for one build instead of each training
        if not (dest / "bootstrap.json").is_file():
            torch.set_num_threads(2)
            tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=dest.parent))
            record = bootstrap(tmp, size="tiny", cfg=PretrainConfig(**TINY_CONFIG), eval_per_tier=100)
            if record["steps"] < TINY_CONFIG["max_steps"]:
                shutil.rmtree(tmp, ignore_errors=True)
                pytest.fail(f"the tiny model's pretraining hit its {TINY_CONFIG['minutes']}-minute cap after "
                            f"{record['steps']} of {TINY_CONFIG['max_steps']} steps (machine overloaded?)")
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
    return dest
