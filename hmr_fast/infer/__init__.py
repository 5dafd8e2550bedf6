"""Inference: the Predictor, its backends, and the video pipeline (`hmr-fast video`, `hmr-fast demo`)."""
from .backends import BACKENDS, make_backend
from .predictor import Prediction, Predictor

__all__ = ["Predictor", "Prediction", "make_backend", "BACKENDS"]
