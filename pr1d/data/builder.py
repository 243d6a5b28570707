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
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pr1d.data import parallel_format as pf
from pr1d.data.gradebook import content_hash
from pr1d.evaluate import gsm_lite
from pr1d.tasks.contract import DROP_REASONS, DropReason, Task, final_answer
from pr1d.tasks.families import Families, TaskFamily, gsm_task_dict

__all__ = [
    "DROP_REASONS",
    "DropReason",
    "build_dataset",
    "build_family_record",
    "build_record",
    "record_stats",
    "seed_to_task",
    "summary_for",
    "verify_family_completion",
    "write_dataset",
]

MODES = ("parallel", "sequential")
# A rough token estimate for the manifest (BPE on this text is about 3-4 characters a token); the
# trainer counts real tokens.
CHARS_PER_TOKEN = 4

# GSM-lite's entry check is the GSM-lite family's (pr1d.tasks.families); the name stays for its callers.
seed_to_task = gsm_task_dict


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


def verify_family_completion(task: Task, family: TaskFamily, completion: str, mode: str = "parallel") -> int:
    """The gate of a record of any family: valid format; in parallel mode one block of >= 2 distinct paths,
    each path's answer accepted by the family's grader on its own; the final answer accepted. Returns the
    number of paths; raises DropReason (``path_rejected`` names the path, ``grader_unavailable`` when the
    critic could not be asked: an outage is not a wrong answer)."""
    err = pf.check(completion)
    if err is not None:
        raise DropReason("format_invalid", f"{err.code}: {err}")
    solution = pf.parse(completion)
    paths: tuple[str, ...] = ()
    if mode == "parallel":
        if len(solution.blocks) != 1 or len(solution.blocks[0].paths) < 2:
            raise DropReason("too_few_strategies", "the completion needs one block with >= 2 paths")
        paths = solution.blocks[0].paths
        if pf.path_diversity(paths) <= 0.0:
            raise DropReason("paths_identical", "the paths have the same content")
    elif solution.blocks:
        raise DropReason("format_invalid", "a sequential record must not contain a Parallel block")
    answers = [family.read_path(p) for p in paths] + [final_answer(completion)]
    verdicts = family.grader.grade_many([(task, a) for a in answers])
    if any(v.unavailable for v in verdicts):
        raise DropReason("grader_unavailable", next(v.reason for v in verdicts if v.unavailable))
    if not verdicts[-1].passed:
        raise DropReason("wrong_answer", f"final answer {answers[-1]!r}: {verdicts[-1].reason}")
    for i, v in enumerate(verdicts[:-1]):
        if not v.passed:
            raise DropReason("path_rejected", f"path {i + 1} answers {answers[i]!r}: {v.reason}")
    return len(paths)


def build_family_record(
    task: Task, family: TaskFamily, *, branches: int = 2, kb_context: str = "", mode: str = "parallel",
    generator: Any = None,
) -> dict[str, Any]:
    """One verified SFT record for a task of any family; raises :class:`DropReason` when no candidate passes.

    Parallel candidates come from the family itself when it can write them (GSM-lite's strategies), else
    from ``generator.family_completions(task, family, branches)`` (a teacher or self-sampling from the
    agent's model); the sequential record is the family's single-path solution (a configured family's:
    the graded transcript itself). The prompt, and what the generator sees, includes ``kb_context``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if kb_context.strip():
        task = task.with_context(kb_context)
    if mode == "sequential":
        seq = family.sequential(task)
        if seq is None:
            raise DropReason("unparseable_transcript", "the entry has no sequential answer to train on")
        candidates = [seq]
    else:
        if branches < 2:
            raise ValueError(f"a Parallel record needs branches >= 2, got {branches}")
        candidates = family.strategies(task, branches)
        if candidates is None:
            if generator is None or not hasattr(generator, "family_completions"):
                raise DropReason("teacher_error", f"no trace source for family {family.name!r}: set [dataset] "
                                                  "teacher_url or self_sample_url")
            candidates = generator.family_completions(task, family, branches)
    last: DropReason = DropReason("format_invalid", "no candidate completion")
    for completion in candidates:
        try:
            n_paths = verify_family_completion(task, family, completion, mode)
        except DropReason as e:
            last = e
            continue
        return {
            "id": f"{task.id}:{mode}",
            "task_id": task.id,
            "family": family.name,
            "question": task.question,
            "tier": task.tier,
            "answer": task.reference if task.reference is not None else final_answer(completion) or "",
            "prompt": task.prompt(),
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


def _select_mix_per_family(records: list[dict[str, Any]], mix: Mapping[str, float], cap: int | None) -> list[dict]:
    """The tier mix applied to each task family on its own: a family's records whose tier the mix names keep the
    mix's proportions; records without a tier, or of a family whose tiers the mix does not name, are all kept (the
    mix is about tiers they do not have). Then ``cap``. One family with mix tiers only: exactly :func:`_select_mix`."""
    fam_of = [str(r.get("family") or "gsm_lite") for r in records]
    named = {t for t, w in mix.items() if w > 0}
    if len(set(fam_of)) <= 1 and all(r["tier"] in named for r in records):
        return _select_mix(records, mix, cap)
    kept: set[int] = set()
    for fam in dict.fromkeys(fam_of):
        group = [r for r, f in zip(records, fam_of, strict=True) if f == fam]
        tiered = [r for r in group if r["tier"] in named]
        kept |= {id(r) for r in group if r["tier"] not in named and (not r["tier"] or not tiered)}
        if tiered:
            kept |= {id(r) for r in _select_mix(tiered, mix, None)}
    out = [r for r in records if id(r) in kept]
    return out if cap is None else out[: max(0, int(cap))]


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
    families: Families | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records from gradebook entries, and stats (counts, drops by reason, lengths, per task family).

    Deterministic: entries are sorted by (task_id, content hash) first, so the same entries in any order
    give the same records. One record per task and per question: the first entry of a task that passes
    every check is used, later entries of that task (or of the same question) count as ``duplicate``.
    Records are shuffled with ``seed``; ``mix`` ({tier: weight}) then keeps the tiers in proportion and
    ``max_records`` caps the count. ``kb`` maps a question to context prepended to its prompt.
    ``families`` (default: GSM-lite only) maps each entry to its task family; an entry of a family not
    configured is dropped as ``unknown_family`` and named in ``stats["unknown_families"]``.
    """
    families = families or Families.gsm_only()
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
    per_family: dict[str, dict[str, Any]] = {}
    unknown: Counter[str] = Counter()
    for (task_id, _chash), entry in keyed:
        name = families.name_of(entry)
        fam_stats = per_family.setdefault(name, {"entries": 0, "built": 0, "drops": Counter()})
        fam_stats["entries"] += 1
        qhash = hashlib.sha256(str(entry.get("question", "")).encode()).hexdigest()
        if task_id in done_tasks or qhash in done_questions:
            drops["duplicate"] += 1
            fam_stats["drops"]["duplicate"] += 1
            continue
        family = families.for_entry(entry)
        try:
            if family is None:
                unknown[name] += 1
                raise DropReason("unknown_family", name)
            if family.name == "gsm_lite":
                task = seed_to_task(entry)
                context = kb(task["question"]) if kb is not None else ""
                record = build_record(task, branches=branches, kb_context=context or "", mode=mode,
                                      generator=generator)
            else:
                ftask = family.task_from_entry(entry)
                context = kb(ftask.question) if kb is not None else ""
                record = build_family_record(ftask, family, branches=branches, kb_context=context or "",
                                             mode=mode, generator=generator)
        except DropReason as d:
            drops[d.code] += 1
            fam_stats["drops"][d.code] += 1
            continue
        done_tasks.add(task_id)
        done_questions.add(qhash)
        fam_stats["built"] += 1
        records.append(record)
    built = len(records)
    random.Random(f"pr1-dataset/{seed}").shuffle(records)
    if mix:
        records = _select_mix_per_family(records, mix, max_records)
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
        "families": {
            name: {"entries": f["entries"], "built": f["built"],
                   "records": sum(1 for r in records if r.get("family", "gsm_lite") == name),
                   "drops": dict(sorted(f["drops"].items()))}
            for name, f in sorted(per_family.items())
        },
        "unknown_families": dict(sorted(unknown.items())),
        **record_stats(records),
    }
    return records, stats


RECORD_FIELDS = ("id", "prompt", "completion", "tier", "task_id", "answer")
# Written when present: GSM-lite's records carry no family field, so their bytes (and hashes) are unchanged.
OPTIONAL_FIELDS = ("family", "question")


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
        json.dumps({k: r[k] for k in (*RECORD_FIELDS, *OPTIONAL_FIELDS) if k in r}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
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
