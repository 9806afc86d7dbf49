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

# int8 dynamic quantization (``trail export --int8``, and the cache's exports): what it must
# keep of fp32 to be served, checked at export and written into the manifest.
#: Largest |fp32 - int8| difference of a residual on the validation prompts.
INT8_MAX_ABS_DIFF = 0.1
#: Smallest share of the fp32 top 10 that int8 keeps, in every validation window, ranking by
#: the cascade's blend at its largest LM weight (the ranking most sensitive to the residual).
INT8_MIN_TOP10_OVERLAP = 0.8
#: Largest drop of the explanations' faithfulness (checker, before the guard) from fp32.
INT8_MAX_FAITHFULNESS_DROP = 0.05
#: A weight matrix keeps fp32 when its input's largest magnitude exceeds this many times its
#: mean magnitude on the calibration prompts: one per-tensor int8 scale cannot resolve both
#: (SmolLM2's MLP down-projections of a few layers see activations in the thousands).
INT8_OUTLIER_RATIO = 150.0
#: Largest drop of the share of explanations the guard keeps (every claim true) from fp32.
INT8_MAX_TRUSTED_DROP = 0.05
#: Whether ``auto`` scores with the int8 graph on the CPU where its scores passed the above.
#: Off: its ranking now holds (replaying ML-100K, the int8 scorer's top 10 kept at least 80%
#: of fp32's in every window, 99.3% on average; BENCHMARKS.md, "LM runtimes"), but a window
#: is slower with it than with fp32 (7.43 s against 7.00 s p50 on six ML-1M windows): the
#: fp32 scorer's KV cache seeds the explanations, an int8 one cannot.
INT8_DEFAULT_ON_CPU = False
#: Whether ``auto`` also explains with the int8 graph where its texts passed the above. Off:
#: on six ML-1M windows the guard replaced 11.7% of int8's explanations (fp32: 1.7%), and
#: int8's contradicted the numbers in 2.8% (fp32: none); the fp32 generator stays.
INT8_GENERATION_DEFAULT_ON_CPU = False
