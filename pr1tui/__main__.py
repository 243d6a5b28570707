"""`pr1tui` entry point (the console app lives in pr1tui/app.py); `pr1tui --completion bash|zsh` prints a script."""

from __future__ import annotations

import argparse
import sys


def console_parser() -> argparse.ArgumentParser:
    """The console's own parser, caught as ``app.main`` builds it, so completion never drifts from its options.

    app.main builds its parser inline; stopping it at ``parse_args`` gets the real thing without starting
    the app and without a second copy of the options to keep in step.
    """
    from . import app

    caught: list[argparse.ArgumentParser] = []

    class _Caught(Exception):
        pass

    def catch(self: argparse.ArgumentParser, *_a: object, **_k: object) -> None:
        caught.append(self)
        raise _Caught

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = catch  # type: ignore[method-assign]
    try:
        app.main([])
    except _Caught:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    if not caught:
        raise RuntimeError("pr1tui.app.main did not build an argument parser")
    parser = caught[0]
    parser.add_argument("--completion", choices=("bash", "zsh"), help="print a shell completion script and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--completion"]:
        from pr1d import __version__
        from pr1d.completion import SHELLS, script

        if len(args) != 2 or args[1] not in SHELLS:
            print(f"usage: pr1tui --completion {{{','.join(SHELLS)}}}", file=sys.stderr)
            return 2
        sys.stdout.write(script(args[1], "pr1tui", console_parser(), __version__))
        return 0
    from .app import main as app_main

    return app_main(argv)


if __name__ == "__main__":
    sys.exit(main())
