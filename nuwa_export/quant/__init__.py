"""Quantized exports (``nuwa-quantize``): calibration sets and tensors (:mod:`.calib`) and
ModelOpt's ONNX post-training quantization of the LLM graphs (:mod:`.quantize`); the validation
policy for quantized graphs is ``nuwa_export.verify.quantized``."""

#: ``--precision`` (``nuwa_export.precision.QUANTIZED``) → (ModelOpt's quantize_mode, its
#: calibration method, whether the attention matmuls (Q·Kᵀ, P·V) get Q/DQ too).
PRECISIONS = {
    # weights per channel, activations per tensor (W8A8); attention stays in the float type: per-tensor
    # int8 Q and K lost 10 % of the logits' cosine on the Qwen2.5-VL demo (0.864 against 0.968 without)
    "int8": ("int8", "max", False),
    "fp8": ("fp8", "max", True),  # E4M3 weights and activations (W8A8), attention too (TensorRT's FP8 attention)
    "int4-awq": ("int4", "awq_clip", False),  # weight-only, blocks of 128 (quantize.int4_block), AWQ clipping search
    "int4-rtn": ("int4", "rtn_dq", False),  # weight-only, blocks of 128 (quantize.int4_block), round to nearest
}
