"""pr1d: the pr1 daemon and all domain logic (never imports the training stack at module level)."""

__version__ = "0.1.0"
