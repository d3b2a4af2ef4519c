"""Prediction with trained runs: the predictor and ensembles, the bf16 check, connected-component post-processing and
export for other runtimes. ``from unetzoo.inference import Predictor, Ensemble, predict`` is the public API."""

from unetzoo.inference.predictor import Ensemble, Predictor, load_weights, predict

__all__ = ["Ensemble", "Predictor", "load_weights", "predict"]
