"""ONNX export of LLaVA-1.5 and Qwen2.5-VL with Nüwa pruning (``nuwa-export``): :mod:`.pipeline`."""
