"""Screen chrome shown on every page: the top bar (navigation, identity, link state) and the connection banner.

Both only *watch* the app's reactives (`connected`, `identity`, `link_note`) so the app's connection
worker is the single writer; every screen composes its own instances.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import RenderResult
from textual.widgets import Static

# (mode, key, label): the top-level pages; keys match the app's bindings.
NAV = (("dashboard", "1", "Dashboard"), ("runs", "2", "Runs"), ("approvals", "3", "Approvals"),
       ("deployments", "4", "Deploys"))


class TopBar(Static):
    """`pr1 │ 1 Dashboard 2 Runs 3 Approvals 4 Deploys │ ● alice operator`: where you are and who you are."""

    def __init__(self, page: str, **kw):
        super().__init__(**kw)
        self.page = page

    def on_mount(self) -> None:
        for attr in ("connected", "identity", "read_only"):
            self.watch(self.app, attr, lambda _v: self.refresh(), init=False)

    def render(self) -> RenderResult:
        app = self.app
        out = Text("pr1 ", style="bold")
        for mode, key, label in NAV:
            here = mode == self.page
            out.append(f" {key} ", style="reverse" if here else "dim")
            out.append(f"{label} ", style="bold" if here else "")
        out.append(" │ ")
        out.append("● " if app.connected else "○ ", style="green" if app.connected else "red")
        ident = app.identity
        if ident is None:
            out.append("not connected" if not app.connected else "…", style="dim")
        else:
            out.append(app.shown_user(ident.user), style="bold")
            out.append(f" {ident.role}", style="green" if ident.is_operator else "yellow")
        if app.read_only:
            out.append(" read-only", style="bold yellow")
        return out


class ConnectionBanner(Static):
    """Visible only while the daemon is unreachable; says why and that the console keeps retrying."""

    def on_mount(self) -> None:
        self.watch(self.app, "connected", self._sync)
        self.watch(self.app, "link_note", lambda _v: self._sync(self.app.connected))

    def _sync(self, connected: bool) -> None:
        self.display = not connected
        if not connected:
            self.update(Text.assemble(("pr1d is unreachable", "bold"), " — ", self.app.link_note or "connecting…",
                                      "  (the console reconnects by itself; data shown may be stale)"))
