"""Score monitoring: poller, signals, trigger rules."""
