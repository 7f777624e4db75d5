"""A trained run's test split decoded as its test metrics were (for the oracle tables)."""

from __future__ import annotations

import numpy as np

from ofrnn_tf import pipeline
from ofrnn_tf.decoding.calibration import decode_all_steps, predictions_at
from ofrnn_tf.run_dir import RunDir


def test_outputs(run_dir: RunDir) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """`(y_true, y_pred at the run's τ, per-class scores, facts)` on the test split, decoded
    and selected as the run's test metrics were (M_map's v_prob for the head alone, the
    decoder's mixed scores otherwise)."""
    model, config, facts = run_dir.load_model()
    dataset = pipeline.eval_dataset(pipeline.locate_features(config, facts), facts, "test")
    decoding = config.decoding
    calibration = run_dir.calibration(decoding.beam_size)
    outputs = decode_all_steps(model, dataset, beam_size=decoding.beam_size,
                               max_steps=facts.max_steps, min_labels=decoding.min_labels,
                               progress=False)
    y_pred, scores = predictions_at(outputs, calibration["tau"], decoding.min_labels,
                                    calibration.get("score_mix", 0.0))
    return np.asarray(outputs["y_true"], np.int32), y_pred, scores, facts
