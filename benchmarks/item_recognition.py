r"""How well the frozen features name an item when its place is told: the recognition ceiling.

The decoder can lead the spatial head on C-F1 and O-F1 only through better per-class
scores, and most of the head's remaining errors are look-alike names of one item
(Shirt / T-shirt / Pullover / Coat). Whether any model over the same frozen features
could name those items better is a question about the features, not about a decoder.
This script asks it directly, with every item's place told by its true box (never its
class), on the paper table's `spatial_head` runs:

- `head's scores`: the item's evidence `e_k = max_{i ∈ box k} S_i` read by a softmax fitted
  on the training items (`benchmarks/item_reader.py`'s `items' boxes, one class per item`
  row);
- `pooled features`: an MLP (512 ReLU units, dropout 0.3) over the mean and the max of the
  standardized frozen features over the item's positions, fitted on the training items:
  what an attention glimpse `z = Σ α_i x_i` spread over the item could read, with the
  item's layout averaged away;
- `RoI features`: the same MLP over a 3×3 grid of bilinear samples of the feature maps at
  the centres of the box's nine equal cells (as a detector's RoIAlign reads a box): the
  item's layout kept at its own scale, where the head reads a fixed 3×3 window of
  positions whatever the item's size;
- `RoI and pooled features + head's scores`: the same MLP over all three.

Each item classifier is scored per item (accuracy, and the recall of each look-alike top
class on the test items), and as a label reader: `P(y_c = 1) = 1 − Π_k (1 − P_k(c))`
over the canvas's items, in the scene mode also with the scene summed out by Bayes' rule
from the generator's scene table (`item_reader.scene_marginals`), one temperature and the
threshold chosen on validation. What the best of them leads the head by, told every
item's place and fitted on item classes (supervision no row of the paper table has), is
a ceiling for any model over these features that reads item by item, a decoder
included.

    python benchmarks/item_recognition.py --root=runs/table11

Needs the paper table's `spatial_head` run of each mode and seed (and its `main_job` run
for that row) with the built benchmark (its boxes); a few minutes per mode and seed on 2
CPU cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import _table_runs as table_runs  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from benchmarks import item_reader  # noqa: E402
from benchmarks._results import mean_std, publish  # noqa: E402
from benchmarks.item_oracle import item_positions, position_scores  # noqa: E402
from benchmarks.item_reader import (TEMPERATURES, at_least_one, best_on_validation,  # noqa: E402
                                    head_run, item_evidence, item_softmax, run_row,
                                    scene_marginals, with_main_job)
from ofrnn_tf import pipeline  # noqa: E402
from ofrnn_tf.data.canvas_config import SCENE_TABLES  # noqa: E402
from ofrnn_tf.data.fashion_mnist import FASHION_MNIST_CLASSES  # noqa: E402
import tensorflow as tf  # noqa: E402  (after ofrnn_tf, which sets TensorFlow's CPU options)

FLAGS = flags.FLAGS
table_runs.define_flags()
flags.adopt_module_key_flags(table_runs)
flags.adopt_module_key_flags(item_reader)

COLUMNS = ("C-F1", "O-F1", "mAP", "AP-small", "val")
LOOK_ALIKES = ("T-shirt/top", "Pullover", "Coat", "Shirt")
READERS = ("head's scores", "pooled features", "RoI features",
           "RoI and pooled features + head's scores")
ROI_SIZE = 3  # RoI features: ROI_SIZE × ROI_SIZE bilinear samples of the item's box
# Per mode, per seed: {reader: (test item accuracy, {look-alike class: test recall})}.
ITEM_SCORES: dict[str, list[dict]] = {}


def item_inputs(model, dataset, boxes_of: dict, image_size: int, margin: float
                ) -> dict[str, np.ndarray]:
    """Over every item of a split, in image order: `evidence` (`[K, C]`, the head's max class
    scores over the item's positions), `pooled` (`[K, 2D]`, the mean and max of the
    standardized features there), `roi` (`[K, ROI_SIZE² D]`, the features sampled at the
    centres of its box's cells), `image` (`[K]`, its image's row), `label` (`[K]`); and
    per image `ids`, `y_true` (`[N, C]`) and `areas` (label areas)."""
    split = position_scores(model, dataset, with_features=True)
    features, ids = split["features"], split["ids"]
    boxes = [boxes_of[i] for i in ids]
    evidence, image, label = item_evidence(split["scores"], boxes, image_size, margin)
    grid = int(round(features.shape[1] ** 0.5))
    pooled, roi = [], []
    for row, item_boxes in enumerate(boxes):
        maps = features[row].reshape(grid, grid, -1)
        for (_, box), positions in zip(item_boxes, item_positions(item_boxes, image_size, grid,
                                                                  margin)):
            inside = features[row, positions]
            pooled.append(np.concatenate([inside.mean(axis=0), inside.max(axis=0)]))
            roi.append(bilinear_samples(maps, roi_points(box, image_size, grid)).ravel())
    return {"evidence": evidence, "pooled": np.asarray(pooled, np.float32),
            "roi": np.asarray(roi, np.float32), "image": image, "label": label, "ids": ids,
            "y_true": split["y_true"], "areas": split["areas"]}


def roi_points(box, image_size: int, grid: int) -> np.ndarray:
    """`[ROI_SIZE², 2]` (row, column) feature coordinates of the centres of the box's
    ROI_SIZE × ROI_SIZE equal cells (x, y, w, h in pixels); feature position `j` is
    centred at pixel `(j + 0.5) · cell`."""
    x, y, w, h = box
    cell = image_size / grid
    steps = (np.arange(ROI_SIZE) + 0.5) / ROI_SIZE
    rows, cols = np.meshgrid((y + h * steps) / cell - 0.5, (x + w * steps) / cell - 0.5,
                             indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], axis=1)


def bilinear_samples(maps: np.ndarray, points: np.ndarray) -> np.ndarray:
    """`[P, D]` values of `[g, g, D]` maps at fractional (row, column) `points`, bilinear,
    with points beyond the outer positions' centres (an item at the canvas edge) held at
    the edge, as a feature map's border is read by a detector's RoIAlign."""
    grid = maps.shape[0]
    points = np.clip(points, 0.0, grid - 1.0)
    low = np.clip(np.floor(points), 0, max(grid - 2, 0)).astype(np.int64)
    frac = points - low
    high = np.minimum(low + 1, grid - 1)
    (r0, c0), (r1, c1), (fr, fc) = low.T, high.T, frac.T
    return ((1 - fr)[:, None] * ((1 - fc)[:, None] * maps[r0, c0] + fc[:, None] * maps[r0, c1])
            + fr[:, None] * ((1 - fc)[:, None] * maps[r1, c0] + fc[:, None] * maps[r1, c1]))


def rows_of(mode: str, seed: int) -> dict[str, dict]:
    seed_dir, run_dir, model, config, facts, examples, features_dir = head_run(mode, seed)
    items = {}
    for split in ("train", "val", "test"):
        boxes_of = {e.image_id: e.boxes for e in examples[split]}
        items[split] = item_inputs(model, pipeline.eval_dataset(features_dir, facts, split),
                                   boxes_of, facts.image_size, FLAGS.margin)
        print(f"[item_recognition] {mode} seed {seed} {split}: {len(items[split]['label'])} "
              "items", file=sys.stderr, flush=True)
    num_classes = facts.num_classes
    labels = {s: v["label"] for s, v in items.items()}

    def per_split(*keys: str) -> dict[str, np.ndarray]:
        return {s: np.concatenate([v[key] for key in keys], axis=1) for s, v in items.items()}

    inputs = {"head's scores": (per_split("evidence"), 0),
              "pooled features": (per_split("pooled"), 512),
              "RoI features": (per_split("roi"), 512),
              "RoI and pooled features + head's scores": (
                  per_split("roi", "pooled", "evidence"), 512)}
    logits = {}
    for reader, (x, hidden) in inputs.items():
        classifier = item_softmax(x, labels, num_classes, seed, hidden)
        logits[reader] = {s: classifier.predict(x[s], batch_size=4096, verbose=0)
                          for s in items}
    test = labels["test"]
    ITEM_SCORES.setdefault(mode, []).append({
        reader: (100.0 * float(np.mean(logits[reader]["test"].argmax(1) == test)),
                 {name: 100.0 * float(np.mean(logits[reader]["test"][test == k].argmax(1)
                                              == k))
                  for name in LOOK_ALIKES
                  for k in [FASHION_MNIST_CLASSES.index(name)] if np.any(test == k)})
        for reader in READERS})

    splits = {s: {key: v[key] for key in ("y_true", "areas", "ids")} for s, v in items.items()}
    priors = np.bincount(labels["train"], minlength=num_classes) / len(labels["train"])
    table = SCENE_TABLES.get(config.data.scenes)

    def marginals(reader: str, scene: bool):
        def read(split: str, temperature: float) -> np.ndarray:
            probs = tf.nn.softmax(logits[reader][split] / temperature).numpy()
            probs = probs.astype(np.float64)
            n = len(splits[split]["ids"])
            if scene:
                return scene_marginals(probs, items[split]["image"], n, priors, table)
            return at_least_one(probs, items[split]["image"], n)
        return read

    rows = {"spatial head": run_row(run_dir)}
    for reader in READERS:
        rows[f"items' boxes, {reader}, one class per item"] = best_on_validation(
            splits, config, facts, marginals(reader, False), TEMPERATURES)
        if table:
            rows[f"items' boxes, {reader}, the scene inferred"] = best_on_validation(
                splits, config, facts, marginals(reader, True), TEMPERATURES)
    return with_main_job(rows, seed_dir)


def item_lines(mode: str, seeds: list[int]) -> list[str]:
    """A table of the test items' accuracy and look-alike recalls, mean ± std over seeds
    (the sample std, as every other table's)."""
    per_seed = ITEM_SCORES[mode]
    header = "| item classifier | accuracy | " + " | ".join(
        f"{name} recall" for name in LOOK_ALIKES) + " |"
    lines = [f"Mode `{mode}`: test items named by each classifier, their places told "
             f"(% , mean ± std over seeds {', '.join(map(str, seeds))}).", "", header,
             "|" + "---|" * (2 + len(LOOK_ALIKES))]
    for reader in READERS:
        accuracy = [seed[reader][0] for seed in per_seed]
        # A seed without test items of a class has no recall of it.
        recalls = [[seed[reader][1][name] for seed in per_seed if name in seed[reader][1]]
                   for name in LOOK_ALIKES]
        cells = [mean_std(v) if v else "n/a" for v in [accuracy] + recalls]
        lines.append(f"| {reader} | " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    seeds = [int(s) for s in FLAGS.seeds]
    lines = ["Test split; every item's place told by its true box (grown by "
             f"{FLAGS.margin:g} positions), never its class. Each label reader's "
             "temperature and threshold chosen on validation, `val` the validation "
             f"objective there. Mean ± std over seeds {', '.join(map(str, seeds))}; per "
             "seed below.", ""]
    for mode in FLAGS.modes:
        per_seed = {seed: rows_of(mode, seed) for seed in seeds}
        lines += item_lines(mode, seeds)
        lines += table_runs.mode_tables(per_seed, COLUMNS, over="spatial head")
    publish("How well the frozen features name a told item", "\n".join(lines), FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
