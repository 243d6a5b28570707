"""Widgets and pure renderers the pages share: chrome, filter bar, gate report, timeline, charts, formatting."""
