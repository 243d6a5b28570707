"""Targeted SFT data (the compliance trigger): the agent's failing tasks, verified, mixed with guardrail exemplars.

The steps, each a function here, the I/O ones marked:

1. ``fetch_evaluations`` (I/O): the agent's evaluations from the scoring API, validated and field-mapped
   by the poller's own parser.
2. :func:`select_failing`: which tasks failed (``status == "fail"``, or an explicit ``false`` for a
   compliance key of the rubric), most recent first, one entry per task.
3. :func:`resolve_tasks`: each failing task's GSM-lite task, from the fleet's good work on the same task
   when there is some (trusted as any dataset seed is), else recovered from the agent's own transcript
   (its arithmetic chain, not its stated answer), which the platform's critic must then confirm.
4. ``critic_verify`` (I/O) and :func:`apply_verdicts`: recovered answers the critic does not agree with,
   confidently, are dropped as ``unverified``.
5. :func:`build_targeted_dataset`: one verified record per task (``build_record``, the same gate as
   every record), then guardrail exemplars mixed in at ``share`` (``guardrails.guardrail_count``).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import httpx

from pr1d.data.builder import DROP_REASONS, DropReason, build_record, record_stats, seed_to_task
from pr1d.data.gradebook import get_page
from pr1d.data.guardrails import Exemplar, guardrail_count, guardrail_records
from pr1d.evaluate import gsm_lite

__all__ = [
    "DEFAULT_COMPLIANCE_KEYS",
    "apply_verdicts",
    "build_targeted_dataset",
    "critic_verify",
    "failure_reasons",
    "fetch_evaluations",
    "mix_guardrails",
    "recover_task",
    "resolve_tasks",
    "select_failing",
]

# The rubric items whose explicit false makes an evaluation a compliance failure; the daemon passes
# monitor.signals.compliance_keys, this is its default.
DEFAULT_COMPLIANCE_KEYS = ("compliance", "safety")
# The critic accepts at most this many items per request (docs/scoring-api.md).
CRITIC_BATCH = 1000


def failure_reasons(evaluation: Mapping[str, Any], compliance_keys: Sequence[str] = DEFAULT_COMPLIANCE_KEYS) -> list[str]:
    """Why an evaluation counts as a failure of the agent: ``"status"`` for ``status == "fail"``, plus each
    compliance key whose rubric value is exactly ``False``; ``[]`` when it did not fail.

    ``error`` evaluations never count (the evaluation failed, not the agent), and a missing rubric item is
    no data, not a failure, as in the compliance signal (docs/entry-criteria.md).
    """
    status = evaluation.get("status")
    if status == "error":
        return []
    reasons = ["status"] if status == "fail" else []
    rubric = evaluation.get("rubric")
    if isinstance(rubric, Mapping):
        reasons += [k for k in compliance_keys if rubric.get(k) is False]
    return reasons


def select_failing(
    evaluations: Iterable[Mapping[str, Any]],
    compliance_keys: Sequence[str] = DEFAULT_COMPLIANCE_KEYS,
    max_tasks: int | None = None,
) -> list[dict[str, Any]]:
    """The agent's failed tasks, most recently failed first, one entry per task id.

    ``evaluations`` are in the API's order (oldest first). Each entry: ``task_id``, ``tier``, ``reasons``
    (sorted union over that task's failures), ``failures`` (how many), ``last_eval`` (the newest failing
    evaluation's id). Failures without a ``task_id`` cannot be trained on and are left out.
    """
    by_task: dict[str, dict[str, Any]] = {}
    for ev in reversed(list(evaluations)):
        why = failure_reasons(ev, compliance_keys)
        task_id = ev.get("task_id")
        if not why or task_id is None:
            continue
        task_id = str(task_id)
        entry = by_task.get(task_id)
        if entry is None:
            entry = by_task[task_id] = {"task_id": task_id, "tier": ev.get("tier"), "reasons": set(),
                                        "failures": 0, "last_eval": ev.get("eval_id", ev.get("id"))}
        entry["reasons"].update(why)
        entry["failures"] += 1
    out = [dict(e, reasons=sorted(e["reasons"])) for e in by_task.values()]
    return out if max_tasks is None else out[: max(0, max_tasks)]


_FINAL_LINE = re.compile(r"final\s+answer\s*[:：]", re.IGNORECASE)


def recover_task(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The task behind a *failing* transcript, answered by its own arithmetic chain.

    A failed attempt's stated answer is not evidence, but its worked steps may be: the chain is checked
    exactly as a good seed's is (:func:`seed_to_task`: correct arithmetic, one chain, quantities from the
    question), with the chain's result in place of the stated answer. Whether the chain answers the
    *question* is not known here; the critic decides (:func:`apply_verdicts`).
    """
    transcript = entry.get("transcript")
    if not isinstance(transcript, str):
        raise DropReason("unparseable_transcript", "missing transcript")
    facts = gsm_lite.facts_used(transcript)
    if not facts:
        raise DropReason("unparseable_transcript", "no arithmetic fact lines")
    lines = [line for line in transcript.splitlines() if not _FINAL_LINE.search(line)]
    repaired = dict(entry, transcript="\n".join([*lines, f"Final Answer: {facts[-1][3]}"]), final_answer=None)
    return seed_to_task(repaired)


def resolve_tasks(
    failing: Sequence[Mapping[str, Any]],
    agent_entries: Iterable[Mapping[str, Any]],
    fleet_entries: Iterable[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """A GSM-lite task for each failing task id, and drops counted by reason.

    ``fleet_entries`` are gradebook entries at or above the dataset's score floor (any agent): the first
    one of the task that passes :func:`seed_to_task` is used, ``source = "gradebook"``. Otherwise the
    agent's own entries of the task (any score) go through :func:`recover_task`, ``source = "recovered"``,
    and need the critic. A task with no entry at all is ``not_in_gradebook``; one whose entries all fail
    is dropped with the last entry's reason. Each task carries ``failure`` (its :func:`select_failing` entry).
    """
    def index(entries: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
        out: dict[str, list[Mapping[str, Any]]] = {}
        for e in entries:
            out.setdefault(str(e.get("task_id")), []).append(e)
        return out

    fleet, own = index(fleet_entries), index(agent_entries)
    tasks: list[dict[str, Any]] = []
    drops: Counter[str] = Counter()
    for fail in failing:
        tid = str(fail["task_id"])
        if tid not in fleet and tid not in own:
            drops["not_in_gradebook"] += 1
            continue
        last: DropReason | None = None
        found: dict[str, Any] | None = None
        for source, entries, parse in (("gradebook", fleet.get(tid, []), seed_to_task),
                                       ("recovered", own.get(tid, []), recover_task)):
            for e in entries:
                try:
                    found = dict(parse(e), source=source)
                    break
                except DropReason as d:
                    last = d
            if found is not None:
                break
        if found is None:
            assert last is not None
            drops[last.code] += 1
            continue
        found["id"] = tid  # the platform's task id, whatever the entry said
        found["failure"] = dict(fail)
        tasks.append(found)
    return tasks, drops


def apply_verdicts(
    tasks: Sequence[dict[str, Any]],
    verdicts: Mapping[str, tuple[bool, float]],
    min_confidence: float,
) -> tuple[list[dict[str, Any]], int]:
    """Keep gradebook-sourced tasks, and recovered ones the critic agreed with at ``min_confidence`` or more.

    ``verdicts`` maps task id to ``(agree, confidence)``; a recovered task without a verdict (the critic
    was unreachable) is not confirmed either. Returns ``(kept, unverified_count)``.
    """
    kept, unverified = [], 0
    for t in tasks:
        if t.get("source") == "recovered":
            agree, confidence = verdicts.get(str(t["id"]), (False, 0.0))
            if not (agree and confidence >= min_confidence):
                unverified += 1
                continue
            t = dict(t, critic={"agree": agree, "confidence": confidence})
        kept.append(t)
    return kept, unverified


def fetch_evaluations(
    base_url: str,
    token: str | None,
    agent_id: str,
    *,
    field_map: Mapping[str, str] | None = None,
    since: str | None = None,
    limit: int = 500,
    max_pages: int = 200,
    timeout_s: float = 30.0,
    retries: int = 3,
    stats: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """The agent's evaluations after ``since`` (``GET /v1/agents/{id}/evaluations``), oldest first.

    Items are validated and renamed by :func:`pr1d.monitor.poller.parse_evaluation` (the one reader of
    this contract, ``scoring.field_map`` included); invalid ones are counted in ``stats["invalid"]``.
    Returns ``(evaluations, cursor)``.
    """
    from pr1d.monitor.poller import parse_evaluation

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    fmap = dict(field_map or {})
    out: list[dict[str, Any]] = []
    counts = {"pages": 0, "fetched": 0, "invalid": 0}
    cursor, visited = since, set()
    path = f"/v1/agents/{agent_id}/evaluations"
    with httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s) as client:
        for _ in range(max_pages):
            params: dict[str, Any] = {"limit": limit}
            if cursor is not None:
                params["since"] = cursor
            body = get_page(client, path, "evaluations", params, retries)
            counts["pages"] += 1
            page = body["evaluations"]
            for item in page:
                counts["fetched"] += 1
                sample, _why = parse_evaluation(item, fmap)
                if sample is None:
                    counts["invalid"] += 1
                else:
                    out.append(sample)
            nxt = body.get("next_cursor")
            if nxt is not None:
                cursor = str(nxt)
            if not page or nxt is None or cursor in visited:
                break  # caught up, no cursor, or a cursor loop
            visited.add(cursor)
    if stats is not None:
        stats.update(counts)
    return out, cursor


def critic_verify(
    base_url: str, token: str | None, items: Sequence[tuple[str, str]], *, timeout_s: float = 30.0,
) -> list[tuple[bool, float]]:
    """The platform critic's ``(agree, confidence)`` for each ``(question, answer)`` (``POST /v1/critic/verify``)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out: list[tuple[bool, float]] = []
    with httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s) as client:
        for start in range(0, len(items), CRITIC_BATCH):
            batch = items[start : start + CRITIC_BATCH]
            resp = client.post("/v1/critic/verify", json={"items": [{"question": q, "answer": a} for q, a in batch]})
            resp.raise_for_status()
            results = resp.json().get("results")
            if not isinstance(results, list) or len(results) != len(batch):
                raise ValueError(f"critic/verify answered {len(results or [])} results for {len(batch)} items")
            out += [(r.get("agree") is True, float(r.get("confidence", 0.0))) for r in results]
    return out


def mix_guardrails(
    records: list[dict[str, Any]], exemplars: Sequence[Exemplar], share: float, seed: int,
) -> tuple[list[dict[str, Any]], int]:
    """``records`` plus guardrail exemplar records making up ``share`` of the result, shuffled with ``seed``.

    Returns ``(records, exemplar_count)``. The count is :func:`guardrail_count`; exemplars repeat (with
    distinct ids) when more are needed than the set holds.
    """
    n = guardrail_count(len(records), share)
    out = list(records) + guardrail_records(exemplars, n, seed)
    random.Random(f"pr1-guardrail-mix/{seed}").shuffle(out)
    return out, n


def build_targeted_dataset(
    tasks: Sequence[Mapping[str, Any]],
    exemplars: Sequence[Exemplar],
    *,
    share: float,
    branches: int = 2,
    seed: int = 0,
    kb: Callable[[str], str] | None = None,
    generator: Any = None,
    drops: Mapping[str, int] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records for resolved failing ``tasks`` (each through :func:`build_record`'s gate) mixed with exemplars.

    Deterministic: tasks are taken in task-id order. ``drops`` carries the drops of the earlier steps so
    the manifest counts every task that fell out, whichever step dropped it. Raises ``ValueError`` when no
    failing task survives: a targeted dataset of exemplars alone would train on nothing the agent did.
    """
    counted: Counter[str] = Counter(dict(drops or {}))
    task_records: list[dict[str, Any]] = []
    seen_questions: set[str] = set()
    for task in sorted(tasks, key=lambda t: str(t["id"])):
        if task["question"] in seen_questions:
            counted["duplicate"] += 1
            continue
        try:
            context = kb(task["question"]) if kb is not None else ""
            rec = build_record(task, branches=branches, kb_context=context or "", generator=generator)
        except DropReason as d:
            counted[d.code] += 1
            continue
        seen_questions.add(task["question"])
        task_records.append(rec)
    if not task_records:
        raise ValueError(
            f"no failing task could be turned into a verified record ({len(tasks)} resolved, drops "
            f"{ {k: v for k, v in counted.items() if v} }); a targeted dataset needs at least one"
        )
    records, n_ex = mix_guardrails(task_records, exemplars, share, seed)
    stats = {
        "mode": "parallel",
        "branches": branches,
        "seed": seed,
        "mix": None,
        "targeted": True,
        "entries": len(tasks) + sum((drops or {}).values()),
        "built": len(task_records),
        "excluded_by_mix_or_cap": 0,
        "drops": {code: counted.get(code, 0) for code in DROP_REASONS},
        "dropped": sum(counted.values()),
        "guardrails": {
            "share": share,
            "records": n_ex,
            "exemplars": len(exemplars),
            "rules": dict(sorted(Counter(r["rule"] for r in records if "rule" in r).items())),
        },
        "task_sources": dict(sorted(Counter(str(t.get("source")) for t in tasks).items())),
        **record_stats(records),
    }
    return records, stats
