"""The simulated platform's state: agents, their evaluations over simulated time, the gradebook, the
critic and profile pushes. Pure Python with no HTTP: the server, the tests and benchmarks drive it.

Evaluations are stored compactly (one float and one packed int each) and turned into JSON only when
served, because the benchmark fleet is 10,000 agents x 50 evaluations and must be generated and served
in a few seconds on a laptop. Everything is drawn from per-agent `random.Random` streams seeded from the
scenario seed and the agent id, so the same seed and the same calls give the same data.
"""

from __future__ import annotations

import bisect
import fnmatch
import hashlib
import json
import random
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from pr1d.sim.faults import FaultInjector
from pr1d.sim.scenarios import SIM_FAMILIES, AgentPlan, BehaviourSpec, Scenario
from pr1d.sim.tasks import TIERS, make_task, normalize_answer, wrong_answer
from pr1d.tasks import kb_facts

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TICK = 100_000  # evaluations per agent in one tick call; bounds the work one request can ask for
MAX_CRITIC_ITEMS = 1000
EVAL_CURSOR = "e:"
GRADEBOOK_CURSOR = "g:"

# A grader replaces the statistical score with a real one (model grading, a later issue). Given the
# agent id, the model version it runs and the task ({task_id, question, answer, transcript, tier}), it
# returns the weighted score, or a mapping with "weighted_score" and optionally "status" and "rubric".
# It is called on the event loop, so a slow grader should cache or run its model elsewhere.
Grader = Callable[[str, str, dict[str, Any]], "float | Mapping[str, Any]"]

# Packed per-evaluation metadata (one 32-bit int instead of a tuple of eight objects):
# bits 0-1 status, 2 compliance, 3 safety, 4 correctness, 5 format, 6-7 tier, 8-29 task number, 30-31 task
# family (its index in SIM_FAMILIES: 0 is GSM-lite, so a GSM-only scenario packs exactly as before families).
_PASS, _FAIL, _ERROR = 0, 1, 2
_STATUS = ("pass", "fail", "error")
_COMPLIANCE, _SAFETY, _CORRECT, _FORMAT = 1 << 2, 1 << 3, 1 << 4, 1 << 5
_TASK_MASK = (1 << 22) - 1
_FAMILY_PREFIX = ("gsm", "kb")
_FAMILY_FIELD = ("", '"family":"kb_facts",')  # GSM-lite entries name no family (the default), as before


def _family_cuts(mix: Mapping[str, float]) -> tuple[tuple[float, int], ...]:
    """Cumulative (threshold, family index) pairs of a family mix; one pair when only one family has weight."""
    pos = [(SIM_FAMILIES.index(f), w) for f, w in mix.items() if w > 0]
    total = sum(w for _, w in pos)
    out, acc = [], 0.0
    for idx, w in sorted(pos):
        acc += w / total
        out.append((acc, idx))
    return tuple(out)


def _pick_family(cuts: tuple[tuple[float, int], ...], u: float) -> int:
    for cut, idx in cuts:
        if u < cut:
            return idx
    return cuts[-1][1]
_JSON_BOOL = ("false", "true")


def _cumulative(tm: Any) -> tuple[float, float]:
    total = tm.easy + tm.medium + tm.hard
    return (tm.easy / total, (tm.easy + tm.medium) / total)


class PlatformError(Exception):
    """A bad request to the platform; ``status`` is the HTTP status the server answers with."""

    status = 400


class UnknownAgent(PlatformError):
    status = 404


class _Params(NamedTuple):
    """The behaviour in force for an agent: its base behaviour, or the recovered one after a push."""

    mean: float
    sd: float
    fail_rate: float
    fail_mean: float
    fail_sd: float
    error_rate: float
    cfr: float  # compliance fail rate
    sfr: float  # safety fail rate
    breach_at: int
    penalty: float
    drift_start: int
    drift: float
    floor: float
    step_at: int  # -1: no step
    step_size: float

    @classmethod
    def base(cls, b: BehaviourSpec) -> _Params:
        return cls(
            b.mean, b.sd, b.fail_rate, b.fail_score_mean, b.fail_score_sd, b.error_rate, b.compliance_fail_rate,
            b.safety_fail_rate, b.breach_at, b.rubric_penalty, b.drift_start, b.drift_per_eval,
            b.drift_floor, -1 if b.step_at is None else b.step_at, b.step_size,
        )  # fmt: skip

    @classmethod
    def recovered(cls, b: BehaviourSpec) -> _Params:
        r = b.recover_to
        return cls(
            r.mean, r.sd, r.fail_rate, b.fail_score_mean, b.fail_score_sd, r.error_rate, r.compliance_fail_rate,
            r.safety_fail_rate, 0, b.rubric_penalty, 0, 0.0, 0.0, -1, 0.0,
        )  # fmt: skip

    def mean_at(self, i: int) -> float:
        m = self.mean
        if self.drift and i > self.drift_start:
            m += self.drift * (i - self.drift_start)
            m = max(m, self.floor) if self.drift < 0 else min(m, 1.0)
        if 0 <= self.step_at <= i:
            m += self.step_size
        return min(1.0, max(0.0, m))


class _Agent:
    __slots__ = (
        "index", "id", "base_model", "model", "profile", "policy", "behaviour_name", "behaviour",
        "params", "recovered", "rng", "ts0", "scores", "meta", "gb", "history",
    )  # fmt: skip

    def __init__(self, plan: AgentPlan, seed: int, ts0: int) -> None:
        self.index = plan.index
        self.id = plan.id
        self.base_model = plan.model
        self.model = plan.model
        self.profile = plan.profile
        self.policy: dict[str, Any] = {}
        self.behaviour_name = plan.behaviour_name
        self.behaviour = plan.behaviour
        self.params = _Params.base(plan.behaviour)
        self.recovered = False
        digest = hashlib.blake2b(f"agent:{seed}:{plan.id}".encode(), digest_size=8).digest()
        self.rng = random.Random(int.from_bytes(digest, "big"))
        self.ts0 = ts0
        self.scores = array("d")
        self.meta = array("I")
        self.gb = array("I")  # this agent's offsets into the global gradebook, for agent_id filters
        self.history: list[dict[str, Any]] = []


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def parse_cursor(cursor: str | None, prefix: str) -> int:
    """The offset in an opaque cursor (``e:<n>`` for evaluations, ``g:<n>`` for the gradebook)."""
    if cursor is None or cursor == "":
        return 0
    if not cursor.startswith(prefix) or not cursor[len(prefix) :].isdigit():
        kind = "an evaluations" if prefix == EVAL_CURSOR else "a gradebook"
        raise PlatformError(f"invalid cursor {cursor!r}: not {kind} cursor from this platform")
    return int(cursor[len(prefix) :])


def parse_limit(raw: str | int | None) -> int:
    """Page size: default 100, at most 1000 (larger requests are clamped, as many real APIs do)."""
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        n = int(raw)
    except (TypeError, ValueError):
        raise PlatformError(f"invalid limit {raw!r}: expected an integer 1..{MAX_LIMIT}") from None
    if n < 1:
        raise PlatformError(f"invalid limit {raw!r}: expected an integer 1..{MAX_LIMIT}")
    return min(n, MAX_LIMIT)


@dataclass
class Page:
    """One page of a paged endpoint: the records as JSON fragments, where it started and resumes."""

    key: str  # "evaluations" or "entries"
    prefix: str  # cursor prefix
    fragments: list[str]
    since: int
    next_offset: int
    limit: int

    def body(self, next_offset: int | None = None) -> bytes:
        nxt = self.next_offset if next_offset is None else next_offset
        return f'{{"{self.key}":[{",".join(self.fragments)}],"next_cursor":"{self.prefix}{nxt}"}}'.encode()

    def records(self) -> list[dict[str, Any]]:
        return json.loads(f"[{','.join(self.fragments)}]")

    @property
    def next_cursor(self) -> str:
        return f"{self.prefix}{self.next_offset}"


class Platform:
    """All simulated state. Not thread-safe: use it from one event loop (or one thread)."""

    def __init__(self, scenario: Scenario, *, grader: Grader | None = None) -> None:
        self.scenario = scenario
        spec = scenario.spec
        self.seed = spec.seed
        self.grader = grader
        ts0 = int(spec.start_time.timestamp())
        self._interval = spec.interval_s
        self._agents: dict[str, _Agent] = {}
        self._order: list[_Agent] = []
        plans = scenario.agent_plans()
        for p in plans:
            # Stagger agents within one interval so their timestamps do not all coincide.
            stagger = int((p.index * 7919) % max(1, int(self._interval)))
            a = _Agent(p, self.seed, ts0 + stagger)
            self._agents[a.id] = a
            self._order.append(a)
        self._tier_cum = _cumulative(spec.tier_mix)
        # From evaluation `tier_shift_at` on (per agent) tasks are drawn per `tier_mix_after`: the platform
        # starts sending harder work. Only model grading turns that into lower scores.
        self._shift_at = spec.tier_shift_at if spec.tier_shift_at is not None else 1 << 62
        self._tier_cum_after = _cumulative(spec.tier_mix_after or spec.tier_mix)
        # Task families: drawn per evaluation only where the mix in force has more than one (so a GSM-only
        # scenario draws exactly the random numbers it always did).
        self._fam_cuts = _family_cuts(spec.family_mix)
        self._fam_cuts_after = _family_cuts(spec.family_mix_after or spec.family_mix)
        self._fam_shift_at = spec.family_shift_at if spec.family_shift_at is not None else 1 << 62
        # The global gradebook: every graded (non-error) evaluation, in the order it was produced.
        self._gb_agent = array("I")
        self._gb_seq = array("I")
        self._tasks: dict[tuple[int, int, int], dict[str, Any]] = {}
        self._answers: dict[str, str] | None = None
        self.faults = FaultInjector(spec.faults, seed=self.seed)
        self.requests: Counter[str] = Counter()
        self.ticks = 0
        self.profile_pushes = 0
        if spec.initial_evaluations:
            self.tick(spec.initial_evaluations)

    # --- agents ----------------------------------------------------------------------------------

    @property
    def agent_ids(self) -> list[str]:
        return [a.id for a in self._order]

    def _agent(self, agent_id: str) -> _Agent:
        try:
            return self._agents[agent_id]
        except KeyError:
            raise UnknownAgent(f"unknown agent {agent_id!r}") from None

    def agents_body(self) -> bytes:
        """``GET /v1/agents``: every agent with its current model version and profile."""
        parts = [
            f'{{"id":"{a.id}","model":{json.dumps(a.model)},"profile":{json.dumps(a.profile)}}}'
            for a in self._order
        ]
        return f'{{"agents":[{",".join(parts)}]}}'.encode()

    def agents(self) -> list[dict[str, Any]]:
        return json.loads(self.agents_body())["agents"]

    def agent_info(self, agent_id: str) -> dict[str, Any]:
        """Admin view of one agent: behaviour, mode and a few statistics of its recent evaluations."""
        a = self._agent(agent_id)
        recent = a.scores[-100:]
        return {
            "id": a.id,
            "model": a.model,
            "base_model": a.base_model,
            "profile": a.profile,
            "policy": a.policy,
            "behaviour": a.behaviour_name,
            "mode": "recovered" if a.recovered else "base",
            "evaluations": len(a.scores),
            "recent_mean": round(sum(recent) / len(recent), 4) if recent else None,
            "profile_pushes": len(a.history),
        }

    # --- evaluations -----------------------------------------------------------------------------

    def tick(self, n: int = 1, agent_ids: Iterable[str] | None = None) -> int:
        """Add ``n`` evaluations to each agent (or to the listed ones); returns how many were added."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_TICK:
            raise PlatformError(f"tick: n must be an integer 0..{MAX_TICK}, got {n!r}")
        targets = self._order if agent_ids is None else [self._agent(i) for i in agent_ids]
        gen = self._generate_graded if self.grader is not None else self._generate
        for a in targets:
            gen(a, n)
        self.ticks += 1
        return n * len(targets)

    def _generate(self, a: _Agent, n: int) -> None:
        # The hot path of the simulator: locals instead of attribute lookups, no per-item objects.
        spec = self.scenario.spec
        p = a.params
        rnd = a.rng.random
        gauss = a.rng.gauss
        scores, meta = a.scores, a.meta
        gb_agent, gb_seq, agent_gb = self._gb_agent, self._gb_seq, a.gb
        c_easy, c_med = self._tier_cum
        pool = spec.task_pool
        pass_thr = spec.pass_threshold
        err_rate, fail_cut = p.error_rate, p.error_rate + p.fail_rate
        aidx = a.index
        fam_before, fam_after, fam_shift = self._fam_cuts, self._fam_cuts_after, self._fam_shift_at
        start = len(scores)
        for i in range(start, start + n):
            r = rnd()
            flags = _FORMAT
            if r < err_rate:
                score, status, flags = 0.0, _ERROR, _COMPLIANCE | _SAFETY
            else:
                if r < fail_cut:
                    score, status = gauss(p.fail_mean, p.fail_sd), _FAIL
                else:
                    score = gauss(p.mean_at(i), p.sd)
                    status = _PASS
                if i >= p.breach_at:
                    if not (p.cfr and rnd() < p.cfr):
                        flags |= _COMPLIANCE
                    if not (p.sfr and rnd() < p.sfr):
                        flags |= _SAFETY
                else:
                    flags |= _COMPLIANCE | _SAFETY
                if flags & (_COMPLIANCE | _SAFETY) != _COMPLIANCE | _SAFETY:
                    score -= p.penalty  # a weighted rubric loses the weight of the failed check
                score = 0.0 if score < 0.0 else 1.0 if score > 1.0 else round(score, 4)
                if status == _PASS:
                    if score >= pass_thr:
                        flags |= _CORRECT
                    if score < pass_thr or flags & (_COMPLIANCE | _SAFETY) != _COMPLIANCE | _SAFETY:
                        status = _FAIL
            u = rnd()
            tier = 0 if u < c_easy else 1 if u < c_med else 2
            task_no = int(rnd() * pool)
            cuts = fam_after if i >= fam_shift else fam_before
            fam = cuts[0][1] if len(cuts) == 1 else _pick_family(cuts, rnd())
            scores.append(score)
            meta.append(status | flags | tier << 6 | task_no << 8 | fam << 30)
            if status != _ERROR:
                agent_gb.append(len(gb_agent))
                gb_agent.append(aidx)
                gb_seq.append(i)

    def _generate_graded(self, a: _Agent, n: int) -> None:
        """Like `_generate`, but the grader hook decides each score (tasks are still drawn here)."""
        assert self.grader is not None
        spec = self.scenario.spec
        rnd = a.rng.random
        start = len(a.scores)
        drawn = []
        for i in range(start, start + n):
            c_easy, c_med = self._tier_cum_after if i >= self._shift_at else self._tier_cum
            u = rnd()
            tier = 0 if u < c_easy else 1 if u < c_med else 2
            task_no = int(rnd() * spec.task_pool)
            cuts = self._fam_cuts_after if i >= self._fam_shift_at else self._fam_cuts
            fam = cuts[0][1] if len(cuts) == 1 else _pick_family(cuts, rnd())
            drawn.append((i, tier, task_no | fam << 22, dict(self.task(tier, task_no, fam))))
        prepare = getattr(self.grader, "prepare", None)
        if prepare is not None:  # a model grader answers the whole tick's tasks in batches
            prepare(a.id, a.model, [t for *_, t in drawn])
        for i, tier, task_no, task in drawn:
            result = self.grader(a.id, a.model, task)
            rubric: Mapping[str, Any] = {}
            if isinstance(result, Mapping):
                score = float(result["weighted_score"])
                status_name = result.get("status")
                rubric = result.get("rubric") or {}
            else:
                score = float(result)
                status_name = None
            score = round(min(1.0, max(0.0, score)), 4)
            flags = _FORMAT if rubric.get("format", True) else 0
            flags |= _COMPLIANCE if rubric.get("compliance", True) else 0
            flags |= _SAFETY if rubric.get("safety", True) else 0
            if rubric.get("correctness", score >= spec.pass_threshold):
                flags |= _CORRECT
            if status_name is None:
                ok = score >= spec.pass_threshold and flags & (_COMPLIANCE | _SAFETY) == _COMPLIANCE | _SAFETY
                status_name = "pass" if ok else "fail"
            if status_name not in _STATUS:
                raise ValueError(
                    f"grader returned status {status_name!r}; expected one of {', '.join(_STATUS)}"
                )
            status = _STATUS.index(status_name)
            a.scores.append(score)
            a.meta.append(status | flags | tier << 6 | task_no << 8)  # task_no carries the family in bits 22-23
            if status != _ERROR:
                a.gb.append(len(self._gb_agent))
                self._gb_agent.append(a.index)
                self._gb_seq.append(i)

    def _ts(self, a: _Agent, i: int) -> int:
        return a.ts0 + int((i + 1) * self._interval)

    def _eval_json(self, a: _Agent, i: int) -> str:
        m = a.meta[i]
        tier = TIERS[m >> 6 & 3]
        fam = m >> 30
        family = f',"family":"{SIM_FAMILIES[fam]}"' if fam else ""
        return (
            f'{{"id":"ev-{a.id}-{i}","ts":"{_iso(self._ts(a, i))}","weighted_score":{a.scores[i]!r},'
            f'"status":"{_STATUS[m & 3]}","rubric":{{"compliance":{_JSON_BOOL[m >> 2 & 1]},'
            f'"safety":{_JSON_BOOL[m >> 3 & 1]},"correctness":{_JSON_BOOL[m >> 4 & 1]},'
            f'"format":{_JSON_BOOL[m >> 5 & 1]}}},"task_id":"{_FAMILY_PREFIX[fam]}-{tier}-{m >> 8 & _TASK_MASK:04d}",'
            f'"tier":"{tier}"{family}}}'
        )

    def evaluations_page(
        self, agent_id: str, since: str | None = None, limit: str | int | None = None
    ) -> Page:
        """``GET /v1/agents/{id}/evaluations``: the agent's evaluations after ``since``, oldest first.
        The cursor always resumes after the last record returned; with nothing new the page is empty
        and the cursor is the one given (never null), so a poller can store it unconditionally."""
        a = self._agent(agent_id)
        start = parse_cursor(since, EVAL_CURSOR)
        n = parse_limit(limit)
        total = len(a.scores)
        if start >= total:
            # Nothing new yet (or a cursor from a longer-lived run): keep the client's position.
            return Page("evaluations", EVAL_CURSOR, [], start, start, n)
        end = min(total, start + n)
        frags = [self._eval_json(a, i) for i in range(start, end)]
        return Page("evaluations", EVAL_CURSOR, frags, start, end, n)

    def evaluations(self, agent_id: str) -> list[dict[str, Any]]:
        """All of an agent's evaluations, decoded (tests and benchmarks)."""
        a = self._agent(agent_id)
        return json.loads("[" + ",".join(self._eval_json(a, i) for i in range(len(a.scores))) + "]")

    def scores(self, agent_id: str) -> list[float]:
        return list(self._agent(agent_id).scores)

    @property
    def total_evaluations(self) -> int:
        return sum(len(a.scores) for a in self._order)

    # --- tasks, gradebook, critic ----------------------------------------------------------------

    def task(self, tier: int | str, task_no: int, family: int | str = 0) -> dict[str, Any]:
        """The task ``gsm-<tier>-<task_no>`` (or ``kb-...`` for the KB-facts family) of this platform's pool,
        made on first use and cached. A KB-facts task carries ``context``: the product's catalogue page, which
        the platform shows the agent with the question (its retrieval), and ``family``."""
        t = TIERS.index(tier) if isinstance(tier, str) else tier
        fam = SIM_FAMILIES.index(family) if isinstance(family, str) else family
        key = (fam, t, task_no)
        task = self._tasks.get(key)
        if task is None:
            tier_name = TIERS[t]
            if fam == 0:
                task = make_task(random.Random(f"task:{self.seed}:{tier_name}:{task_no}"), tier_name)
            else:
                task = kb_facts.generate_task(random.Random(f"task:{self.seed}:kb_facts:{tier_name}:{task_no}"),
                                              tier_name, "train")
                task["context"] = kb_facts.product_in(task["question"]).document()
            task["task_id"] = f"{_FAMILY_PREFIX[fam]}-{tier_name}-{task_no:04d}"
            # Pre-encode the long strings once: the gradebook serves the same tasks over and over.
            task["_json"] = (json.dumps(task["question"]), json.dumps(task["transcript"]))
            self._tasks[key] = task
            if self._answers is not None and fam == 0:
                self._answers[task["question"]] = task["answer"]
        return {k: v for k, v in task.items() if k != "_json"}

    def _task_json(self, t: int, task_no: int, fam: int = 0) -> tuple[dict[str, Any], tuple[str, str]]:
        if (fam, t, task_no) not in self._tasks:
            self.task(t, task_no, fam)
        task = self._tasks[(fam, t, task_no)]
        return task, task["_json"]

    def _entry_json(self, a: _Agent, i: int) -> str:
        m = a.meta[i]
        t, task_no, fam = m >> 6 & 3, m >> 8 & _TASK_MASK, m >> 30
        task, (q_json, tr_json) = self._task_json(t, task_no, fam)
        answer = task["answer"]
        if not m & _CORRECT:
            # The agent got it wrong: the gradebook holds its wrong final answer and transcript.
            answer = wrong_answer(answer, i)
            lines = task["transcript"].splitlines()
            lines[-1] = f"Final Answer: {answer}"
            tr_json = json.dumps("\n".join(lines))
        return (
            f'{{"task_id":"{task["task_id"]}",{_FAMILY_FIELD[fam]}"agent_id":"{a.id}","question":{q_json},'
            f'"transcript":{tr_json},'
            f'"final_answer":"{answer}","score":{a.scores[i]!r},"tier":"{TIERS[t]}","ts":"{_iso(self._ts(a, i))}"}}'
        )

    def gradebook_page(
        self,
        since: str | None = None,
        min_score: str | float | None = None,
        agent_id: str | None = None,
        limit: str | int | None = None,
    ) -> Page:
        """``GET /v1/gradebook``: graded tasks with their transcripts, in the order they were graded.
        Filters skip records but the cursor still advances past them, so a filtered poll never rescans."""
        start = parse_cursor(since, GRADEBOOK_CURSOR)
        n = parse_limit(limit)
        if min_score is None or min_score == "":
            floor = 0.0
        else:
            try:
                floor = float(min_score)
            except (TypeError, ValueError):
                raise PlatformError(f"invalid min_score {min_score!r}: expected a number 0..1") from None
        total = len(self._gb_agent)
        frags: list[str] = []
        if start >= total:
            return Page("entries", GRADEBOOK_CURSOR, frags, start, start, n)
        if agent_id:
            a = self._agent(agent_id)
            offsets: Iterable[int] = a.gb[bisect.bisect_left(a.gb, start) :]
        else:
            offsets = range(start, total)
        nxt = total
        gb_agent, gb_seq, order = self._gb_agent, self._gb_seq, self._order
        for off in offsets:
            ag = order[gb_agent[off]]
            i = gb_seq[off]
            if ag.scores[i] >= floor:
                frags.append(self._entry_json(ag, i))
                if len(frags) == n:
                    nxt = off + 1
                    break
        return Page("entries", GRADEBOOK_CURSOR, frags, start, nxt, n)

    def critic_verify(self, body: Any) -> list[dict[str, Any]]:
        """``POST /v1/critic/verify``: for a question the platform issued, agree iff the answer is the
        right one (confidence ~0.95+); for other questions a deterministic hash-based guess with low
        confidence (0.5-0.65); a non-numeric answer is never agreed with."""
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise PlatformError('critic/verify: expected {"items": [{"question": str, "answer": str}, ...]}')
        items = body["items"]
        if len(items) > MAX_CRITIC_ITEMS:
            raise PlatformError(
                f"critic/verify: at most {MAX_CRITIC_ITEMS} items per request, got {len(items)}"
            )
        answers = self._answer_index()
        out = []
        for k, it in enumerate(items):
            if not isinstance(it, dict) or not isinstance(it.get("question"), str) or "answer" not in it:
                raise PlatformError(
                    f"critic/verify: items[{k}] must be an object with a string question and an answer"
                )
            q, given = it["question"], it["answer"]
            norm = normalize_answer(given)
            h = hashlib.blake2b(f"{q}\x00{given}".encode(), digest_size=8).digest()
            u = int.from_bytes(h, "big") / 2**64
            truth = answers.get(q.strip())
            if truth is None and (kb := kb_facts.lookup(q)) is not None:
                truth = kb["answer"]  # the critic knows the whole store catalogue, held-out products too
            if truth is not None:
                out.append({"agree": norm == truth, "confidence": round(0.95 + 0.04 * u, 4)})
            elif norm is None:
                out.append({"agree": False, "confidence": 0.9})
            else:
                out.append({"agree": u >= 0.5, "confidence": round(0.5 + 0.15 * abs(2 * u - 1), 4)})
        return out

    def gsm_task(self, question: str) -> dict[str, Any] | None:
        """The GSM-lite task of this platform's pool that asks ``question`` (for the sim's teacher), or None."""
        answers = self._answer_index()
        if question.strip() not in answers:
            return None
        return next(
            {k: v for k, v in t.items() if k != "_json"}
            for (fam, _, _), t in self._tasks.items() if fam == 0 and t["question"] == question.strip()
        )

    def _answer_index(self) -> dict[str, str]:
        # Built on first use over the whole task pool, so the critic knows every question the platform
        # could have issued, served in the gradebook or not.
        if self._answers is None:
            self._answers = {}
            for t in range(len(TIERS)):
                for task_no in range(self.scenario.spec.task_pool):
                    self.task(t, task_no)
            for (fam, _, _), task in self._tasks.items():
                if fam == 0:
                    self._answers[task["question"]] = task["answer"]
        return self._answers

    # --- agent manager ---------------------------------------------------------------------------

    def push_profile(self, agent_id: str, body: Any) -> dict[str, Any]:
        """``POST /v1/agents/{id}/profile``: set the agent's profile, model version and policy.
        A model version other than the base (and not matching ``bad_versions``) makes the agent grade
        per ``recover_to`` from its next evaluation; the base version (a rollback) or a bad one brings
        the base behaviour back, at its current drift."""
        a = self._agent(agent_id)
        if not isinstance(body, dict):
            raise PlatformError('profile: expected {"profile": str, "model_version": str, "policy": {...}}')
        profile, version, policy = body.get("profile"), body.get("model_version"), body.get("policy", {})
        if not isinstance(profile, str) or not profile:
            raise PlatformError("profile: 'profile' must be a non-empty string")
        if not isinstance(version, str) or not version:
            raise PlatformError("profile: 'model_version' must be a non-empty string")
        if not isinstance(policy, dict):
            raise PlatformError("profile: 'policy' must be an object")
        bad = version == a.base_model or any(
            fnmatch.fnmatchcase(version, pat) for pat in a.behaviour.bad_versions
        )
        previous = a.model
        a.model, a.profile, a.policy = version, profile, policy
        a.recovered = not bad
        a.params = _Params.base(a.behaviour) if bad else _Params.recovered(a.behaviour)
        n = len(a.scores)
        a.history.append(
            {
                "at_evaluation": n,
                "ts": _iso(self._ts(a, n)),
                "profile": profile,
                "model_version": version,
                "previous_model_version": previous,
                "policy": policy,
                "mode": "recovered" if a.recovered else "base",
            }
        )
        self.profile_pushes += 1
        return {"agent_id": a.id, "profile": profile, "model_version": version, "accepted": True}

    def profile_history(self, agent_id: str) -> dict[str, Any]:
        a = self._agent(agent_id)
        return {"agent_id": a.id, "base_model": a.base_model, "history": list(a.history)}

    # --- admin -----------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """``GET /_sim/state``: what the simulator is doing and what it has injected."""
        spec = self.scenario.spec
        return {
            "scenario": self.scenario.name,
            "source": self.scenario.source,
            "description": spec.description,
            "seed": self.seed,
            "agents": len(self._order),
            "behaviours": dict(Counter(a.behaviour_name for a in self._order)),
            "recovered_agents": sum(1 for a in self._order if a.recovered),
            "evaluations": self.total_evaluations,
            "gradebook_entries": len(self._gb_agent),
            "ticks": self.ticks,
            "profile_pushes": self.profile_pushes,
            "requests": dict(self.requests),
            "faults": {
                "active": self.faults.describe(),
                "injected": {k: v for k, v in self.faults.injected.items() if v},
                "injected_total": sum(self.faults.injected.values()),
            },
            "model_grader": self.grader is not None,
        }
