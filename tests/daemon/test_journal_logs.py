"""Journald-friendly daemon logs: "<N>" priority prefixes under systemd, run=/agent= fields, plain text elsewhere."""

from __future__ import annotations

import logging
import sys

import pytest

from pr1d.daemon.systemd import DaemonLogFormatter, journal_prefixes, render_log_line, sd_priority


@pytest.mark.parametrize(("level", "prio"), [
    (logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6), (logging.DEBUG, 7),
    (logging.WARNING + 1, 4),  # between levels: the more severe one
    (logging.NOTSET, 7),
])
def test_sd_priority(level, prio):
    assert sd_priority(level) == prio


@pytest.mark.parametrize(("environ", "stderr_id", "expected"), [
    ({}, (1, 2), False),                                        # a terminal or a file
    ({"JOURNAL_STREAM": "1:2"}, (1, 2), True),                  # systemd connected our stderr to journald
    ({"JOURNAL_STREAM": "1:2"}, (1, 3), False),                 # inherited, but stderr was redirected since
    ({"JOURNAL_STREAM": "1:2"}, None, False),                   # stderr closed
    ({"INVOCATION_ID": "abc"}, (1, 2), True),                   # started by systemd, no stream variable
    ({"JOURNAL_STREAM": "1:2", "INVOCATION_ID": "abc"}, (9, 9), False),  # the stream check wins
    ({"INVOCATION_ID": ""}, (1, 2), False),
])
def test_journal_prefixes(environ, stderr_id, expected):
    assert journal_prefixes(environ, stderr_id) is expected


CASES = [
    # (level, message, fields, journal, expected)
    (logging.WARNING, "poll cycle skipped: boom", {}, True, "<4>WARNING pr1d.daemon: poll cycle skipped: boom"),
    (logging.INFO, "run 7 stage sft: succeeded", {"run": 7, "stage": "sft"}, True,
     "<6>INFO pr1d.daemon: run 7 stage sft: succeeded run=7 stage=sft"),
    (logging.INFO, "trigger 3: agent a1 drift -> sft", {"agent": "a1", "run": 9, "trigger": 3}, True,
     "<6>INFO pr1d.daemon: trigger 3: agent a1 drift -> sft run=9 agent=a1 trigger=3"),
    # A suppressed trigger has no run: no empty field.
    (logging.INFO, "trigger 3", {"agent": "a1", "run": None}, True, "<6>INFO pr1d.daemon: trigger 3 agent=a1"),
    # A traceback: every line gets the prefix (journald makes each line an entry), fields stay on the first.
    (logging.ERROR, "run 7: crashed\nTraceback:\n  boom", {"run": 7}, True,
     "<3>ERROR pr1d.daemon: run 7: crashed run=7\n<3>Traceback:\n<3>  boom"),
    (logging.DEBUG, "x", {}, True, "<7>DEBUG pr1d.daemon: x"),
    # Outside systemd: a timestamp, no prefix.
    (logging.WARNING, "poll cycle skipped", {"run": 1}, False, "T WARNING pr1d.daemon: poll cycle skipped run=1"),
]


@pytest.mark.parametrize(("level", "message", "fields", "journal", "expected"), CASES)
def test_render_log_line(level, message, fields, journal, expected):
    got = render_log_line(level, logging.getLevelName(level), "pr1d.daemon", message, fields, journal=journal,
                          timestamp="T")
    assert got == expected


def test_formatter_reads_extra_fields_and_tracebacks():
    fmt = DaemonLogFormatter(journal=True)
    try:
        raise ValueError("bad")
    except ValueError:
        rec = logging.LogRecord("pr1d.daemon", logging.ERROR, __file__, 1, "run %s: failed", (5,), sys.exc_info())
    rec.run = 5
    out = fmt.format(rec).splitlines()
    assert out[0] == "<3>ERROR pr1d.daemon: run 5: failed run=5"
    assert all(line.startswith("<3>") for line in out)
    assert out[-1] == "<3>ValueError: bad"


def test_daemon_under_systemd_prefixes_its_lines(daemon_factory, tmp_path):
    d = daemon_factory(extra_env={"INVOCATION_ID": "0123456789abcdef"}).start()
    d.stop()
    lines = [line for line in d.stderr().splitlines() if line]
    assert any(line.startswith("<6>INFO pr1d") and " ready: " in line for line in lines), lines
    assert all(line[:3] in {"<2>", "<3>", "<4>", "<6>", "<7>"} for line in lines), lines
