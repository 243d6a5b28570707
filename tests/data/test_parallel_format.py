"""The Parallel format grammar: round trip, error codes and positions, robustness and speed."""

from __future__ import annotations

import pickle
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pr1d.data.parallel_format import (
    ERROR_CODES,
    FINAL_ANSWER,
    TAGS,
    FormatError,
    ParallelBlock,
    Solution,
    Text,
    check,
    clean_answer,
    extract_final_answer,
    measure,
    parse,
    render,
    render_block,
    strip_tags,
)

# --------------------------------------------------------------------------------------------------
# Strategies: valid solutions built from text that comes close to the reserved strings without
# containing one, so the parser's "only exact tags count" rule is exercised, not just plain prose.
# --------------------------------------------------------------------------------------------------

RESERVED = (*TAGS, FINAL_ANSWER)
NEAR_MISSES = [
    "<", ">", "</", "<Path", "Path>", "</Parallel", "<Summary ", "<path>", "Final Answer", "Answer:",
    "final answer:", "Final Answer :", "\n", " ", "\t", "42", "3.50", "1,234", "-7", "=",
]  # fmt: skip
CHARS = st.sampled_from(list("ab xyzP019.,;:=+-$\n\t<>/éΣ"))


def _reserved_free(s: str) -> bool:
    return not any(r in s for r in RESERVED)


free_text = (
    st.lists(st.one_of(st.text(CHARS, max_size=8), st.sampled_from(NEAR_MISSES)), max_size=6)
    .map("".join)
    .filter(_reserved_free)
)
content = free_text.filter(lambda s: s.strip() != "")
blocks = st.builds(ParallelBlock, st.lists(content, min_size=2, max_size=4).map(tuple), content)


@st.composite
def segments(draw: st.DrawFn) -> tuple[Text | ParallelBlock, ...]:
    # Text and blocks alternate (text may be empty): two adjacent texts would be merged, and merging
    # could forge a reserved string ("<Pa" + "th>"), which the constructor rightly refuses.
    out: list[Text | ParallelBlock] = [Text(draw(free_text))]
    for block in draw(st.lists(blocks, max_size=3)):
        out += [block, Text(draw(free_text))]
    return tuple(out)


answers = free_text.map(clean_answer).filter(lambda a: a != "" and "\n" not in a)
solutions = st.builds(Solution, segments(), st.none() | answers)
seps = st.sampled_from(["", "\n", " ", "\n\t \n"])


def _parse_like(solution: Solution, text: str) -> Solution:
    return parse(text, require_final_answer=solution.final_answer is not None)


@given(solutions, seps)
def test_parse_inverts_render(solution: Solution, sep: str) -> None:
    assert _parse_like(solution, render(solution, sep=sep)) == solution


@given(solutions)
def test_valid_text_checks_clean_and_yields_its_answer(solution: Solution) -> None:
    text = render(solution)
    assert check(text, require_final_answer=solution.final_answer is not None) is None
    assert extract_final_answer(text) == solution.final_answer
    assert not any(tag in strip_tags(text) for tag in TAGS)


# --------------------------------------------------------------------------------------------------
# Mutations of valid text: the parser answers with a Solution or a FormatError, nothing else.
# --------------------------------------------------------------------------------------------------

INSERTS = [*TAGS, FINAL_ANSWER, "Final Answer: 7", "\n", " ", "x", "<", ">"]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = render(draw(solutions), sep=draw(seps))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["delete", "insert", "duplicate", "truncate", "drop_tag"]))
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 12)))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + draw(st.sampled_from(INSERTS)) + text[i:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif op == "truncate":
            text = text[:i]
        else:
            present = [t for t in TAGS if t in text]
            if present:
                text = text.replace(draw(st.sampled_from(present)), "", 1)
    return text


def _assert_well_formed_error(err: FormatError, text: str) -> None:
    assert err.code in ERROR_CODES
    assert 0 <= err.pos <= len(text)
    assert (err.line, err.col) == (text.count("\n", 0, err.pos) + 1, err.pos - text.rfind("\n", 0, err.pos))
    assert str(err) == f"line {err.line}, col {err.col}: {err.detail}"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.booleans())
def test_mutations_parse_or_raise_format_error(text: str, require: bool) -> None:
    try:
        solution = parse(text, require_final_answer=require)
    except FormatError as err:
        _assert_well_formed_error(err, text)
        assert check(text, require_final_answer=require).code == err.code
        return
    # Whatever parses is a fixed point of render/parse.
    assert parse(render(solution), require_final_answer=require) == solution
    assert check(text, require_final_answer=require) is None


@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes(text: str) -> None:
    try:
        parse(text)
    except FormatError as err:
        _assert_well_formed_error(err, text)
    extract_final_answer(text)
    strip_tags(text)
    measure(text)


# --------------------------------------------------------------------------------------------------
# Malformed inputs: exact code and position. "‸" marks the expected position and is removed.
# --------------------------------------------------------------------------------------------------

FA = "Final Answer: 1"
PP = "<Path>a</Path><Path>b</Path>"
SUM = "<Summary>s</Summary>"

MALFORMED = [
    # unbalanced tags
    ("missing </Path>", f"<Parallel><Path>a‸<Path>b</Path>{SUM}</Parallel>{FA}", "unbalanced_tag"),
    ("missing </Path> before <Summary>", f"<Parallel>{PP}<Path>c‸{SUM}</Parallel>{FA}", "unbalanced_tag"),
    ("missing </Summary>", f"<Parallel>{PP}<Summary>s‸</Parallel>{FA}", "unbalanced_tag"),
    ("missing </Parallel> at end", f"<Parallel>{PP}{SUM}‸", "unbalanced_tag"),
    ("missing </Parallel> before answer", f"<Parallel>{PP}{SUM}‸\n{FA}", "unbalanced_tag"),
    ("truncated inside a path", "<Parallel><Path>a</Path><Path>half a thou‸", "unbalanced_tag"),
    ("stray </Path> at top level", f"Hello ‸</Path> {FA}", "unbalanced_tag"),
    ("stray </Path> in a block", f"<Parallel>{PP}‸</Path>{SUM}</Parallel>{FA}", "unbalanced_tag"),
    ("stray </Summary> in a block", f"<Parallel>{PP}‸</Summary></Parallel>{FA}", "unbalanced_tag"),
    ("stray </Parallel>", f"x ‸</Parallel>\n{FA}", "unbalanced_tag"),
    # nesting and element order
    ("nested in a path", f"<Parallel><Path>a ‸<Parallel>{PP}{SUM}</Parallel></Path>", "nested_parallel"),
    ("nested between paths", f"<Parallel>{PP}‸<Parallel>{PP}{SUM}</Parallel>{SUM}</Parallel>", "nested_parallel"),
    ("one path, then summary", f"<Parallel><Path>a</Path>‸{SUM}</Parallel>{FA}", "too_few_paths"),
    ("one path, then close", f"<Parallel><Path>a</Path>‸</Parallel>{FA}", "too_few_paths"),
    ("empty block", f"<Parallel>‸</Parallel>{FA}", "too_few_paths"),
    ("missing summary", f"<Parallel>{PP}‸</Parallel>{FA}", "missing_summary"),
    ("summary before paths", f"<Parallel>‸{SUM}{PP}</Parallel>{FA}", "summary_before_paths"),
    ("path after summary", f"<Parallel>{PP}{SUM}‸<Path>c</Path></Parallel>{FA}", "unexpected_tag"),
    ("two summaries", f"<Parallel>{PP}{SUM}‸{SUM}</Parallel>{FA}", "unexpected_tag"),
    ("path outside parallel", f"Intro ‸<Path>a</Path>\n{FA}", "unexpected_tag"),
    ("summary outside parallel", f"‸{SUM}{FA}", "unexpected_tag"),
    # empty elements
    ("empty path", f"<Parallel><Path>a</Path>‸<Path> \n </Path>{SUM}</Parallel>{FA}", "empty_path"),
    ("empty summary", f"<Parallel>{PP}‸<Summary></Summary></Parallel>{FA}", "empty_summary"),
    # text where only layout whitespace may go
    ("text between path and summary", f"<Parallel>{PP}\n ‸so {SUM}</Parallel>{FA}", "text_between_path_and_summary"),
    ("text after last path, then close", f"<Parallel>{PP}‸so</Parallel>{FA}", "text_between_path_and_summary"),
    ("text between paths", f"<Parallel><Path>a</Path> ‸or <Path>b</Path>{SUM}</Parallel>{FA}", "text_between_paths"),
    ("text after <Parallel>", f"<Parallel>\n‸Let me branch.{PP}{SUM}</Parallel>{FA}", "text_in_parallel"),
    ("text after </Summary>", f"<Parallel>{PP}{SUM} ‸ok</Parallel>{FA}", "text_in_parallel"),
    # the final answer
    ("no final answer", "Just some reasoning.\n‸", "missing_final_answer"),
    ("answer only inside a block", f"<Parallel><Path>a ‸{FA}</Path>", "final_answer_in_block"),
    ("answer in a summary", f"<Parallel>{PP}<Summary>so ‸{FA}</Summary></Parallel>{FA}", "final_answer_in_block"),
    ("empty answer", f"<Parallel>{PP}{SUM}</Parallel>\n{FINAL_ANSWER}‸  \n", "empty_final_answer"),
    ("only full stops", f"{FINAL_ANSWER}‸ ...", "empty_final_answer"),
    ("text after the answer line", f"{FA}\n‸I hope that helps.", "text_after_final_answer"),
    ("block after the answer", f"{FA}\n\n‸<Parallel>{PP}{SUM}</Parallel>", "text_after_final_answer"),
    ("tag on the answer line", f"{FA} ‸<Parallel>{PP}{SUM}</Parallel>", "unexpected_tag"),
    ("two answers, one line", f"{FA} ‸{FA}", "duplicate_final_answer"),
    ("two answer lines", f"{FA}\n‸{FA}\n", "duplicate_final_answer"),
]  # fmt: skip


@pytest.mark.parametrize(("marked", "code"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_input_gives_code_and_position(marked: str, code: str) -> None:
    assert marked.count("‸") == 1
    pos = marked.index("‸")
    text = marked.replace("‸", "")
    with pytest.raises(FormatError) as info:
        parse(text)
    assert (info.value.code, info.value.pos) == (code, pos), str(info.value)
    _assert_well_formed_error(info.value, text)


def test_message_names_line_column_and_what_is_allowed() -> None:
    text = "<Parallel><Path>first way</Path><Path>second way</Path> so<Summary>s</Summary></Parallel>"
    err = check(text + FA)
    assert err is not None and err.code == "text_between_path_and_summary"
    assert str(err) == (
        "line 1, col 57: text between </Path> and <Summary> ('so'); only whitespace may appear there"
    )


def test_unclosed_tag_message_points_back_at_the_opener() -> None:
    err = check("Think.\n<Parallel><Path>a</Path>\n<Path>b<Summary>s</Summary></Parallel>")
    assert err is not None and (err.code, err.line, err.col) == ("unbalanced_tag", 3, 8)
    assert (
        "<Path> opened at line 3, col 1" in err.detail and "expected </Path>, found <Summary>" in err.detail
    )


def test_every_error_code_is_exercised() -> None:
    raised = {code for *_, code in MALFORMED} | {code for _, code in CONSTRUCTOR_ERRORS}
    assert raised == set(ERROR_CODES)


def test_missing_answer_is_allowed_when_not_required() -> None:
    text = f"Hm.<Parallel>{PP}{SUM}</Parallel> so far"
    solution = parse(text, require_final_answer=False)
    assert solution == Solution(("Hm.", ParallelBlock(("a", "b"), "s"), " so far"), None)
    # A marker that is present is still checked.
    assert check(f"{FA}\nmore", require_final_answer=False).code == "text_after_final_answer"


# --------------------------------------------------------------------------------------------------
# What parse keeps and what it treats as layout
# --------------------------------------------------------------------------------------------------


def test_layout_whitespace_is_dropped_content_is_verbatim() -> None:
    text = (
        "Two ways.\n<Parallel>\n  <Path>\n2 + 3 = 5\n</Path>\n\n<Path> 3 + 2 = 5 </Path>\t"
        "<Summary>Both give 5.</Summary>\n</Parallel>\nSo Final Answer:  5. \n\n"
    )
    solution = parse(text)
    assert solution == Solution(
        (Text("Two ways.\n"), ParallelBlock(("\n2 + 3 = 5\n", " 3 + 2 = 5 "), "Both give 5."), Text("\nSo ")),
        "5",
    )
    assert render(solution) == (
        "Two ways.\n<Parallel><Path>\n2 + 3 = 5\n</Path><Path> 3 + 2 = 5 </Path>"
        "<Summary>Both give 5.</Summary></Parallel>\nSo Final Answer: 5"
    )
    assert render(solution, sep="\n").startswith("Two ways.\n<Parallel>\n<Path>\n2 + 3 = 5\n</Path>\n<Path>")


def test_near_miss_tags_are_plain_text() -> None:
    text = "a <path> b <Path c Path> d </ Parallel> e Final Answer no colon\nFinal Answer: x<y"
    assert parse(text) == Solution((text[: text.index("Final Answer: x")],), "x<y")


def test_solution_is_canonical() -> None:
    block = ParallelBlock(["p", "q"], "s")  # a list is stored as a tuple
    assert block.paths == ("p", "q")
    assert Solution(("a", Text(""), Text("b"), block, "", Text("c")), " 7. ").segments == (
        Text("ab"),
        block,
        Text("c"),
    )
    assert Solution(("a", Text("b")), "7.") == Solution((Text("ab"),), "7")
    assert Solution(("a", block, "c"), "1").blocks == (block,)


# Constructor-side refusals: values that could not round-trip through text.
CONSTRUCTOR_ERRORS = [
    (lambda: Text("see <Path> here"), "unexpected_tag"),
    (lambda: Text(f"so {FA}"), "misplaced_final_answer"),
    (lambda: Solution(("<Pa", Text("th>")), "1"), "unexpected_tag"),  # joining would forge a tag
    (lambda: ParallelBlock(("only one",), "s"), "too_few_paths"),
    (lambda: ParallelBlock(("a", "  "), "s"), "empty_path"),
    (lambda: ParallelBlock(("a", "b"), "\n"), "empty_summary"),
    (lambda: ParallelBlock(("a", f"b {FA}"), "s"), "final_answer_in_block"),
    (lambda: ParallelBlock(("a", "b</Summary>"), "s"), "unexpected_tag"),
    (lambda: Solution((), " . "), "empty_final_answer"),
    (lambda: Solution((), "4\n5"), "text_after_final_answer"),
    (lambda: Solution((), f"4 {FA} 5"), "duplicate_final_answer"),
    (lambda: Solution((), "4 </Parallel>"), "unexpected_tag"),
]


@pytest.mark.parametrize(("build", "code"), CONSTRUCTOR_ERRORS)
def test_constructors_refuse_what_text_cannot_hold(build, code: str) -> None:
    with pytest.raises(FormatError) as info:
        build()
    assert info.value.code == code


def test_constructor_type_errors() -> None:
    with pytest.raises(TypeError):
        Solution((42,), "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse(b"Final Answer: 1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="whitespace"):
        render(Solution((), "1"), sep=" x ")


def test_render_block() -> None:
    assert (
        render_block(["a", "b"], "s")
        == "<Parallel><Path>a</Path><Path>b</Path><Summary>s</Summary></Parallel>"
    )
    assert render_block(["a", "b"], "s", sep="\n") == (
        "<Parallel>\n<Path>a</Path>\n<Path>b</Path>\n<Summary>s</Summary>\n</Parallel>"
    )
    with pytest.raises(FormatError):
        render_block(["a"], "s")


def test_format_error_pickles() -> None:
    err = check("no answer")
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.code, clone.pos, clone.line, clone.col, str(clone)) == (
        err.code,
        err.pos,
        err.line,
        err.col,
        str(err),
    )
    assert isinstance(clone, ValueError)


# --------------------------------------------------------------------------------------------------
# Tolerant helpers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Final Answer: 42", "42"),
        ("work\nFinal Answer:  42.  \n", "42"),
        ("Final Answer: 3.5.", "3.5"),
        ("Final Answer: 1\nFinal Answer: 2\ntrailing junk", "2"),  # the last line wins, junk or not
        ("Final Answer:\n42", None),  # the answer must be on the marker's line
        ("Final Answer: ...", None),
        ("final answer: 42", None),  # the marker is case-sensitive, as in the grammar
        ("no marker", None),
        # inside an unclosed block: not a final answer, even though it is the last marker
        ("Final Answer: 1\n<Parallel><Path>so Final Answer: 2", "1"),
        ("<Parallel><Path>Final Answer: 2</Path></Parallel> Final Answer: 3", "3"),
        ("</Parallel></Parallel>Final Answer: 4", "4"),  # stray closers do not go negative
    ],
)
def test_extract_final_answer(text: str, answer: str | None) -> None:
    assert extract_final_answer(text) == answer


@pytest.mark.parametrize(
    ("text", "sequential"),
    [
        ("no tags", "no tags"),
        ("<Parallel><Path>a.</Path><Path>b</Path><Summary>c</Summary></Parallel>", "a.\nb\nc"),
        ("x <Parallel>\n<Path> a </Path>\n</Parallel>y", "x \n a \ny"),
        ("</Path></Path>", ""),
    ],
)
def test_strip_tags(text: str, sequential: str) -> None:
    assert strip_tags(text) == sequential


# --------------------------------------------------------------------------------------------------
# Speed: linear scanning, no regex blow-ups
# --------------------------------------------------------------------------------------------------


def _block_text(i: int) -> str:
    paths = [f"Step {i}: {i} + {k} = {i + k}\n" * 3 for k in range(3)]
    return f"Round {i}.\n" + render_block(paths, f"All paths give {i + 1}.", sep="\n") + "\n"


HOSTILE = [
    "<" * 100_000,
    "<Path" * 20_000,
    "<Parallel>" * 10_000,
    "</Path>" * 14_000,
    "Final Answer:" * 7_700,
    "Final Answer: " + ". " * 50_000,
    "1," * 50_000 + "2345",
    "<Parallel><Path>" + "x" * 100_000,
]


def test_100kb_parses_in_milliseconds() -> None:
    body = []
    i = 0
    while sum(map(len, body)) < 100_000:
        body.append(_block_text(i))
        i += 1
    text = "".join(body) + "Final Answer: 7"
    assert len(text) >= 100_000
    start = time.perf_counter()
    solution = parse(text)
    elapsed = time.perf_counter() - start
    assert len(solution.blocks) == i
    # Typically a few ms; the bound leaves room for a busy shared machine.
    assert elapsed < 0.25, f"parse of {len(text)} chars took {elapsed * 1000:.1f} ms"


@pytest.mark.parametrize("text", HOSTILE, ids=lambda t: repr(t[:16]))
def test_hostile_100kb_inputs_stay_fast(text: str) -> None:
    start = time.perf_counter()
    check(text)
    extract_final_answer(text)
    strip_tags(text)
    measure(text)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"took {elapsed * 1000:.1f} ms"
