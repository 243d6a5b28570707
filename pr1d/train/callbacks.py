"""The trainer callback SFT and GRPO share: progress with an ETA, metric and checkpoint events, stop requests.

Events go through ``on_event(type, fields)`` (the stage worker's event stream): ``progress`` after every
optimizer step, ``metric`` for each number the trainer logs, ``checkpoint`` for every save. A stop request
(``stop`` set, e.g. on SIGTERM) saves a checkpoint and ends training after the current step; ``stopped``
then says so, and the run's summary reports it as interrupted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

EventFn = Callable[[str, dict[str, Any]], None]
# ``(logs, state, elapsed_s) -> [(metric name, value)]``: the metric events of one Trainer log.
MetricsFn = Callable[[dict[str, Any], Any, float], Iterable[tuple[str, float]]]

__all__ = ["EventCallback", "EventFn", "MetricsFn"]


class EventCallback(TrainerCallback):
    """Progress/metric/checkpoint events per step; a stop request saves a checkpoint and ends training.

    Subclasses add what their trainer does at a step (GRPO: curriculum events and the stop criteria)
    around :meth:`emit_progress` and :meth:`stop_requested`.
    """

    def __init__(self, on_event: EventFn, stop: threading.Event | None, metrics: MetricsFn | None = None) -> None:
        self.on_event = on_event
        self.stop = stop
        self.metrics = metrics
        self.t0 = time.monotonic()
        self.start_step: int | None = None
        self.stopped = False

    def emit_progress(self, state, **extra: Any) -> None:
        """A ``progress`` event; the ETA comes from the steps done since this run (or resume) began."""
        if self.start_step is None:
            self.start_step = state.global_step - 1
        done = state.global_step - self.start_step
        elapsed = time.monotonic() - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (state.max_steps - state.global_step) / rate if rate > 0 else None
        self.on_event("progress", {"step": state.global_step, "total": state.max_steps, "eta_s": eta, **extra})

    def stop_requested(self, control) -> bool:
        """True (and the Trainer told to save and stop) when a stop was requested."""
        if self.stop is None or not self.stop.is_set():
            return False
        control.should_save = True
        control.should_training_stop = True
        self.stopped = True
        return True

    def on_step_end(self, args, state, control, **kwargs):
        self.emit_progress(state)
        self.stop_requested(control)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.metrics is None:
            return
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        for name, value in self.metrics(logs or {}, state, elapsed):
            self.on_event("metric", {"name": name, "value": value, "step": state.global_step})

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.on_event("checkpoint", {"path": str(path), "step": state.global_step})
