"""Inference: the execution policy (pure Python), model loading, plain and forked Parallel-R1 generation.

Used by evaluation, the backtest and the trainers; it imports neither :mod:`pr1d.train` nor
:mod:`pr1d.stages`. Only :mod:`pr1d.inference.policy` is torch-free: the daemon, the registry and the
clients import it, so this package's ``__init__`` imports nothing.
"""
