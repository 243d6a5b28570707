"""`pr1tui` entry point (the console app lives in pr1tui/app.py)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from .app import main as app_main

    return app_main(argv)


if __name__ == "__main__":
    sys.exit(main())
