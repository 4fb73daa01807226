"""ONNX export of LLaVA with Nüwa pruning (`nuwa-export`); see pipeline.py."""
