"""Data: the Parallel format, the gradebook and the dataset builder."""
