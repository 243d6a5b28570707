"""Reading a stage worker's JSON event stream in tests that run `python -m pr1d.stages.<stage>` directly."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable


def read_events(
    proc: subprocess.Popen, until: Callable[[dict], bool] | None = None, timeout: float = 120.0
) -> list[dict]:
    """The events a worker prints on stdout, up to the first one ``until`` accepts (or EOF, or ``timeout``)."""
    events, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("{"):
            events.append(json.loads(line))
            if until and until(events[-1]):
                return events
        if time.monotonic() > deadline:
            break
    return events
