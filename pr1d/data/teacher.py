"""A teacher model behind an OpenAI-compatible chat-completions endpoint, writing Parallel traces.

For real deployments, where no deterministic strategy generator knows the task: the teacher is
prompted the way Parallel-R1 prompted its teacher for cold-start data, and every completion goes
through the same gate as the strategy generator's (pr1d.data.builder.verify_completion): valid
format, >= 2 distinct paths agreeing with the verified answer, the answer itself. Same interface as
builder.StrategyGenerator: ``completions(task, branches) -> [str]``; for a task of any family (a
:class:`pr1d.tasks.contract.Task`) ``family_completions(task, family, branches)``, prompted with the task's
own prompt (retrieved KB context included), every path then graded by the family's grader.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import httpx

from . import parallel_format as pf
from .builder import DropReason

SYSTEM_PROMPT = (
    "You solve grade-school math word problems by thinking in parallel. Structure your solution as\n"
    "<Parallel><Path>...</Path><Path>...</Path><Summary>...</Summary></Parallel>\n"
    "with {branches} genuinely different solution paths (different order or grouping of the steps, "
    "not the same steps reworded), each ending with its own result, then a short summary that "
    "reconciles them. After the block, write one line: Final Answer: <number>."
)
FAMILY_PROMPT = (
    "You answer questions by thinking in parallel. Use the context given with the question when there is one. "
    "Structure your answer as\n<Parallel><Path>...</Path><Path>...</Path><Summary>...</Summary></Parallel>\n"
    "with {branches} genuinely different paths to the answer (different sources or different reasoning, not "
    "the same steps reworded), each ending with a line 'So the answer is <answer>.', then a short summary "
    "that reconciles them. After the block, write one line: Final Answer: <answer>."
)


class OpenAICompatible:
    """A model behind an OpenAI-compatible endpoint: the HTTP client (bearer key from ``api_key_env``), the
    sampling settings and the request/error counters the dataset manifest reports."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str, samples: int, temperature: float,
                 max_tokens: int, timeout_s: float) -> None:
        key = os.environ.get(api_key_env) if api_key_env else None
        self.model, self.samples, self.temperature, self.max_tokens = model, samples, temperature, max_tokens
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s,
                                 headers={"Authorization": f"Bearer {key}"} if key else {})
        self.requests = 0
        self.errors = 0

    def close(self) -> None:
        self.http.close()


class TeacherGenerator(OpenAICompatible):
    """Chat-completions client; ``samples`` completions per task, the first that passes the gate wins."""

    name = "teacher"

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "PR1_TEACHER_API_KEY",
                 samples: int = 2, temperature: float = 0.7, max_tokens: int = 512, timeout_s: float = 60.0):
        super().__init__(base_url, model, api_key_env=api_key_env, samples=samples, temperature=temperature,
                         max_tokens=max_tokens, timeout_s=timeout_s)

    def completions(self, task: Mapping[str, Any], branches: int) -> list[str]:
        return self._ask(SYSTEM_PROMPT.format(branches=branches), str(task["question"]))

    def family_completions(self, task: Any, family: Any, branches: int) -> list[str]:
        """Traces for a :class:`~pr1d.tasks.contract.Task` of any family (the caller grades every path)."""
        return self._ask(FAMILY_PROMPT.format(branches=branches), task.prompt())

    def _ask(self, system: str, user: str) -> list[str]:
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            "n": self.samples,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        self.requests += 1
        try:
            resp = self.http.post("/v1/chat/completions", json=body)
            resp.raise_for_status()
            data = resp.json()
            texts = [str(c["message"]["content"]) for c in data["choices"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            self.errors += 1
            raise DropReason("teacher_error", f"{type(e).__name__}: {e}") from None
        # Teachers often wrap the answer line in extra prose; keep only what the format module accepts.
        return [t.strip() for t in texts if pf.extract_final_answer(t) is not None] or texts
