"""Help page: every key binding of the console, generated from the classes' BINDINGS (never hand-written), and
the legend of the dashboard's signals column."""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.dom import DOMNode
from textual.widgets import DataTable, Static

from .base import OPERATOR_ACTIONS, Pr1Screen
from .dashboard import signals_legend


def own_bindings(cls: type[DOMNode]) -> list[Binding]:
    """The bindings a class declares, plus those of its pr1tui base classes, nearest first, one per key.

    Bindings inherited from Textual's own classes (Screen, Input, DataTable, App) are listed once, in
    their own sections, instead of under every page that inherits them.
    """
    seen: set[str] = set()
    out: list[Binding] = []
    for klass in cls.__mro__:
        if klass is not cls and not klass.__module__.startswith("pr1tui."):
            break
        for b in Binding.make_bindings(klass.__dict__.get("BINDINGS") or ()):
            if b.key in seen:
                continue  # a subclass overrode it
            seen.add(b.key)
            out.append(b)
    return out


def binding_rows(sections: Iterable[tuple[str, type[DOMNode]]], key_display) -> list[tuple[str, str, str]]:
    """(where, key, what) for each binding, in section order; `key_display(binding)` formats the key."""
    rows: list[tuple[str, str, str]] = []
    for title, cls in sections:
        for b in own_bindings(cls):
            what = b.description or b.action.replace("_", " ")
            if b.action in OPERATOR_ACTIONS:
                what += "  (operator; asks to confirm)"
            rows.append((title, key_display(b), what))
    return rows


class HelpScreen(Pr1Screen):
    """Pushed over any page with `?`; esc, q or ? closes it."""

    AUTO_FOCUS = "#help"
    BINDINGS = [
        Binding("escape", "close", "Close help"),
        Binding("q", "close", "Close help", show=False),
        Binding("question_mark", "close", "Close help", show=False, key_display="?"),
    ]

    def __init__(self, sections: list[tuple[str, type[DOMNode]]]):
        super().__init__()
        self.sections = sections

    def compose_body(self) -> ComposeResult:
        yield Static("Keys — also `:` or ctrl+p for the command palette (every action by name)", classes="info")
        yield DataTable(id="help", cursor_type="row", zebra_stripes=True)
        yield Static(signals_legend(), id="legend", classes="panel")

    def on_mount(self) -> None:
        table = self.query_one("#help", DataTable)
        table.add_columns("where", "key", "does")
        last = None
        for where, key, what in binding_rows(self.sections, self.app.get_key_display):
            table.add_row(where if where != last else "", key, what)
            last = where
        table.focus()
        self.loaded = True
        super().on_mount()

    def load(self) -> None:
        """Nothing to fetch: the bindings are known at import time."""

    def action_close(self) -> None:
        self.app.pop_screen()
