"""The stage worker event protocol: JSON lines on a dedicated pipe (fd in $PR1_EVENT_FD).

Written down once here (and in docs/architecture.md). Workers emit; the daemon validates and is the
only one who writes what they say into the ledger. stdout/stderr are plain logs, never events, so a
library that prints cannot corrupt the protocol.

    {"type": "progress", "ts": float, "step": int, "total": int|null, "eta_s": float|null, "message": str}
    {"type": "metric",   "ts": float, "name": str, "value": float, "step": int|null}
    {"type": "log",      "ts": float, "level": "debug|info|warning|error", "message": str}
    {"type": "artifact", "ts": float, "name": str, "path": str, "sha256": str, "size": int, "kind": str, "meta": {}}
    {"type": "checkpoint","ts": float, "path": str, "step": int}
    {"type": "result",   "ts": float, "outputs": {...}}
    {"type": "error",    "ts": float, "message": str, "kind": str}
    {"type": "heartbeat","ts": float}

Exit codes: 0 = done (a `result` event must precede it), 75 = stopped on request after
checkpointing (the stage is `interrupted`, resumable), anything else = failed (the last `error`
event says why).
"""

from __future__ import annotations

import math
from typing import Any

EXIT_OK = 0
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: "try again later" -- resumable
MAX_EVENT_BYTES = 1 << 20

_REQUIRED: dict[str, dict[str, tuple[type, ...]]] = {
    "progress": {"step": (int,)},
    "metric": {"name": (str,), "value": (int, float)},
    "log": {"message": (str,)},
    "artifact": {"name": (str,), "path": (str,), "sha256": (str,)},
    "checkpoint": {"path": (str,)},
    "result": {"outputs": (dict,)},
    "error": {"message": (str,)},
    "heartbeat": {},
}
EVENT_TYPES = tuple(_REQUIRED)


class EventError(ValueError):
    pass


def validate_event(ev: Any) -> dict[str, Any]:
    """Check an event's type and required fields; raises EventError with the reason."""
    if not isinstance(ev, dict):
        raise EventError("event is not a JSON object")
    t = ev.get("type")
    if t not in _REQUIRED:
        raise EventError(f"unknown event type {t!r}")
    for field, types in _REQUIRED[t].items():
        v = ev.get(field)
        if not isinstance(v, types) or isinstance(v, bool):
            raise EventError(f"{t} event: field {field!r} must be {'/'.join(x.__name__ for x in types)}")
    if t == "metric" and not math.isfinite(float(ev["value"])):
        raise EventError(f"metric {ev['name']!r}: value is not finite")
    return ev
