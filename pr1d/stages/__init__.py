"""Stage workers: each module runs as `python -m pr1d.stages.NAME SPEC.json` in its own process."""
