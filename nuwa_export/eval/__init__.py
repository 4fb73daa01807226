"""Grounding boxes and evaluation helpers."""
