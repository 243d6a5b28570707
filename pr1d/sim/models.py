"""The sim's model endpoints (OpenAI-compatible), so trace generation for a non-arithmetic family runs for real:

* ``POST /v1/chat/completions`` -- a deterministic *teacher* that knows the whole store catalogue
  (pr1d.tasks.kb_facts) and the platform's own arithmetic problems. For a KB-facts question it writes a
  Parallel trace of two paths that read the facts differently, a summary and the answer; for a GSM-lite
  problem of the platform's pool, GSM-lite's solution strategies. Anything else gets a refusal that fails
  verification, as a real teacher's would.
* ``POST /v1/completions`` -- a *sampler* imitating the agent's own model for self-distillation: each sample
  is a sequential answer. It reads a product's facts only from the prompt: with the product's catalogue page
  in the prompt a sample is right about 70% of the time (in one of two wordings), without it always wrong.
  So rejection sampling works with retrieval and yields nothing without it.

Both are pure functions of the request (hashes, no clocks, no global random state): the same request gets the
same reply. Errors are :class:`pr1d.sim.platform.PlatformError` (HTTP 400) naming the bad field.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from pr1d.tasks import kb_facts

MAX_N = 64
SAMPLE_RIGHT = 0.7
_QUESTION = re.compile(r"Question:\s*(.*?)\s*(?:\nAnswer:\s*)?$", re.DOTALL)
REFUSAL = "I can only answer questions about the Larkfield store catalogue."


class ModelRequestError(ValueError):
    """A malformed model request (the server answers 400 with the message)."""


def question_of(prompt: str) -> str:
    """The question in a task prompt (the text after its last ``Question:``), else the whole prompt."""
    cut = prompt.rfind("Question:")
    if cut < 0:
        return prompt.strip()
    m = _QUESTION.match(prompt[cut:])
    return m.group(1).strip() if m else prompt[cut + len("Question:") :].strip()


def _n(body: dict[str, Any]) -> int:
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise ModelRequestError(f"'n' must be an integer 1..{MAX_N}, got {n!r}")
    return n


def _model(body: dict[str, Any]) -> str:
    model = body.get("model", "sim")
    if not isinstance(model, str):
        raise ModelRequestError("'model' must be a string")
    return model


def _u(*parts: object) -> float:
    h = hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def _gsm_trace(task: dict[str, Any]) -> str:
    from pr1d.data.builder import StrategyGenerator
    from pr1d.tasks.families import gsm_task_dict

    return StrategyGenerator().completions(gsm_task_dict(task), 2)[0]


def chat_completion(body: Any, gsm: Callable[[str], dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """``POST /v1/chat/completions``: the teacher's reply to the last user message, ``n`` identical choices.
    ``gsm(question)`` finds a GSM-lite task of the platform's pool (with its transcript)."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        raise ModelRequestError('chat/completions: expected {"model": str, "messages": [{"role", "content"}, ...]}')
    users = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1].get("content"), str):
        raise ModelRequestError("chat/completions: no user message with string content")
    n, model = _n(body), _model(body)
    prompt = users[-1]["content"]
    question = question_of(prompt)
    task = kb_facts.lookup(question)
    gsm_task = gsm(question) if task is None and gsm is not None else None
    text = kb_facts.parallel_trace(task) if task is not None else _gsm_trace(gsm_task) if gsm_task else REFUSAL
    choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
               for i in range(n)]
    digest = hashlib.blake2b(prompt.encode(), digest_size=6).hexdigest()
    return {"id": f"chatcmpl-sim-{digest}", "object": "chat.completion", "model": model, "choices": choices}


def has_page(prompt: str, product: kb_facts.Product) -> bool:
    """Whether ``prompt`` holds ``product``'s catalogue page: its name and every fact line (a KB chunker may
    re-render the title, so the heading itself is not required verbatim)."""
    facts = product.document().splitlines()[1:]
    return product.name in prompt and all(line.strip() in prompt for line in facts if line.strip())


def _sample(prompt: str, i: int) -> str:
    question = question_of(prompt)
    task = kb_facts.lookup(question)
    u = _u(prompt, i)
    if task is not None and has_page(prompt, kb_facts.product_in(question)) and u < SAMPLE_RIGHT:
        body = kb_facts.solution_paths(task)[i % 2].rsplit("\n", 1)[0]
        return f"{body}\nFinal Answer: {task['answer']}"
    truth = int(task["answer"]) if task is not None else 40
    wrong = truth + 1 + int(_u(prompt, i, "slip") * 9)
    return f"I think it is about {wrong}.\nFinal Answer: {wrong}"


def completion(body: Any) -> dict[str, Any]:
    """``POST /v1/completions``: ``n`` sampled answers to ``prompt`` (see the module doc)."""
    if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
        raise ModelRequestError('completions: expected {"model": str, "prompt": str, "n": int}')
    n, model = _n(body), _model(body)
    prompt = body["prompt"]
    choices = [{"index": i, "text": _sample(prompt, i), "finish_reason": "stop"} for i in range(n)]
    digest = hashlib.blake2b(prompt.encode(), digest_size=6).hexdigest()
    return {"id": f"cmpl-sim-{digest}", "object": "text_completion", "model": model, "choices": choices}
