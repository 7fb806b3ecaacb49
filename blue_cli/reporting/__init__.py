"""Run files (JSON first) and their rendering for the console."""
