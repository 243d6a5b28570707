"""What every console page shares: chrome, the messages the app sends pages, and the operator-action guard.

The app's connection worker is the only reader of the socket's event stream. It hands each page a
`Connected` message after every (re)connect — the page then does its one initial fetch — and
`DaemonEvents` batches as they arrive; pages never poll.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer

from ..widgets.chrome import ConnectionBanner, TopBar

# Pushed events are folded into a page at most this often. Every table change makes Textual repaint
# the visible cells; applying each event as it came meant one repaint per event, which under a burst
# kept the loop busy painting. A tenth of a second is below what a person notices.
APPLY_EVERY_S = 0.1

if TYPE_CHECKING:
    from ..app import Pr1App

# Actions that change state in the daemon. Hidden (and refused) in read-only mode or for readers.
OPERATOR_ACTIONS = frozenset({"trigger", "hold", "cancel", "approve", "reject", "rollback"})


class Connected(Message):
    """The app (re)connected and (re)subscribed: time to fetch this page's data."""


class DaemonEvents(Message):
    """A batch of pushed events (dicts with a "topic" key), oldest first."""

    def __init__(self, events: list[dict]):
        super().__init__()
        self.events = events


class Pr1Screen(Screen):
    """A console page: top bar, connection banner, body, footer; loads on connect, updates on events."""

    PAGE = ""  # the mode name highlighted in the top bar ("" for pushed pages: their mode's)
    loaded = False  # set once the first fetch has been applied (tests and the benchmark wait on it)
    _pending: list[dict] | None = None  # events waiting for the next apply

    if TYPE_CHECKING:  # for type checkers only: pages always run inside Pr1App
        @property
        def app(self) -> Pr1App: ...

    def compose(self) -> ComposeResult:
        yield TopBar(self.PAGE or self.app.current_mode)
        yield ConnectionBanner()
        yield from self.compose_body()
        # The palette gets a plain `:` binding in the footer instead of Textual's right-docked ^p hint,
        # which would push `? Help` off an 80-column screen.
        yield Footer(show_command_palette=False)

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        self.app.add_listener(self)
        if self.app.connected:
            self.load()

    def on_unmount(self) -> None:
        self.app.remove_listener(self)

    def on_connected(self, _msg: Connected) -> None:
        self.load()
        self.refresh_bindings()

    def on_daemon_events(self, msg: DaemonEvents) -> None:
        if self._pending is None:
            self._pending = list(msg.events)
            self.set_timer(APPLY_EVERY_S, self._apply_pending)
        else:
            self._pending.extend(msg.events)

    def _apply_pending(self) -> None:
        events, self._pending = self._pending or [], None
        if not events:
            return
        try:
            self.apply_events(events)
        except Exception as e:  # noqa: BLE001 - an event we did not expect must not take the console down
            self.app.report_error(e, f"applying live updates on {self.PAGE or 'this page'}")
            self.load()  # resynchronise from the daemon rather than show half-applied state

    def load(self) -> None:
        """The page's initial fetch; subclasses run it in an exclusive worker."""

    def apply_events(self, events: list[dict]) -> None:
        """Fold pushed events into what the page shows."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in OPERATOR_ACTIONS and not self.app.can_operate:
            return False
        return True
