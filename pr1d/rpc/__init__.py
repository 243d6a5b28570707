"""Socket API: JSON-RPC 2.0 over a unix socket, one schema shared by daemon and clients."""
