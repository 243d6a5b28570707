"""Confirmation dialogs for every destructive action: each says exactly what will happen, most need a reason.

`ConfirmModal` serves cancel, reject, hold and rollback; `ApproveModal` (a ConfirmModal) approves, and
for a run whose gate was inconclusive asks for an explicit acceptance first; `TriggerModal` is the form
for a new run. They return their answer through `dismiss` (None means the operator backed out) and never
call the daemon themselves: the app does, so every action goes through one error-reporting path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from pr1d.rpc.schema import gate_inconclusive, gate_reasons, gate_uplift_text


class ConfirmModal(ModalScreen[str | None]):
    """Yes/no with the consequences spelled out; dismisses with the reason ("" if optional and empty)."""

    BINDINGS = [Binding("escape", "cancel", "Back out")]

    def __init__(self, title: str, body: str | Text, confirm_label: str, *, reason_required: bool,
                 danger: bool = True, reason_hint: str = ""):
        super().__init__()
        self.title_text, self.body, self.confirm_label = title, body, confirm_label
        self.reason_required, self.danger = reason_required, danger
        self.reason_hint = reason_hint

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="danger" if self.danger else ""):
            yield Label(self.title_text, id="dialog-title")
            yield Static(self.body, id="dialog-body")
            yield from self.compose_extra()
            hint = self.reason_hint or ("reason (required, recorded in the audit log)" if self.reason_required
                                        else "reason (optional, recorded in the audit log)")
            yield Input(placeholder=hint, id="reason", compact=True)
            with Horizontal(id="dialog-buttons"):
                yield Button("Back out (esc)", id="cancel", compact=True)
                yield Button(self.confirm_label, id="confirm", variant="error" if self.danger else "primary",
                             disabled=self.problem("") is not None, compact=True)

    def compose_extra(self) -> Iterable[Widget]:
        """Widgets a particular dialog adds between its body and the reason (none here)."""
        return ()

    def problem(self, reason: str) -> str | None:
        """What still stops the confirmation (shown as a warning), or None when it may go."""
        if self.reason_required and not reason:
            return "a reason is required: it goes into the audit log with your name"
        return None

    def on_mount(self) -> None:
        inp = self.query_one("#reason", Input)
        inp.cursor_blink = not getattr(self.app, "stable", False)
        inp.focus()

    @property
    def reason(self) -> str:
        return self.query_one("#reason", Input).value.strip()

    def refresh_confirm(self) -> None:
        self.query_one("#confirm", Button).disabled = self.problem(self.reason) is not None

    @on(Input.Changed, "#reason")
    def _reason_changed(self) -> None:
        self.refresh_confirm()

    @on(Input.Submitted, "#reason")
    def _reason_submitted(self) -> None:
        self._confirm()

    @on(Button.Pressed, "#confirm")
    def _confirm(self) -> None:
        problem = self.problem(self.reason)
        if problem is not None:
            self.notify(problem, severity="warning")
            return
        self.dismiss(self.reason)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class ApproveModal(ConfirmModal):
    """Approve a run. A run whose promotion gate was inconclusive gets a warning with the gate's reasons,
    uplift CI and bar, and a checkbox that must be ticked; only then does `params` carry
    `accept_inconclusive` (the daemon refuses the approval without it). A passed run's dialog is the
    plain confirmation."""

    DEFAULT_CSS = """
    ApproveModal #inconclusive-warning {
        height: auto;
        margin-bottom: 1;
        padding: 0 1;
        border-left: thick $warning;
    }
    """
    ACCEPT_LABEL = "I accept the inconclusive gate result"

    def __init__(self, run: dict):
        rid, agent, inconclusive = run["id"], run.get("agent_id", "?"), gate_inconclusive(run.get("gate"))
        body = (f"Approve run {rid} and promote its candidate model to agent {agent}: the deployment pointer "
                f"moves to the new version and the agent manager receives its profile. Roll back from "
                f"Deployments if it misbehaves.")
        super().__init__(f"Approve run {rid}" + (" — gate inconclusive" if inconclusive else ""), body,
                         "Approve and promote", reason_required=True)
        self.run_id, self.gate, self.inconclusive = rid, run.get("gate"), inconclusive
        self.accepted = False  # the operator ticked the acceptance (inconclusive runs only)

    def warning(self) -> Text:
        """Why the gate could not decide: its reasons, then the uplift CI against the bar when known."""
        out = Text("The promotion gate was inconclusive: it could not tell whether the candidate is better.",
                   style="bold yellow")
        for r in gate_reasons(self.gate) or ["(the gate recorded no reasons)"]:
            out.append(f"\n• {r}")
        uplift = gate_uplift_text(self.gate)
        if uplift:
            out.append(f"\nuplift: {uplift}", style="bold")
        return out

    def compose_extra(self) -> Iterable[Widget]:
        if not self.inconclusive:
            return ()
        return (Static(self.warning(), id="inconclusive-warning"),
                Checkbox(self.ACCEPT_LABEL, id="accept-inconclusive", compact=True))

    def problem(self, reason: str) -> str | None:
        if self.inconclusive and not self.accepted:
            return f"the gate was inconclusive: tick '{self.ACCEPT_LABEL}' to approve it anyway"
        return super().problem(reason)

    @on(Checkbox.Changed, "#accept-inconclusive")
    def _accept_changed(self, event: Checkbox.Changed) -> None:
        self.accepted = event.value
        self.refresh_confirm()

    def params(self, reason: str) -> dict:
        """The `runs.approve` params for this answer (the flag only when the operator accepted)."""
        out: dict = {"run": self.run_id, "reason": reason}
        if self.inconclusive and self.accepted:
            out["accept_inconclusive"] = True
        return out


class TriggerModal(ModalScreen[dict | None]):
    """Queue a run: agent, kind, params (JSON object) and reason, with a live sentence of what will happen."""

    BINDINGS = [Binding("escape", "cancel", "Back out")]

    def __init__(self, agents: list[str], kinds: list[str], agent: str | None = None, kind: str = "sleep"):
        super().__init__()
        self.agents = agents or ([agent] if agent else [])
        self.kinds = kinds
        self.agent = agent if agent in self.agents else (self.agents[0] if self.agents else None)
        self.kind = kind if kind in kinds else kinds[0]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Trigger a run", id="dialog-title")
            with Horizontal(classes="form-row"):
                yield Label("agent", classes="form-label")
                yield Select([(a, a) for a in self.agents], value=self.agent or Select.NULL, allow_blank=False,
                             id="agent", compact=True)
            with Horizontal(classes="form-row"):
                yield Label("kind", classes="form-label")
                yield Select([(k, k) for k in self.kinds], value=self.kind, allow_blank=False, id="kind",
                             compact=True)
            with Horizontal(classes="form-row"):
                yield Label("params", classes="form-label")
                yield Input(value=self._default_params(self.kind), placeholder='JSON object, e.g. {"seconds": 5}',
                            id="params", compact=True)
            with Horizontal(classes="form-row"):
                yield Label("reason", classes="form-label")
                yield Input(placeholder="optional, recorded in the audit log", id="reason", compact=True)
            yield Static(id="dialog-body")
            with Horizontal(id="dialog-buttons"):
                yield Button("Back out (esc)", id="cancel", compact=True)
                yield Button("Trigger", id="confirm", variant="warning", compact=True)

    @staticmethod
    def _default_params(kind: str) -> str:
        # `sleep` is the diagnostic kind operators reach for; give it a visible, short default.
        return '{"seconds": 5}' if kind == "sleep" else "{}"

    def on_mount(self) -> None:
        stable = getattr(self.app, "stable", False)
        for inp in self.query(Input):
            inp.cursor_blink = not stable
        self.query_one("#reason", Input).focus()
        self._describe()

    def _params(self) -> dict:
        raw = self.query_one("#params", Input).value.strip() or "{}"
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError("params must be a JSON object")
        return value

    def _describe(self) -> None:
        body = self.query_one("#dialog-body", Static)
        button = self.query_one("#confirm", Button)
        try:
            params = self._params()
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            body.update(Text(f"params: {e}", style="red"))
            button.disabled = True
            return
        button.disabled = self.agent is None
        body.update(Text.assemble(
            "Queue a ", (self.kind, "bold"), " run for agent ", (str(self.agent), "bold"),
            f" with params {json.dumps(params, sort_keys=True)}. ",
            "It starts when a stage slot is free; the agent takes no other run until this one ends.",
        ))

    @on(Select.Changed, "#agent")
    def _agent_changed(self, event: Select.Changed) -> None:
        self.agent = str(event.value) if event.value is not Select.NULL else None
        self._describe()

    @on(Select.Changed, "#kind")
    def _kind_changed(self, event: Select.Changed) -> None:
        old_default = self._default_params(self.kind)
        self.kind = str(event.value)
        params = self.query_one("#params", Input)
        if params.value.strip() in ("", old_default):  # keep what the operator typed, swap only our default
            params.value = self._default_params(self.kind)
        self._describe()

    @on(Input.Changed, "#params")
    def _params_changed(self) -> None:
        self._describe()

    @on(Input.Submitted)
    @on(Button.Pressed, "#confirm")
    def _confirm(self) -> None:
        if self.query_one("#confirm", Button).disabled:
            return
        self.dismiss({"agent": self.agent, "kind": self.kind, "params": self._params(),
                      "reason": self.query_one("#reason", Input).value.strip()})

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
