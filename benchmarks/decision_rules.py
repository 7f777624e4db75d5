r"""What the decision rule is worth: a run's own decoding against thresholds on its
per-class scores.

C-F1 and O-F1 over a test set are ratios of counts summed over its images. Over many
images, the expected counts of a set of decisions `d_{n,c}` are linear in the
per-class probabilities `p_{n,c} = P(y_{n,c} = 1 | image n)`: E[TP] = Σ d p,
E[FP] = Σ d (1 − p), E[FN] = Σ (1 − d) p, with no term in which two labels of one
image meet. So what a model knows about how an image's labels go together (that one
item carries one class, that a scene's classes come together) can change these metrics
only through the per-class probabilities it ends up with, and the best decisions
given those are thresholds: one on p for O-F1, one per class for C-F1 (its C-P and
C-R average the classes' own ratios of such sums; which thresholds maximise their
harmonic mean is a joint choice, since C-F1 is not the mean of the classes' F1). A
decoder's label paths are one way of turning what it
knows into decisions; this script measures how they compare with thresholds on the
per-class scores the same run ranks by (`v_prob` for the head alone, the decoder's
mixed scores otherwise), on the paper table's runs (test split):

- `decoding (τ)`: the run's own labels, as in the paper table;
- `one threshold on the scores`: one threshold for every class, chosen on validation
  with the run's calibration objective (for the head alone, the same as its `τ` row);
- `per-class thresholds`: for each class the threshold that maximises its own F1 on
  validation, each class chosen alone (not jointly for C-F1, which was not measured).

Every rule keeps at least `min_labels` labels per image, as decoding does. The table
also gives the per-image F1 (`E-F1`, averaged over the images), which is not such a
ratio of sums: there how an image's labels go together does count.

    python benchmarks/decision_rules.py --root=runs/table5

Needs the paper table's `spatial_head`, `spatial_head_context` and `main_job` runs (a
paper table run with `--runs` must name all three), with their feature cache
(`--cache_dir`); about a minute per mode and seed on 2 CPU cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import _table_runs as table_runs  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from ofrnn_tf.decoding import calibration  # noqa: E402
from ofrnn_tf.metrics import label_set_metrics  # noqa: E402

FLAGS = flags.FLAGS
table_runs.define_flags()
flags.adopt_module_key_flags(table_runs)

RUNS = {"spatial_head": "spatial head", "spatial_head_context": "spatial head + label context",
        "main_job": "main job"}
COLUMNS = ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1", "E-F1")


def at_thresholds(scores: np.ndarray, thresholds, min_labels: int = 1) -> np.ndarray:
    """Multi-hot `[N, C]`: the classes whose score reaches their threshold (a scalar or
    one per class), and each image's `min_labels` best classes in any case."""
    scores = np.asarray(scores, np.float64)
    ranks = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1, kind="stable")
    return ((scores >= np.asarray(thresholds, np.float64)) | (ranks < min_labels)).astype(
        np.int64)


def example_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Per-image F1, `2 |Y ∩ Ŷ| / (|Y| + |Ŷ|)`, averaged over the images (percent); an
    image with neither true nor predicted labels counts as 1."""
    y_true, y_pred = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    both = 2.0 * (y_true & y_pred).sum(axis=1)
    sizes = y_true.sum(axis=1) + y_pred.sum(axis=1)
    return 100.0 * float(np.mean(np.where(sizes > 0, both / np.maximum(sizes, 1), 1.0)))


def scored(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """The label-set metrics and the per-image F1 of one set of decisions."""
    return dict(label_set_metrics(y_true, y_pred), **{"E-F1": example_f1(y_true, y_pred)})


def per_class_thresholds(y_true: np.ndarray, scores: np.ndarray,
                         grid: np.ndarray) -> np.ndarray:
    """For each class, the threshold of `grid` that maximises that class's F1 over the
    images given (ties to the smallest); the largest where no threshold finds a positive."""
    y_true = np.asarray(y_true, bool)
    chosen = np.empty(y_true.shape[1])
    for c in range(y_true.shape[1]):
        predicted = np.asarray(scores)[:, c][None, :] >= np.asarray(grid)[:, None]  # [G, N]
        tp = (predicted & y_true[:, c]).sum(axis=1)
        denominator = predicted.sum(axis=1) + y_true[:, c].sum()
        f1 = np.where(denominator > 0, 2.0 * tp / np.maximum(denominator, 1), 0.0)
        chosen[c] = grid[int(np.argmax(f1))] if f1.max() > 0 else np.max(grid)
    return chosen


def rows_of(mode: str, seed: int) -> dict[str, dict[str, float]]:
    rows = {}
    grid = calibration.default_grid()
    for name, row in RUNS.items():
        run_dir = table_runs.table_run(mode, seed, name)
        config, _ = run_dir.load()
        min_labels = config.decoding.min_labels
        objective = config.decoding.calibration_objective
        y_true, y_pred, test_scores, _ = table_runs.decoded_split(run_dir)
        val_true, _, val_scores, _ = table_runs.decoded_split(run_dir, "val")
        # One threshold is how the head alone is calibrated: the same search, on these scores.
        one, _ = calibration.calibrate_from_outputs(
            {"y_true": val_true, "v_prob": val_scores}, min_labels=min_labels,
            objective=objective, grid=grid)
        each = per_class_thresholds(val_true, val_scores, grid)
        rows[f"{row}, decoding (τ)"] = scored(y_true, y_pred)
        rows[f"{row}, one threshold on the scores"] = scored(
            y_true, calibration.predictions_at({"v_prob": test_scores}, one, min_labels)[0])
        rows[f"{row}, per-class thresholds"] = scored(
            y_true, at_thresholds(test_scores, each, min_labels))
    return rows


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    table_runs.publish_mode_tables(
        "What the decision rule is worth",
        "Test split; every threshold chosen on validation; `decoding (τ)` rows are the "
        "paper table's. `E-F1`: per-image F1 averaged over the images (not one of the "
        "paper's metrics; the thresholds are still those chosen for C-F1 and O-F1).",
        rows_of, COLUMNS)


if __name__ == "__main__":
    stops.run(main)
