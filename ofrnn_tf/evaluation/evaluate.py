"""Scores a model on a split: decode, calibrate τ (on validation), compute metrics."""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from ofrnn_tf.decoding.calibration import (
    calibrate_from_outputs, calibrate_threshold, decode_all_steps, predictions_at)
from ofrnn_tf.evaluation.metrics import evaluate_all, label_set_metrics, mean_average_precision

CALIBRATION_FILENAME = "calibration.json"


def validate(model, dataset, *, beam_size: int, max_steps: int, min_labels: int = 1,
             objective: str = "mean_f1", progress: bool = False) -> dict:
    """Validation metrics at the best τ for this model (used to pick the best epoch)."""
    outputs = decode_all_steps(model, dataset, beam_size=beam_size, max_steps=max_steps,
                               min_labels=min_labels, progress=progress)
    tau, _ = calibrate_from_outputs(outputs, min_labels=min_labels, objective=objective)
    y_pred, scores = predictions_at(outputs, tau, min_labels)
    metrics = label_set_metrics(outputs["y_true"], y_pred)
    metrics["mAP"] = mean_average_precision(outputs["y_true"], scores)
    metrics["tau"] = float(tau)
    return metrics


def calibrate(model, dataset, *, beam_size: int, max_steps: int, min_labels: int = 1,
              objective: str = "mean_f1", progress: bool = True) -> dict:
    """Chooses τ on the validation split; returns what `calibration.json` stores."""
    tau, table = calibrate_threshold(model, dataset, beam_size=beam_size, max_steps=max_steps,
                                     min_labels=min_labels, objective=objective,
                                     progress=progress)
    return {"tau": tau, "objective": objective, "beam_size": beam_size,
            "max_steps": max_steps, "min_labels": min_labels,
            "grid": [[t, v] for t, v in table]}


def evaluate(model, dataset, *, tau: float, beam_size: int, max_steps: int, min_labels: int = 1,
             small_area: Optional[float] = None, progress: bool = True) -> dict:
    """All metrics of DESIGN §6 on one split, decoding with the calibrated τ."""
    outputs = decode_all_steps(model, dataset, beam_size=beam_size, max_steps=max_steps,
                               min_labels=min_labels, progress=progress)
    y_pred, scores = predictions_at(outputs, tau, min_labels)
    areas = outputs.get("label_areas")
    use_areas = small_area is not None and areas is not None and not np.any(
        (areas < 0) & (outputs["y_true"] > 0))
    metrics = evaluate_all(outputs["y_true"], y_pred, scores,
                           label_areas=areas if use_areas else None,
                           small_area=small_area if use_areas else None,
                           k=min(3, y_pred.shape[1]))
    metrics["images"] = int(y_pred.shape[0])
    metrics["mean_labels_predicted"] = float(y_pred.sum(1).mean())
    metrics["tau"] = float(tau)
    metrics["beam_size"] = int(beam_size)
    return metrics


def save_json(data: dict, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)
    return path
