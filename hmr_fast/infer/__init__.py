"""Inference: the Predictor, its backends, and the video pipeline (`hmr-fast video`, `hmr-fast demo`)."""
from .backends import BACKENDS, OUTPUT_NAMES, InferenceModel, make_backend
from .predictor import Prediction, Predictor

__all__ = ["Predictor", "Prediction", "InferenceModel", "make_backend", "BACKENDS", "OUTPUT_NAMES"]
