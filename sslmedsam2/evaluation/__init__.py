"""Scoring masks: per-pair metrics, whole folders against ground truth, overlay montages."""
