"""Benchmark of the forked rollout engine: wall time per Parallel block with and without prefix KV reuse.

For each model size and branch count k, one block is generated after a fixed prefix (ending with
``<Parallel>``) in the engine's three modes, measured side by side (repetitions interleaved, order
rotated, medians reported):

* (a) ``fork`` — prefill the prefix once, copy its KV rows k times, decode the k paths as one batch;
* (b) ``recompute`` — the same batch of k paths, but each path prefills the whole prefix itself;
* (c) ``sequential`` — the k paths one after another, each with its own prefill.

Every path is exactly ``--path-tokens`` long (closing is held back until then, and capped there), so
the modes do the same decoding work. The ideal speed-up of (a) over (b) is
``(k·P + D) / (P + D)`` with ``P`` the measured prefill time of the prefix and ``D = a − P`` the
measured fork + decode time. Both models are randomly initialised (speed does not depend on training)::

    python benchmarks/fork_rollout.py [--quick] [--json OUT] [--model DIR] [--threads 1]

``--model DIR`` replaces the small model (and the tokenizer) with a saved one, e.g. the bootstrap demo.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pr1d.data.parallel_format import PARALLEL_OPEN, TAGS  # noqa: E402
from pr1d.inference.forked import MODES, RolloutStats, generate_paths  # noqa: E402
from pr1d.inference.policy import ParallelExecutionPolicy  # noqa: E402

# The ~25M-parameter shape of the issue: big enough that a 1,024-token prefill costs far more than one
# decode step, which is the regime where prefix reuse pays.
LLAMA_25M = {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "intermediate_size": 1376}


def _tokenizer():
    """The project's tokenizer trained on a GSM-lite sample (the benchmark only needs its vocabulary)."""
    from benchmarks.common import gsm_tokenizer

    return gsm_tokenizer(seed=0)


def _small_model(tokenizer, model_dir: str | None):
    if model_dir:
        from pr1d.inference.generate import load_model

        return load_model(model_dir)
    from pr1d.train.model import make_model

    return make_model(len(tokenizer), "demo", tokenizer, 0).eval(), tokenizer


def _model_25m(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=LLAMA_25M["num_attention_heads"],
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **LLAMA_25M,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _prefix(tokenizer, length: int, seed: int) -> list[int]:
    """``length`` tokens: BOS, random ordinary tokens, then ``<Parallel>`` (so the fork starts at once)."""
    special = set(tokenizer.all_special_ids) | {tokenizer.convert_tokens_to_ids(t) for t in TAGS}
    ordinary = [i for i in range(len(tokenizer)) if i not in special]
    rng = random.Random(seed)
    return [tokenizer.bos_token_id, *rng.choices(ordinary, k=length - 2), tokenizer.convert_tokens_to_ids(PARALLEL_OPEN)]


@torch.no_grad()
def _prefill_s(model, prefix: list[int]) -> float:
    """Wall time of one prefill of ``prefix`` (batch 1, fresh cache)."""
    from transformers import DynamicCache

    ids = torch.tensor([prefix])
    started = time.perf_counter()
    model(input_ids=ids, cache=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
    return time.perf_counter() - started


def bench_size(name, model, tokenizer, prefix_len, branches, reps, path_tokens, seed=0) -> list[dict]:
    """Rows of the table for one model: per k, median seconds per block of each mode, ratios, ideal."""
    prefix = _prefix(tokenizer, prefix_len, seed)
    n_params = sum(p.numel() for p in model.parameters())
    times: dict[tuple[int, str], list[float]] = {(k, m): [] for k in branches for m in MODES}
    prefills: list[float] = []
    paths: dict[tuple[int, str], list] = {}
    policies = {
        k: ParallelExecutionPolicy(
            branch_count=k,
            temperature=1.0,
            top_p=1.0,
            max_path_tokens=path_tokens,
            max_parallel_blocks=1,
            max_new_tokens=k * (path_tokens + 2) + 16,
        )
        for k in branches
    }
    # Warm-up: first calls pay for allocator growth and kernel selection.
    generate_paths(model, tokenizer, [prefix], policies[branches[0]], seed=seed, min_path_tokens=path_tokens)
    for rep in range(reps):
        prefills.append(_prefill_s(model, prefix))
        for k in branches:
            # Rotate the order every repetition so that no mode always runs first (warm caches, turbo).
            order = MODES[rep % 3 :] + MODES[: rep % 3]
            for mode in order:
                stats = RolloutStats()
                started = time.perf_counter()
                out = generate_paths(
                    model, tokenizer, [prefix], policies[k], seed=seed, mode=mode, min_path_tokens=path_tokens, stats=stats
                )
                times[(k, mode)].append(time.perf_counter() - started)
                paths[(k, mode)] = out
                assert all(len(p) == path_tokens for p in out[0]), "every path must have the fixed length"
        print(f"[{name}] repetition {rep + 1}/{reps} done", file=sys.stderr)
    prefill = statistics.median(prefills)
    rows = []
    for k in branches:
        a, b, c = (statistics.median(times[(k, m)]) for m in MODES)
        decode = max(a - prefill, 1e-9)
        rows.append(
            {
                "model": name,
                "params": n_params,
                "prefix_tokens": prefix_len,
                "path_tokens": path_tokens,
                "branches": k,
                "fork_s": round(a, 4),
                "recompute_s": round(b, 4),
                "sequential_s": round(c, 4),
                "speedup_vs_recompute": round(b / a, 2),
                "speedup_vs_sequential": round(c / a, 2),
                "ideal_vs_recompute": round((k * prefill + decode) / (prefill + decode), 2),
                "prefill_s": round(prefill, 4),
                "decode_s": round(decode, 4),
                # Same seed, same streams: the three modes should sample the same paths.
                "paths_match": paths[(k, "fork")] == paths[(k, "recompute")] == paths[(k, "sequential")],
                "reps": reps,
            }
        )
    return rows


def _table(rows: list[dict]) -> str:
    head = (
        "| model | params | prefix | k | (a) fork s | (b) recompute s | (c) sequential s | b/a | c/a "
        "| ideal b/a | prefill s | same paths |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['prefix_tokens']} | {r['branches']} | {r['fork_s']:.3f} "
            f"| {r['recompute_s']:.3f} | {r['sequential_s']:.3f} | {r['speedup_vs_recompute']:.2f}x "
            f"| {r['speedup_vs_sequential']:.2f}x | {r['ideal_vs_recompute']:.2f}x | {r['prefill_s']:.3f} "
            f"| {'yes' if r['paths_match'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (3 instead of 5)")
    parser.add_argument("--json", metavar="OUT", help="also write the rows as JSON to OUT")
    parser.add_argument("--model", help="saved model folder to use as the small model (default: random demo size)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: on a shared machine, two threads made decode steps 5x slower waiting on each other)",
    )
    parser.add_argument("--path-tokens", type=int, default=32, help="new tokens per path (fixed)")
    parser.add_argument("--reps", type=int, help="repetitions per measurement (overrides --quick)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    reps = args.reps or (3 if args.quick else 5)
    branches = [2, 4, 8]

    tokenizer = _tokenizer()
    small, small_tok = _small_model(tokenizer, args.model)
    rows = bench_size("demo", small, small_tok, 200, branches, reps, args.path_tokens)
    big = _model_25m(tokenizer)
    rows += bench_size("llama-25M", big, tokenizer, 1024, branches, reps, args.path_tokens)

    print(_table(rows))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rows": rows,
                    "threads": args.threads,
                    "torch": torch.__version__,
                    "device": "cpu",
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
