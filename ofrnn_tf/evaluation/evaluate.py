"""Scores a trained model: validation during training, τ calibration, test metrics.

Decoding follows the rule of paper Eq. 11 (`ofrnn_tf.decoding.beam_search`), τ is
chosen on the validation split (`ofrnn_tf.decoding.calibration`) and the metrics are
those of `ofrnn_tf.metrics` (see docs/model.md for the conventions). M_map alone (the
`baseline` variant) is scored both at a fixed threshold 0.5 on v_prob (the usual rule) and at
a threshold chosen on validation like τ.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from ofrnn_tf.config.experiment import DecodingConfig
from ofrnn_tf.decoding.beam_search import BASELINE_THRESHOLD
from ofrnn_tf.decoding.calibration import (
    calibrate_decoding, calibrate_outputs, decode_all_steps, objective_value, predictions_at)
from ofrnn_tf.metrics import evaluate_all, label_set_metrics, mean_average_precision
from ofrnn_tf.status import log

FIXED_THRESHOLD_KEY = "at_fixed_0.5"
# The classes no image of the split carries (indices; names in metrics_<split>.json).
ABSENT_CLASSES_KEY = "classes_without_positives"


def map_scores(model, dataset: tf.data.Dataset) -> dict[str, np.ndarray]:
    """`v_prob` (sigmoid of M_map's logits) and the true labels of every example."""
    scores, truth = _per_example(
        dataset, lambda features: tf.sigmoid(model(features, training=False)))
    return {"v_prob": scores, "y_true": truth}


def map_logits(model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """M_map's own logits (before any label context) and the true labels of every
    example."""
    return _per_example(dataset, lambda features: model.map_logits(features, training=False))


def _per_example(dataset: tf.data.Dataset, outputs_of) -> tuple[np.ndarray, np.ndarray]:
    """`outputs_of(features)` of every batch of `dataset`, and its true labels."""
    outputs, truth = [], []
    for batch in dataset:
        outputs.append(outputs_of(batch["features"]).numpy())
        truth.append(batch["labels"].numpy())
    return np.concatenate(outputs), np.concatenate(truth)


def validate(model, dataset: tf.data.Dataset, stage: int, decoding: DecodingConfig,
             max_steps: int) -> dict:
    """Validation scores after an epoch; ``score`` (higher is better) picks the best epoch.

    Stage 1 (and the `baseline` variant) is scored by the mAP of M_map's v_prob. Stage 2
    decodes as at test time (beam width K, τ calibrated on this split) and is scored
    by the calibration objective at that τ.
    """
    if stage == 1 or not model.uses_decoder:
        outputs = map_scores(model, dataset)
        value = mean_average_precision(outputs["y_true"], outputs["v_prob"])
        return {"mAP": value, "score": value}
    outputs = decode_all_steps(model, dataset, beam_size=decoding.beam_size,
                               max_steps=max_steps, min_labels=decoding.min_labels,
                               progress=False)
    chosen = calibrate_outputs(outputs, min_labels=decoding.min_labels,
                               objective=decoding.calibration_objective)
    y_pred, scores = predictions_at(outputs, chosen.tau, decoding.min_labels, chosen.score_mix)
    metrics = label_set_metrics(outputs["y_true"], y_pred)
    metrics["mAP"] = mean_average_precision(outputs["y_true"], scores)
    metrics["tau"] = float(chosen.tau)
    metrics["score_mix"] = float(chosen.score_mix)
    metrics["score"] = objective_value(metrics, decoding.calibration_objective)
    return metrics


def calibrate(model, dataset: tf.data.Dataset, decoding: DecodingConfig, max_steps: int) -> dict:
    """τ for beam width K, and the weight of M_map's scores in the ranking scores, chosen on
    the validation split: what `calibration.json` stores."""
    beam = f"beam {decoding.beam_size}, " if model.uses_decoder else ""
    log(f"calibrating τ on the validation split ({beam}objective "
        f"{decoding.calibration_objective})")
    chosen = calibrate_decoding(model, dataset, beam_size=decoding.beam_size,
                                max_steps=max_steps, min_labels=decoding.min_labels,
                                objective=decoding.calibration_objective)
    return {"tau": chosen.tau, "score_mix": chosen.score_mix,
            "objective": decoding.calibration_objective,
            "beam_size": decoding.beam_size, "max_steps": max_steps,
            "min_labels": decoding.min_labels, "grid": [[t, v] for t, v in chosen.tau_grid],
            "score_mix_grid": [[m, v] for m, v in chosen.score_mix_grid]}


def metrics_at(outputs: dict, tau: float, *, min_labels: int = 1, score_mix: float = 0.0,
               small_area: Optional[float] = None) -> dict:
    """Every metric of decoded outputs (`decode_all_steps`, or any dict with `v_prob`,
    `y_true` and optionally `label_areas`) at threshold τ.

    Small-object AP is left out when `small_area` is None or an image has a label of
    unknown area (-1, or NaN).
    """
    y_pred, scores = predictions_at(outputs, tau, min_labels, score_mix)
    areas = outputs.get("label_areas")
    use_areas = small_area is not None and areas is not None and not np.any(
        ~(np.asarray(areas) >= 0) & (outputs["y_true"] > 0))  # -1 or NaN: unknown
    metrics = evaluate_all(outputs["y_true"], y_pred, scores,
                           label_areas=areas if use_areas else None,
                           small_area=small_area if use_areas else None,
                           k=min(3, y_pred.shape[1]))
    metrics["images"] = int(y_pred.shape[0])
    metrics["mean_labels_predicted"] = float(y_pred.sum(1).mean())
    absent = np.flatnonzero(np.asarray(outputs["y_true"]).sum(0) == 0)
    if absent.size:
        metrics[ABSENT_CLASSES_KEY] = [int(k) for k in absent]
    metrics["tau"] = float(tau)
    metrics["score_mix"] = float(score_mix)
    return metrics


def evaluate(model, dataset: tf.data.Dataset, *, tau: float, beam_size: int, max_steps: int,
             min_labels: int = 1, score_mix: float = 0.0, small_area: Optional[float] = None,
             progress: bool = True) -> dict:
    """Every metric on one split, decoding with threshold τ (docs/model.md, Metrics).

    For the `baseline` variant the result also holds, under ``"at_fixed_0.5"``, the
    label-set metrics at the fixed threshold 0.5 on v_prob: every class at or
    above it, and no label forced where none is (`min_labels` is not applied).
    """
    outputs = decode_all_steps(model, dataset, beam_size=beam_size, max_steps=max_steps,
                               min_labels=min_labels, progress=progress)

    def scored(threshold: float, min_labels: int = min_labels) -> dict:
        metrics = metrics_at(outputs, threshold, min_labels=min_labels, score_mix=score_mix,
                             small_area=small_area)
        if model.uses_decoder:  # M_map alone has no beam
            metrics["beam_size"] = int(beam_size)
        return metrics

    metrics = scored(tau)
    if not model.uses_decoder:
        metrics[FIXED_THRESHOLD_KEY] = scored(BASELINE_THRESHOLD, min_labels=0)
        metrics[FIXED_THRESHOLD_KEY].pop(ABSENT_CLASSES_KEY, None)  # the split's, said once
    return metrics
