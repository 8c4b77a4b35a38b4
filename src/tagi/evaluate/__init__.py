"""Evaluation: the official SNI scorer (metrics), baselines, efficiency measurements and reports."""
