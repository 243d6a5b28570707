"""Evaluation: GSM-lite, backtest, grading and the promotion gate."""
