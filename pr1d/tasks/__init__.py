"""Task families: what a task is (its prompt, an optional reference answer, a grader) and the families pr1 knows."""
