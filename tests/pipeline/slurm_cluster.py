"""A real one-host Slurm for the tests: munged, slurmctld and slurmd on this machine, from a slurm.conf in a
temp folder (Debian's slurm-wlm, installed by `scripts/setup --dev` when root with apt).

`slurm_cluster()` skips the test with the reason when the binaries are missing or the tests do not run as root
(slurmd starts jobs as their user, so it must be root). Client commands find the cluster through
``$SLURM_CONF``, which the fixture sets for the whole test session (daemons started by the tests inherit it).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "sinfo", "squeue")
SKIP_WHY = "slurm-wlm not installed: run scripts/setup --dev as root"
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing() -> str | None:
    """Why this machine cannot run the Slurm tests, or None."""
    absent = [b for b in BINARIES if shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]
    if absent:
        return f"{SKIP_WHY} (missing {', '.join(absent)})"
    if os.geteuid() != 0:
        return f"{SKIP_WHY} (the tests start slurmd, which must run as root)"
    return None


def _which(b: str) -> str:
    return shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or b


def _munge_ok() -> bool:
    try:
        cred = subprocess.run([_which("munge"), "-n"], capture_output=True, timeout=5)
        return cred.returncode == 0 and subprocess.run([_which("unmunge")], input=cred.stdout, capture_output=True,
                                                       timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _wait(what: str, ok, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {p}:\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    raise RuntimeError(f"{what} not ready within {timeout:g} s\n{tails}")


def _node_idle() -> bool:
    cp = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return cp.returncode == 0 and cp.stdout.strip() == "idle"


def _squeue() -> str:
    cp = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30)
    return cp.stdout.strip() if cp.returncode == 0 else ""


def _kill_leftovers(root: Path) -> None:
    """A job step whose slurmd went first keeps its slurmstepd, and the step its processes: end this cluster's,
    known by their open files under ``root`` (slurmstepd) or their ``SLURM_CONF`` (the jobs' processes)."""
    conf = f"SLURM_CONF={root / 'slurm.conf'}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            mine = conf in (proc / "environ").read_bytes().split(b"\0") or (
                (proc / "cmdline").read_bytes().startswith(b"slurmstepd")
                and any(os.readlink(fd).startswith(str(root)) for fd in (proc / "fd").iterdir()))
        except OSError:
            continue
        if mine:
            with contextlib.suppress(OSError):
                os.kill(int(proc.name), signal.SIGKILL)


@contextmanager
def running_cluster() -> Iterator[Path]:
    """munged (unless one already answers), slurmctld and slurmd for this host; yields the slurm.conf path."""
    host = socket.gethostname().split(".")[0]
    root = Path(tempfile.mkdtemp(prefix="pr1-slurm-"))
    os.chmod(root, 0o755)
    for d in ("state", "spool"):
        (root / d).mkdir()
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=pr1test",
        f"SlurmctldHost={host}",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MpiDefault=none",
        "SlurmUser=root",
        "SlurmdUser=root",
        "ReturnToService=2",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "KillWait=5",
        "MinJobAge=300",
        "InactiveLimit=0",
        "SchedulerParameters=sched_interval=1",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        f"NodeName={host} CPUs=2 RealMemory=500 State=UNKNOWN",
        f"PartitionName=pr1 Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    started: list[subprocess.Popen] = []
    logs = [root / "slurmctld.log", root / "slurmd.log", root / "munged.log"]
    try:
        if not _munge_ok():
            MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
            munge = pwd.getpwnam("munge")
            os.chown(MUNGE_SOCKET.parent, munge.pw_uid, munge.pw_gid)
            # Our own child (not through runuser), so stopping it leaves no zombie behind.
            started.append(subprocess.Popen([_which("munged"), "--foreground"], user=munge.pw_uid,
                                            group=munge.pw_gid, extra_groups=[], stdout=subprocess.DEVNULL,
                                            stderr=open(root / "munged.log", "wb")))
            _wait("munged", _munge_ok, 15, logs)
        started.append(subprocess.Popen([_which("slurmctld"), "-D", "-i", "-f", str(conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        started.append(subprocess.Popen([_which("slurmd"), "-D", "-f", str(conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait("the Slurm node", _node_idle, 30, logs)
        yield conf
    finally:
        subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True, timeout=30)
        with contextlib.suppress(RuntimeError):  # scancel only asks: let slurmd end the jobs before it goes
            _wait("the jobs' end", lambda: not _squeue(), 15, [])
        for p in reversed(started):  # slurmd, slurmctld, then our munged
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        _kill_leftovers(root)
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Path]:
    why = missing()
    if why:
        pytest.skip(why)
    with running_cluster() as conf:
        yield conf
