"""`pr1d sim` command line: its arguments (`add_arguments`), running the server until SIGINT/SIGTERM
(`run`), and the lookup of the optional model grader behind ``--grade-with-model``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pr1d.sim.scenarios import ScenarioError, available_scenarios, load_scenario

if TYPE_CHECKING:  # the server (aiohttp) loads only when the sim runs: `pr1d serve` parses this CLI too
    from pr1d.sim.platform import Grader
    from pr1d.sim.server import SimServer

DEFAULT_PORT = 8765
GRADING_MODULE = "pr1d.sim.grading"


class GraderUnavailable(Exception):
    """``--grade-with-model`` was given but model grading cannot be loaded."""


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {n}")
    return n


def _non_negative_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not x >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return x


def _non_negative_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {n}")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `pr1d sim` options to ``parser`` (the lead CLI's subcommand parser, or our own)."""
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free port)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--scenario",
        default="steady",
        help="shipped scenario name, a name from --scenarios-dir, or a path to a .toml file (default steady)",
    )
    parser.add_argument(
        "--scenarios-dir",
        dest="scenarios_dir",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="extra folder of scenario .toml files, searched before the shipped ones (repeatable)",
    )
    parser.add_argument("--list-scenarios", action="store_true", help="list the scenarios found and exit")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the scenario's)")
    parser.add_argument(
        "--agents",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="resize the scenario's [fleet] to N agents",
    )
    parser.add_argument(
        "--token", default=None, help="require 'Authorization: Bearer TOKEN' on every request (else 401)"
    )
    parser.add_argument(
        "--grade-with-model",
        action="store_true",
        help=f"grade evaluations with a real model via {GRADING_MODULE}.load_model_grader instead of the "
        "scenario's statistics",
    )
    parser.add_argument(
        "--model-dir",
        dest="model_dir",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="with --grade-with-model: the folder of the platform's model NAME (an agent's base model; repeatable)",
    )
    parser.add_argument(
        "--models-root",
        dest="models_root",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --grade-with-model: pr1d's registry folder; a pushed version V of agent A is DIR/A/V",
    )
    parser.add_argument(
        "--port-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="write the bound port here once listening",
    )
    parser.add_argument(
        "--time-scale",
        type=_non_negative_float,
        default=1.0,
        metavar="X",
        help="evaluations per agent per real second (default 1.0; 0: only POST /_sim/tick adds evaluations)",
    )


def load_model_grader(args: argparse.Namespace) -> Grader:
    """The grader from ``pr1d.sim.grading.load_model_grader(args)``, with a clear error while that
    module (a later pr1 release) or the training stack it needs is not installed."""
    try:
        module = importlib.import_module(GRADING_MODULE)
    except ModuleNotFoundError as e:
        if e.name == GRADING_MODULE:
            raise GraderUnavailable(
                f"--grade-with-model: model grading is not available in this pr1 release ({GRADING_MODULE} "
                "is missing); run without --grade-with-model to grade from the scenario's statistics"
            ) from None
        raise GraderUnavailable(
            f"--grade-with-model needs the training stack: module {e.name!r} is not installed "
            "(install pr1 with the train extra: pip install 'pr1[train]')"
        ) from None
    factory = getattr(module, "load_model_grader", None)
    if not callable(factory):
        raise GraderUnavailable(
            f"--grade-with-model: {GRADING_MODULE} has no load_model_grader(args) function"
        )
    try:
        return factory(args)
    except (ValueError, OSError) as e:
        raise GraderUnavailable(f"--grade-with-model: {e}") from None


def _write_port_file(path: Path, port: int) -> None:
    # Write-then-rename, so a reader polling for the file never sees it half written.
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM. Returns the exit status: 0 after a clean stop, 1 on an error."""
    dirs = list(getattr(args, "scenarios_dir", None) or [])
    if getattr(args, "list_scenarios", False):
        try:
            found = available_scenarios(dirs)
            for name, path in sorted(found.items()):
                print(f"{name:20} {load_scenario(path).spec.description}")
        except ScenarioError as e:
            print(f"pr1d sim: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        grader = load_model_grader(args) if args.grade_with_model else None
        from pr1d.sim.server import SimServer

        server = SimServer(
            args.scenario,
            host=args.host,
            port=args.port,
            seed=args.seed,
            agents=getattr(args, "agents", None),
            token=args.token,
            time_scale=args.time_scale,
            scenarios_dirs=dirs,
            grader=grader,
        )
    except (ScenarioError, GraderUnavailable) as e:
        print(f"pr1d sim: {e}", file=sys.stderr)
        return 1
    return asyncio.run(_serve(server, args.port_file))


async def _serve(server: SimServer, port_file: Path | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Signal handlers can only be installed from the main thread; elsewhere (an embedding thread)
        # the caller stops us by other means, so this is not an error.
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        try:
            await server.start()
        except OSError as e:
            print(
                f"pr1d sim: cannot listen on {server.host}:{server.requested_port}: {e.strerror or e}",
                file=sys.stderr,
            )
            return 1
        wrote_port_file = False
        try:
            if port_file is not None:
                _write_port_file(port_file, server.port or 0)
                wrote_port_file = True
            print(f"pr1d sim: listening on {server.url} (scenario {server.scenario.name})", flush=True)
            await stop.wait()
        except OSError as e:
            print(f"pr1d sim: cannot write port file {port_file}: {e.strerror or e}", file=sys.stderr)
            return 1
        finally:
            await server.close()
            if wrote_port_file and port_file is not None:
                with contextlib.suppress(OSError):
                    port_file.expanduser().unlink()
        return 0
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m pr1d.sim``), same options as ``pr1d sim``."""
    parser = argparse.ArgumentParser(prog="pr1d sim", description="Simulated agent platform (scoring API).")
    add_arguments(parser)
    return run(parser.parse_args(argv))
