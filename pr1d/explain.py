"""Evidence in words: why a trigger fired and what a gate decided, read the same way by pr1ctl and the console.

The monitor (pr1d/monitor/signals.py, rules.py) stores every number and threshold a trigger used on
its `triggers` row; the gate stages store theirs on `runs.gate`. Both shapes evolve, so everything
here is pure, reads each key as optional and never raises on a missing or odd value: an on-call
engineer asking "why did it fire?" gets the numbers that are there, and `?` for those that are not.
No Rich, no Textual: callers get plain strings and lay them out themselves.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from .rpc.schema import gate_reasons, gate_uplift_text

# The monitor's signals and the initials the console's signals column shows them by.
SIGNAL_ORDER = ("weighted_score", "reliability", "drift", "compliance")
# How a signal or part of one stands, in words (signals.py's states).
STATE_WORDS = {"firing": "FIRED", "warn": "warn", "ok": "ok", "insufficient_data": "insufficient data"}
MISSING = "?"
MAX_SCORES_SHOWN = 8  # a streak's scores: the last few are the story, the rest are in --json


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _f(x: Any, fmt: str = ".3f") -> str:
    v = _num(x)
    return MISSING if v is None else format(v, fmt)


def _pct(x: Any) -> str:
    return _f(x, ".1%")


def _state(x: Any) -> str:
    return STATE_WORDS.get(str(x), str(x)) if x is not None else MISSING


def _d(x: Any) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}


def _span(ev: Mapping[str, Any]) -> str:
    """`e101 … e150`: the first and last evaluation a window holds ('' when it says nothing)."""
    first, last = ev.get("first_eval_id"), ev.get("last_eval_id")
    if first is None and last is None:
        return ""
    return f"{first}" if first == last else f"{first} … {last}"


def _window_words(n: Any, size: Any, ev: Mapping[str, Any]) -> str:
    span = _span(ev)
    out = f"the last {n if n is not None else MISSING} of a {size if size is not None else MISSING}-evaluation window"
    if ev.get("window_full") is False:
        out += " (not full yet)"
    return out + (f": {span}" if span else "")


# -- one signal's evidence ---------------------------------------------------------------------------------


def signal_window(name: str, ev: Mapping[str, Any]) -> str:
    """Which evaluations a signal judged, in words."""
    if name == "weighted_score":
        ids = [i for i in ev.get("streak_eval_ids") or [] if i is not None]
        span = f": {ids[0]} … {ids[-1]}" if len(ids) > 1 else f": {ids[0]}" if ids else ""
        return f"the last {ev.get('streak', MISSING)} graded evaluations in a row{span}"
    if name == "reliability":
        return _window_words(ev.get("samples"), ev.get("window"), ev)
    if name == "drift":
        if ev.get("baseline") is None:
            return str(ev.get("reason") or "no baseline yet")
        return _window_words(ev.get("valid_scores"), ev.get("drift_window"), ev) + " (since the baseline froze)"
    if name == "compliance":
        return _window_words(ev.get("samples"), ev.get("window"), ev)
    return _span(ev) or MISSING


def signal_checks(name: str, ev: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(part, `value vs threshold: state`) for each test a signal ran; the parts that fired say FIRED."""
    if name == "weighted_score":
        scores = [s for s in ev.get("streak_scores") or [] if _num(s) is not None]
        shown = " ".join(f"{s:.3f}" for s in scores[-MAX_SCORES_SHOWN:])
        more = f"… {len(scores) - MAX_SCORES_SHOWN} earlier, " if len(scores) > MAX_SCORES_SHOWN else ""
        out = [("streak", f"{ev.get('streak', MISSING)} scores in a row below the target {_f(ev.get('target'), 'g')} "
                          f"(fires at {ev.get('consecutive', MISSING)}, warns at {ev.get('warn_at', MISSING)})")]
        if scores:
            out.append(("scores", f"{more}{shown}"))
        return out
    if name == "reliability":
        seq = _d(ev.get("fail_sequential"))
        conf = _f(ev.get("confidence"), ".0%")
        out = [
            ("score spread", f"std {_f(ev.get('std'))} (lower bound {_f(ev.get('std_lower_bound'))} at {conf}) "
                             f"vs max_std {_f(ev.get('max_std'), 'g')}: {_state(ev.get('std_state'))}"),
            ("fail rate", f"{ev.get('fails', MISSING)} of {ev.get('graded', MISSING)} graded failed "
                          f"({_pct(ev.get('fail_rate'))}, lower bound {_pct(ev.get('fail_rate_lower_bound'))} at {conf}) "
                          f"vs max_fail_rate {_pct(ev.get('max_fail_rate'))}: {_state(ev.get('fail_rate_state'))}"),
        ]
        if seq.get("enabled", True) and seq:
            out.append(("fail-rate test", f"CUSUM {_f(seq.get('statistic'), '.2f')} vs threshold "
                                          f"{_f(seq.get('threshold'), '.2f')} over {seq.get('run_n', MISSING)} evaluations "
                                          f"with {seq.get('run_fails', MISSING)} fails (alarm rate "
                                          f"{_pct(seq.get('alarm_fail_rate'))}, healthy {_pct(seq.get('healthy_fail_rate'))}): "
                                          f"{_state(ev.get('fail_sequential_state'))}"))
        return out
    if name == "drift":
        base = _d(ev.get("baseline"))
        if not base:
            return [("baseline", str(ev.get("reason") or "no baseline yet"))]
        ph = _d(ev.get("page_hinkley"))
        tripped = f", tripped at {ph['fired_at_eval_id']}" if ph.get("fired_at_eval_id") is not None else ""
        return [
            ("mean drop", f"recent mean {_f(ev.get('recent_mean'))} vs baseline {_f(base.get('mean'))} "
                          f"(first {base.get('n', MISSING)} scores): drop {_pct(ev.get('rel_drop'))}, lower bound "
                          f"{_pct(ev.get('rel_drop_lower_bound'))} at {_f(ev.get('confidence'), '.0%')} vs threshold "
                          f"{_pct(ev.get('rel_drop_threshold'))}: {_state(ev.get('mean_state'))}"),
            ("Page-Hinkley", f"statistic {_f(ph.get('ph'))} vs lambda {_f(ev.get('ph_lambda'), 'g')} "
                             f"(delta {_f(ev.get('ph_delta'), 'g')}, {ph.get('n', MISSING)} pass scores){tripped}: "
                             f"{_state(ev.get('ph_state'))}"),
        ]
    if name == "compliance":
        fails = [f for f in ev.get("failures") or [] if isinstance(f, Mapping)]
        which = ", ".join(f"{f.get('eval_id')} ({', '.join(map(str, f.get('keys') or []))})" for f in fails[:5])
        more = f" and {len(fails) - 5} more" if len(fails) > 5 else ""
        keys = ", ".join(map(str, ev.get("keys") or [])) or MISSING
        return [("rubric", f"{ev.get('failure_count', len(fails))} of {ev.get('checked', MISSING)} checked evaluations "
                           f"failed a rubric item ({keys}); one is enough" + (f": {which}{more}" if which else ""))]
    # A signal this release does not know: its scalar numbers, as they are.
    return [(k, str(v)) for k, v in sorted(ev.items()) if _num(v) is not None or isinstance(v, str)]


def signal_brief(name: str, ev: Mapping[str, Any]) -> str:
    """The numbers that fired against their thresholds, short enough for a table cell."""
    if name == "weighted_score":
        return f"{ev.get('streak', MISSING)} in a row < {_f(ev.get('target'), 'g')} (fires at {ev.get('consecutive', MISSING)})"
    if name == "reliability":
        parts = []
        if ev.get("std_state") == "firing":
            parts.append(f"std {_f(ev.get('std_lower_bound'))} > {_f(ev.get('max_std'), 'g')}")
        if ev.get("fail_rate_state") == "firing":
            parts.append(f"fails {_pct(ev.get('fail_rate_lower_bound'))} > {_pct(ev.get('max_fail_rate'))}")
        if ev.get("fail_sequential_state") == "firing":
            seq = _d(ev.get("fail_sequential"))
            parts.append(f"CUSUM {_f(seq.get('statistic'), '.2f')} > {_f(seq.get('threshold'), '.2f')}")
        return "; ".join(parts) or f"std {_f(ev.get('std'))}, fails {_pct(ev.get('fail_rate'))}"
    if name == "drift":
        parts = []
        if ev.get("mean_state") == "firing":
            parts.append(f"drop {_pct(ev.get('rel_drop'))} (≥ {_pct(ev.get('rel_drop_lower_bound'))}) "
                         f"> {_pct(ev.get('rel_drop_threshold'))}")
        if ev.get("ph_state") == "firing":
            parts.append(f"PH {_f(_d(ev.get('page_hinkley')).get('ph'))} > {_f(ev.get('ph_lambda'), 'g')}")
        return "; ".join(parts) or f"drop {_pct(ev.get('rel_drop'))}"
    if name == "compliance":
        keys = sorted({str(k) for f in ev.get("failures") or [] if isinstance(f, Mapping) for k in f.get("keys") or []})
        return f"{ev.get('failure_count', MISSING)} rubric fails" + (f" ({', '.join(keys)})" if keys else "")
    return MISSING


def signal_window_brief(name: str, ev: Mapping[str, Any]) -> str:
    """`last 40/50`: how much of its window a signal judged, for a table cell."""
    if name == "weighted_score":
        return f"last {ev.get('streak', MISSING)}"
    n, size = {"reliability": ("samples", "window"), "drift": ("valid_scores", "drift_window"),
               "compliance": ("samples", "window")}.get(name, (None, None))
    if n is None:
        return MISSING
    return f"last {ev.get(n, MISSING)}/{ev.get(size, MISSING)}"


# -- one trigger row ---------------------------------------------------------------------------------------


def _primary(row: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    ev = _d(row.get("evidence"))
    prim = _d(ev.get("primary"))
    return str(prim.get("signal") or row.get("signal") or MISSING), _d(prim.get("evidence"))


def trigger_outcome(row: Mapping[str, Any], now: float | None = None) -> str:
    """What came of a trigger: the run it queued, or why none was."""
    ev = _d(row.get("evidence"))
    if row.get("run_id") is not None:
        return f"queued run {row['run_id']} ({row.get('job_kind') or MISSING})"
    sup = row.get("suppressed")
    if sup == "hold":
        return f"no run: the agent is on hold ({ev.get('hold_reason') or 'no reason given'})"
    if sup == "active_run":
        act = _d(ev.get("active_run"))
        return f"no run: run {act.get('id', MISSING)} ({act.get('state', MISSING)}) already holds the agent"
    if sup == "cooldown":
        cd = _d(ev.get("cooldown"))
        left = _num(cd.get("remaining_s"))
        until = _num(cd.get("until"))
        when = f" (until {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(until))})" if until else ""
        return f"no run: cooling down, {left:.0f} s left of {_f(cd.get('cooldown_s'), '.0f')} s{when}" \
            if left is not None else "no run: cooling down"
    if sup:
        return f"no run: {sup}"
    return "no run recorded"


def trigger_run_cell(row: Mapping[str, Any]) -> str:
    """`run 7`, or the one-word reason no run was queued (hold, active_run, cooldown), for a table cell."""
    if row.get("run_id") is not None:
        return f"run {row['run_id']}"
    sup = str(row.get("suppressed") or "none")
    return f"none: {sup.split(':', 1)[0]}"


def trigger_brief(row: Mapping[str, Any]) -> tuple[str, str]:
    """(window, numbers vs thresholds) of the signal that chose the job: two short table cells."""
    name, ev = _primary(row)
    return signal_window_brief(name, ev), signal_brief(name, ev)


def trigger_facts(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, sentence) lines saying why a trigger fired: signal and job, window, every number against its
    threshold, the other signals, the version judged and what came of it."""
    ev = _d(row.get("evidence"))
    name, sev = _primary(row)
    out = [("signal", f"{name} fired, which asks for a {row.get('job_kind') or MISSING} run")]
    out.append(("window", signal_window(name, sev)))
    out += signal_checks(name, sev)
    also = [a for a in ev.get("also_fired") or [] if isinstance(a, Mapping)]
    if also:
        prec = " > ".join(map(str, ev.get("precedence") or [])) or MISSING
        out.append(("also fired", "; ".join(f"{a.get('signal')} ({signal_brief(str(a.get('signal')), _d(a.get('evidence')))})"
                                           for a in also) + f"; {row.get('job_kind')} won (precedence {prec})"))
    states = _d(ev.get("signals"))
    if states:
        names = [n for n in SIGNAL_ORDER if n in states] + sorted(n for n in states if n not in SIGNAL_ORDER)
        out.append(("all signals", ", ".join(f"{n} {_state(_d(states[n]).get('state') if isinstance(states[n], Mapping) else states[n])}"
                                             for n in names)))
    epoch = _d(ev.get("epoch"))
    if epoch.get("version") is not None:
        out.append(("version", f"{epoch['version']} (the model in service the scores were graded on)"))
    out.append(("outcome", trigger_outcome(row)))
    return out


# -- gate evidence -----------------------------------------------------------------------------------------


def _is_sft_gate(gate: Mapping[str, Any]) -> bool:
    return "uplift_abs" in gate and "per_tier_uplift" in gate


def gate_verdict(gate: Any) -> str:
    """`pass → awaiting_approval`, `inconclusive (flagged for a person) → ...`, `fail → rejected`."""
    g = _d(gate)
    if _is_sft_gate(g):
        mode = g.get("mode", "absolute")
        up = _num(g.get("uplift"))
        thr = _num(g.get("threshold"))
        ok = up is not None and thr is not None and up >= thr - 1e-12
        return (f"SFT gate {'passed' if ok else 'failed'}: uplift {_f(up, '+.4f')} ({mode}) vs threshold "
                f"{_f(thr, '.4f')}")
    outcome = g.get("outcome")
    if outcome is None:
        passed = g.get("passed")
        if isinstance(passed, bool):
            outcome = "pass" if passed else "fail"
        else:
            checks = [c for c in g.get("checks") or [] if isinstance(c, Mapping)]
            marks = [c.get("passed", c.get("ok")) for c in checks]
            outcome = "fail" if False in marks else "inconclusive" if None in marks and checks else \
                "pass" if checks else MISSING
    out = str(outcome)
    if g.get("flagged"):
        out += " (flagged for a person)"
    if g.get("next_state"):
        out += f" → {g['next_state']}"
    return out


def _check_line(c: Mapping[str, Any]) -> str:
    parts = [str(c.get("name", MISSING))]
    if "value" in c:
        v = c["value"]
        parts.append((_f(v, ".4g") if _num(v) is not None else str(v)) + ("," if c.get("threshold") is not None else ""))
    if c.get("threshold") is not None:
        thr = c["threshold"]
        op = "within" if c.get("op") == "in" else c.get("op") or "vs"
        parts.append(f"needs {op} " + (f"[{', '.join(_f(t, 'g') for t in thr)}]" if isinstance(thr, list)
                                       else _f(thr, "g")))
    if c.get("detail"):
        parts.append(f"({c['detail']})")
    return " ".join(parts)


def gate_checks(gate: Any) -> list[tuple[str, str]]:
    """(mark, `name value op threshold (detail)`) for every check the gate ran: ✓ held, ✗ failed, ? undecided."""
    out = []
    for c in _d(gate).get("checks") or []:
        if not isinstance(c, Mapping):
            continue
        passed = c.get("passed", c.get("ok"))
        out.append(("✓" if passed is True else "✗" if passed is False else "?", _check_line(c)))
    return out


def gate_facts(gate: Any) -> list[tuple[str, str]]:
    """(label, sentence): the verdict, the uplift with its CI, correctness on both sides, failed and undecided
    checks, then the gate's own reasons."""
    g = _d(gate)
    if not g:
        return []
    out = [("verdict", gate_verdict(g))]
    if _is_sft_gate(g):
        out.append(("overall", f"candidate {_f(g.get('candidate_overall'), '.4f')} vs base "
                               f"{_f(g.get('base_overall'), '.4f')} ({g.get('weighting') or 'weighted over tiers'}), "
                               f"stderr {_f(g.get('stderr_abs'), '.4f')}"))
        return out
    up = gate_uplift_text(g)
    if up:
        u = _d(g.get("uplift"))
        what = f" ({u['compared']})" if u.get("compared") else ""
        out.append(("uplift", up + what))
    cand, inc = _d(g.get("candidate")), _d(g.get("incumbent"))
    if cand.get("mean") is not None or inc.get("mean") is not None:
        out.append(("correctness", f"candidate {_f(cand.get('mean'), '.4f')} vs in service {_f(inc.get('mean'), '.4f')} "
                                   f"(n={_d(g.get('uplift')).get('n', cand.get('n', MISSING))})"))
    for mark, line in gate_checks(g):
        if mark == "✗":
            out.append(("failed", line))
        elif mark == "?":
            out.append(("undecided", line))
    out += [("reason", r) for r in gate_reasons(g)]
    if not g.get("checks"):
        # An older or hand-written shape: its other facts, one per line.
        seen = {"outcome", "flagged", "next_state", "reasons", "uplift", "candidate", "incumbent", "passed"}
        out += [(k, str(v)) for k, v in g.items() if k not in seen]
    return out


def gate_tier_rows(gate: Any) -> list[list[str]]:
    """[tier (and rubric column), n, candidate, in service, diff, CI, status] per tier: the paired comparison
    the gate made (SFT gate: per-tier accuracy against the base model, no CI)."""
    g = _d(gate)
    rows: list[list[str]] = []
    if _is_sft_gate(g):
        base, cand, up, n = _d(g.get("base")), _d(g.get("candidate")), _d(g.get("per_tier_uplift")), _d(g.get("n_per_tier"))
        for tier in base:
            rows.append([str(tier), str(n.get(tier, MISSING)), _f(cand.get(tier)), _f(base.get(tier)),
                         _f(up.get(tier), "+.3f"), "", ""])
        return rows
    tiers = g.get("tiers")
    if not isinstance(tiers, Mapping):
        return rows
    for tier, row in tiers.items():
        for col, cell in _d(_d(row).get("columns")).items():
            c = _d(cell)
            label = str(tier) if col == "correctness" else f"{tier} {col}"
            ci = f"[{_f(c.get('ci_low'), '+.3f')}, {_f(c.get('ci_high'), '+.3f')}]" \
                if c.get("ci_low") is not None or c.get("ci_high") is not None else ""
            rows.append([label, str(c.get("n", MISSING)), _f(c.get("candidate")), _f(c.get("incumbent")),
                         _f(c.get("diff"), "+.3f"), ci, str(c.get("status", ""))])
    return rows


def run_origin(run: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Why a run exists: the trigger's facts, or who queued it by hand and why (the audit's create row:
    the run's own `reason` follows its state)."""
    trig = run.get("trigger")
    if isinstance(trig, Mapping):
        return trigger_facts(trig)
    if run.get("trigger_id") is not None:
        return [("trigger", f"{run['trigger_id']} (its row is gone from the ledger)")]
    create = next((a for a in run.get("audit") or [] if isinstance(a, Mapping) and a.get("action") == "create"), {})
    why = create.get("reason")
    return [("trigger", f"none: queued by hand by {run.get('created_by') or MISSING}" + (f" ({why})" if why else ""))]


def ungraded_families(run: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Task families whose entries a stage of ``run`` could not use because no grader is configured for them
    (the dataset stage's and the backtest's ``unknown_families``), one row per stage, with the fix."""
    rows = []
    for st in run.get("stages") or []:
        res = st.get("result") if isinstance(st, Mapping) else None
        found = res.get("unknown_families") if isinstance(res, Mapping) else None
        if not isinstance(found, Mapping) or not found:
            continue
        listed = ", ".join(f"{name} ({n} entr{'y' if n == 1 else 'ies'})" for name, n in sorted(found.items()))
        first = sorted(found)[0]
        rows.append((f"no grader ({st.get('name')})", f"{listed}: not trained on or replayed; add "
                     f"[tasks.families.{first}] (docs/dataset.md, 'Adding a task family')"))
    return rows
