"""Model grading for ``pr1d sim --grade-with-model``: each evaluation is the agent's real model answering the task.

The sim's statistical scenarios script a dip and a recovery; with this grader both are earned. The agent's
current model version (what the last profile push named, else its base model) is loaded from a local
folder, answers the task greedily, and the answer is graded with :func:`pr1d.evaluate.grading.grade`, the
same weighted grading the backtest and the RL reward use. So the dip is the base model's real weakness and
the recovery after a promotion is the new model's real accuracy.

Where models come from:

- ``--model-dir NAME=PATH`` (repeatable): the platform's own model names (an agent's base model, e.g.
  ``tiny-gsm-v1``) and their folders;
- ``--models-root DIR``: pr1d's registry (``[registry] models_root``); a pushed version id ``V`` of agent
  ``A`` is the folder ``DIR/A/V``.

A version the grader cannot find is an error the sim reports on the tick (it never grades by guessing).
Answers are cached per (version, question): the task pool is finite, so after the first pass over the
pool grading is a dictionary lookup. The platform hands the grader a whole tick's tasks at once
(:meth:`ModelGrader.prepare`), so a new version's answers are generated in batches, not one by one.
This imports torch: it runs in the sim process, never in the daemon.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MAX_NEW_TOKENS = 224  # the evaluation budget the gates use (pr1d.train.sft.PARALLEL_EVAL_TOKENS)
# The platform grades the work, not our format: right and compliant is 1.0, wrong but compliant 0.1. (pr1's own
# gates and rewards add the parallel-format and consensus columns; the platform has no reason to.)
PLATFORM_WEIGHTS = {"correctness": 0.9, "compliance": 0.1}
# The platform's rubric, from pr1's compliance checks (pr1d.evaluate.grading.COMPLIANCE_CHECKS). "compliance" is
# policy: no forbidden phrase. An answer cut off by the token budget, with no answer line or a broken block is
# bad *form* (and wrong), not a policy breach: counting it as compliance would make a model that merely cannot
# do a new kind of task look like one that breaks rules, and queue guardrail training for it.
POLICY_CHECKS = ("no_guardrail_violation",)
FORM_CHECKS = ("finished", "final_answer_present", "well_formed")


class ModelGrader:
    """``grader(agent_id, model_version, task) -> {"weighted_score", "status", "rubric"}`` backed by real models."""

    def __init__(self, model_dirs: Mapping[str, Path], models_root: Path | None = None, *,
                 pass_threshold: float = 0.7, batch_size: int = 64, threads: int = 2,
                 guardrails: Iterable[str] = ()) -> None:
        self.model_dirs = {k: Path(v) for k, v in model_dirs.items()}
        self.models_root = Path(models_root) if models_root else None
        self.pass_threshold = pass_threshold
        self.batch_size = batch_size
        self.threads = threads
        self.guardrails = tuple(guardrails)  # the platform's forbidden phrases: its compliance rubric
        self._models: dict[Path, tuple[Any, Any]] = {}
        self._answers: dict[tuple[Path, str], tuple[str, bool]] = {}
        self._lock = threading.Lock()

    # -- where a version lives -------------------------------------------------------------------------
    def folder(self, agent_id: str, version: str) -> Path:
        if version in self.model_dirs:
            return self.model_dirs[version]
        if self.models_root is not None:
            from pr1d.registry.versions import version_dir

            try:
                path = version_dir(self.models_root, agent_id, version)
            except ValueError:
                path = None
            if path is not None and (path / "config.json").is_file():
                return path
        known = ", ".join(sorted(self.model_dirs)) or "none"
        raise LookupError(
            f"model grading: no folder for model version {version!r} of agent {agent_id!r} (--model-dir names: "
            f"{known}; --models-root: {self.models_root or 'not set'})"
        )

    def _load(self, path: Path):
        if path not in self._models:
            import torch

            from pr1d.inference.generate import load_model

            torch.set_num_threads(self.threads)
            self._models[path] = load_model(path)
        return self._models[path]

    # -- answering -----------------------------------------------------------------------------------
    def prepare(self, agent_id: str, version: str, tasks: Iterable[Mapping[str, Any]]) -> None:
        """Generate (in batches) the answers of ``version`` to every task not answered yet."""
        from pr1d.inference.generate import generate
        from pr1d.tasks.contract import format_prompt

        path = self.folder(agent_id, version)
        with self._lock:
            # A KB-facts task's context (its catalogue page: the platform's retrieval) goes into the prompt.
            contexts = {t["question"]: str(t.get("context") or "") for t in tasks}
            todo = [q for q in contexts if (path, q) not in self._answers]
            if not todo:
                return
            model, tok = self._load(path)
            outs = generate(model, tok, [format_prompt(q, contexts[q]) for q in todo], max_new_tokens=MAX_NEW_TOKENS,
                            batch_size=self.batch_size)
            for q, out in zip(todo, outs, strict=True):
                self._answers[(path, q)] = (out[0].text, out[0].finished)

    def __call__(self, agent_id: str, version: str, task: Mapping[str, Any]) -> dict[str, Any]:
        from pr1d.evaluate.grading import grade

        path = self.folder(agent_id, version)
        if (path, task["question"]) not in self._answers:
            self.prepare(agent_id, version, [task])
        text, finished = self._answers[(path, task["question"])]
        g = grade(text, str(task["answer"]), finished=finished, guardrails=self.guardrails)
        correct = bool(g.columns["correctness"])
        compliant = all(g.compliance[k] for k in POLICY_CHECKS)
        score = round(PLATFORM_WEIGHTS["correctness"] * correct + PLATFORM_WEIGHTS["compliance"] * compliant, 4)
        return {
            "weighted_score": score,
            "status": "pass" if correct and compliant and score >= self.pass_threshold else "fail",
            "rubric": {"correctness": correct, "format": all(g.compliance[k] for k in FORM_CHECKS),
                       "compliance": compliant, "safety": True},
        }


def parse_model_dirs(items: Iterable[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"--model-dir {item!r}: expected NAME=PATH (e.g. tiny-gsm-v1=/var/lib/pr1d/base)")
        if not (Path(path) / "config.json").is_file():
            raise ValueError(f"--model-dir {name}: {path} is not a model folder (no config.json)")
        out[name.strip()] = Path(path)
    return out


def load_model_grader(args: argparse.Namespace) -> ModelGrader:
    """The entry point ``pr1d sim --grade-with-model`` looks up (pr1d.sim.cli.load_model_grader)."""
    dirs = parse_model_dirs(getattr(args, "model_dir", None) or [])
    root = getattr(args, "models_root", None)
    if not dirs and not root:
        raise ValueError("--grade-with-model needs --model-dir NAME=PATH (the agents' base models) "
                         "and/or --models-root DIR (pr1d's registry)")
    return ModelGrader(dirs, root)
