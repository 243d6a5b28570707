"""A stage worker stuck on its way out still ends itself once its daemon is gone (no orphan holds a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from pr1d.pipeline.events import EXIT_INTERRUPTED
from tests.conftest import pr1_env

STUCK = textwrap.dedent("""
    import signal, sys, threading
    from pr1d.stages.base import Worker
    w = Worker(sys.argv[1])
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # deaf to PDEATHSIG, like a worker deadlocked on its locks
    print("ready", flush=True)
    threading.Event().wait()  # never returns by itself
""")


def _spec(tmp_path, grace):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"run_id": 1, "stage": "stuck", "stage_dir": str(tmp_path), "run_dir": str(tmp_path),
                                "checkpoint_dir": str(tmp_path / "ckpt"), "heartbeat_s": 60, "orphan_grace_s": grace}))
    return spec


def test_stuck_worker_exits_after_its_daemon_is_gone(tmp_path):
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # plays the daemon
    env = pr1_env(PR1_DAEMON_PID=str(stand_in.pid))
    env.pop("PR1_EVENT_FD", None)
    worker = subprocess.Popen([sys.executable, "-c", STUCK, str(_spec(tmp_path, 2.0))], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "ready"
        time.sleep(2.5)
        assert worker.poll() is None, "the daemon is alive: the watchdog must leave the stage alone"
        stand_in.kill()
        stand_in.wait()
        started = time.monotonic()
        assert worker.wait(30) == EXIT_INTERRUPTED
        assert time.monotonic() - started < 15
        assert "has not stopped: exiting (75)" in worker.stderr.read()
    finally:
        for p in (worker, stand_in):
            if p.poll() is None:
                p.kill()


SIGNAL_WHILE_HOLDING = textwrap.dedent("""
    import os, signal, sys, time
    from pr1d.stages.base import Worker
    w = Worker(sys.argv[1])
    # The race seen under load: the main thread is inside stop_requested.set() (its write to a dead
    # daemon just failed) when PDEATHSIG's SIGTERM lands. Hold the Event's lock and take the signal.
    with w.stop_requested._cond:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # the handler runs here, between bytecodes, while the lock is held
    print("handler returned", flush=True)
    print("stop requested" if w.stop_requested.wait(10) else "stop lost", flush=True)
""")


def test_sigterm_while_the_main_thread_holds_the_stop_event_does_not_deadlock(tmp_path):
    env = pr1_env()
    env.pop("PR1_EVENT_FD", None)
    env.pop("PR1_DAEMON_PID", None)
    cp = subprocess.run([sys.executable, "-c", SIGNAL_WHILE_HOLDING, str(_spec(tmp_path, 60.0))], env=env,
                        capture_output=True, text=True, timeout=30)  # the old handler hung here for good
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split("\n")[:2] == ["handler returned", "stop requested"], cp.stdout + cp.stderr
