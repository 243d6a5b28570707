"""Parallel traces by rejection sampling from the agent's own model (self-distillation), for any task family.

Where no teacher is configured, the agent's model (served behind an OpenAI-compatible ``/v1/completions``
endpoint: vLLM, TGI, the platform's own gateway; ``pr1d sim`` serves one) answers each task ``samples``
times. The family's grader judges every sample's final answer; the accepted samples with the most distinct
reasoning become the paths of one ``<Parallel>`` block, and the summary names the agreed answer, as Native
Parallel Reasoner's self-distillation builds its cold-start data. The builder then verifies the trace like
any other (every path graded on its own), so a sampler can never put an unverified path into a dataset.

Same interface as :class:`pr1d.data.teacher.TeacherGenerator`; no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from pr1d.tasks.contract import DropReason, Task, final_answer, normalise_text

from . import parallel_format as pf
from .teacher import OpenAICompatible

__all__ = ["SelfSampler", "compose"]


def _body(sample: str) -> str | None:
    """The reasoning of a sequential sample: everything before its final answer line (None: no reasoning)."""
    cut = sample.rfind("Final Answer:")
    body = sample[:cut].strip() if cut >= 0 else ""
    return body or None


def _pick_diverse(bodies: list[str], k: int) -> list[int]:
    """Indices of ``k`` bodies, greedily the least alike (by path diversity), first sample first."""
    chosen = [0]
    while len(chosen) < min(k, len(bodies)):
        best, best_d = -1, -1.0
        for i in range(len(bodies)):
            if i in chosen:
                continue
            d = min(pf.path_diversity([bodies[i], bodies[j]]) for j in chosen)
            if d > best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def compose(task: Task, family: Any, samples: Sequence[str], branches: int) -> list[str]:
    """One Parallel completion from ``samples`` of ``task``, or DropReason saying why none can be made.

    A sample counts when it is a valid sequential answer (no Parallel block) whose final answer the family's
    grader accepts; samples with the same reasoning (after normalisation) count once. ``too_few_strategies``
    when fewer than two distinct accepted samples remain, ``grader_unavailable`` when the grader could not
    judge (the critic is down).
    """
    usable: list[tuple[str, str]] = []
    for s in samples:
        if pf.check(s) is not None or pf.parse(s).blocks:
            continue
        answer, body = final_answer(s), _body(s)
        if answer is not None and body is not None:
            usable.append((body, answer))
    verdicts = family.grader.grade_many([(task, a) for _, a in usable]) if usable else []
    if any(v.unavailable for v in verdicts):
        raise DropReason("grader_unavailable", next(v.reason for v in verdicts if v.unavailable))
    accepted: dict[str, tuple[str, str]] = {}
    for (body, answer), v in zip(usable, verdicts, strict=True):
        if v.passed:
            accepted.setdefault(normalise_text(body), (body, answer))
    if len(accepted) < 2:
        raise DropReason("too_few_strategies", f"{sum(v.passed for v in verdicts)} of {len(samples)} samples accepted, "
                                               f"{len(accepted)} distinct")
    kept = list(accepted.values())
    picked = [kept[i] for i in _pick_diverse([b for b, _ in kept], branches)]
    answer = picked[0][1]
    paths = tuple(f"{body}\nSo the answer is {a}." for body, a in picked)
    summary = f"Both paths give {answer}." if len(paths) == 2 else f"All {len(paths)} paths give {answer}."
    try:
        return [pf.render(pf.Solution((pf.ParallelBlock(paths, summary), "\n"), final_answer=answer))]
    except pf.FormatError as e:
        raise DropReason("format_invalid", f"{e.code}: {e}") from None


class SelfSampler(OpenAICompatible):
    """``/v1/completions`` client: ``samples`` answers per task from the agent's model, composed by :func:`compose`."""

    name = "self_sample"

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "PR1_SAMPLER_API_KEY", samples: int = 8,
                 temperature: float = 0.8, max_tokens: int = 256, timeout_s: float = 60.0) -> None:
        if samples < 2:
            raise ValueError(f"self-sampling needs samples >= 2 (two accepted paths at least), got {samples}")
        super().__init__(base_url, model, api_key_env=api_key_env, samples=samples, temperature=temperature,
                         max_tokens=max_tokens, timeout_s=timeout_s)

    def sample(self, prompt: str) -> list[str]:
        body = {"model": self.model, "prompt": prompt, "n": self.samples, "temperature": self.temperature,
                "max_tokens": self.max_tokens}
        self.requests += 1
        try:
            resp = self.http.post("/v1/completions", json=body)
            resp.raise_for_status()
            return [str(c["text"]) for c in resp.json()["choices"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            self.errors += 1
            raise DropReason("teacher_error", f"sampler: {type(e).__name__}: {e}") from None

    def family_completions(self, task: Task, family: Any, branches: int) -> list[str]:
        return compose(task, family, self.sample(task.prompt()), branches)

    def completions(self, task: Mapping[str, Any], branches: int) -> list[str]:
        from pr1d.tasks.families import GsmLite

        fam = GsmLite()
        return self.family_completions(fam.to_task(task), fam, branches)
