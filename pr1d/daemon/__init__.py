"""The daemon process: lock, systemd notification, signals, dispatcher."""
