"""Evaluate a model (optionally with a LoRA adapter) on GSM-lite: per-tier greedy, mean@k, pass@k, tokens.

Runs inside a stage worker or from the command line (it imports torch)::

    python -m pr1d.evaluate.gsm_eval --model DIR [--adapter DIR] [--k 4] [--n 100] [--json]
                                     [--policy plain|parallel] [--policy-json '{"branch_count": 4}']

``--policy parallel`` generates through the forked rollout engine (:mod:`pr1d.inference.forked`) with a
:class:`pr1d.inference.policy.ParallelExecutionPolicy`; the default ``plain`` is batched left-to-right generation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any

import torch

from pr1d.evaluate.gsm_lite import TIERS, check_answer, eval_split, load_tasks_jsonl
from pr1d.inference.generate import Completion, generate, load_model
from pr1d.inference.policy import ParallelExecutionPolicy, PolicyError
from pr1d.tasks.contract import format_prompt as family_prompt

DEFAULT_MAX_NEW_TOKENS = 128


def _rate(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def _parallel_metrics(texts: list[str]) -> dict[str, Any]:
    """Format adherence, parallel ratio, path diversity and consensus from the one format module."""
    # Imported here: only evaluation needs it, and it keeps this module's import light.
    from pr1d.data.parallel_format import measure_batch

    return asdict(measure_batch(texts))


def evaluate_tasks(
    model,
    tokenizer,
    tasks: list[dict[str, Any]],
    *,
    k: int = 0,
    temperature: float = 0.8,
    seed: int = 0,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 64,
    policy: ParallelExecutionPolicy | None = None,
    keep_texts: bool = False,
) -> dict[str, Any]:
    """Score ``tasks`` greedily and, with ``k > 0``, with ``k`` samples each; one report dict.

    Per tier (and ``overall``): ``greedy`` accuracy, ``mean_at_k`` (fraction of correct samples),
    ``pass_at_k`` (at least one of the k correct), ``tokens_per_answer`` (greedy tokens, EOS excluded)
    and ``finished`` (fraction that emitted EOS). ``parallel`` holds the format KPIs of
    :func:`pr1d.data.parallel_format.measure_batch` over all generated texts. Reproducible for a fixed
    ``seed``.

    With a ``policy``, every answer goes through the forked rollout engine and ``max_new_tokens`` is the
    policy's. The ``greedy`` pass then decodes as the policy says (its temperature; 0 is truly greedy,
    and sampled paths are seeded by ``seed``), and the ``k`` samples use the policy with ``temperature``.
    The report's ``policy`` is the policy's dict (None for plain generation). ``keep_texts`` adds
    ``greedy_texts``, the greedy answers in task order (for callers that measure them further).
    """
    started = time.monotonic()
    # A task's ``context`` (retrieved KB text, as a task family's prompt carries it) goes before the question.
    prompts = [family_prompt(t["question"], str(t.get("context") or "")) for t in tasks]
    if policy is not None:
        max_new_tokens = policy.max_new_tokens
        greedy, sampled = _parallel_generate(model, tokenizer, prompts, policy, k, temperature, seed, batch_size)
    else:
        greedy, sampled = _plain_generate(model, tokenizer, prompts, k, temperature, seed, max_new_tokens, batch_size)

    tiers = [t for t in TIERS if any(task["tier"] == t for task in tasks)]
    tiers += sorted({task["tier"] for task in tasks} - set(TIERS))  # custom tiers from --tasks files
    report_tiers: dict[str, dict[str, Any]] = {}
    for tier in [*tiers, "overall"]:
        idx = [i for i, task in enumerate(tasks) if tier == "overall" or task["tier"] == tier]
        g_ok = [check_answer(greedy[i][0].text, tasks[i]["answer"]) for i in idx]
        row: dict[str, Any] = {
            "n": len(idx),
            "greedy": _rate(g_ok),
            "tokens_per_answer": sum(greedy[i][0].n_tokens for i in idx) / len(idx) if idx else None,
            "finished": _rate([greedy[i][0].finished for i in idx]),
        }
        if k > 0:
            per_task = [[check_answer(c.text, tasks[i]["answer"]) for c in sampled[i]] for i in idx]
            row["mean_at_k"] = _rate([ok for oks in per_task for ok in oks])
            row["pass_at_k"] = _rate([any(oks) for oks in per_task])
        report_tiers[tier] = row

    report: dict[str, Any] = {
        "n_tasks": len(tasks),
        "k": k,
        "temperature": temperature if k > 0 else None,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "policy": policy.to_dict() if policy is not None else None,
        "tiers": report_tiers,
        "elapsed_s": round(time.monotonic() - started, 2),
    }
    # Format KPIs over everything generated: the greedy answers plus the samples.
    report["parallel"] = _parallel_metrics([c.text for row in greedy + sampled for c in row])
    if keep_texts:
        report["greedy_texts"] = [row[0].text for row in greedy]
    return report


def _plain_generate(model, tokenizer, prompts, k, temperature, seed, max_new_tokens, batch_size):
    """Left-to-right generation: one greedy answer per prompt, plus ``k`` samples when ``k > 0``."""
    greedy = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    sampled: list[list[Completion]] = []
    if k > 0:
        sampled = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            num_samples=k,
            do_sample=True,
            temperature=temperature,
            batch_size=batch_size,
            seed=seed,
        )
    return greedy, sampled


def _parallel_generate(model, tokenizer, prompts, policy, k, temperature, seed, batch_size):
    """The same two passes through the forked rollout engine (answers grouped per prompt, as generate does)."""
    # Imported here: the engine pulls in the transformers cache classes, and plain evaluation needs none.
    from pr1d.inference.forked import forked_generate

    # The engine's batch is answers in the trunk; each fans out into branch_count path rows.
    trunk_batch = max(1, batch_size // policy.branch_count)
    first = forked_generate(model, tokenizer, prompts, policy, seed=seed, batch_size=trunk_batch)
    greedy = [[c] for c in first]
    sampled: list[list[Completion]] = []
    if k > 0:
        flat = forked_generate(
            model,
            tokenizer,
            prompts,
            policy.replace(temperature=temperature),
            num_samples=k,
            # A different base seed from the first pass, so the k samples are not that pass again.
            seed=seed + 1,
            batch_size=trunk_batch,
        )
        sampled = [flat[i * k : (i + 1) * k] for i in range(len(prompts))]
    return greedy, sampled


def greedy_accuracy(model, tokenizer, n_per_tier: int = 100, max_new_tokens: int = 64) -> dict[str, float]:
    """Held-out greedy accuracy per tier on the first ``n_per_tier`` problems of the fixed eval split."""
    report = evaluate_tasks(model, tokenizer, eval_split(n_per_tier), k=0, max_new_tokens=max_new_tokens)
    return {tier: report["tiers"][tier]["greedy"] for tier in TIERS}


def _print_table(report: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    k = report["k"]
    table = Table(title=title)
    table.add_column("tier")
    table.add_column("n", justify="right")
    table.add_column("greedy", justify="right")
    if k > 0:
        table.add_column(f"mean@{k}", justify="right")
        table.add_column(f"pass@{k}", justify="right")
    table.add_column("tokens/answer", justify="right")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    for tier, row in report["tiers"].items():
        cells = [tier, str(row["n"]), pct(row["greedy"])]
        if k > 0:
            cells += [pct(row["mean_at_k"]), pct(row["pass_at_k"])]
        cells.append("-" if row["tokens_per_answer"] is None else f"{row['tokens_per_answer']:.1f}")
        table.add_row(*cells, style="bold" if tier == "overall" else None)
    console = Console()
    console.print(table)
    fmt = report.get("parallel")
    if fmt:
        console.print(
            f"format adherence {pct(fmt['format_adherence'])}, parallel ratio {pct(fmt['parallel_ratio'])}, "
            f"consensus {pct(fmt['consensus_rate'])} over {fmt['n']} completions"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pr1d.evaluate.gsm_eval", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local model folder (save_pretrained output)")
    parser.add_argument("--adapter", help="PEFT adapter folder to apply on top of --model")
    parser.add_argument("--k", type=int, default=4, help="samples per problem for mean@k / pass@k (0: greedy only)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature for the k samples")
    parser.add_argument("--n", type=int, default=100, help="problems per tier from the fixed held-out split")
    parser.add_argument("--tasks", help="JSON-lines file of {question, answer, tier} instead of the split")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (figures are reproducible per seed)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument(
        "--policy",
        choices=["plain", "parallel"],
        default="plain",
        help="plain: left-to-right generation; parallel: the forked rollout engine with a ParallelExecutionPolicy",
    )
    parser.add_argument(
        "--policy-json",
        help="JSON object of ParallelExecutionPolicy fields for --policy parallel, e.g. "
        '\'{"branch_count": 4, "temperature": 0}\' (max_new_tokens defaults to --max-new-tokens)',
    )
    args = parser.parse_args(argv)
    if args.k < 0 or args.n < 1:
        parser.error("--k must be >= 0 and --n >= 1")
    policy = None
    if args.policy == "parallel":
        try:
            fields = json.loads(args.policy_json) if args.policy_json else {}
            if not isinstance(fields, dict):
                raise PolicyError("--policy-json must be a JSON object of policy fields")
            policy = ParallelExecutionPolicy.from_dict({"max_new_tokens": args.max_new_tokens, **fields})
        except (json.JSONDecodeError, PolicyError) as exc:
            parser.error(f"bad --policy-json: {exc}")
    elif args.policy_json:
        parser.error("--policy-json needs --policy parallel")

    try:
        tasks = load_tasks_jsonl(args.tasks) if args.tasks else eval_split(args.n)
    except (OSError, ValueError) as exc:
        print(f"gsm_eval: cannot read tasks: {exc}", file=sys.stderr)
        return 1
    if not tasks:
        print("gsm_eval: no tasks to evaluate", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    try:
        model, tokenizer = load_model(args.model, args.adapter)
    except (OSError, ValueError) as exc:
        print(f"gsm_eval: cannot load model: {exc}", file=sys.stderr)
        return 1
    report = evaluate_tasks(
        model,
        tokenizer,
        tasks,
        k=args.k,
        temperature=args.temperature,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        policy=policy,
    )
    report["model"] = str(args.model)
    report["adapter"] = str(args.adapter) if args.adapter else None
    report["tasks"] = str(args.tasks) if args.tasks else f"gsm-lite eval split, first {args.n} per tier"
    if args.json:
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")
    else:
        title = f"GSM-lite: {args.model}" + (f" + {args.adapter}" if args.adapter else "")
        _print_table(report, title + (" (parallel policy)" if policy is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
