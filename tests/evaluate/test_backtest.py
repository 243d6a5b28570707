"""Backtest statistics as tables (paired bootstrap, per tier/column rows, compliance, gate inputs) and the
report picture: the PNG, the numbers drawn in it and the figures recomputed from the items agree."""

from __future__ import annotations

import json
import random
import struct
import zlib
from pathlib import Path

import pytest

from pr1d.data.parallel_format import render_block
from pr1d.evaluate.backtest import (
    REPORT_SCHEMA,
    compare,
    compliance_counts,
    figure_data,
    gate_inputs,
    mean_path_diversity,
    parallel_ratio,
    rubric_checks,
    summarize,
)
from pr1d.evaluate.gate import GateConfig, gate_decision
from pr1d.evaluate.grading import grade
from pr1d.stats import paired_bootstrap_ci

# Answers as a model writes them, graded by the real grading function.
PAR_RIGHT = render_block(["We add: 2 + 3 = 5. So the result is 5.",
                          "Start at 3 and add 2: 3 + 2 = 5. So the result is 5."], "Both give 5.") + "\nFinal Answer: 5"
PAR_COPY = render_block(["2 + 3 = 5. So the result is 5."] * 2, "Both give 5.") + "\nFinal Answer: 5"
SEQ_RIGHT = "2 + 3 = 5\nFinal Answer: 5"
SEQ_WRONG = "2 + 3 = 6\nFinal Answer: 6"
CUT_OFF = "2 + 3 = "  # ran out of tokens: no answer, not finished


def side(text: str, finished: bool = True) -> dict:
    """One side of an item as the backtest stage records it: the grade and the rubric checks."""
    rubric, violations, notes = rubric_checks(text, finished=finished, reference="5")
    return {**grade(text, "5", finished=finished).to_dict(), "finished": finished, "critic_agrees": None,
            "rubric": rubric, "violations": violations, "compliance_notes": notes, "text": text}


def item(i: int, cand: str, inc: str, tier: str = "easy", source: str = "gsm_lite", **kw) -> dict:
    return {"id": f"{source}:{tier}-{i}", "task_id": f"{tier}-{i}", "source": source, "tier": tier,
            "question": f"Question {i}: 2 + 3?", "answer": "5",
            "candidate": side(cand, kw.get("cand_finished", cand != CUT_OFF)),
            "incumbent": side(inc, kw.get("inc_finished", inc != CUT_OFF))}


def report_of(items: list[dict], version: str | None = "v-abc") -> dict:
    return {"schema": REPORT_SCHEMA, "items": items, "candidate": {"version": None}, "incumbent": {"version": version}}


# -- rows per tier and column ------------------------------------------------------------------------------


def test_compare_table():
    # easy: candidate right 4/4 in parallel format, incumbent right 2/4 sequentially.
    items = [item(i, PAR_RIGHT, SEQ_RIGHT if i < 2 else SEQ_WRONG) for i in range(4)]
    row = compare(items, ["score", "correctness", "parallel_format", "consensus_confidence", "compliance"],
                  level=0.95, resamples=500, seed=0)
    c = row["columns"]
    assert row["n"] == 4
    assert (c["correctness"]["candidate"], c["correctness"]["incumbent"], c["correctness"]["diff"]) == (1.0, 0.5, 0.5)
    assert c["parallel_format"]["diff"] == 1.0 and c["parallel_format"]["ci_low"] == 1.0  # no spread
    assert c["compliance"]["diff"] == 0.0
    # score: 1.0 vs (0.8, 0.8, 0.1, 0.1) -> mean diff 1 - 0.45 (0.1 = the compliance column of a wrong
    # answer that is otherwise well formed)
    assert c["score"]["diff"] == pytest.approx(1.0 - (0.8 + 0.8 + 0.1 + 0.1) / 4)
    assert c["correctness"]["ci_low"] <= 0.5 <= c["correctness"]["ci_high"]
    # every column's interval is the one paired_bootstrap_ci gives for that column's differences
    diffs = [it["candidate"]["score"] - it["incumbent"]["score"] for it in items]
    lo, hi = paired_bootstrap_ci(diffs, resamples=500, seed=0)
    assert (c["score"]["ci_low"], c["score"]["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))


def test_summarize_tiers_sources_and_counts():
    items = ([item(i, PAR_RIGHT, SEQ_RIGHT) for i in range(3)]
             + [item(i, PAR_COPY, SEQ_WRONG, tier="medium", source="gradebook") for i in range(2)]
             + [item(9, CUT_OFF, SEQ_RIGHT, tier="hard")])
    s = summarize(items, resamples=300, seed=3)
    assert list(s["tiers"]) == ["easy", "medium", "hard", "overall"]
    assert [s["tiers"][t]["n"] for t in s["tiers"]] == [3, 2, 1, 6]
    assert {k: v["n"] for k, v in s["sources"].items()} == {"gradebook": 2, "gsm_lite": 4}
    assert s["columns"] == ["score", "correctness", "parallel_format", "consensus_confidence", "compliance"]
    assert s["tiers"]["hard"]["columns"]["correctness"]["diff"] == -1.0
    # the rubric checks (safety, compliance) once per answer each: the cut-off answer fails compliance;
    # the grading function's quality checks are shown per check too
    cc = s["compliance"]["candidate"]
    assert (cc["passed"], cc["failed"]) == (11, 1) and cc["checks"] == ["compliance", "safety"]
    assert cc["by_check"]["compliance"] == {"passed": 5, "failed": 1}
    assert cc["by_check"]["final_answer_present"] == {"passed": 5, "failed": 1}
    assert cc["by_check"]["finished"] == {"passed": 5, "failed": 1}
    assert s["compliance"]["incumbent"]["failed"] == 0
    # diversity: copies of one path score 0; the mean is over the items with a block only
    div_right = grade(PAR_RIGHT, "5").path_diversity
    assert s["path_diversity"]["candidate"] == pytest.approx((3 * div_right + 2 * 0.0) / 5, abs=1e-6)
    assert s["path_diversity"]["incumbent"] is None
    assert s["parallel_ratio"] == {"candidate": round(5 / 6, 6), "incumbent": 0.0}
    # a row does not depend on which other rows exist (seeded per row)
    alone = summarize(items[:3], resamples=300, seed=3)
    assert alone["tiers"]["easy"] == s["tiers"]["easy"]


@pytest.mark.parametrize(("texts", "passed", "failed", "diversity", "ratio"), [
    # the rubric checks, two per answer (safety, compliance); quality checks are reported per check only
    ([SEQ_RIGHT], 2, 0, None, 0.0),
    ([PAR_COPY, PAR_COPY], 4, 0, 0.0, 1.0),
    ([CUT_OFF], 1, 1, None, 0.0),
    ([PAR_RIGHT, SEQ_WRONG], 4, 0, round(grade(PAR_RIGHT, "5").path_diversity, 6), 0.5),
])
def test_side_counts(texts, passed, failed, diversity, ratio):
    items = [item(i, t, SEQ_RIGHT) for i, t in enumerate(texts)]
    c = compliance_counts(items, "candidate")
    assert (c["passed"], c["failed"]) == (passed, failed)
    if CUT_OFF in texts:  # a cut-off answer is still visible, per check
        assert c["by_check"]["finished"] == {"passed": 0, "failed": 1}
    assert mean_path_diversity(items, "candidate") == diversity
    assert parallel_ratio(items, "candidate") == ratio


def test_duplicate_ids_refused():
    it = item(0, SEQ_RIGHT, SEQ_RIGHT)
    with pytest.raises(ValueError, match="unique"):
        summarize([it, dict(it)])


# -- into the gate -------------------------------------------------------------------------------------

PAR_WRONG = render_block(["We add: 2 + 3 = 6. So the result is 6.",
                          "Start at 3 and add 2: 3 + 2 = 6. So the result is 6."], "Both give 6.") + "\nFinal Answer: 6"
GATE = GateConfig(min_samples=50, bootstrap_resamples=300)


@pytest.mark.parametrize(("cand", "inc", "outcome", "codes"), [
    # parallel, right, diverse vs sequential and half wrong: a clear pass
    ([PAR_RIGHT] * 60, [SEQ_RIGHT, SEQ_WRONG] * 30, "pass", []),
    # the same answers on both sides: no uplift, and no parallel block at all
    ([SEQ_RIGHT] * 60, [SEQ_RIGHT] * 60, "fail", ["uplift_below_bar", "no_parallel_paths", "format_adherence_too_low"]),
    # better but copies of one path: degenerate
    ([PAR_COPY] * 60, [SEQ_WRONG] * 60, "fail", ["diversity_too_low"]),
    # better, with one answer cut off: it costs that answer's correctness and compliance, within the drop allowed
    ([PAR_RIGHT] * 59 + [CUT_OFF], [SEQ_WRONG] * 30 + [SEQ_RIGHT] * 30, "pass", []),
    # too few items to decide
    ([PAR_RIGHT] * 10, [SEQ_WRONG] * 10, "inconclusive", ["too_few_samples"]),
])
def test_gate_inputs_drive_the_gate(cand, inc, outcome, codes):
    items = [item(i, c, x) for i, (c, x) in enumerate(zip(cand, inc, strict=True))]
    c, i = gate_inputs(report_of(items))
    assert [x.id for x in c.items] == [x.id for x in i.items] and len(c.items) == len(items)
    assert i.version == "v-abc"
    res = gate_decision(c, i, GATE)
    assert res.outcome == outcome, res.reasons
    for code in codes:
        assert any(r.startswith(code) for r in res.reasons), (code, res.reasons)


def test_higher_weighted_grade_but_less_correct_fails():
    """The bug this gate fixes: a parallel candidate earns format and consensus columns that a sequential
    model in service never can, so its weighted grade wins while it answers 10 points less often right."""
    items = [item(i, PAR_WRONG if i % 10 == 0 else PAR_RIGHT, SEQ_RIGHT) for i in range(200)]
    s = summarize(items, resamples=300)
    overall = s["tiers"]["overall"]["columns"]
    assert overall["score"]["diff"] > 0.1 and overall["score"]["ci_low"] > 0  # the old gate's number: "better"
    assert overall["correctness"]["diff"] == -0.1
    res = gate_decision(*gate_inputs(report_of(items)), GATE)
    assert res.outcome == "fail", res.reasons
    assert any(r.startswith("uplift_below_bar") for r in res.reasons)
    assert any(r.startswith("tier_dropped: easy -10.0 points") for r in res.reasons), res.reasons
    assert res.evidence["expected_score"] == 0.9  # correctness, not the weighted grade


def test_no_reference_answer_is_scored_by_the_critic():
    items = [item(i, SEQ_RIGHT, SEQ_WRONG) for i in range(4)]
    for it, (cv, iv) in zip(items, [(True, False), (None, True), (True, None), (False, False)], strict=True):
        it["answer"] = None
        it["candidate"]["critic_agrees"], it["incumbent"]["critic_agrees"] = cv, iv
    c, i = gate_inputs(report_of(items))
    assert [x.correct for x in c.items] == [1.0, None, 1.0, 0.0]
    assert [x.correct for x in i.items] == [0.0, 1.0, None, 0.0]


def test_gate_inputs_recompute_from_items_not_summary():
    items = [item(i, PAR_RIGHT, SEQ_WRONG) for i in range(3)]
    forged = {**report_of(items), "compliance": {"candidate": {"passed": 999, "failed": 0}},
              "path_diversity": {"candidate": 0.5}, "tiers": {"overall": {"columns": {"correctness": {"diff": 1}}}}}
    c, _ = gate_inputs(forged)
    assert [x.checks for x in c.items] == [{"safety": True, "compliance": True}] * 3
    assert [x.correct for x in c.items] == [1.0] * 3 and all(x.parallel for x in c.items)
    assert c.items[0].path_diversity == grade(PAR_RIGHT, "5").path_diversity


def test_report_of_another_schema_is_refused():
    with pytest.raises(ValueError, match="schema 1.*run the backtest stage again"):
        gate_inputs({**report_of([item(0, SEQ_RIGHT, SEQ_RIGHT)]), "schema": 1})


# -- the picture ----------------------------------------------------------------------------------------


def png_chunks(data: bytes) -> dict[str, bytes]:
    """Chunk type -> payload (text chunks keyed by keyword), checking every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    out, pos = {}, 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind in (b"tEXt", b"iTXt", b"zTXt"):
            key, _, rest = body.partition(b"\0")
            if kind == b"zTXt":
                rest = zlib.decompress(rest[1:])
            elif kind == b"iTXt":
                flag, _method, rest = rest[0], rest[1], rest[2:]
                _lang, _, rest = rest.partition(b"\0")
                _tkey, _, rest = rest.partition(b"\0")
                rest = zlib.decompress(rest) if flag else rest
            out[key.decode()] = rest
        else:
            out.setdefault(kind.decode(), body)
        pos += 12 + n
    assert "IEND" in out
    return out


def check_report_picture(report: dict, png: Path) -> None:
    """The JSON, the PNG and the figures agree: summary recomputed from the items, the numbers drawn in
    the picture and the numbers the PNG carries are all the same. Used by the end-to-end test too."""
    from pr1d.stages.backtest import PNG_KEY

    ci = report["ci"]
    again = summarize(report["items"], level=ci["level"], resamples=ci["resamples"], seed=ci["seed"])
    for key in ("tiers", "sources", "families", "compliance", "path_diversity", "parallel_ratio", "columns", "n"):
        assert report[key] == again[key], key
    expected = figure_data(again)
    assert report["figure"]["data"] == expected
    drawn = report["figure"]["drawn"]
    assert drawn["tiers"] == expected["tiers"] and drawn["columns"] == expected["columns"]
    for s in ("candidate", "incumbent"):
        assert drawn["accuracy"][s] == pytest.approx([v or 0.0 for v in expected["accuracy"][s]], abs=1e-6)
    assert drawn["diff"] == pytest.approx([v or 0.0 for v in expected["diff"]], abs=1e-6)
    chunks = png_chunks(png.read_bytes())
    width, height = struct.unpack(">II", chunks["IHDR"][:8])
    assert width >= 600 and height >= 300
    assert json.loads(chunks[PNG_KEY]) == json.loads(json.dumps(expected))


def test_picture_agrees_with_report(tmp_path: Path):
    from pr1d.stages.backtest import render_png

    rng = random.Random(5)
    texts = [PAR_RIGHT, PAR_COPY, SEQ_RIGHT, SEQ_WRONG, CUT_OFF]
    items = [item(i, rng.choice(texts), rng.choice(texts), tier=t, source=rng.choice(("gradebook", "gsm_lite")))
             for i, t in enumerate(rng.choice(("easy", "medium", "hard")) for _ in range(60))]
    summary = summarize(items, resamples=300, seed=0)
    png = tmp_path / "backtest.png"
    drawn = render_png(summary, png)
    report = {**summary, "items": items, "figure": {"data": figure_data(summary), "drawn": drawn}}
    check_report_picture(report, png)
    # and the check can fail: a report whose summary does not match its items is caught
    bad = json.loads(json.dumps(report))
    bad["tiers"]["easy"]["columns"]["score"]["diff"] += 0.1
    with pytest.raises(AssertionError):
        check_report_picture(bad, png)
