"""pr1tui: the Textual operations console (a socket API client only)."""
