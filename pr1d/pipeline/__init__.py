"""Run pipeline: stage plans per run kind and the stage launcher."""
