"""Export of a TRAIL adapter to ONNX (:mod:`export.onnx_export`) and its ONNX Runtime server
(:mod:`export.runtime`).

The export defaults live here, free of heavy imports, so that ``trail export --help`` does not
load torch.
"""

#: ONNX opset of the exported graphs.
DEFAULT_OPSET = 18
#: Largest allowed |PyTorch - ONNX| difference of a score in the validation.
DEFAULT_MAX_ABS_DIFF = 1e-3
#: Validation prompts (synthetic items) compared between PyTorch and ONNX.
DEFAULT_PROMPTS = 8
