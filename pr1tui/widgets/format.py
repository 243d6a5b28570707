"""Pure formatting helpers shared by every screen: times, durations, sizes, run-state colours, progress text."""

from __future__ import annotations

import time
from typing import Any

from rich.markup import escape
from rich.text import Text

# Run states (pr1d/ledger/states.py) and how they look. Colours follow the usual on-call reading:
# green done well, yellow needs a person, red went wrong, blue is moving, dim is over and unremarkable.
STATE_STYLE: dict[str, str] = {
    "queued": "cyan",
    "running": "bold blue",
    "interrupted": "magenta",
    "awaiting_approval": "bold yellow",
    "succeeded": "green",
    "promoted": "bold green",
    "rejected": "red",
    "failed": "bold red",
    "cancelled": "dim",
    "rolled_back": "dark_orange",
}
STATE_GLYPH: dict[str, str] = {
    "pending": "○",
    "queued": "○",
    "running": "●",
    "interrupted": "◐",
    "awaiting_approval": "?",
    "succeeded": "✓",
    "promoted": "✓",
    "rejected": "✗",
    "failed": "✗",
    "cancelled": "–",
    "rolled_back": "↩",
    "skipped": "»",  # a stage its run ended before: passed over, never ran
}
# A run in one of these holds its agent (mirrors ACTIVE_RUN_STATES in the ledger).
ACTIVE_STATES = ("queued", "running", "interrupted", "awaiting_approval")
RUN_STATES = tuple(STATE_STYLE)


# Table cells are shared, never mutated: thousands of rows then hold a few objects instead of one rich
# Text each, which keeps the garbage collector's full passes (a UI pause) short.
_STATE_TEXT: dict[str, Text] = {s: Text(s, style=style) for s, style in STATE_STYLE.items()}
DASH = Text("–", style="dim")


def state_text(state: str | None) -> Text:
    """The coloured state name (a shared instance: do not mutate)."""
    s = state or "?"
    cached = _STATE_TEXT.get(s)
    return cached if cached is not None else Text(s, style=STATE_STYLE.get(s, ""))


def cell(value: object) -> str:
    """A DataTable cell from free text: DataTable reads str cells as markup, so escape its brackets."""
    return escape(str(value)) if value is not None else ""


def fmt_ts(ts: float | None, utc: bool = False, short: bool = False) -> str:
    """Absolute time, to the second (`short`: `MM-DD HH:MM` for narrow table columns). UTC when asked
    (snapshots), else the viewer's local time."""
    if not ts:
        return "–"
    t = time.gmtime(ts) if utc else time.localtime(ts)
    return time.strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S", t)


def fmt_duration(seconds: float | None) -> str:
    """Compact human duration: 9s, 4m05s, 2h03m, 3d04h."""
    if seconds is None or seconds < 0:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def fmt_size(n: int | None) -> str:
    if n is None:
        return "–"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def progress_text(progress: float | None, eta_s: float | None, width: int = 10) -> Text:
    """A small text bar for table cells: `█████░░░░░  52% ETA 1m10s`."""
    if progress is None:
        return Text("–", style="dim")
    p = max(0.0, min(1.0, float(progress)))
    filled = int(round(p * width))
    out = Text("█" * filled, style="blue")
    out.append("░" * (width - filled), style="dim")
    out.append(f" {p * 100:3.0f}%")
    if eta_s is not None and p < 1.0:
        out.append(f" ETA {fmt_duration(eta_s)}", style="dim")
    return out


def short_hash(h: str | None, n: int = 12) -> str:
    return (h or "")[:n] or "–"


def one_line(value: Any, limit: int = 80) -> str:
    """Collapse any text to one line of at most `limit` characters (reasons can be long and multi-line)."""
    s = " ".join(str(value or "").split())
    return s if len(s) <= limit else s[: limit - 1] + "…"
