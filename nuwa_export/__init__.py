"""nuwa-export: Nüwa two-stage vision-token pruning for LLaVA, exported for deployment."""

__version__ = "0.1.0"
