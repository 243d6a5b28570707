"""`pr1ctl`: the scriptable client of the daemon's socket API (tables for people, --json for scripts).

Exit codes: 0 ok, 1 error (the daemon said no), 2 usage, 3 daemon unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from .rpc.client import Client, DaemonUnreachable, find_socket
from .rpc.schema import AUDIT_ENTITIES, RUN_KINDS, RUN_STATES, RUNS_LIST_MAX, RpcError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def _run_id(text: str) -> int:
    t = text.strip().lower().removeprefix("run-").removeprefix("r")
    if not t.isdigit() or int(t) < 1:
        raise argparse.ArgumentTypeError(f"not a run id: {text!r} (expected e.g. 42 or r42)")
    return int(t)


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def _ts(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


class Out:
    def __init__(self, as_json: bool):
        self.as_json = as_json
        from rich.console import Console

        self.console = Console(highlight=False, soft_wrap=False)

    def doc(self, obj: Any) -> None:
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        from rich.table import Table

        t = Table(title=title, title_justify="left", show_lines=False)
        for c in columns:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*["-" if v is None else str(v) for v in r])
        self.console.print(t)

    def kv(self, title: str, pairs: list[tuple[str, Any]]) -> None:
        self.table(title, ["key", "value"], [[k, v] for k, v in pairs])


def cmd_status(c: Client, a: argparse.Namespace, o: Out) -> int:
    s = c.call("status")
    if o.as_json:
        o.doc(s)
        return 0
    o.kv("pr1d", [("version", s["version"]), ("pid", s["pid"]), ("uptime", f"{s['uptime_s']:.0f} s"),
                  ("state dir", s["state_dir"]), ("socket", s["socket"]), ("queue length", s["queue_length"]),
                  ("runs", ", ".join(f"{k}={v}" for k, v in sorted(s["runs_by_state"].items())) or "none"),
                  ("running", ", ".join(f"run {r['run']} {r['stage']} " + (f"(Slurm job {r['slurm_job']})"
                                        if r.get("slurm_job") else f"(pid {r['pid']})")
                                        for r in s["running"]) or "none"),
                  ("config reload", s.get("config_reload_error") or "ok")])
    mon = s.get("monitor") or {}
    if mon.get("enabled"):
        last = mon.get("last_cycle") or {}
        o.kv("monitor", [("scoring API", mon.get("scoring_url")),
                         ("last cycle", "never" if not last else
                          (f"ok: {last.get('agents')} agents, {last.get('inserted')} new samples, "
                           f"{last.get('triggers')} triggers in {last.get('duration_s')} s "
                           f"(http {last.get('http_s')} s)") if last.get("ok")
                          else f"FAILED: {last.get('error')}")])
        if mon.get("endpoints"):
            o.table("scoring API endpoints", ["endpoint", "last success", "failures in a row", "last error"],
                    [[k, _ts(v.get("last_success")), v.get("consecutive_failures"), v.get("last_error")]
                     for k, v in sorted(mon["endpoints"].items())])
    o.kv("on-call", status_lines(s))
    reg = s.get("registry") or {}
    alerts = [a.get("message", str(a)) for a in reg.get("alerts", [])]
    alerts += [f"{a.get('agent')}: {a.get('kpi')} {a.get('rule')} ({a.get('value')})"
               for a in (s.get("scoreboard") or {}).get("alerts", [])]
    if alerts:
        o.table("alerts", ["alert"], [[a] for a in alerts])
    if s["scheduler_jobs"]:
        o.table("scheduler jobs", ["id", "name", "trigger", "next run"],
                [[j["id"], j["name"], j["trigger"], j["next_run_time"]] for j in s["scheduler_jobs"]])
    return 0


def status_lines(s: dict) -> list[tuple[str, str]]:
    """The status facts on-call needs beyond the daemon's own (/metrics, pushes, approvals, webhooks), short."""
    sb = s.get("scoreboard") or {}
    metrics = (sb.get("url") or (f"not listening: {sb['error']}" if sb.get("error") else "off")) if sb else "off"
    reg = s.get("registry") or {}
    pushes = reg.get("pending_pushes") or []
    approvals = reg.get("approvals") or []
    hooks = (s.get("notify") or {}).get("webhooks") or []
    rows = [("/metrics", metrics),
            ("pending pushes", f"{len(pushes)}" + (": " + ", ".join(sorted({str(p.get("agent")) for p in pushes}))
                                                  if pushes else "")),
            ("pending approvals", f"{len(approvals)}" + (": " + ", ".join(f"run {x.get('run')} ({x.get('agent')})"
                                                                         for x in approvals) if approvals else ""))]
    if not hooks:
        rows.append(("webhooks", "none"))
    for h in hooks:
        err = f", last error: {h['last_error']}" if h.get("last_error") else ""
        rows.append((f"webhook {h.get('name')}", f"sent {h.get('sent')}, failed {h.get('failed')}, "
                     f"dropped {h.get('dropped')}, queued {h.get('queued')}{err}"))
    return rows


def cmd_agents(c: Client, a: argparse.Namespace, o: Out) -> int:
    agents = c.call("agents.list")
    if o.as_json:
        o.doc(agents)
        return 0
    o.table("agents", ["agent", "model", "version", "hold", "health"],
            [[x["id"], x["model"], x.get("current_version"),
              f"yes: {x.get('hold_reason') or ''} ({x.get('hold_by')})" if x["hold"] else "no",
              _health(x.get("health"))] for x in agents])
    return 0


def _health(h: dict | None) -> str:
    if not h:
        return "-"
    if h.get("consecutive_failures"):
        return f"failing x{h['consecutive_failures']}: {h.get('last_error', '')}"
    return f"ok ({_ts(h.get('last_success'))})"


def cmd_runs(c: Client, a: argparse.Namespace, o: Out) -> int:
    runs = c.call("runs.list", state=a.state, agent=a.agent, kind=a.kind, limit=a.limit, before_id=a.before)
    if o.as_json:
        o.doc(runs)
        return 0
    o.table("runs (newest first)", ["run", "agent", "kind", "state", "stage", "created", "by", "reason"],
            [[r["id"], r["agent_id"], r["kind"], r["state"], r.get("current_stage"), _ts(r["created_at"]),
              r["created_by"], r.get("reason")] for r in runs])
    return 0


def cmd_show(c: Client, a: argparse.Namespace, o: Out) -> int:
    r = c.call("runs.show", run=a.run)
    if o.as_json:
        o.doc(r)
        return 0
    from .explain import gate_checks, gate_facts, gate_tier_rows, run_origin, ungraded_families

    o.kv(f"run {r['id']}", [("agent", r["agent_id"]), ("kind", r["kind"]), ("state", r["state"]),
                            ("reason", r.get("reason")), ("created", f"{_ts(r['created_at'])} by {r['created_by']}"),
                            ("params", json.dumps(r.get("params") or {}))])
    # Why the run exists, in words: the signal, its window, the numbers against their thresholds.
    trig = r.get("trigger") or {}
    o.kv(f"why run {r['id']} exists" + (f" (trigger {trig['id']}, {_ts(trig.get('ts'))})" if trig.get("id") else ""),
         run_origin(r))
    if ungraded := ungraded_families(r):
        o.kv("task families pr1 cannot grade", ungraded)
    if r.get("gate"):
        o.kv("gate", gate_facts(r["gate"]))
        if tiers := gate_tier_rows(r["gate"]):
            o.table("gate per tier: candidate − in service", ["tier", "n", "cand.", "serv.", "diff", "CI", "status"], tiers)
        if checks := gate_checks(r["gate"]):
            o.table("gate checks (✓ held, ✗ failed, ? undecided)", ["", "check"], [list(c) for c in checks])
    o.table("stages", ["#", "stage", "state", "attempt", "progress", "error"],
            [[s["seq"], s["name"], s["state"], s["attempt"],
              f"{100 * s['progress']:.0f}%" if s.get("progress") is not None else None,
              s.get("error") or _stage_note(s, r["state"])]
             for s in r["stages"]])
    if r["artifacts"]:
        # A training stage's TensorBoard folder (report_to) sits in <run folder>/NN-stage/: say how to open them all.
        boards = sorted({str(Path(x["path"]).parents[1]) for x in r["artifacts"] if x["kind"] == "tensorboard"})
        o.table("artifacts" + (f" (curves: tensorboard --logdir {boards[0]})" if boards else ""),
                ["name", "kind", "sha256", "path"],
                [[x["name"], x["kind"], x["sha256"][:16], x["path"]] for x in r["artifacts"]])
    if r["metrics_last"]:
        o.kv("last metrics", sorted(r["metrics_last"].items()))
    o.table("audit", ["when", "who", "from", "to", "reason"],
            [[_ts(x["ts"]), x["actor"], x.get("from_state"), x.get("to_state"), x.get("reason")] for x in r["audit"]])
    return 0


def cmd_triggers(c: Client, a: argparse.Namespace, o: Out) -> int:
    from .explain import trigger_brief, trigger_run_cell

    rows = c.call("monitor.triggers", agent=a.agent, limit=a.limit)
    if o.as_json:
        o.doc(rows)
        return 0
    # Six narrow columns: an 80-column terminal folds the numbers cell rather than cutting any column.
    o.table("triggers (newest first; `pr1ctl show RUN` explains one in words)",
            ["when", "agent", "signal → job", "window", "fired on", "run"],
            [[datetime.fromtimestamp(t["ts"]).strftime("%m-%d %H:%M") if t.get("ts") else "-", t["agent_id"], f"{t.get('signal')} → {t.get('job_kind')}", *trigger_brief(t),
              trigger_run_cell(t)] for t in rows])
    return 0


def _limit_upto(top: int) -> Any:
    """An argparse type for a page size of 1 to ``top``: the daemon's bound, so usage errors say it first."""
    def parse(text: str) -> int:
        n = int(text) if text.strip().isdigit() else 0
        if not 1 <= n <= top:
            raise argparse.ArgumentTypeError(f"not a limit: {text!r} (expected 1 to {top})")
        return n
    return parse


_limit = _limit_upto(5000)


def _stage_note(stage: dict, run_state: str) -> str | None:
    """Why a stage never ran, for the stages table (a skipped stage has no error of its own)."""
    return f"never ran: the run ended {run_state}" if stage.get("state") == "skipped" else None


def _f(x: float | None, signed: bool = False) -> str | None:
    return None if x is None else (f"{x:+.3f}" if signed else f"{x:.3f}")


def cmd_backtest(c: Client, a: argparse.Namespace, o: Out) -> int:
    r = c.call("runs.backtest", run=a.run, items=a.items)
    if o.as_json:
        o.doc(r)
        return 0
    rep = r["report"]

    def side(s: str) -> str:
        return f"{rep[s].get('version') or rep[s]['path']} ({rep[s].get('engine')}, policy: {rep[s].get('policy_from')})"

    ci = rep["ci"]
    o.kv(f"backtest of run {r['run']}", [
        ("candidate", side("candidate")), ("in service", side("incumbent")), ("items", rep["n"]),
        ("replayed", f"{rep['replay']['gradebook']['used']} gradebook, {rep['replay']['gsm_lite']['used']} GSM-lite"),
        ("CI", f"{ci['level']:.0%} {ci['method']}, {ci['resamples']} resamples, seed {ci['seed']}"),
        ("report", r["path"]), ("picture", r.get("figure"))])
    # One table per tier: narrow enough for an 80-column terminal.
    for tier, row in rep["tiers"].items():
        o.table(f"{tier} (n={row['n']}): candidate − in service", ["column", "candidate", "in service", "diff", "CI"],
                [[col, _f(cell["candidate"]), _f(cell["incumbent"]), _f(cell["diff"], True),
                  f"[{_f(cell['ci_low'], True)}, {_f(cell['ci_high'], True)}]"] for col, cell in row["columns"].items()])
    comp = rep["compliance"]
    checks = sorted(set(comp["candidate"]["by_check"]) | set(comp["incumbent"]["by_check"]))
    o.table("compliance checks (passed / failed)", ["check", "candidate", "in service"],
            [[k, *(f"{comp[s]['by_check'].get(k, {}).get('passed', 0)} / {comp[s]['by_check'].get(k, {}).get('failed', 0)}"
                   for s in ("candidate", "incumbent"))] for k in checks])
    o.kv("parallel reasoning", [(f"{k} ({s})", _f(rep[k][s])) for k in ("path_diversity", "parallel_ratio")
                                for s in ("candidate", "incumbent")])
    return 0


def cmd_logs(c: Client, a: argparse.Namespace, o: Out) -> int:
    if a.follow:
        # Subscribe first, then read the tail, so no line falls between the two.
        c.call("events.subscribe", topics=["log", "run"], run=a.run)
    logs = c.call("runs.logs", run=a.run, stage=a.stage, tail_bytes=a.bytes)
    if o.as_json and not a.follow:
        o.doc(logs)
        return 0
    for entry in logs["logs"]:
        if not o.as_json:
            sys.stdout.write(f"==> {entry['stage']} <==\n")
        sys.stdout.write(entry["text"])
    sys.stdout.flush()
    if not a.follow:
        return 0
    state = c.call("runs.show", run=a.run)["state"]
    if state not in ("queued", "running", "interrupted"):
        return 0
    try:
        for ev in c.events():
            if ev["topic"] == "log":
                line = json.dumps(ev) if o.as_json else f"[{ev['stage']}] {ev['line']}"
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            elif ev["topic"] == "run" and ev["state"] not in ("queued", "running", "interrupted"):
                return 0
    except KeyboardInterrupt:
        return 0
    return 0


def _simple(method: str, **fixed: Any):
    def run(c: Client, a: argparse.Namespace, o: Out) -> int:
        params = {k: getattr(a, k) for k in fixed.get("args", ())}
        res = c.call(method, **params)
        if o.as_json:
            o.doc(res)
        else:
            o.console.print(fixed["say"](res, a))
        return 0

    return run


def cmd_approve(c: Client, a: argparse.Namespace, o: Out) -> int:
    params: dict[str, Any] = {"run": a.run, "reason": a.reason}
    if a.accept_inconclusive:
        params["accept_inconclusive"] = True  # sent only when given: the daemon forbids unknown params
    res = c.call("runs.approve", **params)
    if o.as_json:
        o.doc(res)
        return 0
    accepted = " (inconclusive gate accepted)" if res.get("accept_inconclusive") else ""
    if res.get("promoted"):
        o.console.print(f"run {a.run}: promoted{accepted}; version {res.get('version_id')} is now in service",
                        soft_wrap=True)
    else:
        n, required = len(res.get("approvals") or []), res.get("required", 1)
        what = "you had approved it already" if res.get("already_approved") else "approval recorded"
        o.console.print(f"run {a.run}: {res.get('state')}; {what}{accepted} ({n} of {required})", soft_wrap=True)
    return 0


def cmd_trigger(c: Client, a: argparse.Namespace, o: Out) -> int:
    key = a.idempotency_key or f"pr1ctl-{uuid.uuid4()}"
    res = c.call("runs.trigger", agent=a.agent, kind=a.kind, params=dict(a.param or []),
                 idempotency_key=key, reason=a.reason or "")
    if o.as_json:
        o.doc(res)
    else:
        r = res["run"]
        o.console.print(f"run {r['id']} {'queued' if res['created'] else 'already exists'}: {r['agent_id']} {r['kind']} ({r['state']})")
    return 0


def cmd_deployments(c: Client, a: argparse.Namespace, o: Out) -> int:
    ds = c.call("deployments.list", agent=a.agent)
    if o.as_json:
        o.doc(ds)
        return 0
    o.table("deployments (newest first)", ["when", "agent", "version", "action", "by", "reason", "run"],
            [[_ts(d["ts"]), d["agent_id"], d["version_id"], d["action"], d["actor"], d.get("reason"), d.get("run_id")]
             for d in ds])
    return 0


def cmd_audit(c: Client, a: argparse.Namespace, o: Out) -> int:
    rows = c.call("audit.list", entity=a.entity, entity_id=a.id, limit=a.limit)
    if o.as_json:
        o.doc(rows)
        return 0
    o.table("audit", ["when", "who", "action", "entity", "from", "to", "reason"],
            [[_ts(x["ts"]), x["actor"], x["action"], f"{x['entity']} {x['entity_id']}", x.get("from_state"),
              x.get("to_state"), x.get("reason")] for x in rows])
    return 0


def cmd_backup(c: Client, a: argparse.Namespace, o: Out) -> int:
    import os

    res = c.call("ledger.backup", path=os.path.abspath(a.path))
    if o.as_json:
        o.doc(res)
    else:
        o.console.print(f"ledger backed up to {res['path']} ({res['bytes']} bytes)")
    return 0


def cmd_state_backup(c: Client, a: argparse.Namespace, o: Out) -> int:
    import os

    c.sock.settimeout(None)  # copying models and run records takes as long as the disk needs
    res = c.call("state.backup", path=os.path.abspath(a.dir), max_run_file_mb=a.max_run_file_mb)
    if o.as_json:
        o.doc(res)
    else:
        o.console.print(f"state backed up to {res['path']}: {res['files']} files, {res['bytes']} bytes, "
                        f"{res['skipped']} left out (listed in {res['manifest']}) in {res['duration_s']} s",
                        soft_wrap=True)
    return 0


def cmd_completion(a: argparse.Namespace) -> int:
    """Print a completion script; needs no daemon."""
    from . import __version__
    from .completion import script

    sys.stdout.write(script(a.shell, "pr1ctl", build_parser(), __version__))
    return 0


def cmd_kb_ingest(c: Client, a: argparse.Namespace, o: Out) -> int:
    import os

    c.sock.settimeout(None)  # embedding a large corpus takes minutes
    res = c.call("kb.ingest", path=os.path.abspath(a.path))
    if o.as_json:
        o.doc(res)
    else:
        o.console.print(f"{res['files']} files, {res['chunks']} chunks: {res['upserted']} upserted, "
                        f"{res['skipped_unchanged']} unchanged, {res['deleted_stale']} stale removed; "
                        f"{res['total_chunks']} chunks in the {res['store']} store")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS, help="daemon socket (else $PR1_SOCKET, the config's, /run/pr1d/pr1d.sock, "
                        "~/.local/state/pr1d/pr1d.sock: the first that answers)")
    common.add_argument("--config", default=argparse.SUPPRESS, help="config file to read the socket path from")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="one JSON document on stdout")
    p = argparse.ArgumentParser(prog="pr1ctl", parents=[common], description="Inspect and operate the pr1 daemon.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name: str, fn: Any, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[common], help=help_)
        sp.set_defaults(func=fn)
        return sp

    add("status", cmd_status, "daemon version, pid, uptime, queue, scheduler jobs")
    add("agents", cmd_agents, "agents, holds, current versions, poll health")
    sp = add("runs", cmd_runs, "runs, newest first")
    sp.add_argument("--state", choices=RUN_STATES)
    sp.add_argument("--agent")
    sp.add_argument("--kind", choices=RUN_KINDS)
    sp.add_argument("--limit", type=_limit_upto(RUNS_LIST_MAX), default=50,
                    help=f"how many, newest first (1 to {RUNS_LIST_MAX})")
    sp.add_argument("--before", type=int, help="page: runs with id below this")
    sp = add("show", cmd_show, "one run: why it exists (trigger evidence), gate, stages, artifacts, metrics, audit")
    sp.add_argument("run", type=_run_id)
    sp = add("triggers", cmd_triggers, "recent triggers: signal, window, numbers vs thresholds, the run queued")
    sp.add_argument("agent", nargs="?", help="only this agent's triggers")
    sp.add_argument("--limit", type=_limit, default=50, help="how many, newest first (1 to 5000)")
    sp = add("backtest", cmd_backtest, "a run's backtest: per tier/column differences with CIs, compliance")
    sp.add_argument("run", type=_run_id)
    sp.add_argument("--items", action="store_true", help="with --json: include every replayed item")
    sp = add("logs", cmd_logs, "a run's stage logs")
    sp.add_argument("run", type=_run_id)
    sp.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until the run ends")
    sp.add_argument("--stage")
    sp.add_argument("--bytes", type=int, default=65536, help="how much of each log's tail to print")
    sp = add("trigger", cmd_trigger, "queue a run for an agent")
    sp.add_argument("agent")
    sp.add_argument("--kind", required=True, help="sft | rl | full | targeted-sft (and sleep/noop diagnostics)")
    sp.add_argument("--param", type=_kv, action="append", metavar="KEY=VALUE", help="stage parameter (JSON value)")
    sp.add_argument("--reason")
    sp.add_argument("--idempotency-key", help="retrying with the same key never creates a second run")
    for name, method, word in (("hold", "agents.hold", "held"), ("unhold", "agents.unhold", "released")):
        sp = add(name, _simple(method, args=("agent", "reason"),
                               say=lambda r, a, w=word: f"agent {a.agent} {w}"), f"{name} an agent (no new runs while held)")
        sp.add_argument("agent")
        sp.add_argument("--reason", default="")
    sp = add("approve", cmd_approve, "approve a run awaiting approval (promoted once enough people approve)")
    sp.add_argument("run", type=_run_id)
    sp.add_argument("--reason", required=True)
    sp.add_argument("--accept-inconclusive", action="store_true",
                    help="approve although the promotion gate was inconclusive (refused without it); recorded "
                         "in the audit log; every approver of such a run must pass it")
    sp = add("reject", _simple("runs.reject", args=("run", "reason"), say=lambda r, a: f"run {a.run}: {r['state']}"),
             "reject a run awaiting approval")
    sp.add_argument("run", type=_run_id)
    sp.add_argument("--reason", required=True)
    sp = add("cancel", _simple("runs.cancel", args=("run", "reason"), say=lambda r, a: f"run {r['run']}: {r['state']}"),
             "cancel a run (a running stage checkpoints and stops)")
    sp.add_argument("run", type=_run_id)
    sp.add_argument("--reason", default="")
    sp = add("rollback", _simple("deployments.rollback", args=("agent", "to", "reason"),
                                 say=lambda r, a: f"agent {a.agent}: {r}"), "switch an agent back to its previous version")
    sp.add_argument("agent")
    sp.add_argument("--to", help="version id (default: the previous one)")
    sp.add_argument("--reason", required=True)
    sp = add("deployments", cmd_deployments, "deployment history")
    sp.add_argument("agent", nargs="?")
    sp = add("audit", cmd_audit, "audit log")
    sp.add_argument("--entity", choices=AUDIT_ENTITIES)
    sp.add_argument("--id")
    sp.add_argument("--limit", type=_limit, default=100, help="how many (1 to 5000)")
    add("whoami", _simple("whoami", say=lambda r, a: f"{r['user']} (uid {r['uid']}): {r['role']}"),
        "your Unix user and role as the daemon sees you")
    sp = add("backup", cmd_state_backup, "online backup of the whole state (ledger, jobs, models, run records, KB) "
             "into a new or empty folder; `pr1d restore` puts it back")
    sp.add_argument("dir", metavar="DIR", help="backup folder, written by the daemon (must be new or empty)")
    sp.add_argument("--max-run-file-mb", type=int, default=64, metavar="MB",
                    help="run files larger than this stay out (checkpoints always do); the manifest lists them")
    sp = sub.add_parser("completion", help="print a shell completion script: `pr1ctl completion bash` (no daemon needed)")
    from .completion import add_arguments as completion_arguments

    completion_arguments(sp)
    sp.set_defaults(func=cmd_completion, offline=True)
    kb = sub.add_parser("kb", parents=[common], help="knowledge base")
    ksub = kb.add_subparsers(dest="kb_cmd", required=True, metavar="COMMAND")
    sp = ksub.add_parser("ingest", parents=[common], help="load .md/.txt/.jsonl documents (idempotent)")
    sp.add_argument("path")
    sp.set_defaults(func=cmd_kb_ingest)
    led = sub.add_parser("ledger", parents=[common], help="ledger maintenance")
    lsub = led.add_subparsers(dest="ledger_cmd", required=True, metavar="COMMAND")
    sp = lsub.add_parser("backup", parents=[common], help="online backup through SQLite's backup API")
    sp.add_argument("path")
    sp.set_defaults(func=cmd_backup)
    sp = lsub.add_parser("compact", parents=[common], help="apply the retention policy now ([retention])")
    sp.set_defaults(func=_simple("ledger.compact", say=lambda r, a: (
        f"removed {r['samples_removed']} samples and {r['metrics_removed']} metric points; "
        f"ledger {r['bytes_before']} -> {r['bytes_after']} bytes")))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "offline", False):  # commands that never talk to the daemon
        return args.func(args)
    as_json = getattr(args, "json", False)
    try:
        path = find_socket(getattr(args, "socket", None), getattr(args, "config", None))
    except DaemonUnreachable as e:  # no candidate answered: the message lists each path tried and why
        print(f"pr1ctl: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Exception as e:  # a broken --config file: say so, as a usage problem
        print(f"pr1ctl: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with Client(path) as c:
            return args.func(c, args, Out(as_json))
    except DaemonUnreachable as e:
        print(f"pr1ctl: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except RpcError as e:
        print(f"pr1ctl: {e.message}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
