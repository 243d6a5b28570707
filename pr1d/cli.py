"""`pr1d` command line: serve (the daemon), config check, restore, sim, demo, model, eval, completion. Imports stay lazy so each starts fast."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

EXIT_CONFIG = 78  # EX_CONFIG: the unit's RestartPreventExitStatus stops a restart loop on a bad config


def _setup_logging(level: str) -> None:
    from .daemon.systemd import DaemonLogFormatter, journal_prefixes, stderr_id

    # Under systemd, "<N>" priority prefixes let `journalctl -p warning` find warnings (docs/runbooks/operations.md).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(DaemonLogFormatter(journal=journal_prefixes(os.environ, stderr_id())))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    # One line per HTTP request would drown the journal at 10,000 agents; failures are logged by the poller.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def cmd_serve(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .daemon.core import Daemon
    from .daemon.lock import LockHeld
    from .ledger.store import LedgerError

    paths = [Path(args.config)] if args.config else []
    overrides: dict = {}
    if args.state_dir:
        overrides.setdefault("daemon", {})["state_dir"] = str(Path(args.state_dir).resolve())
    if args.socket:
        overrides.setdefault("daemon", {})["socket_path"] = str(Path(args.socket).resolve())
    try:
        cfg = load_config(paths, overrides=overrides)
    except ConfigError as e:
        for line in str(e).splitlines():
            print(f"pr1d: config error: {line}", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(cfg.daemon.log_level)
    import faulthandler

    faulthandler.enable()  # a watchdog SIGABRT prints the stuck stack to the journal
    daemon = Daemon(cfg, config_paths=paths, overrides=overrides, burst=args.burst)
    try:
        return asyncio.run(daemon.run())
    except LockHeld as e:
        print(f"pr1d: {e}", file=sys.stderr)
        return 1
    except LedgerError as e:
        print(f"pr1d: ledger error: {e}", file=sys.stderr)
        return 1
    except PermissionError as e:
        print(f"pr1d: permission denied: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1


def cmd_sim(args: argparse.Namespace) -> int:
    from .sim import cli as sim_cli

    return sim_cli.run(args)


def cmd_model(args: argparse.Namespace) -> int:
    # torch loads here, in this command's own process: never in the daemon.
    from .train import model

    return model.main([args.model_cmd, *args.rest])


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import gsm_eval

    return gsm_eval.main(args.rest)


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.run(args)


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate the config exactly as `pr1d serve` loads it: exit 0, or 78 with one line per problem."""
    from .config import ConfigError, load_config

    paths = [Path(args.file)] if args.file else []
    try:
        cfg = load_config(paths, environ={} if args.only_file else None, use_system=False if args.only_file else None)
    except ConfigError as e:
        for line in str(e).splitlines():
            print(f"pr1d: config error: {line}", file=sys.stderr)
        return EXIT_CONFIG
    what = args.file or "built-in defaults"
    layers = "alone" if args.only_file else "with /etc/pr1d/pr1d.toml (if readable) and PR1_* variables"
    print(f"{what}: ok ({layers}); state dir {cfg.state_path()}, socket {cfg.socket()}")
    return 0


def _unix_user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry (containers): the audit row still says who
        return f"uid {os.getuid()}"


def cmd_restore(args: argparse.Namespace) -> int:
    """Lay a `pr1ctl backup` folder out as a state directory, after checking every hash in its manifest."""
    import json

    from .backup import BackupError, Layout, restore
    from .config import ConfigError, load_config
    from .ledger.store import LedgerError

    state = Path(args.state_dir).resolve()
    try:
        cfg = load_config([Path(args.config)] if args.config else [], overrides={"daemon": {"state_dir": str(state)}})
    except ConfigError as e:
        for line in str(e).splitlines():
            print(f"pr1d: config error: {line}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        out = restore(Path(args.backup_dir), Layout.from_config(cfg, state), actor=_unix_user())
    except (BackupError, LedgerError) as e:
        for line in str(e).splitlines():
            print(f"pr1d: restore refused: {line}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"pr1d: restore failed (what it had written is removed): {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"restored {out['files']} files ({out['bytes']} bytes) into {out['state_dir']}: a backup of "
              f"{out['source_state_dir']} by pr1d {out['backup_daemon_version']}; {out['paths_moved']} ledger paths "
              f"moved, {out['checkpoints_cleared']} checkpoints forgotten (their stages restart)")
        print(f"next: pr1d serve --state-dir {out['state_dir']}" + (f" --config {args.config}" if args.config else ""))
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    from . import __version__
    from .completion import script

    sys.stdout.write(script(args.shell, "pr1d", build_parser(), __version__))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="pr1d", description="pr1 daemon: watches agent grades, runs Parallel-R1 curricula.")
    p.add_argument("--version", action="version", version=f"pr1d {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the daemon (systemd runs this)")
    s.add_argument("--config", help="config file (layered over /etc/pr1d/pr1d.toml and built-in defaults)")
    s.add_argument("--state-dir", help="ledger, run folders, lock (overrides daemon.state_dir)")
    s.add_argument("--socket", help="socket path (overrides daemon.socket_path)")
    s.add_argument("--burst", action="store_true", help="process the queue until it is empty, then exit")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("config", help="configuration: `pr1d config check [FILE]` validates it as serve would")
    csub = s.add_subparsers(dest="config_cmd", required=True, metavar="COMMAND")
    s = csub.add_parser("check", help="exit 0 when the config is valid, 78 with one line per problem when not")
    s.add_argument("file", nargs="?", help="config file (layered over /etc/pr1d/pr1d.toml and PR1_* like serve's --config)")
    s.add_argument("--only-file", action="store_true",
                   help="check FILE alone: without /etc/pr1d/pr1d.toml and PR1_* environment variables")
    s.set_defaults(func=cmd_config_check)

    s = sub.add_parser("restore", help="verify a `pr1ctl backup` folder, then lay it out as a new state directory")
    s.add_argument("backup_dir", metavar="DIR", help="the backup folder (with MANIFEST.json)")
    s.add_argument("--state-dir", required=True, help="where to restore: must be new or empty")
    s.add_argument("--config", help="the config the restored daemon will run with (where models and the KB go)")
    s.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    s.set_defaults(func=cmd_restore)

    s = sub.add_parser("completion", help="print a shell completion script: `pr1d completion bash`")
    from .completion import add_arguments as completion_arguments

    completion_arguments(s)
    s.set_defaults(func=cmd_completion)

    from . import demo

    s = sub.add_parser("demo", help="sim + daemon + the loop this build has, headless, on embedded defaults")
    demo.add_arguments(s)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("model", help="agent models: `pr1d model bootstrap --out DIR` builds + pretrains the tiny model")
    s.add_argument("model_cmd", choices=["bootstrap"])
    s.add_argument("rest", nargs=argparse.REMAINDER, help="options of python -m pr1d.train.model bootstrap")
    s.set_defaults(func=cmd_model)
    s = sub.add_parser("eval", help="`pr1d eval gsm-lite --model PATH [--adapter PATH] [--k N] [--json]`")
    s.add_argument("benchmark", choices=["gsm-lite"])
    s.add_argument("rest", nargs=argparse.REMAINDER, help="options of python -m pr1d.evaluate.gsm_eval")
    s.set_defaults(func=cmd_eval)

    try:
        from .sim import cli as sim_cli
    except ImportError:
        sim_cli = None
    if sim_cli is not None:
        s = sub.add_parser("sim", help="run the simulated agent platform (scoring API) on 127.0.0.1")
        sim_cli.add_arguments(s)
        s.set_defaults(func=cmd_sim)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
