"""The run ledger: SQLite schema, migrations and the run state machine."""
