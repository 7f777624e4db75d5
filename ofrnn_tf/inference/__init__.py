"""A finished run as one inference module (backbone + decoder + calibrated τ), and
in-process prediction of image files with it."""

from ofrnn_tf.inference.module import InferenceModule, UncalibratedBeamSizeError
from ofrnn_tf.inference.predictor import Predictor

__all__ = ["InferenceModule", "Predictor", "UncalibratedBeamSizeError"]
