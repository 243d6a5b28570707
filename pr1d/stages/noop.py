"""Built-in `noop` stage: reports one result and exits; the smallest check that workers spawn and report."""

from __future__ import annotations

import sys

from .base import Worker, run_stage


def main(w: Worker) -> dict:
    w.progress(1, 1, eta_s=0.0, message="noop")
    return {"python": sys.version.split()[0]}


if __name__ == "__main__":
    run_stage(main)
