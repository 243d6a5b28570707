"""ParallelDatasetBuilder core: gradebook entries → verified Parallel-format SFT records (issue 4, §2).

Pure (no I/O except :func:`write_dataset`), deterministic, no torch. Every tag is written by
:mod:`pr1d.data.parallel_format` and every record is checked with it before it is kept.

Record (one JSON object per line of ``records.jsonl``)::

    {"id": "gsm-easy-0452:parallel", "task_id": "gsm-easy-0452", "tier": "easy", "answer": "68",
     "prompt": "Question: ...\\nAnswer:\\n",
     "completion": "<Parallel><Path>23 + 45 = 68\\nSo the result is 68.</Path><Path>45 + 23 = 68\\n"
                   "So the result is 68.</Path><Summary>Both paths give 68.</Summary></Parallel>\\n"
                   "Final Answer: 68"}

The prompt is what the model is shown (KB context, if any, before ``format_prompt(question)``); only
the completion is trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pr1d.data import parallel_format as pf
from pr1d.data.gradebook import content_hash
from pr1d.evaluate import gsm_lite

__all__ = [
    "DROP_REASONS",
    "DropReason",
    "build_dataset",
    "build_record",
    "record_stats",
    "seed_to_task",
    "summary_for",
    "write_dataset",
]

DROP_REASONS = (
    "unparseable_transcript",
    "wrong_answer",
    "too_few_strategies",
    "format_invalid",
    "paths_identical",
    "paths_disagree",
    "duplicate",
    "teacher_error",
    # Targeted SFT only (pr1d.data.targeted): a failing task the gradebook holds no transcript for, and a
    # task whose recovered answer the platform's critic did not confirm.
    "not_in_gradebook",
    "unverified",
)
MODES = ("parallel", "sequential")
# A rough token estimate for the manifest (BPE on this text is about 3-4 characters a token); the
# trainer counts real tokens.
CHARS_PER_TOKEN = 4


class DropReason(Exception):
    """An entry or record that cannot be used; ``code`` is one of :data:`DROP_REASONS`."""

    def __init__(self, code: str, detail: str = "") -> None:
        if code not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {code!r}")
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}" if detail else code)


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


_QUESTION_NUMBER = re.compile(r"\d+")  # plain integers in the question text (not format tags)


def seed_to_task(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The GSM-lite task behind a gradebook entry, recovered from its transcript's fact lines.

    Raises :class:`DropReason`: ``unparseable_transcript`` (no fact lines, no ``Final Answer:``, or facts
    that do not form one chain), ``wrong_answer`` (wrong arithmetic, a final answer that is not the
    chain's result, or quantities the question does not contain).
    """
    transcript = entry.get("transcript")
    question = entry.get("question")
    if not isinstance(transcript, str) or not isinstance(question, str) or not question.strip():
        raise DropReason("unparseable_transcript", "missing question or transcript")
    facts = gsm_lite.facts_used(transcript)
    if not facts:
        raise DropReason("unparseable_transcript", "no arithmetic fact lines")
    stated = gsm_lite.extract_answer(transcript)
    if stated is None:
        raise DropReason("unparseable_transcript", "no Final Answer line")
    for i, (a, op, b, r) in enumerate(facts):
        if _apply(a, op, b) != r:
            raise DropReason("wrong_answer", f"wrong arithmetic {a} {op} {b} = {r}")
        if i and a != facts[i - 1][3]:
            raise DropReason("unparseable_transcript", "fact lines do not form one chain")
    answer = str(facts[-1][3])
    if not gsm_lite.check_answer(stated, answer):
        raise DropReason("wrong_answer", f"final answer {stated} but the steps give {answer}")
    final = entry.get("final_answer")
    if final is not None and not gsm_lite.check_answer(str(final), answer):
        raise DropReason("wrong_answer", f"final_answer field {final!r} but the steps give {answer}")
    in_question = {int(n) for n in _QUESTION_NUMBER.findall(question)}
    used = {facts[0][0], *(b for _, _, b, _ in facts)}
    if not used <= in_question:
        raise DropReason("wrong_answer", f"quantities {sorted(used - in_question)} are not in the question")
    n_ops = len(facts)
    tier = entry.get("tier") or ("easy" if n_ops == 1 else "medium" if n_ops == 2 else "hard")
    return {
        "id": str(entry.get("task_id") or content_hash(entry)[:16]),
        "question": question,
        "answer": answer,
        "tier": str(tier),
        "steps": [f"{a} {op} {b} = {r}" for a, op, b, r in facts],
    }


def summary_for(n_paths: int, answer: str) -> str:
    """The reconciling summary: short, and only the agreed number (copying a path costs accuracy)."""
    return f"Both paths give {answer}." if n_paths == 2 else f"All {n_paths} paths give {answer}."


class StrategyGenerator:
    """GSM-lite's deterministic solution strategies as Parallel traces (no model needed)."""

    name = "strategies"

    def completions(self, task: Mapping[str, Any], branches: int) -> list[str]:
        answer = str(task["answer"])
        try:
            paths = gsm_lite.solution_strategies(dict(task), limit=branches)
        except ValueError as e:
            raise DropReason("unparseable_transcript", str(e)) from None
        if len(paths) < 2:
            raise DropReason("too_few_strategies", f"{len(paths)} strategy for {task.get('id')}")
        try:
            block = pf.ParallelBlock(tuple(paths), summary_for(len(paths), answer))
            return [pf.render(pf.Solution((block, "\n"), final_answer=answer))]
        except pf.FormatError as e:
            raise DropReason("format_invalid", f"{e.code}: {e}") from None


def verify_completion(task: Mapping[str, Any], completion: str, mode: str = "parallel") -> int:
    """Every record's gate, whichever generator wrote it: valid format, >= 2 distinct paths that agree
    with the verified answer, and the answer itself. Returns the number of paths; raises DropReason."""
    answer = str(task["answer"])
    err = pf.check(completion)
    if err is not None:
        raise DropReason("format_invalid", f"{err.code}: {err}")
    solution = pf.parse(completion)
    n_paths = 0
    if mode == "parallel":
        if len(solution.blocks) != 1 or len(solution.blocks[0].paths) < 2:
            raise DropReason("too_few_strategies", "the completion needs one block with >= 2 paths")
        paths = solution.blocks[0].paths
        n_paths = len(paths)
        if pf.path_diversity(paths) <= 0.0:
            raise DropReason("paths_identical", "the paths have the same content")
        agreement = pf.consensus(paths)
        if agreement.rate != 1.0 or agreement.majority != pf.normalize_number(answer):
            raise DropReason("paths_disagree", f"path answers {agreement.answers}, expected {answer}")
    elif solution.blocks:
        raise DropReason("format_invalid", "a sequential record must not contain a Parallel block")
    if not gsm_lite.check_answer(completion, answer):
        raise DropReason("wrong_answer", f"completion does not answer {answer}")
    return n_paths


def build_record(
    task: Mapping[str, Any], *, branches: int = 2, kb_context: str = "", mode: str = "parallel",
    generator: Any = None,
) -> dict[str, Any]:
    """One SFT record for ``task``, verified; raises :class:`DropReason` when no candidate passes.

    ``mode="parallel"``: a block from ``generator`` (default: the first ``branches`` GSM-lite strategies,
    left to right first, and a summary; or a teacher model, pr1d.data.teacher); every candidate goes
    through :func:`verify_completion`. ``mode="sequential"``: the left-to-right chain (the control arm).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if mode == "sequential":
        candidates = [gsm_lite.render_sequential(dict(task))]
    else:
        if branches < 2:
            raise ValueError(f"a Parallel record needs branches >= 2, got {branches}")
        candidates = (generator or StrategyGenerator()).completions(task, branches)
    last: DropReason = DropReason("format_invalid", "no candidate completion")
    for completion in candidates:
        try:
            n_paths = verify_completion(task, completion, mode)
        except DropReason as e:
            last = e
            continue
        prompt = gsm_lite.format_prompt(str(task["question"]))
        if kb_context.strip():
            prompt = kb_context.rstrip() + "\n\n" + prompt
        return {
            "id": f"{task['id']}:{mode}",
            "task_id": str(task["id"]),
            "tier": str(task.get("tier", "")),
            "answer": str(task["answer"]),
            "prompt": prompt,
            "completion": completion,
            "paths": n_paths,
        }
    raise last


def _select_mix(records: list[dict[str, Any]], mix: Mapping[str, float], cap: int | None) -> list[dict]:
    """Keep tiers in the proportions of ``mix`` (tiers not in it are left out), as many as the data allows."""
    weights = {t: float(w) for t, w in mix.items() if w > 0}
    if not weights:
        raise ValueError("tier mix must have a positive weight")
    total_w = sum(weights.values())
    by_tier: dict[str, list[dict]] = {t: [] for t in weights}
    for rec in records:
        if rec["tier"] in by_tier:
            by_tier[rec["tier"]].append(rec)
    # The largest total whose per-tier shares every tier can fill.
    n = min(math.floor(len(by_tier[t]) * total_w / w) for t, w in weights.items())
    if cap is not None:
        n = min(n, cap)
    quotas = {t: math.floor(n * w / total_w) for t, w in weights.items()}
    chosen = {t: by_tier[t][: quotas[t]] for t in weights}
    kept = {id(r) for rs in chosen.values() for r in rs}
    return [r for r in records if id(r) in kept]


def record_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's record statistics: tiers, paths per record, prompt and completion lengths."""

    def lengths(key: str) -> dict[str, Any]:
        chars = [len(r[key]) for r in records]
        total = sum(chars)
        return {
            "chars_total": total,
            "chars_mean": round(total / len(chars), 2) if chars else 0.0,
            "chars_max": max(chars, default=0),
            "approx_tokens_total": math.ceil(total / CHARS_PER_TOKEN),
            "approx_tokens_mean": round(total / len(chars) / CHARS_PER_TOKEN, 2) if chars else 0.0,
        }

    paths = Counter(r["paths"] for r in records)
    return {
        "records": len(records),
        "tiers": dict(sorted(Counter(r["tier"] for r in records).items())),
        "paths_per_record": {str(k): v for k, v in sorted(paths.items())},
        "paths_mean": round(sum(r["paths"] for r in records) / len(records), 3) if records else 0.0,
        "prompt": lengths("prompt"),
        "completion": lengths("completion"),
        "chars_per_token": CHARS_PER_TOKEN,
    }


def build_dataset(
    entries: Iterable[Mapping[str, Any]],
    *,
    branches: int = 2,
    mode: str = "parallel",
    mix: Mapping[str, float] | None = None,
    seed: int = 0,
    kb: Callable[[str], str] | None = None,
    max_records: int | None = None,
    generator: Any = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records from gradebook entries, and stats (counts, drops by reason, lengths).

    Deterministic: entries are sorted by (task_id, content hash) first, so the same entries in any order
    give the same records. One record per task and per question: the first entry of a task that passes
    every check is used, later entries of that task (or of the same question) count as ``duplicate``.
    Records are shuffled with ``seed``; ``mix`` ({tier: weight}) then keeps the tiers in proportion and
    ``max_records`` caps the count. ``kb`` maps a question to context prepended to its prompt.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    # Equal keys mean equal question and transcript, so their relative order cannot change the output.
    keyed = sorted(
        (((str(e.get("task_id", "")), content_hash(e)), e) for e in entries), key=lambda pair: pair[0]
    )
    drops: Counter[str] = Counter()
    done_tasks: set[str] = set()
    done_questions: set[str] = set()
    records: list[dict[str, Any]] = []
    for (task_id, _chash), entry in keyed:
        qhash = hashlib.sha256(str(entry.get("question", "")).encode()).hexdigest()
        if task_id in done_tasks or qhash in done_questions:
            drops["duplicate"] += 1
            continue
        try:
            task = seed_to_task(entry)
            context = kb(task["question"]) if kb is not None else ""
            record = build_record(task, branches=branches, kb_context=context or "", mode=mode,
                                  generator=generator)
        except DropReason as d:
            drops[d.code] += 1
            continue
        done_tasks.add(task_id)
        done_questions.add(qhash)
        records.append(record)
    built = len(records)
    random.Random(f"pr1-dataset/{seed}").shuffle(records)
    if mix:
        records = _select_mix(records, mix, max_records)
    elif max_records is not None:
        records = records[: max(0, int(max_records))]
    stats = {
        "mode": mode,
        "branches": branches if mode == "parallel" else 1,
        "seed": seed,
        "mix": dict(mix) if mix else None,
        "entries": len(keyed),
        "built": built,
        "excluded_by_mix_or_cap": built - len(records),
        "drops": {code: drops.get(code, 0) for code in DROP_REASONS},
        "dropped": sum(drops.values()),
        **record_stats(records),
    }
    return records, stats


RECORD_FIELDS = ("id", "prompt", "completion", "tier", "task_id", "answer")


def write_dataset(
    records: list[dict[str, Any]],
    stats: Mapping[str, Any],
    out_dir: Path | str,
    source_range: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``records.jsonl`` and ``manifest.json`` into ``out_dir``; returns the manifest.

    ``content_hash`` is the sha256 of the records file's bytes (sorted keys, fixed separators), so the
    same inputs always give the same hash. The manifest carries no clock time, so it is reproducible too.
    """
    from pr1d.pipeline.files import writing  # names the file on ENOSPC/EFBIG

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = "".join(
        json.dumps({k: r[k] for k in RECORD_FIELDS}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        + "\n"
        for r in records
    ).encode()
    digest = hashlib.sha256(data).hexdigest()
    manifest = {
        "format": "pr1-sft-jsonl/1",
        "content_hash": digest,
        "records_file": "records.jsonl",
        "records": len(records),
        "bytes": len(data),
        "counts": {
            "entries": stats.get("entries"),
            "built": stats.get("built"),
            "records": len(records),
            "dropped": stats.get("dropped"),
        },
        "drops": dict(stats.get("drops", {})),
        "source": dict(source_range or {}),
        "stats": dict(stats),
    }
    for name, payload in (("records.jsonl", data), ("manifest.json", None)):
        path = out / name
        if payload is None:
            payload = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        tmp = path.with_suffix(path.suffix + ".tmp")
        with writing(tmp):
            with open(tmp, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)
    return manifest
