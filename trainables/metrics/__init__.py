"""Metrics: toy gradient metrics against exact scores, generation accuracy, calibration."""
