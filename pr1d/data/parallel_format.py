"""The Parallel-R1 format: one grammar, parsed, validated, rendered and measured here only.

The dataset builder, the RL rewards, the scoreboard and the inference policy all import this module;
nothing else in pr1 may carry its own copy of the tag strings or of the regular expressions below.
It is pure Python (no torch) so that the daemon can use it too.

Grammar
=======

A *solution* is free text with zero or more Parallel blocks (never nested), ending with the final
answer line::

    solution := (text | block)* "Final Answer:" answer-line ws*
    block    := "<Parallel>" ws* path (ws* path)+ ws* summary ws* "</Parallel>"
    path     := "<Path>" content "</Path>"
    summary  := "<Summary>" content "</Summary>"

* ``ws`` is any run of whitespace (``str.isspace``: spaces, tabs, newlines, ...). Whitespace is allowed
  *only* at the positions shown: after ``<Parallel>``, between ``</Path>`` and the next ``<Path>`` or
  ``<Summary>``, and between ``</Summary>`` and ``</Parallel>``. Any other character there is an error
  (``text_in_parallel``, ``text_between_paths``, ``text_between_path_and_summary``). That whitespace is
  layout, not content: :func:`parse` drops it and :func:`render` writes ``sep`` there.
* ``content`` (of a path or of the summary) is kept verbatim, leading and trailing whitespace included,
  and must contain at least one non-whitespace character (``empty_path``, ``empty_summary``).
* ``text`` is any text at the top level. It is kept verbatim (including the start of the final answer
  line, e.g. ``"So "`` in ``"So Final Answer: 4"``).
* None of ``text``, ``content`` or the answer may contain one of the six :data:`TAGS` or
  :data:`FINAL_ANSWER`: a tag is structure, and ``Final Answer:`` inside a block is refused
  (``final_answer_in_block``) so that a completion has exactly one answer and it comes last.
  A lone ``<``, ``Path>`` or ``Final Answer`` (no colon) is ordinary text: only the exact strings count,
  because the tokenizer turns exactly these into single special tokens.
* The answer is the rest of the ``Final Answer:`` line, stripped of surrounding whitespace and of
  trailing full stops (``"Final Answer: 42."`` → ``"42"``); it must not be empty. Only whitespace may
  follow that line (``text_after_final_answer``, ``duplicate_final_answer``).

Round trip: ``parse(render(x)) == x`` for every :class:`Solution` ``x`` (the constructors refuse or
canonicalise anything that would break this), and ``render(parse(t))`` equals ``t`` up to the layout
whitespace between tags, trailing whitespace after the answer and trailing full stops of the answer.

Errors: :func:`parse` raises :class:`FormatError` at the first problem, with a stable ``code`` (see
:data:`ERROR_CODES`) and ``pos``, the offset of the first character the parser could not accept
(``len(text)`` when the text ended inside a path or summary; just after the last tag of a block that is
never closed, where its closing tag belongs). :func:`check` returns that error instead of raising.

Metrics (:func:`measure`, :func:`measure_batch`) are defined on :class:`CompletionMetrics` and
:class:`BatchMetrics`; :func:`path_diversity`, :func:`consensus`, :func:`path_answer` and
:func:`normalize_number` are the building blocks.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from types import MappingProxyType

__all__ = [
    "ERROR_CODES",
    "FINAL_ANSWER",
    "PARALLEL_CLOSE",
    "PARALLEL_OPEN",
    "PATH_CLOSE",
    "PATH_OPEN",
    "SUMMARY_CLOSE",
    "SUMMARY_OPEN",
    "TAGS",
    "BatchMetrics",
    "CompletionMetrics",
    "Consensus",
    "FormatError",
    "ParallelBlock",
    "Solution",
    "Text",
    "aggregate",
    "check",
    "clean_answer",
    "consensus",
    "extract_final_answer",
    "measure",
    "measure_batch",
    "normalize_number",
    "parse",
    "path_answer",
    "path_diversity",
    "render",
    "render_block",
    "strip_tags",
]

# --------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------

PARALLEL_OPEN = "<Parallel>"
PARALLEL_CLOSE = "</Parallel>"
PATH_OPEN = "<Path>"
PATH_CLOSE = "</Path>"
SUMMARY_OPEN = "<Summary>"
SUMMARY_CLOSE = "</Summary>"
# The tokenizer adds exactly these strings, in this order, as single special tokens.
TAGS = (PARALLEL_OPEN, PARALLEL_CLOSE, PATH_OPEN, PATH_CLOSE, SUMMARY_OPEN, SUMMARY_CLOSE)
FINAL_ANSWER = "Final Answer:"

# A plain alternation of six literals: the regex engine scans the text once and never backtracks
# beyond a tag's length, so tag search stays linear however hostile the input.
_TAG_RE = re.compile("|".join(re.escape(tag) for tag in TAGS))

ERROR_CODES: Mapping[str, str] = MappingProxyType(
    {
        # Raised by parse() on text.
        "unbalanced_tag": "a tag is not closed (or is closed by the wrong tag), or a closing tag has no opening one",
        "nested_parallel": "<Parallel> inside an open <Parallel> block",
        "unexpected_tag": "a tag where the grammar does not allow it (<Path>/<Summary> outside a block, "
        "<Path> after the <Summary>, a second <Summary>, a tag on the Final Answer line; from a "
        "constructor: a tag inside a text, path, summary or answer)",
        "summary_before_paths": "a block's <Summary> comes before any of its <Path> elements",
        "too_few_paths": "a block with fewer than 2 <Path> elements",
        "missing_summary": "a block closed without its <Summary>",
        "empty_path": "a <Path> with no non-whitespace content",
        "empty_summary": "a <Summary> with no non-whitespace content",
        "text_in_parallel": "non-whitespace text right after <Parallel> or between </Summary> and </Parallel>",
        "text_between_paths": "non-whitespace text between </Path> and the next <Path>",
        "text_between_path_and_summary": "non-whitespace text after the last </Path> of a block, before <Summary>",
        "final_answer_in_block": "'Final Answer:' inside a <Path> or <Summary>",
        "missing_final_answer": "no 'Final Answer:' line after the last block",
        "empty_final_answer": "'Final Answer:' with nothing after it on its line",
        "duplicate_final_answer": "a second 'Final Answer:' after the first",
        "text_after_final_answer": "anything but whitespace after the Final Answer line",
        # Raised only by the Text/ParallelBlock/Solution constructors (text never produces them).
        "misplaced_final_answer": "'Final Answer:' inside a Text segment (it belongs in Solution.final_answer)",
    }
)


class FormatError(ValueError):
    """A text (or a constructed value) that does not follow the Parallel format.

    ``code`` is one of :data:`ERROR_CODES` (stable: rewards and dashboards key on it), ``pos`` the
    0-based character offset of the problem, ``line``/``col`` the same position 1-based, and ``detail``
    the human explanation (what was found and what was expected). ``str(err)`` is
    ``"line L, col C: detail"``. Raised by a constructor, the position is within the offending field
    (e.g. the path string), and the detail names the field.
    """

    def __init__(self, code: str, pos: int, line: int, col: int, detail: str) -> None:
        self.code = code
        self.pos = pos
        self.line = line
        self.col = col
        self.detail = detail
        super().__init__(f"line {line}, col {col}: {detail}")

    def __reduce__(self):  # keep it picklable (stage workers hand errors across processes)
        return (type(self), (self.code, self.pos, self.line, self.col, self.detail))


def _line_col(text: str, pos: int) -> tuple[int, int]:
    return text.count("\n", 0, pos) + 1, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _error(text: str, code: str, pos: int, detail: str) -> FormatError:
    line, col = _line_col(text, pos)
    return FormatError(code, pos, line, col, detail)


def _where(text: str, pos: int) -> str:
    line, col = _line_col(text, pos)
    return f"line {line}, col {col}"


def _snippet(text: str, limit: int = 30) -> str:
    """A short quoted excerpt for messages: enough to recognise, never the whole completion."""
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _found(tag: str | None) -> str:
    return tag if tag is not None else "end of text"


# --------------------------------------------------------------------------------------------------
# The typed structure
# --------------------------------------------------------------------------------------------------


def clean_answer(raw: str) -> str:
    """The answer as :func:`parse` reads it: whitespace and trailing full stops removed.

    ``"  42. "`` → ``"42"``, ``"3.5."`` → ``"3.5"``, ``"..."`` → ``""``. Idempotent, which is what lets
    :class:`Solution` store it canonically.
    """
    end = len(raw)
    # Index arithmetic rather than repeated rstrip(): "....  . ." must stay linear.
    while end and (raw[end - 1] == "." or raw[end - 1].isspace()):
        end -= 1
    return raw[:end].lstrip()


def _check_free(value: str, what: str, fa_code: str) -> None:
    """Refuse a tag or ``Final Answer:`` inside a stored string (constructor-side validation)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    match = _TAG_RE.search(value)
    if match is not None:
        raise _error(value, "unexpected_tag", match.start(), f"{what} contains the tag {match.group()}")
    at = value.find(FINAL_ANSWER)
    if at >= 0:
        raise _error(value, fa_code, at, f"{what} contains {FINAL_ANSWER!r}")


@dataclass(frozen=True)
class Text:
    """Free text at the top level of a solution (outside every block), kept verbatim."""

    text: str

    def __post_init__(self) -> None:
        _check_free(self.text, "text segment", "misplaced_final_answer")


@dataclass(frozen=True)
class ParallelBlock:
    """One ``<Parallel>`` block: two or more paths, then the summary; contents kept verbatim.

    A list for ``paths`` is accepted and stored as a tuple.
    """

    paths: tuple[str, ...]
    summary: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", tuple(self.paths))
        if len(self.paths) < 2:
            raise FormatError(
                "too_few_paths", 0, 1, 1, f"a block needs at least 2 paths, got {len(self.paths)}"
            )
        for i, path in enumerate(self.paths, 1):
            _check_free(path, f"path {i}", "final_answer_in_block")
            if not path.strip():
                raise FormatError("empty_path", 0, 1, 1, f"path {i} is empty or whitespace only")
        _check_free(self.summary, "summary", "final_answer_in_block")
        if not self.summary.strip():
            raise FormatError("empty_summary", 0, 1, 1, "the summary is empty or whitespace only")


Segment = Text | ParallelBlock


@dataclass(frozen=True)
class Solution:
    """A parsed solution: top-level segments in order, then the final answer.

    ``segments`` holds everything before ``Final Answer:`` (the text at the start of the answer line
    included) as :class:`Text` and :class:`ParallelBlock` values. It is canonical: empty texts are
    dropped and adjacent texts merged, so equal texts give equal solutions; a plain ``str`` is accepted
    and wrapped in :class:`Text`. ``final_answer`` is the cleaned answer (see :func:`clean_answer`; it is
    cleaned on construction), or None when the text has no ``Final Answer:`` line (only possible with
    ``parse(..., require_final_answer=False)``).
    """

    segments: tuple[Segment, ...] = ()
    final_answer: str | None = None

    def __post_init__(self) -> None:
        canonical: list[Segment] = []
        pending: list[Text] = []  # a run of adjacent texts, joined once (+= in a loop would be quadratic)

        def flush() -> None:
            if len(pending) == 1:
                if pending[0].text:
                    canonical.append(pending[0])
            elif pending:
                joined = "".join(t.text for t in pending)
                if joined:
                    # Validated again after joining: "<Pa" + "th>" would otherwise smuggle in a tag.
                    canonical.append(Text(joined))
            pending.clear()

        for seg in self.segments:
            if isinstance(seg, str):
                seg = Text(seg)
            if isinstance(seg, Text):
                pending.append(seg)
            elif isinstance(seg, ParallelBlock):
                flush()
                canonical.append(seg)
            else:
                raise TypeError(f"a segment is a Text, a ParallelBlock or a str, not {type(seg).__name__}")
        flush()
        object.__setattr__(self, "segments", tuple(canonical))
        if self.final_answer is not None:
            _check_free(self.final_answer, "final answer", "duplicate_final_answer")
            answer = clean_answer(self.final_answer)
            if not answer:
                raise FormatError("empty_final_answer", 0, 1, 1, "the final answer is empty")
            newline = answer.find("\n")
            if newline >= 0:
                raise _error(
                    answer,
                    "text_after_final_answer",
                    newline,
                    "the final answer spans several lines; it must fit on the Final Answer line",
                )
            object.__setattr__(self, "final_answer", answer)

    @property
    def blocks(self) -> tuple[ParallelBlock, ...]:
        """The Parallel blocks, in order."""
        return tuple(seg for seg in self.segments if isinstance(seg, ParallelBlock))


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _check_sep(sep: str) -> None:
    if sep.strip():
        raise ValueError(f"sep must be whitespace only (it goes between tags), got {sep!r}")


def _render_block(block: ParallelBlock, sep: str) -> str:
    parts = [PARALLEL_OPEN]
    for path in block.paths:
        parts += [sep, PATH_OPEN, path, PATH_CLOSE]
    parts += [sep, SUMMARY_OPEN, block.summary, SUMMARY_CLOSE, sep, PARALLEL_CLOSE]
    return "".join(parts)


def render(solution: Solution, *, sep: str = "") -> str:
    """The text of ``solution``; ``parse(render(x, sep=s)) == x`` for every whitespace ``s``.

    ``sep`` (whitespace only) is written at each layout position inside a block, e.g. ``"\\n"`` for one
    tag per line; the default writes tags back to back, which is what a tokenizer with the tags as
    special tokens needs. The answer is written as ``"Final Answer: " + final_answer``.
    """
    _check_sep(sep)
    parts = [seg.text if isinstance(seg, Text) else _render_block(seg, sep) for seg in solution.segments]
    if solution.final_answer is not None:
        parts.append(f"{FINAL_ANSWER} {solution.final_answer}")
    return "".join(parts)


def render_block(paths: Sequence[str], summary: str, *, sep: str = "") -> str:
    """``<Parallel><Path>…</Path>…<Summary>…</Summary></Parallel>``, validated like :class:`ParallelBlock`."""
    _check_sep(sep)
    return _render_block(ParallelBlock(tuple(paths), summary), sep)


def strip_tags(text: str) -> str:
    """The sequential view of ``text``: every tag removed, contents kept in order.

    Where removing a tag would glue two words together (``"a.</Path><Path>b"``), a newline takes its
    place; elsewhere the text is unchanged. Works on any text, well formed or not.
    """
    out: list[str] = []
    last = ""
    for piece in _TAG_RE.split(text):
        if not piece:
            continue
        if last and not last[-1].isspace() and not piece[0].isspace():
            out.append("\n")
        out.append(piece)
        last = piece
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------


class _Parser:
    """One left-to-right pass over the tag positions; text between tags is sliced, never re-scanned."""

    def __init__(self, text: str) -> None:
        self.text = text
        n = len(text)
        # End-of-text sentinel (tag None) so every step can ask for "the next tag" unconditionally.
        self.tags = [(m.start(), m.end(), m.group()) for m in _TAG_RE.finditer(text)] + [(n, n, None)]
        self.i = 0
        self.cursor = 0  # offset just after the last consumed tag

    def _next(self) -> tuple[int, int, str | None]:
        tag = self.tags[self.i]
        if tag[2] is not None:
            self.i += 1
        return tag

    def _raise(self, code: str, pos: int, detail: str) -> FormatError:
        return _error(self.text, code, pos, detail)

    def solution(self, require_final_answer: bool) -> Solution:
        text = self.text
        segments: list[Segment] = []
        while True:
            start, end, tag = self._next()
            answer_at = text.find(FINAL_ANSWER, self.cursor, start)
            if answer_at >= 0:
                segments.append(Text(text[self.cursor : answer_at]))
                return Solution(tuple(segments), self._final_answer(answer_at, start, tag))
            segments.append(Text(text[self.cursor : start]))
            if tag is None:
                if require_final_answer:
                    raise self._raise(
                        "missing_final_answer",
                        start,
                        f"expected a last line '{FINAL_ANSWER} <answer>', found end of text",
                    )
                return Solution(tuple(segments), None)
            if tag == PARALLEL_OPEN:
                segments.append(self._block(start, end))
            elif tag in (PATH_OPEN, SUMMARY_OPEN):
                raise self._raise(
                    "unexpected_tag", start, f"{tag} outside a <Parallel> block; it only appears inside one"
                )
            else:
                opener = "<" + tag[2:]
                raise self._raise("unbalanced_tag", start, f"{tag} without a matching {opener} before it")

    def _block(self, open_start: int, open_end: int) -> ParallelBlock:
        text = self.text
        paths: list[str] = []
        summary: str | None = None
        self.cursor = open_end
        prev = PARALLEL_OPEN  # the last structural tag, which decides what may come next
        while True:
            start, end, tag = self._next()
            if tag is None:
                # Report where the missing tag belongs (right after the last one), not the end of text:
                # for "...</Summary>\nFinal Answer: 4" the fix is a </Parallel> before the answer.
                rest = text[self.cursor :]
                found = f"text ({_snippet(rest)})" if rest.strip() else "end of text"
                raise self._raise(
                    "unbalanced_tag",
                    self.cursor,
                    f"the <Parallel> opened at {_where(text, open_start)} is not closed: "
                    f"expected {self._expected(prev, paths)} after {prev}, found {found}",
                )
            self._check_gap(prev, tag, start)
            if tag == PATH_OPEN:
                if summary is not None:
                    raise self._raise(
                        "unexpected_tag", start, f"<Path> after the <Summary>; expected {PARALLEL_CLOSE}"
                    )
                paths.append(self._content(start, end, PATH_OPEN, PATH_CLOSE, "empty_path"))
                prev = PATH_CLOSE
            elif tag == SUMMARY_OPEN:
                if summary is not None:
                    raise self._raise(
                        "unexpected_tag", start, f"a second <Summary>; expected {PARALLEL_CLOSE}"
                    )
                if not paths:
                    raise self._raise(
                        "summary_before_paths", start, "<Summary> before any <Path>; the paths come first"
                    )
                if len(paths) < 2:
                    raise self._raise(
                        "too_few_paths", start, "<Summary> after 1 path; a block needs at least 2 <Path>"
                    )
                summary = self._content(start, end, SUMMARY_OPEN, SUMMARY_CLOSE, "empty_summary")
                prev = SUMMARY_CLOSE
            elif tag == PARALLEL_CLOSE:
                if len(paths) < 2:
                    raise self._raise(
                        "too_few_paths",
                        start,
                        f"{PARALLEL_CLOSE} after {len(paths)} path(s); a block needs at least 2 <Path>",
                    )
                if summary is None:
                    raise self._raise(
                        "missing_summary", start, f"{PARALLEL_CLOSE} without a <Summary>; expected <Summary>"
                    )
                self.cursor = end
                return ParallelBlock(tuple(paths), summary)
            elif tag == PARALLEL_OPEN:
                raise self._raise(
                    "nested_parallel",
                    start,
                    f"<Parallel> inside the block opened at {_where(text, open_start)}; blocks do not nest",
                )
            else:
                raise self._raise(
                    "unbalanced_tag",
                    start,
                    f"{tag} without a matching {'<' + tag[2:]}; expected {self._expected(prev, paths)}",
                )

    @staticmethod
    def _expected(prev: str, paths: list[str]) -> str:
        if prev == SUMMARY_CLOSE:
            return PARALLEL_CLOSE
        if len(paths) < 2:
            return PATH_OPEN
        return f"{PATH_OPEN} or {SUMMARY_OPEN}"

    def _check_gap(self, prev: str, tag: str, start: int) -> None:
        """Only layout whitespace may sit between structural tags; name the slot that holds text."""
        gap = self.text[self.cursor : start]
        stripped = gap.lstrip()
        if not stripped:
            return
        at = start - len(stripped)
        if prev == PATH_CLOSE and tag == PATH_OPEN:
            code, where = "text_between_paths", "between </Path> and <Path>"
        elif prev == PATH_CLOSE:
            code = "text_between_path_and_summary"
            where = "between </Path> and <Summary>" if tag == SUMMARY_OPEN else f"between </Path> and {tag}"
        else:
            code, where = "text_in_parallel", f"between {prev} and {tag}"
        raise self._raise(code, at, f"text {where} ({_snippet(gap)}); only whitespace may appear there")

    def _content(self, open_start: int, open_end: int, opener: str, closer: str, empty_code: str) -> str:
        text = self.text
        start, end, tag = self._next()
        answer_at = text.find(FINAL_ANSWER, open_end, start)
        if answer_at >= 0:
            raise self._raise(
                "final_answer_in_block",
                answer_at,
                f"{FINAL_ANSWER!r} inside {opener}; the final answer goes after the last </Parallel>",
            )
        if tag != closer:
            if tag == PARALLEL_OPEN:
                raise self._raise("nested_parallel", start, f"<Parallel> inside {opener}; blocks do not nest")
            raise self._raise(
                "unbalanced_tag",
                start,
                f"the {opener} opened at {_where(text, open_start)} is not closed: "
                f"expected {closer}, found {_found(tag)}",
            )
        content = text[open_end:start]
        if not content.strip():
            raise self._raise(
                empty_code, open_start, f"{opener} has no content; expected some text before {closer}"
            )
        self.cursor = end
        return content

    def _final_answer(self, marker: int, next_tag: int, tag: str | None) -> str:
        """Read the answer line at ``marker``; only whitespace may follow it."""
        text = self.text
        begin = marker + len(FINAL_ANSWER)
        line_end = text.find("\n", begin)
        if line_end < 0:
            line_end = len(text)
        again = text.find(FINAL_ANSWER, begin, line_end)
        if next_tag < line_end and (again < 0 or next_tag < again):
            raise self._raise(
                "unexpected_tag",
                next_tag,
                f"tag {tag} on the Final Answer line; blocks come before the answer",
            )
        if again >= 0:
            raise self._raise(
                "duplicate_final_answer", again, f"a second {FINAL_ANSWER!r} on the answer line"
            )
        answer = clean_answer(text[begin:line_end])
        if not answer:
            raise self._raise(
                "empty_final_answer",
                begin,
                f"nothing after {FINAL_ANSWER!r}; expected the answer on this line",
            )
        rest = text[line_end:]
        stripped = rest.lstrip()
        if stripped:
            at = len(text) - len(stripped)
            if stripped.startswith(FINAL_ANSWER):
                raise self._raise("duplicate_final_answer", at, f"a second {FINAL_ANSWER!r} line")
            raise self._raise(
                "text_after_final_answer",
                at,
                f"text after the Final Answer line ({_snippet(stripped)}); it must be the last line",
            )
        return answer


def parse(text: str, *, require_final_answer: bool = True) -> Solution:
    """Parse ``text`` into a :class:`Solution`, or raise :class:`FormatError` at the first problem.

    With ``require_final_answer=False`` a text without any ``Final Answer:`` is accepted (its
    ``final_answer`` is None), e.g. to measure the block structure of a completion that stopped early;
    a ``Final Answer:`` that is present is still checked. Linear in ``len(text)``.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() takes a str, not {type(text).__name__}")
    return _Parser(text).solution(require_final_answer)


def check(text: str, *, require_final_answer: bool = True) -> FormatError | None:
    """The first format error of ``text``, or None when it parses; never raises :class:`FormatError`.

    One error, not a list: the parser stops at the first problem, because after a broken tag the rest
    of the structure is guesswork and a second error would mostly be noise.
    """
    try:
        parse(text, require_final_answer=require_final_answer)
    except FormatError as err:
        return err
    return None


def extract_final_answer(text: str) -> str | None:
    """The answer on the last ``Final Answer:`` line outside every block, cleaned; tolerant of bad format.

    Works on any text. "Outside every block" means not after an unclosed ``<Parallel>`` (counted with
    a depth counter, so broken structure does not matter): an answer written inside a path of a
    truncated completion is not its final answer. The answer is the rest of that line run through
    :func:`clean_answer` (whitespace and trailing full stops removed); None when there is no such line or
    it is empty. The marker is case-sensitive, as in the grammar.
    """
    depth = 0
    found = -1
    cursor = 0
    for match in _TAG_RE.finditer(text):
        if depth == 0:
            at = text.rfind(FINAL_ANSWER, cursor, match.start())
            if at >= 0:
                found = at
        if match.group() == PARALLEL_OPEN:
            depth += 1
        elif match.group() == PARALLEL_CLOSE:
            depth = max(0, depth - 1)
        cursor = match.end()
    if depth == 0:
        at = text.rfind(FINAL_ANSWER, cursor)
        if at >= 0:
            found = at
    if found < 0:
        return None
    begin = found + len(FINAL_ANSWER)
    line_end = text.find("\n", begin)
    answer = clean_answer(text[begin : line_end if line_end >= 0 else len(text)])
    return answer or None


# --------------------------------------------------------------------------------------------------
# Answers inside paths
# --------------------------------------------------------------------------------------------------

# Thousands separators only where well formed ("1,234"), so a list "3,4,5" reads as three numbers.
# The look-behind keeps digits inside identifiers ("x2", "v1.2") from counting as numbers, and reads
# "10-3" as 10 and 3 (a subtraction), not 10 and -3. "−" is the Unicode minus sign.
_NUMBER_IN_TEXT = re.compile(r"(?<![\w.])[-−]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_NUMBER_FULL = re.compile(r"([-+−]?)\$?(\d[\d,]*)?(?:\.(\d+))?")


def normalize_number(s: str) -> str | None:
    """``s`` as a canonical number string, or None when ``s`` is not (just) a number.

    Tolerates surrounding whitespace, a sign (``-``, ``+``, Unicode ``−``), a ``$`` after the sign,
    thousands commas, and one trailing full stop. Canonical form: commas removed, no leading zeros,
    no trailing zeros after the decimal point and no bare ``.0`` (``"1,234.50"`` → ``"1234.5"``,
    ``"51.0"`` → ``"51"``, ``"-0"`` → ``"0"``), so equal values compare equal as strings.
    """
    t = s.strip()
    if t.endswith("."):
        t = t[:-1]
    match = _NUMBER_FULL.fullmatch(t)
    if match is None:
        return None
    sign, whole, frac = match.groups()
    if whole is None and frac is None:
        return None
    whole = (whole or "").replace(",", "").lstrip("0") or "0"
    frac = (frac or "").rstrip("0")
    number = f"{whole}.{frac}" if frac else whole
    return "-" + number if sign in ("-", "−") and number != "0" else number


def path_answer(path_text: str) -> str | None:
    """The answer a path reaches: the *last* number in it, normalised; None if it has no number.

    One rule for every path (and for final answers, see :meth:`Consensus.agrees_with`): reasoning ends
    with its result ("… so the result is 42."), and the last number is the cheapest reading of that
    which needs no per-template pattern.
    """
    last = deque(_NUMBER_IN_TEXT.finditer(path_text), maxlen=1)  # only the last match is kept
    return normalize_number(last[0].group()) if last else None


@dataclass(frozen=True)
class Consensus:
    """How far a block's paths agree: each path's answer, the majority answer and how many reach it."""

    answers: tuple[str | None, ...]
    majority: str | None  # the most common answer; ties go to the earliest path; None if no path has one
    agreeing: int  # paths whose answer is the majority answer

    @property
    def total(self) -> int:
        return len(self.answers)

    @property
    def rate(self) -> float | None:
        """``agreeing / total`` (paths with no answer count as disagreeing); None when no path has an answer."""
        if self.majority is None or not self.answers:
            return None
        return self.agreeing / len(self.answers)

    def agrees_with(self, final: str | None) -> bool:
        """True when ``final`` (a final answer or any text) reaches the majority answer.

        ``final`` is read with the path rule (:func:`path_answer`), so ``"$1,234."`` matches ``"1234"``.
        """
        return final is not None and self.majority is not None and path_answer(final) == self.majority


def consensus(paths: Sequence[str]) -> Consensus:
    """The :class:`Consensus` of ``paths`` (e.g. ``block.paths``), answers read with :func:`path_answer`."""
    answers = tuple(path_answer(p) for p in paths)
    # Counter keeps first-seen order among equal counts, which gives the documented tie-break.
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return Consensus(answers, None, 0)
    majority, agreeing = counts.most_common(1)[0]
    return Consensus(answers, majority, agreeing)


# --------------------------------------------------------------------------------------------------
# Path diversity
# --------------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"\w+")


def _features(text: str) -> frozenset[tuple[str, ...]]:
    words = _WORD_RE.findall(text.lower())
    return frozenset(zip(words, strict=False)) | frozenset(zip(words, words[1:], strict=False))


def _jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0  # two paths with no words at all are indistinguishable
    return len(a & b) / len(a | b)


def path_diversity(paths: Sequence[str]) -> float:
    """``1 − mean pairwise Jaccard similarity`` of the paths' word unigram+bigram sets, in [0, 1].

    Words are ``\\w+`` runs, lowercased. Identical paths (or any identical word sets) score exactly 0,
    paths sharing no word score 1; fewer than 2 paths score 0 (nothing to differ from).

    Why not Parallel-R1's ``1.2 − 0.2·self-BLEU``: that lives in [1.0, 1.2], so it reads badly as a KPI
    and identical paths do not give 0; BLEU's 4-grams and brevity penalty make short paths (a few fact
    lines, typical here) score near 0 similarity regardless of content unless smoothed, and smoothing is
    one more choice to pin. Jaccard over unigrams+bigrams is bounded, symmetric, deterministic, needs no
    dependency, and bigrams still see a change of order ("3 + 4" vs "4 + 3").
    """
    if len(paths) < 2:
        return 0.0
    features = [_features(p) for p in paths]
    pairs = list(combinations(features, 2))
    return 1.0 - sum(_jaccard(a, b) for a, b in pairs) / len(pairs)


# --------------------------------------------------------------------------------------------------
# Metrics over completions
# --------------------------------------------------------------------------------------------------


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class CompletionMetrics:
    """Format metrics of one completion (see :func:`measure`).

    * ``format_ok`` — ``parse(text)`` succeeds, final answer included: format adherence, 1/0.
    * ``structure_ok`` — ``parse(text, require_final_answer=False)`` succeeds: the block structure is
      valid even if the answer line is missing. Every field below is measured on that parse and is
      0 / empty / None when it fails (a block we cannot trust is not counted).
    * ``error_code`` — the code of the strict parse's error, None when ``format_ok``.
    * ``n_blocks``, ``paths_per_block``.
    * ``parallel_fraction`` — characters of path and summary content over characters of path and summary
      content plus top-level text (tags, layout whitespace and the answer line's answer excluded); 0 for
      a sequential completion.
    * ``path_diversity`` — mean :func:`path_diversity` over the blocks; None without blocks.
    * ``consensus_rate`` — mean :attr:`Consensus.rate` over the blocks where it is defined; else None.
    * ``final_agrees`` — the final answer reaches the majority answer of the *last* block (the one the
      answer follows from); None without a block, a final answer or a majority.
    """

    format_ok: bool
    structure_ok: bool
    error_code: str | None
    n_blocks: int
    paths_per_block: tuple[int, ...]
    parallel_fraction: float
    path_diversity: float | None
    consensus_rate: float | None
    final_agrees: bool | None

    @property
    def has_parallel(self) -> bool:
        """At least one valid block: what the batch ``parallel_ratio`` counts."""
        return self.n_blocks > 0


def _measure_solution(solution: Solution, format_ok: bool, error_code: str | None) -> CompletionMetrics:
    blocks = solution.blocks
    inside = sum(sum(map(len, b.paths)) + len(b.summary) for b in blocks)
    outside = sum(len(seg.text) for seg in solution.segments if isinstance(seg, Text))
    verdicts = [consensus(b.paths) for b in blocks]
    final_agrees = None
    if verdicts and verdicts[-1].majority is not None and solution.final_answer is not None:
        final_agrees = verdicts[-1].agrees_with(solution.final_answer)
    return CompletionMetrics(
        format_ok=format_ok,
        structure_ok=True,
        error_code=error_code,
        n_blocks=len(blocks),
        paths_per_block=tuple(len(b.paths) for b in blocks),
        parallel_fraction=inside / (inside + outside) if inside + outside else 0.0,
        path_diversity=_mean(path_diversity(b.paths) for b in blocks),
        consensus_rate=_mean(v.rate for v in verdicts if v.rate is not None),
        final_agrees=final_agrees,
    )


def measure(text: str) -> CompletionMetrics:
    """The :class:`CompletionMetrics` of one completion; never raises on malformed text."""
    try:
        return _measure_solution(parse(text), True, None)
    except FormatError as strict:
        try:
            return _measure_solution(parse(text, require_final_answer=False), False, strict.code)
        except FormatError:
            return CompletionMetrics(False, False, strict.code, 0, (), 0.0, None, None, None)


@dataclass(frozen=True)
class BatchMetrics:
    """Format KPIs over a batch of completions (see :func:`aggregate`); JSON-friendly fields.

    Every KPI is a mean over *completions* (so one long completion with many blocks does not outweigh
    the others), taken over the completions where it is defined; None when it is defined for none.

    * ``n`` — completions in the batch.
    * ``format_adherence`` — fraction with ``format_ok``.
    * ``parallel_ratio`` — fraction with at least one valid block (``has_parallel``).
    * ``mean_blocks`` — mean ``n_blocks`` over all completions.
    * ``mean_paths_per_block`` — mean paths over all valid blocks of the batch (this one is per block).
    * ``parallel_fraction`` — mean ``parallel_fraction`` over all completions.
    * ``path_diversity``, ``consensus_rate`` — means over completions where defined.
    * ``final_agreement`` — fraction of ``final_agrees`` over completions where it is defined.
    An empty batch gives ``n == 0``, fractions 0.0 and None elsewhere.
    """

    n: int
    format_adherence: float
    parallel_ratio: float
    mean_blocks: float
    mean_paths_per_block: float | None
    parallel_fraction: float
    path_diversity: float | None
    consensus_rate: float | None
    final_agreement: float | None


def aggregate(metrics: Iterable[CompletionMetrics]) -> BatchMetrics:
    """Combine per-completion metrics (e.g. stored ones) into :class:`BatchMetrics`."""
    items = list(metrics)
    n = len(items)
    paths = [k for m in items for k in m.paths_per_block]
    return BatchMetrics(
        n=n,
        format_adherence=sum(m.format_ok for m in items) / n if n else 0.0,
        parallel_ratio=sum(m.has_parallel for m in items) / n if n else 0.0,
        mean_blocks=sum(m.n_blocks for m in items) / n if n else 0.0,
        mean_paths_per_block=_mean(paths),
        parallel_fraction=sum(m.parallel_fraction for m in items) / n if n else 0.0,
        path_diversity=_mean(m.path_diversity for m in items if m.path_diversity is not None),
        consensus_rate=_mean(m.consensus_rate for m in items if m.consensus_rate is not None),
        final_agreement=_mean(float(m.final_agrees) for m in items if m.final_agrees is not None),
    )


def measure_batch(texts: Iterable[str]) -> BatchMetrics:
    """:class:`BatchMetrics` of a batch of completion texts."""
    return aggregate(measure(t) for t in texts)
