"""Splitting documents into chunks: markdown by headings then paragraphs, plain text by paragraphs; chunk ids.

Sizes are in *approximate tokens*: `approx_tokens(text) = ceil(1.3 * whitespace words)`. English
averages about 1.3 word pieces per word for BERT-style and BPE tokenizers alike, which is close enough
for packing chunks and for the retrieval context budget without loading any tokenizer.

A chunk never crosses a markdown section: its text starts with the heading trail
("Subtraction > Counting up") so that the embedding knows what the paragraph is about. Paragraphs are
packed greedily up to `chunk_tokens`; a paragraph longer than that is cut into windows that repeat
`overlap` tokens, and consecutive chunks of one section share `overlap` tokens too, so a sentence cut
at a boundary is still whole in one of them.

`chunk_id(source, index, text)` is sha256 of the three, so re-ingesting an unchanged document yields
the same ids (idempotent), and any edit changes the ids of the chunks it touched.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

TOKENS_PER_WORD = 1.3
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def approx_tokens(text: str) -> int:
    """Approximate token count: 1.3 per whitespace-separated word, rounded up."""
    return math.ceil(len(text.split()) * TOKENS_PER_WORD)


def _words_for(tokens: int) -> int:
    return max(1, int(tokens / TOKENS_PER_WORD))


@dataclass(frozen=True)
class TextChunk:
    """A chunk before embedding: its position in the document, its text and its heading trail."""

    index: int
    text: str
    heading: str


def chunk_id(source: str, index: int, text: str) -> str:
    """Content-addressed chunk id: the same document text always gives the same ids."""
    return hashlib.sha256(f"{source}\x1f{index}\x1f{text}".encode()).hexdigest()


def markdown_sections(text: str) -> list[tuple[str, str]]:
    """[(heading trail, body)] of a markdown document; headings inside code fences are not headings."""
    sections: list[tuple[str, str]] = []
    trail: list[tuple[int, str]] = []
    body: list[str] = []
    in_fence = False

    def flush() -> None:
        if any(line.strip() for line in body):
            sections.append((" > ".join(t for _, t in trail), "\n".join(body).strip()))
        body.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        m = None if in_fence else _HEADING.match(line)
        if m:
            flush()
            level = len(m.group(1))
            trail = [(lv, t) for lv, t in trail if lv < level] + [(level, m.group(2).strip())]
        else:
            body.append(line)
    flush()
    return sections


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each with its inner whitespace kept."""
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def _split_long(words: list[str], size: int, overlap: int) -> list[list[str]]:
    step = max(1, size - overlap)
    out = []
    for start in range(0, len(words), step):
        out.append(words[start : start + size])
        if start + size >= len(words):
            break
    return out


def _pack(paras: list[str], size: int, overlap: int) -> list[str]:
    """Greedy packing of paragraphs into chunks of at most `size` words, consecutive ones sharing `overlap`."""
    chunks: list[str] = []
    cur: list[str] = []  # paragraphs of the chunk being built; cur[0] may be the carried overlap
    cur_words = 0
    carried = 0  # how many of cur_words are overlap repeated from the previous chunk

    def emit_and_carry() -> None:
        nonlocal cur, cur_words, carried
        chunks.append("\n\n".join(cur))
        tail = " ".join(cur).split()[-overlap:] if overlap else []
        cur, cur_words, carried = ([" ".join(tail)] if tail else []), len(tail), len(tail)

    for para in paras:
        words = para.split()
        if len(words) > size:
            # Too long for any chunk: close the current one, then cut this paragraph into windows.
            if cur_words > carried:
                emit_and_carry()
            # The first window starts with the overlap carried from the previous chunk, like any chunk.
            lead = " ".join(cur).split()
            chunks.extend(" ".join(w) for w in _split_long(lead + words, size, overlap))
            tail = words[-overlap:] if overlap else []
            cur, cur_words, carried = ([" ".join(tail)] if tail else []), len(tail), len(tail)
            continue
        if cur_words + len(words) > size:
            if cur_words > carried:
                emit_and_carry()
            if cur_words + len(words) > size:
                # The carried overlap plus this paragraph would not fit: start clean instead.
                cur, cur_words, carried = [], 0, 0
        cur.append(para)
        cur_words += len(words)
    # A last chunk holding nothing but the carried overlap would repeat text without adding any.
    if cur_words > carried:
        chunks.append("\n\n".join(cur))
    return chunks


def chunk_document(text: str, *, chunk_tokens: int = 200, overlap: int = 40, markdown: bool = True) -> list[TextChunk]:
    """Chunks of a document, numbered in order; each chunk's text is prefixed by its heading trail."""
    if overlap >= chunk_tokens:
        raise ValueError(f"overlap ({overlap}) must be smaller than chunk_tokens ({chunk_tokens})")
    size, ov = _words_for(chunk_tokens), (_words_for(overlap) if overlap else 0)
    ov = min(ov, size - 1)
    sections = markdown_sections(text) if markdown else [("", text)]
    out: list[TextChunk] = []
    for heading, body in sections:
        # The heading trail is part of every chunk's text, so it comes out of the chunk's budget.
        room = max(ov + 1, size - len(heading.split()))
        for piece in _pack(paragraphs(body), room, ov):
            full = f"{heading}\n\n{piece}" if heading else piece
            out.append(TextChunk(index=len(out), text=full, heading=heading))
    return out
