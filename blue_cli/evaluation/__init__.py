"""Metrics from (model, records); never imports the editing engine."""
