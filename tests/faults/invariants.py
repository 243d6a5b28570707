"""Crash-consistency invariants over a state dir (`check_invariants`), and the reliability results writer.

`check_invariants(state_dir)` reads only what a crash could leave behind — the ledger, the registry's
pointer symlinks and files, the stage artifacts, the live processes, and (when given its URL) the agent
manager's view — and returns one line per violation. An empty list is the promise the fault suites test:
nothing lost, nothing done twice, nothing half done.

`record_result(suite, entry)` appends one outcome to ``<PR1_RELIABILITY_OUT>/<suite>.json``; the files
feed `scripts/reliability_report.py`, which writes docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from pr1d.ledger.states import RUN_TRANSITIONS, RunState, StageState

# -- the invariants -----------------------------------------------------------------------------------

# Run states in which every stage of the run must have succeeded (the run went past its last stage).
_PAST_ALL_STAGES = {RunState.succeeded, RunState.awaiting_approval, RunState.promoted, RunState.rolled_back}


def _rows(db: sqlite3.Connection, sql: str, params: tuple = ()) -> list[tuple]:
    return db.execute(sql, params).fetchall()


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return bool(_rows(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))


def _check_runs(db: sqlite3.Connection) -> list[str]:
    """Legal states, a legal audited history ending in the stored state, stages that agree, no duplicates."""
    out: list[str] = []
    runs = _rows(db, "SELECT id, agent_id, state, idempotency_key, trigger_id FROM runs ORDER BY id")
    legal = {str(s) for s in RunState}
    audit: dict[str, list[tuple]] = {}
    for entity_id, action, src, dst in _rows(
        db, "SELECT entity_id, action, from_state, to_state FROM audit WHERE entity = 'run' "
            "AND action IN ('create', 'transition') ORDER BY id"):
        audit.setdefault(entity_id, []).append((action, src, dst))
    stages: dict[int, list[tuple]] = {}
    for run_id, seq, name, state in _rows(db, "SELECT run_id, seq, name, state FROM stages ORDER BY run_id, seq"):
        stages.setdefault(run_id, []).append((seq, name, state))
    active_per_agent: dict[str, list[int]] = {}
    for run_id, agent, state, _key, _trigger in runs:
        if state not in legal:
            out.append(f"run {run_id}: illegal state {state!r}")
            continue
        # The audit trail is written in the same transaction as each change, so replaying it must be a
        # legal path from `queued` that ends exactly in the stored state.
        trail = audit.get(str(run_id), [])
        if not trail or trail[0][0] != "create" or trail[0][2] != RunState.queued:
            out.append(f"run {run_id}: audit trail does not start with its creation as queued")
        else:
            at = RunState.queued
            for action, src, dst in trail[1:]:
                if action != "transition":
                    continue
                if src != at:
                    out.append(f"run {run_id}: audit says {src} -> {dst} but the run was {at}")
                    break
                if RunState(dst) not in RUN_TRANSITIONS[RunState(at)]:
                    out.append(f"run {run_id}: audited transition {at} -> {dst} is not legal")
                    break
                at = RunState(dst)
            else:
                if at != state:
                    out.append(f"run {run_id}: stored state {state} but its audit trail ends in {at}")
        for seq, name, st in stages.get(run_id, []):
            if st not in {str(s) for s in StageState}:
                out.append(f"run {run_id} stage {seq} {name}: illegal state {st!r}")
            elif st == StageState.running and state != RunState.running:
                out.append(f"run {run_id} stage {seq} {name}: running while the run is {state}")
            elif state in _PAST_ALL_STAGES and st != StageState.succeeded:
                out.append(f"run {run_id} is {state} but stage {seq} {name} is {st}")
        if state in (RunState.queued, RunState.running, RunState.interrupted, RunState.awaiting_approval):
            active_per_agent.setdefault(agent, []).append(run_id)
    for agent, ids in active_per_agent.items():
        if len(ids) > 1:
            out.append(f"agent {agent}: {len(ids)} active runs at once {ids} (one run per agent at a time)")
    for key, n in _rows(db, "SELECT idempotency_key, count(*) FROM runs WHERE idempotency_key IS NOT NULL "
                            "GROUP BY idempotency_key HAVING count(*) > 1"):
        out.append(f"idempotency key {key!r} used by {n} runs")
    for trig, n in _rows(db, "SELECT trigger_id, count(*) FROM runs WHERE trigger_id IS NOT NULL "
                             "GROUP BY trigger_id HAVING count(*) > 1"):
        out.append(f"trigger {trig} created {n} runs")
    for trig, run_id in _rows(db, "SELECT t.id, t.run_id FROM triggers t LEFT JOIN runs r ON r.id = t.run_id "
                                  "WHERE t.run_id IS NOT NULL AND r.id IS NULL"):
        out.append(f"trigger {trig} names run {run_id}, which does not exist")
    for agent, eval_id, n in _rows(db, "SELECT agent_id, eval_id, count(*) FROM score_samples "
                                       "GROUP BY agent_id, eval_id HAVING count(*) > 1 LIMIT 5"):
        out.append(f"sample {agent}/{eval_id} stored {n} times")
    return out


def _check_artifacts(db: sqlite3.Connection) -> list[str]:
    """The newest artifact of each succeeded stage is on disk with the bytes it was recorded with."""
    from pr1d.stages.base import _sha256_dir, sha256_file

    out: list[str] = []
    rows = _rows(db, "SELECT a.stage_id, a.name, a.path, a.sha256 FROM artifacts a JOIN stages s ON s.id = a.stage_id "
                     "WHERE s.state = 'succeeded' AND a.kind != 'model_version' AND a.id IN "
                     "(SELECT max(id) FROM artifacts WHERE stage_id IS NOT NULL GROUP BY stage_id, name)")
    for stage_id, name, path, sha in rows:
        p = Path(path)
        if not p.exists():
            out.append(f"stage {stage_id} artifact {name}: {p} is missing")
            continue
        got = sha256_file(p) if p.is_file() else _sha256_dir(p)
        if got != sha:
            out.append(f"stage {stage_id} artifact {name}: {p} hashes {got[:12]}, recorded {sha[:12]}")
    return out


def _check_deployments(db: sqlite3.Connection, state_dir: Path, models_root: Path, sim_url: str | None,
                       require_pushed: bool) -> list[str]:
    """No half-done deployment: pointer, ledger, run states and the agent manager agree; files match hashes."""
    from pr1d.ledger.store import Ledger
    from pr1d.registry.deploy import read_pointer
    from pr1d.registry.versions import RegistryError, verify_version

    out: list[str] = []
    if not _has_table(db, "deployments"):
        return out
    latest = _rows(db, "SELECT d.id, d.agent_id, d.version_id, d.profile_pushed, s.body FROM deployments d "
                       "JOIN (SELECT agent_id, max(id) AS mid FROM deployments GROUP BY agent_id) m ON d.id = m.mid "
                       "LEFT JOIN deployment_state s ON s.deployment_id = d.id ORDER BY d.agent_id")
    current = dict(_rows(db, "SELECT id, current_version FROM agents"))
    http = httpx.Client(base_url=sim_url, timeout=10) if sim_url else None
    try:
        for dep_id, agent, version, pushed, body in latest:
            pointer = read_pointer(models_root, agent)
            if pointer != version:
                out.append(f"agent {agent}: pointer names {pointer}, newest deployment {dep_id} is {version}")
            elif not (models_root / agent / version).is_dir():
                out.append(f"agent {agent}: pointer names {version}, whose folder is missing")
            if current.get(agent) != version:
                out.append(f"agent {agent}: agents.current_version {current.get(agent)}, deployment says {version}")
            if require_pushed and not pushed:
                out.append(f"agent {agent}: deployment {dep_id} ({version}) never acknowledged by the agent manager")
            if http is not None and pushed:
                want = json.loads(body) if isinstance(body, str) else (body or {})
                have = http.get(f"/_sim/agents/{agent}").json()
                if have.get("model") != want.get("model_version") or have.get("profile") != want.get("profile"):
                    out.append(f"agent {agent}: agent manager runs {have.get('model')}/{have.get('profile')}, "
                               f"ledger deployed {want.get('model_version')}/{want.get('profile')}")
    finally:
        if http is not None:
            http.close()
    # A promotion moves its run and appends its deployment in one transaction: never one without the other.
    promoted = {r for (r,) in _rows(db, "SELECT id FROM runs WHERE state IN ('promoted', 'rolled_back')")}
    deployed = {r for (r,) in _rows(db, "SELECT run_id FROM deployments WHERE action = 'promote' AND run_id IS NOT NULL")}
    for r in sorted(promoted - deployed):
        out.append(f"run {r} is promoted/rolled_back but no promote deployment names it")
    for r in sorted(deployed - promoted):
        out.append(f"deployment promotes run {r}, which is not promoted or rolled_back")
    for r, n in _rows(db, "SELECT run_id, count(*) FROM deployments WHERE action = 'promote' AND run_id IS NOT NULL "
                          "GROUP BY run_id HAVING count(*) > 1"):
        out.append(f"run {r} was promoted {n} times")
    versions = _rows(db, "SELECT DISTINCT agent_id, version_id FROM deployments ORDER BY agent_id, version_id")
    if versions:
        led = Ledger(state_dir / "ledger.sqlite")
        try:
            for agent, version in versions:
                try:
                    verify_version(led, models_root, agent, version)
                except RegistryError as e:
                    out.append(f"deployed version {version}: {e}")
        finally:
            led.close()
    return out


def live_workers(state_dir: Path) -> list[int]:
    """PIDs of stage workers working for this state dir (their spec lives under it)."""
    needle = str(Path(state_dir).resolve()).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if b"pr1d.stages." in cmd and needle in cmd and stat.rsplit(")", 1)[-1].split()[0] != "Z":
            pids.append(int(proc.name))
    return pids


def check_invariants(state_dir: Path | str, *, sim_url: str | None = None, models_root: Path | None = None,
                     require_pushed: bool = True, deployments: bool = True,
                     daemon_running: bool | None = None, worker_grace_s: float = 30.0) -> list[str]:
    """Every invariant the fault suites promise, as a list of violations (empty: all hold).

    - the ledger passes ``PRAGMA integrity_check``;
    - every run and stage is in a legal state, reached by a legal audited path; no run duplicated (by
      idempotency key or trigger), at most one active run per agent, no sample stored twice;
    - no half-done deployment: each agent's ``current`` pointer, ``agents.current_version`` and the newest
      deployment agree, every promoted run has exactly one promote deployment and vice versa, and (given
      ``sim_url``) the agent manager serves the newest deployment's profile; with ``require_pushed``
      every newest deployment has been acknowledged;
    - every deployed version's files match their recorded hashes, and so do the newest artifacts of
      every succeeded stage;
    - with ``daemon_running=False``: no stage worker of this state dir outlived the daemon (after
      ``worker_grace_s``: a worker told to stop may first save a checkpoint).

    ``deployments=False`` leaves out the pointer/registry checks: right after a kill the pointer may be
    one swap ahead of the ledger until the next start repairs it (the ledger is the source of truth).
    """
    state_dir = Path(state_dir)
    db_path = state_dir / "ledger.sqlite"
    if not db_path.exists():
        return [f"{db_path}: no ledger"]
    out: list[str] = []
    db = sqlite3.connect(db_path, timeout=30)
    try:
        try:
            ok = db.execute("PRAGMA integrity_check").fetchone()[0]
        except sqlite3.DatabaseError as e:  # too broken to even check
            return [f"integrity_check: ledger unreadable: {e}"]
        if ok != "ok":
            return [f"integrity_check: {ok}"]
        out += _check_runs(db)
        out += _check_artifacts(db)
        if models_root is None and deployments:
            from pr1d.registry.config import RegistryConfig
            from pr1d.registry.deploy import models_root as _models_root

            models_root = _models_root(RegistryConfig(), state_dir)
        if deployments:
            out += _check_deployments(db, state_dir, models_root, sim_url, require_pushed)
    finally:
        db.close()
    if daemon_running is False:
        # PR_SET_PDEATHSIG stops workers when the daemon dies; give them a moment to act on it.
        deadline = time.monotonic() + worker_grace_s
        while (pids := live_workers(state_dir)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pids:
            out.append(f"stage worker(s) {pids} still running after the daemon died")
    return out


# -- results for docs/reliability.md ------------------------------------------------------------------

_written: set[Path] = set()


def results_dir(default: Path) -> Path:
    d = Path(os.environ.get("PR1_RELIABILITY_OUT") or default)
    d.mkdir(parents=True, exist_ok=True)
    return d


def record_result(out_dir: Path, suite: str, entry: dict[str, Any]) -> Path:
    """Append ``entry`` to ``<out_dir>/<suite>.json``; the first write of a process starts the file afresh,
    so the file describes one run of the suite, never a pile-up of old ones."""
    path = Path(out_dir) / f"{suite}.json"
    data: dict[str, Any] = {"suite": suite, "entries": []}
    if path in _written and path.exists():
        data = json.loads(path.read_text())
    _written.add(path)
    data["entries"].append({**entry, "recorded_at": round(time.time(), 3)})
    data["updated_at"] = round(time.time(), 3)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)
    return path


@pytest.fixture(scope="session")
def reliability_out(tmp_path_factory) -> Path:
    """Where the suites write their results: $PR1_RELIABILITY_OUT, else a folder in pytest's tmp dir."""
    return results_dir(tmp_path_factory.getbasetemp() / "reliability")
