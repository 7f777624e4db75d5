"""Test-time decoding: batched beam search (paper Eq. 11) and τ calibration."""

from ofrnn_tf.decoding.beam_search import (
    baseline_decode, beam_search, decode_dataset, greedy_decode, labels_to_multi_hot,
    make_decoder, select_baseline, select_for_threshold)
from ofrnn_tf.decoding.calibration import (
    OBJECTIVES, Calibration, calibrate_decoding, calibrate_from_outputs, calibrate_outputs,
    default_grid)

__all__ = [
    "baseline_decode", "beam_search", "decode_dataset", "greedy_decode", "labels_to_multi_hot",
    "make_decoder", "select_baseline", "select_for_threshold",
    "OBJECTIVES", "Calibration", "calibrate_decoding", "calibrate_from_outputs", "calibrate_outputs",
    "default_grid",
]
