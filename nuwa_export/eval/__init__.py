"""Evaluation: grounding boxes, the tasks in lmms-eval's conventions, data readers, scoring and ``nuwa-eval``."""
