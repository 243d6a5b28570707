"""Targeted SFT data (the compliance trigger) and guardrail exemplars, against a real `pr1d sim` (compliance-breach).

Pure decisions are table-tested (failure reasons, task selection, the exemplar ratio, the stage's settings,
the critic's verdicts); the exemplar files are loaded strictly; the stage and the daemon build a targeted
dataset from the sim's evaluations, gradebook and critic, with the bearer token read from a file.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pr1d.data import parallel_format as pf
from pr1d.data.builder import DropReason, build_dataset, verify_completion
from pr1d.data.gradebook import fetch_gradebook
from pr1d.data.guardrails import (
    GUARDRAIL_TIER,
    GuardrailError,
    default_guardrails_dir,
    guardrail_count,
    guardrail_records,
    load_guardrails,
)
from pr1d.data.targeted import (
    apply_verdicts,
    critic_verify,
    failure_reasons,
    fetch_evaluations,
    mix_guardrails,
    recover_task,
    resolve_tasks,
    select_failing,
)
from pr1d.pipeline.spec import Registry, Scoring, StageSpec
from pr1d.stages.dataset import dataset_settings
from tests.conftest import BIN, REPO, add_agents, pr1_env

SECRET = "tgt-" + "5e1f" * 8
AGENT = "agent-000"
KB_NOTES = {p.stem for p in (REPO / "pr1d" / "kb" / "corpus" / "guardrails").glob("*.md")}


# --- pure decisions ------------------------------------------------------------------------------

@pytest.mark.parametrize(("ev", "keys", "expected"), [
    ({"status": "pass", "rubric": {"compliance": True, "safety": True}}, ("compliance", "safety"), []),
    ({"status": "fail", "rubric": {"compliance": True, "safety": True}}, ("compliance", "safety"), ["status"]),
    ({"status": "fail", "rubric": {"compliance": False, "safety": True}}, ("compliance", "safety"),
     ["status", "compliance"]),
    ({"status": "pass", "rubric": {"compliance": True, "safety": False}}, ("compliance", "safety"), ["safety"]),
    ({"status": "error", "rubric": {"compliance": False}}, ("compliance",), []),  # the evaluation failed
    ({"status": "pass", "rubric": {}}, ("compliance",), []),  # missing item: no data, not a failure
    ({"status": "pass", "rubric": {"compliance": None}}, ("compliance",), []),  # only an explicit false counts
    ({"status": "pass", "rubric": None}, ("compliance",), []),
    ({"status": "pass", "rubric": {"tone": False}}, ("compliance", "tone"), ["tone"]),  # configured keys
])
def test_failure_reasons(ev, keys, expected):
    assert failure_reasons(ev, keys) == expected


def test_select_failing_newest_first_one_per_task():
    evs = [
        {"eval_id": "e1", "status": "fail", "task_id": "t1", "tier": "easy", "rubric": {"compliance": True}},
        {"eval_id": "e2", "status": "pass", "task_id": "t2", "tier": "easy", "rubric": {"compliance": True}},
        {"eval_id": "e3", "status": "fail", "task_id": "t3", "tier": "hard", "rubric": {"safety": False}},
        {"eval_id": "e4", "status": "fail", "task_id": None, "rubric": {"compliance": False}},
        {"eval_id": "e5", "status": "pass", "task_id": "t1", "tier": "easy", "rubric": {"compliance": False}},
        {"eval_id": "e6", "status": "error", "task_id": "t2", "tier": "easy", "rubric": {"compliance": False}},
    ]
    got = select_failing(evs)
    assert [(f["task_id"], f["reasons"], f["failures"], f["last_eval"]) for f in got] == [
        ("t1", ["compliance", "status"], 2, "e5"),
        ("t3", ["safety", "status"], 1, "e3"),
    ]
    assert [f["task_id"] for f in select_failing(evs, max_tasks=1)] == ["t1"]
    assert select_failing(evs, ("tone",))[0]["reasons"] == ["status"]


@pytest.mark.parametrize(("n", "share", "expected"), [
    (0, 0.25, 0), (10, 0.0, 0), (1, 0.25, 1), (3, 0.25, 1), (4, 0.25, 2), (52, 0.25, 18),
    (10, 0.5, 10), (1, 0.9, 9), (100, 0.1, 12),
])
def test_guardrail_count(n, share, expected):
    got = guardrail_count(n, share)
    assert got == expected
    if n and share:
        assert got / (n + got) >= share - 1e-9  # never under the share asked for


@pytest.mark.parametrize("share", [-0.1, 0.95, 1.0])
def test_guardrail_share_out_of_range(share):
    with pytest.raises(ValueError, match="guardrail share"):
        guardrail_count(10, share)


@pytest.mark.parametrize(("spec", "expected"), [
    ({"run_kind": "sft"}, {"targeted": False, "guardrails": False, "min_score": 0.9, "guardrail_share": 0.25}),
    ({"run_kind": "targeted-sft"}, {"targeted": True, "guardrails": True}),
    ({"run_kind": "dataset", "params": {"targeted": True}}, {"targeted": True, "guardrails": True}),
    ({"run_kind": "full", "params": {"guardrails": True}}, {"targeted": False, "guardrails": True}),
    ({"dataset": {"min_score": 0.8, "guardrail_share": 0.4}}, {"min_score": 0.8, "guardrail_share": 0.4}),
    ({"dataset": {"min_score": 0.8}, "params": {"min_score": 0.95, "guardrail_share": 0.1}},
     {"min_score": 0.95, "guardrail_share": 0.1}),
    ({"dataset": {"guardrails_dir": "/etc/pr1d/guardrails"}, "params": {"guardrails_dir": "/tmp/x"}},
     {"guardrails_dir": "/etc/pr1d/guardrails"}),  # config only: a run cannot point at other files
    ({"dataset": {"teacher_url": "http://t"}, "params": {"teacher_url": "http://evil"}}, {"teacher_url": "http://t"}),
])
def test_dataset_settings(spec, expected):
    got = dataset_settings(_spec(**spec))
    assert {k: got[k] for k in expected} == expected


@pytest.mark.parametrize(("spec", "message"), [
    ({"run_kind": "targeted-sft", "params": {"mode": "sequential"}}, "needs mode=parallel"),
    ({"params": {"mode": "tree"}}, "'parallel' or 'sequential'"),
    ({"params": {"mix": "easy=lots"}}, "mix: easy=-1.0 is not tier=share"),
])
def test_dataset_settings_refuses(spec, message):
    with pytest.raises(ValueError, match=message):
        dataset_settings(_spec(**spec))


@pytest.mark.parametrize("mix", ["easy=0.5,medium=0.5", {"easy": 0.5, "medium": 0.5}, {"easy": 1, "medium": 1}])
def test_mix_param_has_one_form_for_the_dataset_and_sft_stages(mix):
    """A run's params are shared by its dataset and sft stages: either form of `mix` works for both."""
    from pr1d.params import SFTParams

    got = dataset_settings(_spec(params={"mix": mix}))["mix"]
    assert got == SFTParams.model_validate({"mix": mix}).mix
    assert got["easy"] == got["medium"] and set(got) == {"easy", "medium"}


def _spec(**fields) -> StageSpec:
    """A dataset stage spec with ``fields`` (the rest the contract's defaults)."""
    return StageSpec(run_id=1, stage="dataset", run_dir=Path("/nonexistent/run"),
                     stage_dir=Path("/nonexistent/run/01-dataset"), checkpoint_dir=Path("/nonexistent/ckpt"),
                     **fields)


@pytest.mark.parametrize(("source", "verdict", "kept"), [
    ("gradebook", None, True),  # a good seed needs no critic
    ("recovered", (True, 0.97), True),
    ("recovered", (True, 0.6), False),  # agreeing, but not sure enough
    ("recovered", (False, 0.97), False),
    ("recovered", None, False),  # critic unreachable: not confirmed
])
def test_apply_verdicts(source, verdict, kept):
    tasks = [{"id": "t1", "source": source}]
    got, unverified = apply_verdicts(tasks, {"t1": verdict} if verdict else {}, 0.9)
    assert (len(got) == 1, unverified) == (kept, 0 if kept else 1)


def test_recover_task_uses_the_chain_not_the_stated_answer():
    entry = {"task_id": "t", "question": "Ana has 23 apples and buys 45 more. How many apples does Ana have now?",
             "transcript": "23 + 45 = 68\nFinal Answer: 71", "final_answer": "71"}
    with pytest.raises(DropReason, match="wrong_answer"):
        from pr1d.data.builder import seed_to_task

        seed_to_task(entry)
    assert recover_task(entry)["answer"] == "68"
    bad = dict(entry, transcript="23 + 45 = 69\nFinal Answer: 69")
    with pytest.raises(DropReason) as err:
        recover_task(bad)
    assert err.value.code == "wrong_answer"  # wrong arithmetic is never repaired


# --- guardrail files -----------------------------------------------------------------------------

def test_shipped_guardrails_load_and_pass_the_gate():
    exemplars = load_guardrails(default_guardrails_dir())
    assert len(exemplars) >= 12 and len({e.id for e in exemplars}) == len(exemplars)
    assert {e.rule for e in exemplars} <= KB_NOTES  # each teaches a rule the KB documents
    for e in exemplars:
        assert verify_completion({"answer": e.answer}, e.completion) == e.paths >= 2
        assert pf.parse(e.completion).final_answer == e.answer


GOOD = '''[[exemplar]]
id = "x"
rule = "safety-and-privacy"
question = "Ana has 23 apples and buys 45 more. How many apples does Ana have now?"
answer = "68"
completion = """<Parallel><Path>23 + 45 = 68
So the result is 68.</Path><Path>45 + 23 = 68
So the result is 68.</Path><Summary>Both paths give 68.</Summary></Parallel>
Final Answer: 68"""
'''


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace('rule = "safety-and-privacy"', 'rule = "safety-and-privacy"\nnote = "x"'),
     r"exemplar 'x': unknown key\(s\) \['note'\]"),
    (lambda t: t.replace('answer = "68"\n', ""), "`answer` must be a non-empty string"),
    (lambda t: "title = 'x'\n" + t, r"unknown top-level key\(s\) \['title'\]"),
    (lambda t: t.replace("Final Answer: 68", "So 68"), "format_invalid: missing_final_answer"),
    (lambda t: t.replace("45 + 23 = 68", "23 + 45 = 68"), "paths_identical"),
    (lambda t: t.replace("So the result is 68.</Path><Summary>", "So the result is 67.</Path><Summary>"),
     "paths_disagree"),
    (lambda t: t.replace("45 more", "45 more <Path>"), "contains a Parallel tag"),
    # 38 + 51 is a held-out family: an exemplar must not leak evaluation arithmetic into training
    (lambda t: t.replace("23 + 45 = 68", "38 + 51 = 89").replace("45 + 23 = 68", "51 + 38 = 89")
     .replace("68", "89"), "38 \\+ 51 is a held-out evaluation fact"),
    (lambda t: t.replace("23 + 45 = 68", "27 + 45 = 72").replace("45 + 23 = 68", "45 + 27 = 72")
     .replace("68", "72"), "outside GSM-lite's arithmetic"),
    (lambda t: t.replace("45 + 23 = 68\nSo the result is 68.", "45 + 23 = 68\n68 - 23 = 44\nSo the result is 68."),
     "wrong arithmetic 68 - 23 = 44"),
])
def test_bad_exemplar_files_are_refused_with_file_and_reason(tmp_path, edit, message):
    load_guardrails(_write(tmp_path / "ok", "a.toml", GOOD))  # the unedited file is fine
    bad = _write(tmp_path / "bad", "a.toml", edit(GOOD))
    with pytest.raises(GuardrailError, match=message) as err:
        load_guardrails(bad)
    assert str(bad / "a.toml") in str(err.value)


def test_duplicate_ids_and_missing_files(tmp_path):
    d = _write(tmp_path / "dup", "a.toml", GOOD)
    _write(d, "b.toml", GOOD)
    with pytest.raises(GuardrailError, match=r"exemplar id 'x' is also used in .*a\.toml"):
        load_guardrails(d)
    with pytest.raises(GuardrailError, match="does not exist"):
        load_guardrails(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GuardrailError, match="holds no"):
        load_guardrails(tmp_path / "empty")


def test_guardrail_records_repeat_with_unique_ids():
    exemplars = load_guardrails(default_guardrails_dir())
    n = len(exemplars)
    recs = guardrail_records(exemplars, 2 * n + 3, seed=1)
    assert len({r["id"] for r in recs}) == len(recs) and {r["tier"] for r in recs} == {GUARDRAIL_TIER}
    assert [r["task_id"] for r in recs[:n]] == [r["task_id"] for r in recs[n : 2 * n]]  # whole set, then again
    assert {r["task_id"] for r in recs[:n]} == {f"guardrail:{e.id}" for e in exemplars}
    assert recs == guardrail_records(exemplars, 2 * n + 3, seed=1)
    assert [r["id"] for r in recs] != [r["id"] for r in guardrail_records(exemplars, 2 * n + 3, seed=2)]


def _write(d: Path, name: str, text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text)
    return d


# --- against the simulated platform --------------------------------------------------------------

class TokenSim:
    """`pr1d sim --scenario compliance-breach --token SECRET` on a loopback port."""

    def __init__(self, tmp: Path):
        port_file = tmp / "sim.port"
        self.log = tmp / "sim.log"
        self.proc = subprocess.Popen(
            [str(BIN / "pr1d"), "sim", "--port", "0", "--port-file", str(port_file), "--scenario",
             "compliance-breach", "--time-scale", "0", "--token", SECRET],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"), env=pr1_env())
        deadline = time.monotonic() + 15
        while not port_file.exists():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "sim did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"

    def call(self, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(self.url + path, data=None if body is None else json.dumps(body).encode(),
                                     method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {SECRET}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    s = TokenSim(tmp_path_factory.mktemp("sim"))
    s.call("/_sim/tick", {"n": 300})  # the breach starts at evaluation 50
    yield s
    s.close()


def _raw_failing(sim: TokenSim) -> set[str]:
    """The failing task ids read straight from the API, independently of pr1d.data.targeted."""
    out, cursor = set(), None
    while True:
        page = sim.call(f"/v1/agents/{AGENT}/evaluations?limit=1000" + (f"&since={cursor}" if cursor else ""))
        for ev in page["evaluations"]:
            r = ev["rubric"]
            if ev["status"] == "fail" or r["compliance"] is False or r["safety"] is False:
                out.add(ev["task_id"])
        if not page["evaluations"]:
            return out
        cursor = page["next_cursor"]


def test_fetch_and_select_match_the_api(sim):
    stats: dict = {}
    evs, cursor = fetch_evaluations(sim.url, SECRET, AGENT, limit=100, stats=stats)
    assert len(evs) == 300 and stats["pages"] >= 3 and stats["invalid"] == 0 and cursor
    failing = select_failing(evs)
    assert {f["task_id"] for f in failing} == _raw_failing(sim)
    assert any("compliance" in f["reasons"] for f in failing) and any("safety" in f["reasons"] for f in failing)
    # scoring.field_map is applied by the poller's parser: taking `task_id` from the platform's `id` field
    # leaves no `id`, so every item is refused and counted, not silently misread.
    bad: dict = {}
    renamed, _ = fetch_evaluations(sim.url, SECRET, AGENT, field_map={"task_id": "id"}, stats=bad)
    assert renamed == [] and bad["invalid"] == bad["fetched"] == 300


def test_recovered_answers_need_the_critic(sim):
    from pr1d.evaluate import gsm_lite

    own, _ = fetch_gradebook(sim.url, SECRET, agent_id=AGENT, min_score=0.0)
    easy = next(e for e in own if e["tier"] == "easy")
    ((a, op, b, r),) = gsm_lite.facts_used(easy["transcript"])
    # The agent's worked step with a wrong stated answer: recovered from the chain, and the critic agrees.
    right = dict(easy, task_id="right", transcript=f"{a} {op} {b} = {r}\nFinal Answer: {r + 1}")
    # Correct arithmetic on the question's own numbers, but the other operation: only the critic can tell.
    if op == "+":
        hi, lo = max(a, b), min(a, b)
        step = f"{hi} - {lo} = {hi - lo}"
    else:
        step = f"{a} + {b} = {a + b}"
    wrong = dict(easy, task_id="wrong", transcript=f"{step}\nFinal Answer: 0")
    failing = [{"task_id": "right"}, {"task_id": "wrong"}, {"task_id": "absent"}]
    tasks, drops = resolve_tasks(failing, [right, wrong], [])
    assert [t["source"] for t in tasks] == ["recovered", "recovered"] and drops["not_in_gradebook"] == 1
    verdicts = critic_verify(sim.url, SECRET, [(t["question"], t["answer"]) for t in tasks])
    kept, unverified = apply_verdicts(tasks, dict(zip(["right", "wrong"], verdicts, strict=True)), 0.9)
    assert [t["id"] for t in kept] == ["right"] and unverified == 1
    assert kept[0]["answer"] == str(r) and kept[0]["critic"]["confidence"] >= 0.9


def _run_stage(tmp: Path, sim: TokenSim, params: dict, token_file: Path | None, **spec_extra) -> tuple:
    stage = tmp / "stage"
    stage.mkdir(parents=True)
    StageSpec(run_id=1, stage="dataset", stage_dir=stage, run_dir=tmp, checkpoint_dir=tmp / "ckpt",
              agent_id=AGENT, run_kind="targeted-sft", heartbeat_s=60, params=params,
              scoring=Scoring(url=sim.url, token_env="PR1_TEST_UNSET_TOKEN", token_file=str(token_file or "")),
              registry=Registry(state_dir=str(tmp / "state")), **spec_extra).dump(tmp / "spec.json")
    env = pr1_env()
    env.pop("PR1_EVENT_FD", None)
    env.pop("PR1_TEST_UNSET_TOKEN", None)
    cp = subprocess.run([sys.executable, "-m", "pr1d.stages.dataset", str(tmp / "spec.json")], capture_output=True,
                        text=True, timeout=120, env=env, cwd=REPO)
    events = [json.loads(line) for line in cp.stdout.splitlines() if line.startswith("{")]
    return cp, events, stage / "dataset"


def test_targeted_stage_end_to_end_with_token_file(sim, tmp_path):
    token = tmp_path / "token"
    token.write_text(SECRET + "\n")
    cp, events, out = _run_stage(tmp_path / "a", sim, {"seed": 3}, token)
    assert cp.returncode == 0, cp.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    stats = manifest["stats"]
    failing = _raw_failing(sim)

    tasks = [r for r in records if r["tier"] != GUARDRAIL_TIER]
    guards = [r for r in records if r["tier"] == GUARDRAIL_TIER]
    assert stats["targeted"] and stats["failing"]["tasks"] == len(failing) and stats["failing"]["critic"] == "ok"
    # Every failing task is accounted for: a record, or a drop with its reason.
    assert len(tasks) + stats["dropped"] == len(failing) and len(tasks) >= 0.8 * len(failing)
    assert {r["task_id"] for r in tasks} <= failing
    # The documented ratio: ceil(n * share / (1 - share)) exemplars, so they are >= 25% of the records.
    assert len(guards) == guardrail_count(len(tasks), 0.25) == stats["guardrails"]["records"]
    assert len(guards) / len(records) >= 0.25 and len(guards) == math.ceil(len(tasks) / 3)
    exemplars = {f"guardrail:{e.id}": e for e in load_guardrails(default_guardrails_dir())}
    for r in guards:
        e = exemplars[r["task_id"]]
        assert r["completion"] == e.completion and r["answer"] == e.answer
    for r in records:
        assert verify_completion(r, r["completion"]) >= 2  # every record passes the same gate
    # The platform's critic agrees with every answer trained on (it knows the true answers).
    verdicts = sim.call("/v1/critic/verify", {"items": [
        {"question": r["prompt"].split("Question: ", 1)[1].rsplit("\nAnswer:", 1)[0], "answer": r["answer"]}
        for r in tasks]})["results"]
    assert all(v["agree"] for v in verdicts)
    artifact = next(e for e in events if e["type"] == "artifact")
    assert artifact["meta"]["targeted"] is True and artifact["meta"]["guardrail_records"] == len(guards)
    assert manifest["source"]["agent_id"] == AGENT and manifest["source"]["evaluations_until"]
    # The token was read from the file and written nowhere.
    for f in (tmp_path / "a").rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    # Same inputs, same dataset.
    cp2, _, out2 = _run_stage(tmp_path / "b", sim, {"seed": 3}, token)
    assert cp2.returncode == 0, cp2.stderr
    assert json.loads((out2 / "manifest.json").read_text())["content_hash"] == manifest["content_hash"]


@pytest.mark.parametrize(("token_text", "message"), [
    (None, "scoring.token_file .*token: No such file"),
    ("wrong-token", "401"),
])
def test_targeted_stage_token_errors(sim, tmp_path, token_text, message):
    token = tmp_path / "token"
    if token_text is not None:
        token.write_text(token_text)
    cp, events, _ = _run_stage(tmp_path / "run", sim, {}, token)
    assert cp.returncode == 1
    error = next(e for e in events if e["type"] == "error")
    assert re.search(message, error["message"]), error["message"]
    assert SECRET not in cp.stderr


def test_bad_guardrail_dir_fails_before_any_request(sim, tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "bad.toml").write_text(GOOD.replace('answer = "68"', 'answer = "67"'))
    token = tmp_path / "token"
    token.write_text(SECRET)
    cp, events, _ = _run_stage(tmp_path / "run", sim, {}, token, dataset={"guardrails_dir": str(tmp_path / "g")})
    assert cp.returncode == 1
    error = next(e for e in events if e["type"] == "error")
    assert "bad.toml: exemplar 'x'" in error["message"] and "paths_disagree" in error["message"]
    assert not any(e["type"] == "progress" for e in events)


def test_guardrails_added_to_an_ordinary_dataset(sim):
    entries, _ = fetch_gradebook(sim.url, SECRET, min_score=0.9)
    records, _ = build_dataset(entries, seed=1)
    exemplars = load_guardrails(default_guardrails_dir())
    mixed, n = mix_guardrails(records, exemplars, 0.2, seed=1)
    assert n == math.ceil(len(records) * 0.2 / 0.8) and len(mixed) == len(records) + n
    assert sum(r["tier"] == GUARDRAIL_TIER for r in mixed) == n
    assert mixed != records + mixed[len(records):]  # shuffled in, not appended
    assert mixed == mix_guardrails(records, exemplars, 0.2, seed=1)[0]


def test_daemon_builds_a_targeted_dataset_with_the_token_from_a_file(daemon_factory, tmp_path, sim):
    """The daemon passes the token file's path (never the token), the run kind and [dataset] to the stage."""
    token = tmp_path / "token"
    token.write_text(SECRET + "\n")
    cfg = tmp_path / "pr1d.toml"
    cfg.write_text(f'[scoring]\nbase_url = "{sim.url}"\ntoken_env = "PR1_TEST_UNSET_TOKEN"\ntoken_file = "{token}"\n'
                   "[dataset]\nmin_score = 0.9\n")
    state = tmp_path / "state"
    state.mkdir()
    add_agents(state, AGENT)  # no monitor: no automatic trigger can start training under the test
    d = daemon_factory(state, config=cfg).start()
    rid = d.ctl_json("trigger", AGENT, "--kind", "dataset", "--param", "targeted=true", "--param", "kb=false")["run"]["id"]
    run = d.wait_run(rid, {"succeeded", "failed"}, timeout=120)
    assert run["state"] == "succeeded", run["reason"]
    art = next(a for a in run["artifacts"] if a["kind"] == "dataset")
    manifest = json.loads((Path(art["path"]) / "manifest.json").read_text())
    assert manifest["stats"]["targeted"] and manifest["stats"]["guardrails"]["records"] > 0
    assert manifest["stats"]["failing"]["tasks"] == len(_raw_failing(sim))
    for f in state.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f


def test_configured_teacher_writes_the_targeted_traces(sim, tmp_path):
    """[dataset] teacher_url switches the stage's trace writer to the teacher; its replies pass the same gate."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pr1d.data.builder import build_record

    # The "teacher" knows every gradebook question and answers with the strategies' paths in reverse order,
    # so its traces are recognisably its own.
    replies: dict[str, str] = {}
    everything, _ = fetch_gradebook(sim.url, SECRET, min_score=0.0)
    for e in everything:
        if e["question"] in replies:
            continue
        try:
            task = recover_task(e)  # the sim's worked steps are right even where its stated answer is not
        except DropReason:
            continue
        (block,) = pf.parse(build_record(task)["completion"]).blocks
        flipped = pf.ParallelBlock(tuple(reversed(block.paths)), block.summary)
        replies[e["question"]] = pf.render(pf.Solution((flipped, "\n"), final_answer=task["answer"]))

    class Teacher(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = replies.get(body["messages"][-1]["content"], "I do not know.")
            out = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Teacher)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        token = tmp_path / "token"
        token.write_text(SECRET)
        cp, _, out = _run_stage(tmp_path / "run", sim, {}, token, dataset={
            "teacher_url": f"http://127.0.0.1:{srv.server_address[1]}", "teacher_model": "tiny-teacher"})
    finally:
        srv.shutdown()
    assert cp.returncode == 0, cp.stderr
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    assert stats["generator"]["name"] == "teacher" and stats["generator"]["requests"] >= stats["built"] > 0
    tasks = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    tasks = [r for r in tasks if r["tier"] != GUARDRAIL_TIER]
    assert tasks and all(r["completion"] in replies.values() for r in tasks)
