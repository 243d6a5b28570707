"""The `gate` stage: the promotion gate over the backtest report, and the request to register the candidate.

Reads the run's newest ``*-backtest/backtest.json``, builds both sides' :class:`GateInput` from its
items (:func:`pr1d.evaluate.backtest.gate_inputs`: per-answer correctness, rubric checks and parallel
measures, never the report's summary; a report of another schema is refused), decides with
:func:`gate_decision` (correctness paired per task, per tier, safety, bounds) under the
daemon's ``[gate]`` config (spec section ``gate``) and returns :func:`gate_outputs`: a fail stops the run
``rejected`` with the reasons; pass and inconclusive finish it ``awaiting_approval``. On those two the
result also carries ``register``: what the daemon (the ledger's only writer) registers as a model
version of the agent *before* the run reaches ``awaiting_approval``, so that ``pr1ctl approve RUN``
has a version to promote. A fail registers nothing.

No torch: the decision is pure Python over the recorded report.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..evaluate.backtest import gate_inputs
from ..evaluate.gate import gate_decision, gate_outputs
from .base import Worker, run_stage, sha256_file

REPORT_GLOB = "*-backtest/backtest.json"


def find_report(run_dir: Path) -> Path | None:
    """The run's newest backtest report (stage folders sort by sequence number)."""
    found = sorted(p for p in run_dir.glob(REPORT_GLOB) if p.is_file())
    return found[-1] if found else None


def dataset_version(run_dir: Path) -> str | None:
    """The content hash of the dataset this run built (its dataset stage's manifest), if it built one."""
    found = sorted(run_dir.glob("*-dataset/dataset/manifest.json"))
    if not found:
        return None
    return json.loads(found[-1].read_text()).get("content_hash")


def config_hash(params: dict[str, Any]) -> str:
    """sha256 of the run's parameters as canonical JSON: the configuration the candidate was made with.

    Stage defaults are code, versioned with pr1; the params are what an operator or trigger chose.
    """
    return hashlib.sha256(json.dumps(params, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def registration(report: dict, run_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    """What the daemon registers for a candidate that may be approved (lineage included).

    ``base`` names the model that served as the incumbent when the agent had no registry version
    yet: the daemon registers it too, as the agent's initial deployment, so the first promotion has
    a parent and a rollback target.
    """
    inc = report["incumbent"]
    return {
        "candidate": report["candidate"]["path"],
        "parent_id": inc.get("version"),
        "dataset_version": dataset_version(run_dir),
        "config_hash": config_hash(params),
        "policy": report["candidate"].get("policy") or {},
        "base": inc["path"] if inc.get("version") is None else None,
    }


def main(w: Worker) -> dict:
    path = Path(w.params["backtest_report"]) if w.params.get("backtest_report") else find_report(w.run_dir)
    if path is None or not path.is_file():
        raise ValueError(f"no backtest report in {w.run_dir}: the gate needs a backtest stage before it")
    report = json.loads(path.read_text())
    cfg = w.spec.gate
    w.progress(0, 1, message="deciding")
    candidate, incumbent = gate_inputs(report)
    result = gate_decision(candidate, incumbent, cfg)
    out = gate_outputs(result)
    # Which report the decision was made on, byte for byte: the evidence points at its source.
    out["gate"]["backtest"] = {"report": str(path), "sha256": sha256_file(path), "n": len(report["items"]),
                               "schema": report.get("schema"),
                               "excluded": {k: v for k, v in ((report.get("replay") or {}).get("excluded") or {}).items()
                                            if k in ("by_id", "by_question")},
                               "candidate": report["candidate"]["path"], "incumbent": report["incumbent"]["path"],
                               "incumbent_version": report["incumbent"].get("version")}
    if result.outcome != "fail":
        out["register"] = registration(report, w.run_dir, w.params)
    ev = result.evidence
    # Correctness means (platform terms) and their paired difference: the numbers the gate decided on.
    w.metric("gate.candidate.mean", ev["candidate"]["mean"] or 0.0)
    w.metric("gate.incumbent.mean", ev["incumbent"]["mean"] or 0.0)
    if ev["uplift"]["observed"] is not None:
        w.metric("gate.uplift", ev["uplift"]["observed"])
    w.progress(1, 1)
    w.log(f"gate: {result.outcome}: {'; '.join(result.reasons)}")
    return out


if __name__ == "__main__":
    run_stage(main)
