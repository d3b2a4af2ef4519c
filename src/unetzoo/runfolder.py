"""The run folder: one owner for the names of the files a run writes."""

from __future__ import annotations

BEST, LAST = "checkpoint_best", "checkpoint_last"
CHECKPOINT_EXT = ".pt"
INFERENCE_PRECISION = "inference_precision.json"  # the bf16 check after training (inference/precision_check.py)
