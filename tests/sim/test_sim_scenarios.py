"""Scenario files: strict validation with clear errors, lookup, and the statistical pattern each shipped
scenario promises (checked on the pure Platform, no HTTP)."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

import pytest

from pr1d.sim.platform import Platform, PlatformError, UnknownAgent
from pr1d.sim.scenarios import ScenarioError, available_scenarios, load_scenario, shipped_dir

SHIPPED = [
    "steady",
    "slow-degradation",
    "sudden-drift",
    "flaky",
    "compliance-breach",
    "mixed-fleet",
    "unreliable-api",
]

MINIMAL = """
[behaviours.ok]
mean = 0.9

[fleet]
count = 2
mix = { ok = 1 }
"""


def _write(tmp_path: Path, text: str, name: str = "bad.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _platform(name: str, **overrides: int) -> Platform:
    return Platform(load_scenario(name).with_overrides(**overrides) if overrides else load_scenario(name))


def _evals_by_behaviour(p: Platform, behaviour: str) -> list[list[dict]]:
    return [p.evaluations(a) for a in p.agent_ids if p.agent_info(a)["behaviour"] == behaviour]


def _mean(evals: list[dict]) -> float:
    return statistics.fmean(e["weighted_score"] for e in evals)


# --- lookup and validation -------------------------------------------------------------------------


def test_every_shipped_scenario_loads() -> None:
    found = available_scenarios()
    assert set(SHIPPED) <= set(found)
    for name in SHIPPED:
        sc = load_scenario(name)
        assert sc.name == name
        assert sc.spec.description
        assert Platform(sc).agent_ids


def test_unknown_scenario_lists_the_available_ones() -> None:
    with pytest.raises(ScenarioError, match=r"unknown scenario 'stedy'; available: .*steady"):
        load_scenario("stedy")


def test_user_scenarios_dir_and_paths(tmp_path: Path) -> None:
    _write(tmp_path, MINIMAL, "mine.toml")
    _write(tmp_path, MINIMAL, "steady.toml")  # a user file shadows the shipped scenario of that name
    assert load_scenario("mine", [tmp_path]).source == str(tmp_path / "mine.toml")
    assert load_scenario("steady", [tmp_path]).source == str(tmp_path / "steady.toml")
    assert load_scenario("steady").source == str(shipped_dir() / "steady.toml")
    assert load_scenario(str(tmp_path / "mine.toml")).name == "mine"
    with pytest.raises(ScenarioError, match="not a directory"):
        load_scenario("mine", [tmp_path / "nope"])
    with pytest.raises(ScenarioError, match="scenario file not found"):
        load_scenario(str(tmp_path / "missing.toml"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "fleet_size = 3\n" + MINIMAL,
            r"fleet_size: unknown key \(expected one of: description, seed",
            id="unknown_top_key",
        ),
        pytest.param(
            MINIMAL.replace("mean = 0.9", "mean = 0.9\ndrift_slop = -0.1"),
            r"behaviours\.ok\.drift_slop: unknown key \(expected one of: mean, sd,",
            id="unknown_nested_key",
        ),
        pytest.param(
            MINIMAL.replace("mean = 0.9", 'mean = "0.9"'),
            r"behaviours\.ok\.mean: expected a number, got '0.9'",
            id="wrong_type",
        ),
        pytest.param(
            MINIMAL.replace("mean = 0.9", "fail_rate = 1.5"),
            r"behaviours\.ok\.fail_rate: expected a value <= 1",
            id="out_of_range",
        ),
        pytest.param(
            MINIMAL.replace("mix = { ok = 1 }", "mix = { okay = 1 }"),
            r"fleet\.mix\.okay: unknown behaviour \(defined: ok\)",
            id="unknown_behaviour_in_mix",
        ),
        pytest.param(
            MINIMAL + '[[agents]]\nid = "x"\nbehaviour = "nope"\n',
            r"agents\[0\]\.behaviour: unknown behaviour 'nope'",
            id="unknown_behaviour_for_agent",
        ),
        pytest.param(
            MINIMAL + '[[agents]]\nid = "x"\nbehaviour = "ok"\n[[agents]]\nid = "x"\nbehaviour = "ok"\n',
            r"agents\[1\]\.id: duplicate agent id 'x'",
            id="duplicate_agent",
        ),
        pytest.param(
            MINIMAL + '[[agents]]\nid = "a b"\nbehaviour = "ok"\n',
            r"agents\[0\]\.id: 'a b' is not a valid agent id",
            id="bad_agent_id",
        ),
        pytest.param(
            MINIMAL + '[[agents]]\nid = "agent-001"\nbehaviour = "ok"\n',
            r"collides with a generated fleet id",
            id="fleet_id_clash",
        ),
        pytest.param(
            MINIMAL + '[[faults]]\nkind = "explode"\n',
            r"faults\[0\]\.kind: expected one of 'latency', 'http_error'",
            id="unknown_fault_kind",
        ),
        pytest.param(
            MINIMAL + '[[faults]]\nkind = "duplicates"\nendpoints = ["critic"]\n',
            r"fault kind 'duplicates' cannot act on endpoint\(s\) critic",
            id="fault_endpoint_mismatch",
        ),
        pytest.param(
            MINIMAL + '[[faults]]\nkind = "latency"\nseconds = 0.1\nagents = ["ghost"]\n',
            r"faults\[0\]\.agents: unknown agent 'ghost'",
            id="fault_unknown_agent",
        ),
        pytest.param(
            MINIMAL + '[[faults]]\nkind = "timeout"\nseconds = 600\n',
            r"faults\[0\]\.seconds: expected a value <= 60",
            id="fault_hang_bounded",
        ),
        pytest.param(
            "[fleet]\ncount = 1\nmix = { ok = 1 }\n",
            r"behaviours: required key is missing",
            id="no_behaviours",
        ),
        pytest.param(
            MINIMAL.replace("count = 2", "count = 0"), r"the scenario has no agents", id="no_agents"
        ),
        pytest.param(
            "start_time = 2025-01-01T00:00:00\n" + MINIMAL,
            r"start_time: expected a datetime with a UTC offset",
            id="naive_start_time",
        ),
        pytest.param("interval_s = 0\n" + MINIMAL, r"interval_s: expected a value > 0", id="zero_interval"),
        pytest.param("behaviours = [", r"not valid TOML", id="invalid_toml"),
    ],
)
def test_invalid_scenarios_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ScenarioError, match=expected) as exc:
        load_scenario(str(path))
    assert str(path) in str(exc.value)


def test_overrides_resize_fleet_and_change_seed() -> None:
    sc = load_scenario("mixed-fleet")
    assert len(Platform(sc).agent_ids) == 20
    big = sc.with_overrides(agents=1000, seed=99)
    p = Platform(big)
    assert len(p.agent_ids) == 1000 and p.agent_ids[0] == "agent-000" and p.agent_ids[-1] == "agent-999"
    assert p.seed == 99


def test_agents_override_needs_a_fleet(tmp_path: Path) -> None:
    path = _write(tmp_path, '[behaviours.ok]\n[[agents]]\nid = "solo"\nbehaviour = "ok"\n', "solo.toml")
    with pytest.raises(ScenarioError, match=r"has no \[fleet\] table, so --agents cannot size it"):
        load_scenario(str(path)).with_overrides(agents=5)


def test_fleet_mix_is_dealt_in_proportion() -> None:
    p = _platform("mixed-fleet")
    counts = Counter(p.agent_info(a)["behaviour"] for a in p.agent_ids)
    assert counts == {"healthy": 8, "degrading": 3, "drifting": 3, "flaky": 3, "breaching": 3}
    big = _platform("mixed-fleet", agents=10_000)
    counts = Counter(big.agent_info(a)["behaviour"] for a in big.agent_ids)
    assert counts == {"healthy": 4000, "degrading": 1500, "drifting": 1500, "flaky": 1500, "breaching": 1500}


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b = _platform("flaky"), _platform("flaky")
    c = Platform(load_scenario("flaky").with_overrides(seed=12345))
    for p in (a, b, c):
        p.tick(30)
        p.tick(20)
    aid = a.agent_ids[0]
    assert a.evaluations(aid) == b.evaluations(aid)
    assert a.scores(aid) != c.scores(aid)
    # Ticking 50 at once or 30 + 20 draws the same stream.
    d = _platform("flaky")
    d.tick(50)
    assert d.evaluations(aid) == a.evaluations(aid)


def test_evaluation_records_have_the_contract_shape() -> None:
    p = _platform("mixed-fleet")
    p.tick(60)
    seen_ids = set()
    for aid in p.agent_ids:
        evs = p.evaluations(aid)
        ts = [e["ts"] for e in evs]
        assert ts == sorted(ts) and len(set(ts)) == len(ts)  # strictly increasing simulated time
        for e in evs:
            assert set(e) == {"id", "ts", "weighted_score", "status", "rubric", "task_id", "tier"}
            assert isinstance(e["weighted_score"], float) and 0.0 <= e["weighted_score"] <= 1.0
            assert e["status"] in ("pass", "fail", "error")
            assert {"compliance", "safety"} <= set(e["rubric"]) and all(
                isinstance(v, bool) for v in e["rubric"].values()
            )
            assert e["tier"] in ("easy", "medium", "hard") and e["task_id"].startswith(f"gsm-{e['tier']}-")
            assert e["id"] not in seen_ids
            seen_ids.add(e["id"])


def test_tick_validates_its_arguments() -> None:
    p = _platform("steady")
    with pytest.raises(PlatformError, match="n must be an integer"):
        p.tick(-1)
    with pytest.raises(PlatformError, match="n must be an integer"):
        p.tick("3")  # type: ignore[arg-type]
    with pytest.raises(UnknownAgent):
        p.tick(1, ["nobody"])
    assert p.tick(2, [p.agent_ids[0]]) == 2
    assert [len(p.scores(a)) for a in p.agent_ids] == [2, 0, 0]


# --- the pattern each shipped scenario promises ----------------------------------------------------


def test_steady_stays_healthy_for_a_long_run() -> None:
    p = _platform("steady")
    p.tick(3000)
    for aid in p.agent_ids:
        evs = p.evaluations(aid)
        scores = [e["weighted_score"] for e in evs]
        assert 0.88 <= statistics.fmean(scores) <= 0.92
        assert statistics.pstdev(scores) < 0.09
        fail = sum(e["status"] != "pass" for e in evs) / len(evs)
        assert 0.01 <= fail <= 0.035
        assert all(e["rubric"]["compliance"] and e["rubric"]["safety"] for e in evs)
        # No 50-evaluation window ever looks degraded, drifted or flaky.
        for k in range(0, len(evs), 50):
            window = scores[k : k + 50]
            assert statistics.fmean(window) > 0.86, k
            assert statistics.pstdev(window) < 0.12, k


def test_slow_degradation_drifts_gradually_below_082() -> None:
    p = _platform("slow-degradation")
    p.tick(500)
    for evs in _evals_by_behaviour(p, "degrading"):
        windows = [_mean(evs[k : k + 50]) for k in range(0, 500, 50)]
        assert windows[0] > 0.84  # marginal but above the 0.82 target at first
        assert windows[-1] < 0.82  # the last window has fallen below the line
        # Gradual: falling overall, no window-to-window jump anywhere near a step change.
        assert windows[-1] < windows[4] < windows[1]
        assert max(abs(b - a) for a, b in zip(windows, windows[1:], strict=False)) < 0.05


def test_sudden_drift_drops_more_than_7_percent_at_once() -> None:
    p = _platform("sudden-drift")
    p.tick(200)
    for evs in _evals_by_behaviour(p, "drifting"):
        before, after = _mean(evs[50:100]), _mean(evs[100:150])
        assert (before - after) / before > 0.07
        assert abs(_mean(evs[0:50]) - before) < 0.03  # stable before the step


def test_flaky_has_high_variance_and_fail_rate() -> None:
    p = _platform("flaky")
    p.tick(500)
    for evs in _evals_by_behaviour(p, "flaky"):
        scores = [e["weighted_score"] for e in evs]
        fail_rate = sum(e["status"] == "fail" for e in evs) / len(evs)
        assert statistics.pstdev(scores) > 0.12
        assert fail_rate > 0.08


def test_compliance_breach_brings_rubric_failures() -> None:
    p = _platform("compliance-breach")
    p.tick(300)
    for evs in _evals_by_behaviour(p, "breaching"):
        assert all(e["rubric"]["compliance"] and e["rubric"]["safety"] for e in evs[:50])
        late = evs[50:]
        breaches = [e for e in late if not e["rubric"]["compliance"]]
        assert 0.06 < len(breaches) / len(late) < 0.2
        assert any(not e["rubric"]["safety"] for e in late)
        assert all(e["status"] == "fail" for e in breaches)


def test_mixed_fleet_contains_every_pattern() -> None:
    p = _platform("mixed-fleet")
    p.tick(400)
    healthy = _evals_by_behaviour(p, "healthy")
    assert all(_mean(evs[-50:]) > 0.86 for evs in healthy)
    assert all(_mean(evs[-50:]) < 0.82 for evs in _evals_by_behaviour(p, "degrading"))
    assert all(_mean(evs[100:150]) < 0.93 * _mean(evs[50:100]) for evs in _evals_by_behaviour(p, "drifting"))
    assert all(
        statistics.pstdev(e["weighted_score"] for e in evs) > 0.12 for evs in _evals_by_behaviour(p, "flaky")
    )
    assert all(any(not e["rubric"]["compliance"] for e in evs) for evs in _evals_by_behaviour(p, "breaching"))


# --- closing the loop: profile pushes ---------------------------------------------------------------


def test_new_model_recovers_and_rollback_degrades_again() -> None:
    p = _platform("slow-degradation")
    aid = p.agent_ids[0]
    p.tick(400)
    assert _mean(p.evaluations(aid)[-50:]) < 0.82

    p.push_profile(aid, {"profile": "parallel", "model_version": "tiny-gsm-v2", "policy": {"branches": 4}})
    p.tick(200)
    assert _mean(p.evaluations(aid)[-200:]) > 0.89
    assert p.agents()[0] == {"id": aid, "model": "tiny-gsm-v2", "profile": "parallel"}

    p.push_profile(aid, {"profile": "default", "model_version": "tiny-gsm-v1", "policy": {}})  # rollback
    p.tick(100)
    assert _mean(p.evaluations(aid)[-100:]) < 0.82  # the drift is back, at its current (late) level

    p.push_profile(aid, {"profile": "parallel", "model_version": "tiny-gsm-v3-bad", "policy": {}})
    p.tick(50)
    assert _mean(p.evaluations(aid)[-50:]) < 0.82  # bad_versions behave like the base model

    hist = p.profile_history(aid)
    assert hist["base_model"] == "tiny-gsm-v1"
    assert [(h["model_version"], h["mode"], h["at_evaluation"]) for h in hist["history"]] == [
        ("tiny-gsm-v2", "recovered", 400),
        ("tiny-gsm-v1", "base", 600),
        ("tiny-gsm-v3-bad", "base", 700),
    ]
    assert hist["history"][0]["policy"] == {"branches": 4}
    assert hist["history"][1]["previous_model_version"] == "tiny-gsm-v2"
    # Other agents are untouched.
    assert p.profile_history(p.agent_ids[1])["history"] == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "expected"),
        ({"model_version": "v2", "policy": {}}, "'profile' must be a non-empty string"),
        ({"profile": "p", "policy": {}}, "'model_version' must be a non-empty string"),
        ({"profile": "p", "model_version": 2}, "'model_version' must be a non-empty string"),
        ({"profile": "p", "model_version": "v2", "policy": [1]}, "'policy' must be an object"),
    ],
)
def test_profile_push_validation(body: object, message: str) -> None:
    p = _platform("steady")
    with pytest.raises(PlatformError, match=message):
        p.push_profile(p.agent_ids[0], body)
    with pytest.raises(UnknownAgent):
        p.push_profile("nobody", {"profile": "p", "model_version": "v"})


def test_grader_hook_decides_scores() -> None:
    calls = []

    def grader(agent_id: str, model_version: str, task: dict) -> float | dict:
        calls.append((agent_id, model_version, task["task_id"]))
        assert task["transcript"].endswith(f"Final Answer: {task['answer']}")
        if task["tier"] == "hard":
            return {"weighted_score": 0.4, "rubric": {"compliance": False}}
        return 0.97 if model_version == "tiny-gsm-v1" else 0.5

    p = Platform(load_scenario("steady"), grader=grader)
    aid = p.agent_ids[0]
    p.tick(20, [aid])
    evs = p.evaluations(aid)
    assert len(calls) == 20 and all(c[0] == aid and c[1] == "tiny-gsm-v1" for c in calls)
    for e in evs:
        if e["tier"] == "hard":
            assert e["weighted_score"] == 0.4 and e["status"] == "fail" and e["rubric"]["compliance"] is False
        else:
            assert e["weighted_score"] == 0.97 and e["status"] == "pass"
    p.push_profile(aid, {"profile": "p", "model_version": "v2"})
    p.tick(5, [aid])
    assert calls[-1][1] == "v2"
    assert p.state()["model_grader"] is True
