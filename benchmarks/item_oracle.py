r"""How much of the F1 is lost to a second label on an item already labelled.

Items on the benchmark's canvases never overlap and each has one class, so a predicted
class that is not in an image's label set is often a look-alike read off an item whose
own class was predicted too (a Shirt also called T-shirt). A decoder that attends to
an item, names it and then holds that item "explained" could drop such labels; a
spatial head, which pools every class over the positions separately, cannot. This
script measures what that is worth on the paper table's runs (test split):

- `spatial head (τ)`, `main job (τ)`: the paper table's rows;
- `..., one label per item (oracle)`: the same labels with every false one removed
  whose class scores peak (`S_{i,c}`, the head's per-position scores) on an item whose
  own class was predicted — the most that holding labelled items explained can win,
  told by the true boxes;
- `spatial head, region exclusion`: the same idea without the boxes, as a rule over
  the head's outputs. Classes are taken by descending score; one is dropped when, in
  the 3×3 positions around its peak, a class already taken scores higher than it
  does. Its threshold is chosen on validation, as every row's is.

The gap between the oracle and the rule is how well "which of the two labels is the
item's" can be told from these scores; a decoder reading the same scores has that
information and no other (docs/experiments.md, "What a second label on one item costs").

    python benchmarks/item_oracle.py --root=runs/table5

Needs the paper table's `spatial_head` and `main_job` runs and the built benchmark of
each seed (its boxes); about a minute per mode and seed on 2 CPU cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import _table_runs as table_runs  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from ofrnn_tf import pipeline  # noqa: E402
from ofrnn_tf.data import run_data  # noqa: E402
from ofrnn_tf.features import run_cache  # noqa: E402
from ofrnn_tf.decoding import calibration  # noqa: E402
from ofrnn_tf.metrics import label_set_metrics  # noqa: E402
import tensorflow as tf  # noqa: E402  (after ofrnn_tf, which sets TensorFlow's CPU options)

FLAGS = flags.FLAGS
table_runs.define_flags()
flags.adopt_module_key_flags(table_runs)

COLUMNS = ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1", "removed")


def position_scores(model, dataset, with_features: bool = False) -> dict:
    """A split's `scores` (`[N, m, C]` per-position class scores `S`), `logits` (`[N, C]`
    M_map's own, before any label context), `v_prob` (`[N, C]`), `y_true`, `areas` (label
    areas) and `ids` (image ids); with `with_features`, also `features` (`[N, m, k]`, the
    standardized feature maps the head read)."""
    scores, logits, v_prob, labels, areas, ids, features = [], [], [], [], [], [], []
    for batch in dataset:
        standardized = model._standardized(batch["features"])
        _, per_position = model.label_map_head.per_position(standardized, training=False)
        scores.append(per_position.numpy())
        if with_features:
            features.append(standardized.numpy())
        # logits and v_prob as `map_logits` and `model(features)` give them, from the
        # scores already at hand.
        pooled = model.label_map_head.pool(per_position)
        logits.append(pooled.numpy())
        v_prob.append(tf.sigmoid(model.with_context(pooled)).numpy())
        labels.append(batch["labels"].numpy().astype(np.int32))
        areas.append(batch["label_areas"].numpy())
        ids += [i.decode() for i in batch["image_id"].numpy()]
    outputs = {"scores": np.concatenate(scores), "logits": np.concatenate(logits),
               "v_prob": np.concatenate(v_prob),
               "y_true": np.concatenate(labels), "areas": np.concatenate(areas), "ids": ids}
    if with_features:
        outputs["features"] = np.concatenate(features)
    return outputs


def item_positions(boxes, image_size: int, grid: int, margin: float = 0.0
                   ) -> list[np.ndarray]:
    """For each `(label, (x, y, w, h))` box, the flat indices of the grid positions whose
    centres lie in it, grown by `margin` positions on every side (the position nearest
    its centre when none does; with a margin of half a position there always is one)."""
    cell = image_size / grid
    centres = (np.arange(grid) + 0.5) * cell
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    cy, cx = cy.ravel(), cx.ravel()
    m = margin * cell
    found = []
    for _, (x, y, w, h) in boxes:
        inside = np.flatnonzero((cx >= x - m) & (cx <= x + w + m)
                                & (cy >= y - m) & (cy <= y + h + m))
        if not len(inside):
            inside = np.array([int(np.argmin((cx - x - w / 2) ** 2 + (cy - y - h / 2) ** 2))])
        found.append(inside)
    return found


def peak_items(scores: np.ndarray, boxes, image_size: int, grid: int) -> list[int]:
    """For each class, the class of the item its scores peak on (-1: none): a position's
    centre within half a position of the item's box counts as on it."""
    on_item = item_positions(boxes, image_size, grid, margin=0.5)
    found = []
    for c in range(scores.shape[-1]):
        peak = int(scores[:, c].argmax())
        under = [k for (k, _), positions in zip(boxes, on_item) if peak in positions]
        found.append(under[0] if under else -1)
    return found


def one_label_per_item(y_true, y_pred, scores, boxes_of, image_size) -> tuple[np.ndarray, int]:
    """`y_pred` without the false labels that peak on an item whose class was predicted."""
    grid = int(round(scores.shape[1] ** 0.5))
    kept, removed = y_pred.copy(), 0
    for r in range(len(y_true)):
        for c, item in enumerate(peak_items(scores[r], boxes_of[r], image_size, grid)):
            if y_pred[r, c] and not y_true[r, c] and item >= 0 and item != c \
                    and y_pred[r, item] and y_true[r, item]:
                kept[r, c], removed = 0, removed + 1
    return kept, removed


def region_exclusion(v_prob: np.ndarray, scores: np.ndarray, tau: float) -> np.ndarray:
    """Labels at τ (at least one per image), taken by descending score; a class is dropped
    when a class already taken scores higher in the 3×3 positions around its peak."""
    grid = int(round(scores.shape[1] ** 0.5))
    grid_scores = scores.reshape(len(scores), grid, grid, -1)
    y_pred = np.zeros(v_prob.shape, np.int32)
    for r in range(len(v_prob)):
        taken = []
        for rank, c in enumerate(np.argsort(-v_prob[r])):
            if rank > 0 and v_prob[r, c] < tau:
                break
            row, col = divmod(int(scores[r, :, c].argmax()), grid)
            region = grid_scores[r, max(row - 1, 0):row + 2, max(col - 1, 0):col + 2]
            region = region.reshape(-1, scores.shape[-1])
            if not any(region[:, k].max() > region[:, c].max() for k in taken):
                taken.append(c)
        y_pred[r, taken] = 1
    return y_pred


def rows_of(mode: str, seed: int) -> dict[str, dict]:
    rows = {}
    for row, name in (("spatial head", "spatial_head"), ("main job", "main_job")):
        run_dir = table_runs.table_run(mode, seed, name)
        y_true, y_pred, _, facts = table_runs.decoded_split(run_dir)
        model, config, _ = table_runs.load_run(run_dir)
        features_dir = run_cache.locate_features(config, facts)
        boxes = {e.image_id: e.boxes for e in run_data.load_data(config).splits["test"]}
        test = position_scores(model, pipeline.eval_dataset(features_dir, facts, "test"))
        scores, v_prob, ids = test["scores"], test["v_prob"], test["ids"]
        if not np.array_equal(test["y_true"], y_true):
            raise RuntimeError(f"{run_dir}: the test split came in another order twice")
        kept, removed = one_label_per_item(y_true, y_pred, scores, [boxes[i] for i in ids],
                                           facts.image_size)
        rows[f"{row} (τ)"] = label_set_metrics(y_true, y_pred)
        rows[f"{row}, one label per item (oracle)"] = dict(label_set_metrics(y_true, kept),
                                                           removed=removed)
        if name == "spatial_head":
            val = position_scores(model, pipeline.eval_dataset(features_dir, facts, "val"))
            val_scores, val_prob, val_true = val["scores"], val["v_prob"], val["y_true"]
            # τ as every run's is chosen: the calibration grid and objective.
            tau = max(calibration.default_grid(), key=lambda t: calibration.objective_value(
                label_set_metrics(val_true, region_exclusion(val_prob, val_scores, t)),
                config.decoding.calibration_objective))
            excluded = region_exclusion(v_prob, scores, tau)
            rows["spatial head, region exclusion"] = dict(
                label_set_metrics(y_true, excluded),
                removed=int(((y_pred == 1) & (excluded == 0)).sum()))
    return rows


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    table_runs.publish_mode_tables(
        "What a second label on one item costs",
        "Test split; `τ` rows are the paper table's (thresholds on validation); `removed`: "
        "labels of the `τ` row the row drops.", rows_of, COLUMNS)


if __name__ == "__main__":
    stops.run(main)
