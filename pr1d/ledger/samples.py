"""Score samples: the poller's ingest (samples with their cursors), the monitor's reads by model version, and its saved state.

Free functions over a :class:`~pr1d.ledger.store.Ledger`, called on the daemon's ledger thread: the hot paths
(ingest, the monitor's snapshot) use the DB-API connection directly, where executemany and plain tuples
are an order of magnitude faster than the ORM.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

if TYPE_CHECKING:
    from .store import Ledger


def _now() -> float:
    return time.time()

SAMPLE_COLS = ("agent_id", "eval_id", "ts", "weighted_score", "status", "rubric", "task_id", "tier", "ingested_at",
               "model_version")


def ingest_polls(ledger: Ledger, polls: list[dict]) -> int:
    """Write a batch of agents' new samples with their new cursors and health, in ONE transaction.

    Samples and cursor move together: a crash either keeps both or neither, and replayed
    evaluations are dropped by the (agent_id, eval_id) unique key, so nothing is duplicated or lost.
    Each sample is tagged with the model version it was graded on: the evaluation's own
    ``model_version`` when the platform sends one, else the poll's ``model_version`` (the model the
    agents listing gave at the start of the cycle), else the agent's ``model`` in the ledger.
    Uses the DB-API connection directly: executemany is ~10x faster than ORM inserts here.
    """
    now = _now()
    rows = []
    # A fleet has a handful of distinct rubrics: encode each once, not once per sample (500,000 json.dumps
    # in a 10,000-agent cycle). Keyed by its items in order, so the text is exactly json.dumps's; only for
    # the contract's shape (string keys, boolean values), where equal keys cannot encode differently.
    texts: dict[tuple, str] = {}

    def rubric_text(rubric: Any) -> str | None:
        if rubric is None:
            return None
        key = tuple(rubric.items()) if isinstance(rubric, dict) else ()
        if not key or not all(type(k) is str and type(v) is bool for k, v in key):
            return json.dumps(rubric)
        text_ = texts.get(key)
        if text_ is None:
            text_ = texts[key] = json.dumps(rubric)
        return text_

    for p in polls:
        listed = p.get("model_version") or None
        for smp in p["samples"]:
            rows.append((p["agent_id"], smp["eval_id"], smp["ts"], smp["weighted_score"], smp["status"],
                         rubric_text(smp["rubric"]), smp["task_id"], smp["tier"], now,
                         smp.get("model_version") or listed, p["agent_id"]))
    raw = ledger.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("BEGIN IMMEDIATE")
        before = raw.total_changes
        cur.executemany(
            f"INSERT OR IGNORE INTO score_samples ({', '.join(SAMPLE_COLS)}) VALUES ({', '.join('?' * 9)}, "
            "coalesce(?, (SELECT nullif(model, '') FROM agents WHERE id = ?)))",
            rows,
        )
        inserted = raw.total_changes - before
        cur.executemany(
            "UPDATE agents SET eval_cursor = coalesce(?, eval_cursor), health = ?, last_polled_at = ?, updated_at = ? "
            "WHERE id = ?",
            [(p.get("cursor"), json.dumps(p["health"]), now, now, p["agent_id"]) for p in polls],
        )
        raw.commit()
        return inserted
    except BaseException:
        raw.rollback()
        raise
    finally:
        raw.close()


def agent_cursors(ledger: Ledger) -> dict[str, dict]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, eval_cursor, health, profile FROM agents")).all()
    return {r[0]: {"cursor": r[1], "health": json.loads(r[2]) if r[2] else None, "profile": r[3]} for r in rows}


def recent_samples(ledger: Ledger, agent_id: str, n: int) -> list[tuple]:
    """The last n samples of an agent, oldest first: (ts, score, status, rubric_json, eval_id)."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT ts, weighted_score, status, rubric, eval_id FROM score_samples WHERE agent_id = :a "
                 "ORDER BY ts DESC, eval_id DESC LIMIT :n"),
            {"a": agent_id, "n": n},
        ).all()
    return list(reversed(rows))


def epoch_filter(epoch: dict) -> tuple[str, list]:
    """SQL condition (and parameters) selecting an agent's samples in ``epoch``; mirrors
    :meth:`pr1d.monitor.signals.Epoch.counts`, with the agent id as the first parameter."""
    sql, params = "agent_id = ?", [epoch["agent_id"]]
    if epoch.get("since_ts") is not None:
        sql, params = sql + " AND ts > ?", [*params, epoch["since_ts"]]
    if epoch.get("version") is not None:
        sql += " AND (model_version = ? OR model_version IS NULL)" if epoch.get("change") is None \
            else " AND model_version = ?"
        params.append(epoch["version"])
    return sql, params


SAMPLE_READ = "SELECT ts, weighted_score, status, rubric, eval_id, model_version FROM score_samples WHERE "


def first_samples(ledger: Ledger, epoch: dict, n: int) -> list[tuple]:
    """The first n samples of ``epoch`` (see :func:`monitor_snapshot`), oldest first:
    (ts, score, status, rubric_json, eval_id, model_version)."""
    where, params = epoch_filter(epoch)
    raw = ledger.engine.raw_connection()
    try:
        return raw.cursor().execute(SAMPLE_READ + where + " ORDER BY ts, eval_id LIMIT ?", (*params, n)).fetchall()
    finally:
        raw.close()


def sample_count(ledger: Ledger, agent_id: str | None = None) -> int:
    with ledger.engine.connect() as conn:
        if agent_id:
            return int(conn.execute(text("SELECT count(*) FROM score_samples WHERE agent_id = :a"), {"a": agent_id}).scalar())
        return int(conn.execute(text("SELECT count(*) FROM score_samples")).scalar())


_EPOCH_SQL = (
    "SELECT d.agent_id, d.id, d.version_id, d.action, d.ts, s.since_ts, s.body FROM deployments d "
    "JOIN (SELECT agent_id, max(id) AS mid FROM deployments WHERE agent_id IN ({marks}) "
    "AND action IN ('promote', 'rollback') GROUP BY agent_id) m ON d.id = m.mid "
    "LEFT JOIN deployment_state s ON s.deployment_id = d.id"
)


def platform_name(version_id: str, body: Any) -> str:
    """The name the platform knows a deployed version by, which tags its samples: the ``model_version`` the
    profile push sent (``deployment_state.body``), else the version id."""
    if isinstance(body, str | bytes):
        try:
            body = json.loads(body)
        except ValueError:
            body = None
    name = body.get("model_version") if isinstance(body, dict) else None
    return name if isinstance(name, str) and name else version_id


def _epoch(agent_id: str, model: str | None, dep: tuple | None) -> dict:
    """The version an agent's signals judge: its newest promotion or rollback (the platform's name for the
    deployed version, samples after the deployment's ``since_ts``), else the model the platform lists."""
    if dep is None:
        version = model or None
        return {"agent_id": agent_id, "key": f"model:{version or ''}", "version": version, "since_ts": None,
                "started_at": None, "change": None}
    _aid, dep_id, version_id, action, ts, since_ts, body = dep
    return {"agent_id": agent_id, "key": f"deployment:{dep_id}", "version": platform_name(version_id, body),
            "since_ts": since_ts, "started_at": ts, "change": action}


def monitor_snapshot(ledger: Ledger, agent_ids: list[str], history: int) -> dict[str, dict]:
    """Everything the signal evaluation needs for many agents, read in a few queries on one connection.

    Per agent: its ``epoch`` (the version in service since its last change, :func:`_epoch`), the last
    ``history`` ``samples`` of that epoch, the stored ``baseline`` and ``monitor`` state, and
    ``fold``: the epoch's samples after the stored sequential test's cursor (all of them when the state
    belongs to another epoch), for the monitor to fold. Sample rows are
    (ts, score, status, rubric, eval_id, model_version), oldest first, with the rubric decoded: once per
    distinct JSON text, shared by the rows that carry it (a fleet has a handful of distinct rubrics, and
    decoding each row's was a tenth of the evaluation's time at 10,000 agents). Treat it as read-only.
    """
    out: dict[str, dict] = {}
    rubrics: dict[str, Any] = {}

    def decoded(rows: list[tuple]) -> list[tuple]:
        out_rows = []
        for ts, score, status, rubric, eval_id, version in rows:
            if isinstance(rubric, str):
                text_, rubric = rubric, rubrics.get(rubric)
                if rubric is None:
                    rubric = rubrics[text_] = json.loads(text_)
            out_rows.append((ts, score, status, rubric, eval_id, version))
        return out_rows

    raw = ledger.engine.raw_connection()
    try:
        cur = raw.cursor()
        for i in range(0, len(agent_ids), 500):
            chunk = agent_ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for aid, profile, hold, hold_reason, baseline, model, monitor in cur.execute(
                f"SELECT id, profile, hold, hold_reason, baseline, model, monitor FROM agents WHERE id IN ({marks})",
                chunk,
            ).fetchall():
                out[aid] = {"id": aid, "profile": profile or "", "hold": bool(hold), "hold_reason": hold_reason,
                            "baseline": json.loads(baseline) if baseline else None, "active": None, "last_end": None,
                            "model": model or "", "monitor": json.loads(monitor) if monitor else None, "dep": None}
            for row in cur.execute(_EPOCH_SQL.format(marks=marks), chunk).fetchall():
                if row[0] in out:
                    out[row[0]]["dep"] = row
            for aid, rid, state in cur.execute(
                f"SELECT agent_id, id, state FROM runs WHERE agent_id IN ({marks}) AND state IN "
                "('queued','running','interrupted','awaiting_approval')", chunk
            ).fetchall():
                if aid in out:
                    out[aid]["active"] = {"id": rid, "state": state}
            for aid, last in cur.execute(
                f"SELECT agent_id, max(coalesce(finished_at, updated_at)) FROM runs WHERE agent_id IN ({marks}) "
                "AND state NOT IN ('queued','running','interrupted','awaiting_approval') GROUP BY agent_id", chunk
            ).fetchall():
                if aid in out:
                    out[aid]["last_end"] = last
        for aid, a in out.items():
            epoch = a["epoch"] = _epoch(aid, a["model"], a.pop("dep"))
            where, params = epoch_filter(epoch)
            rows = decoded(cur.execute(SAMPLE_READ + where + " ORDER BY ts DESC, eval_id DESC LIMIT ?",
                                       (*params, history)).fetchall()[::-1])
            a["samples"] = rows
            state = a["monitor"] if isinstance(a["monitor"], dict) and a["monitor"].get("epoch") == epoch["key"] else None
            seq = (state or {}).get("fail_seq") or {}
            cursor = (seq["last_ts"], seq.get("last_eval_id") or "") if seq.get("last_ts") is not None else None
            complete = len(rows) < history  # the read holds every sample of the epoch
            if cursor is None and complete:
                a["fold"] = rows
            elif cursor is not None and (complete or (rows and (rows[0][0], rows[0][4]) <= cursor)):
                a["fold"] = [r for r in rows if (r[0], r[4]) > cursor]
            else:  # a backlog larger than the read (first fold of an epoch, or a long outage): read it all
                extra, xp = ("", []) if cursor is None else (" AND ts >= ?", [cursor[0]])
                a["fold"] = [r for r in decoded(cur.execute(SAMPLE_READ + where + extra + " ORDER BY ts, eval_id",
                                                            (*params, *xp)).fetchall())
                             if cursor is None or (r[0], r[4]) > cursor]
    finally:
        raw.close()
    return out


def save_monitor_state(ledger: Ledger, updates: list[tuple[str, dict | None, dict, dict | None]]) -> None:
    """(agent_id, baseline or None to keep, signals, monitor state) for many agents, in one transaction."""
    if not updates:
        return
    now = _now()
    raw = ledger.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("BEGIN IMMEDIATE")
        cur.executemany(
            "UPDATE agents SET baseline = coalesce(?, baseline), signals = ?, monitor = ?, updated_at = ? WHERE id = ?",
            [(json.dumps(b) if b else None, json.dumps(sig), json.dumps(m) if m else None, now, aid)
             for aid, b, sig, m in updates],
        )
        raw.commit()
    except BaseException:
        raw.rollback()
        raise
    finally:
        raw.close()
