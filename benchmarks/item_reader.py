r"""What reading a canvas item by item could be worth, with the items' places told or found.

The paper's picture of its decoder is a reader that looks at one item at a time, names
it and moves on. On the benchmark's canvases that reading has two things a spatial head
lacks: each item has exactly one class (so a Shirt is not also a T-shirt), and in the
scene mode the classes of a canvas's items all come from its scene. This script
measures what a reader that had both exactly could make of the spatial head's own
per-position class scores `S_{i,c}`, with the items' places told by the true boxes (an
oracle on where the items are, never on what they are):

- `items' boxes, each class alone`: the head's scores pooled (max) over the positions
  inside the items' boxes only, thresholded as the head is: what knowing the places
  alone is worth;
- `items' boxes, one class per item`: each item's evidence `e_k = max_{i ∈ box k} S_i`
  (`[C]`) read by a softmax over the C classes fitted on the training split's items
  (`P(c | e_k)`), and `P(y_c = 1) = 1 − Π_k (1 − P_k(c))`: every item is one class;
- in the scene mode, `…, the scene inferred`: the exact posterior of the generator
  given that evidence. With `l_k(c) = P(c | e_k) / π_c` (`π` the training items' class
  frequencies, under which the softmax was fitted) and the scene table's `f_s`, item
  ranges and class distributions `p_s`,
  `P(s | x) ∝ f_s P(n | s) Π_k Σ_c p_s(c) l_k(c)` and, within scene s, item k is class
  c with probability `∝ p_s(c) l_k(c)`; the label marginals are summed over scenes;
- `…, told the scene (oracle …)`: the same with `P(s | x)` the canvas's true scene;
- `items found in the head's scores, …`: the same readers over items found without
  boxes, one at each local maximum (over its 3×3 neighbourhood) of the best class
  score `max_c S_{i,c}` that passes a threshold, its evidence the max over that
  neighbourhood: how far the places can be had from the head itself;
- `items found, as many as the canvas has (oracle count)`: each canvas's `n` highest
  of those maxima, `n` its true item count: what the finder misses beside the count;
- `items found, as many as a count classifier says`: `n` from a small MLP over the
  canvas's highest maxima, fitted on the training split's item counts (supervision
  that the head and the paper's model do not have), with the item softmax as above
  (fitted on the training split's boxes) or, in `the same, the head's scores as the
  item softmax (no boxes)`, `softmax(e_k / T)` of the head's own scores.

One temperature on the item softmax's logits (and the found items' threshold) and the
decision threshold are chosen on validation, as every row's threshold is. Rows are
scored on the test split against the paper table's `spatial head` and `main job` runs
of the same seed; the script also prints each row's lead over the head.

    python benchmarks/item_reader.py --root=runs/table7

Needs the paper table's `spatial_head` run of each mode and seed (and its `main_job`
run for that row), with the built benchmark (its boxes); about a minute per mode and
seed on 2 CPU cores.
"""

from __future__ import annotations

import functools
import itertools
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import _table_runs as table_runs  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from benchmarks._results import publish  # noqa: E402
from benchmarks.item_oracle import item_positions, position_scores  # noqa: E402
from benchmarks.label_context import (canvas_facts, scored_on_test, split_outputs,  # noqa: E402
                                      validation_score)
from ofrnn_tf import pipeline  # noqa: E402
from ofrnn_tf.data import run_data  # noqa: E402
from ofrnn_tf.features import run_cache  # noqa: E402
from ofrnn_tf.data.canvas_config import SCENE_TABLES  # noqa: E402
from ofrnn_tf.run_dir import RunDir  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402  (after ofrnn_tf, which sets TensorFlow's CPU options)

FLAGS = flags.FLAGS
table_runs.define_flags()
flags.adopt_module_key_flags(table_runs)
flags.DEFINE_integer("item_epochs", 30, "Epochs of the item softmax (best by validation "
                     "item log-loss).", lower_bound=1)
flags.DEFINE_float("margin", 0.5, "An item's positions: grid cells whose centres lie in "
                   "its box grown by this many cells on every side.")

COLUMNS = ("C-F1", "O-F1", "mAP", "AP-small", "val")
TEMPERATURES = (0.5, 0.7, 1.0, 1.5, 2.0, 3.0)
# Best-class scores `max_c S_{i,c}` from which a local maximum counts as a found item.
FOUND_THRESHOLDS = (-1.0, 0.0, 1.0)
# How many of an image's highest maxima the item-count classifier reads.
COUNT_INPUTS = 8
# Per mode, for each seed: % of test canvases whose found items number their true items,
# at each of `FOUND_THRESHOLDS`, then as the count classifier says.
FOUND_COUNT_RIGHT: dict[str, list[list[float]]] = {}


def item_evidence(scores: np.ndarray, boxes_of, image_size: int, margin: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(e [K, C], image [K], label [K])` over every item of a split: its max class scores
    over its positions, the row of its image and its true class."""
    grid = int(round(scores.shape[1] ** 0.5))
    evidence, image, label = [], [], []
    for row, boxes in enumerate(boxes_of):
        for (c, _), positions in zip(boxes, item_positions(boxes, image_size, grid, margin)):
            evidence.append(scores[row, positions].max(axis=0))
            image.append(row)
            label.append(c)
    return (np.asarray(evidence, np.float32), np.asarray(image, np.int64),
            np.asarray(label, np.int64))


def local_maxima(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(best [N, g, g], peak [N, g, g])`: the best class score `max_c S_{i,c}` of each
    position, and whether it is not below any of its eight neighbours'."""
    grid = int(round(scores.shape[1] ** 0.5))
    best = scores.max(axis=2).reshape(-1, grid, grid)
    padded = np.pad(best, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    neighbours = np.max([padded[:, 1 + dy:1 + dy + grid, 1 + dx:1 + dx + grid]
                         for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx], axis=0)
    return best, best >= neighbours


def maxima_scores(scores: np.ndarray, floor: float = -10.0) -> np.ndarray:
    """`[N, COUNT_INPUTS]` each image's highest local-maximum scores, in descending
    order (`floor` where it has fewer): what the item-count classifier reads."""
    best, peak = local_maxima(scores)
    values = np.where(peak, np.maximum(best, floor), floor).reshape(len(scores), -1)
    return -np.sort(-values, axis=1)[:, :COUNT_INPUTS]


def count_classifier(inputs: dict, counts: dict, seed: int) -> keras.Model:
    """Item count (class k ↔ k + 1 items) from `maxima_scores`: a 64-unit MLP fitted on
    the training split's item counts."""
    keras.utils.set_random_seed(seed)
    classes = int(max(counts["train"].max(), counts["val"].max()))
    model = keras.Sequential([keras.Input((COUNT_INPUTS,)),
                              keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(classes)])
    return fitted_by_validation(model, inputs, {s: c - 1 for s, c in counts.items()})


def fitted_by_validation(model: keras.Model, inputs: dict, labels: dict) -> keras.Model:
    """`model` fitted as a softmax classifier on `inputs["train"]` for `--item_epochs`
    epochs, with the weights of the epoch of least validation log-loss."""
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    best = None
    for _ in range(FLAGS.item_epochs):
        model.fit(inputs["train"], labels["train"], batch_size=256, epochs=1, verbose=0)
        loss = model.evaluate(inputs["val"], labels["val"], batch_size=4096, verbose=0)
        if best is None or loss < best[0]:
            best = (loss, model.get_weights())
    model.set_weights(best[1])
    return model


def found_items(scores: np.ndarray, threshold: float, counts: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """`(e [K, C], image [K])` over items found without boxes: each position whose best
    class score `max_c S_{i,c}` reaches `threshold` and is not below any of its eight
    neighbours' (the best position alone where none does), read as the max class
    scores over it and its neighbours. With `counts` (items per image), each image's
    `counts[row]` highest such maxima instead, whatever their score."""
    grid = int(round(scores.shape[1] ** 0.5))
    best, peak = local_maxima(scores)
    peaks = peak & (best >= (threshold if counts is None else -np.inf))
    grid_scores = scores.reshape(-1, grid, grid, scores.shape[-1])
    evidence, image = [], []
    for row in range(len(scores)):
        found = np.argwhere(peaks[row])
        if counts is not None:
            found = found[np.argsort(-best[row][tuple(found.T)], kind="stable")[:counts[row]]]
        if not len(found):
            found = [np.unravel_index(int(best[row].argmax()), (grid, grid))]
        for r, c in found:
            region = grid_scores[row, max(r - 1, 0):r + 2, max(c - 1, 0):c + 2]
            evidence.append(region.reshape(-1, scores.shape[-1]).max(axis=0))
            image.append(row)
    return np.asarray(evidence, np.float32), np.asarray(image, np.int64)


def at_least_one(item_probs: np.ndarray, image: np.ndarray, num_images: int) -> np.ndarray:
    """`[N, C]` P(some item of the image is of class c) for independent items."""
    log_none = np.zeros((num_images, item_probs.shape[1]))
    np.add.at(log_none, image, np.log1p(-np.clip(item_probs, 0.0, 1 - 1e-9)))
    return 1.0 - np.exp(log_none)


def scene_marginals(item_probs: np.ndarray, image: np.ndarray, num_images: int,
                    priors: np.ndarray, table, told: np.ndarray | None = None) -> np.ndarray:
    """`[N, C]` label marginals under the scene generator given each item's class posterior
    `item_probs` (fitted under the class frequencies `priors`): the scene summed out by
    Bayes' rule from `table`, or the one-hot `told` scene."""
    ratios = item_probs / priors  # l_k(c), up to a factor per item
    counts = np.bincount(image, minlength=num_images)
    log_scene = np.zeros((num_images, len(table)))
    per_scene = []
    for s, scene in enumerate(table):
        p = scene.class_probabilities()
        mass = ratios @ p  # Σ_c p_s(c) l_k(c)
        lo, hi = scene.item_range
        log_count = np.where((counts >= lo) & (counts <= hi), -np.log(hi - lo + 1), -np.inf)
        log_items = np.zeros(num_images)
        np.add.at(log_items, image, np.log(np.maximum(mass, 1e-300)))
        log_scene[:, s] = np.log(scene.frequency) + log_count + log_items
        per_scene.append(at_least_one(ratios * p / np.maximum(mass, 1e-300)[:, None],
                                      image, num_images))
    if told is None:
        finite = np.isfinite(log_scene).any(axis=1)
        log_scene[~finite] = 0.0  # a count no scene allows: every scene alike
        weights = np.exp(log_scene - log_scene.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
    else:
        weights = told
    return np.einsum("ns,snc->nc", weights, np.stack(per_scene))


def item_softmax(inputs: dict, labels: dict, num_classes: int, seed: int,
                 hidden: int = 0) -> keras.Model:
    """A softmax over the classes from an item's inputs (its evidence here), fitted on the
    training items: `Dense(C)` alone, or after a `hidden`-unit ReLU layer with dropout 0.3."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((inputs["train"].shape[1],))]
    if hidden:
        layers += [keras.layers.Dense(hidden, activation="relu"), keras.layers.Dropout(0.3)]
    model = keras.Sequential(layers + [keras.layers.Dense(num_classes)])
    return fitted_by_validation(model, inputs, labels)


def best_on_validation(splits: dict, config, facts, marginals,
                       settings=TEMPERATURES) -> dict:
    """Test metrics of `marginals(split, setting)` at the setting (a temperature, or a
    tuple with one) and threshold that score best on validation."""
    decoding = config.decoding
    score, tau, setting = max(
        validation_score(split_outputs(splits, "val", marginals("val", x)), decoding) + (x,)
        for x in settings)
    print(f"[item_reader] setting {setting}, τ {tau:.3g}, validation {score:.1f}",
          file=sys.stderr, flush=True)
    return scored_on_test(split_outputs(splits, "test", marginals("test", setting)),
                          tau, score, decoding, facts)


def head_run(mode: str, seed: int) -> tuple:
    """`(seed folder, run, model, config, facts, examples by split, features folder)` of
    the paper table's `spatial_head` run of `mode` and `seed` under `--root`."""
    run_dir = table_runs.table_run(mode, seed, "spatial_head")
    model, config, facts = table_runs.load_run(run_dir)
    features_dir = run_cache.locate_features(config, facts)
    return (Path(run_dir.path).parent, run_dir, model, config, facts,
            run_data.load_data(config).splits, features_dir)


def run_row(run_dir: RunDir) -> dict:
    """A finished run's test metrics, with its validation objective as `val`."""
    return {**run_dir.load_metrics("test"), "val": table_runs.run_validation(run_dir)}


def with_main_job(rows: dict, seed_dir: Path) -> dict:
    """`rows` and, when the seed's `main_job` run is finished, its row last."""
    main_job = RunDir(str(seed_dir / "main_job"))
    if Path(main_job.metrics_file("test")).exists():
        rows["main job"] = run_row(main_job)
    return rows


def rows_of(mode: str, seed: int) -> dict[str, dict]:
    seed_dir, run_dir, model, config, facts, examples, features_dir = head_run(mode, seed)
    splits = {split: position_scores(model, pipeline.eval_dataset(features_dir, facts, split))
              for split in examples}
    items = {}
    for split, data in splits.items():
        boxes = {e.image_id: e.boxes for e in examples[split]}
        items[split] = item_evidence(data["scores"], [boxes[i] for i in data["ids"]],
                                     facts.image_size, FLAGS.margin)
    num_classes = facts.num_classes
    softmax = item_softmax({s: v[0] for s, v in items.items()},
                           {s: v[2] for s, v in items.items()}, num_classes, seed)
    priors = np.bincount(items["train"][2], minlength=num_classes) / len(items["train"][2])

    def n(split: str) -> int:
        return len(splits[split]["ids"])

    def count(split: str) -> np.ndarray:
        return np.bincount(items[split][1], minlength=n(split))

    maxima = {s: maxima_scores(splits[s]["scores"]) for s in splits}
    counter = count_classifier(maxima, {s: count(s) for s in splits}, seed)
    uniform = np.full(num_classes, 1.0 / num_classes)

    @functools.cache
    def items_of(split: str, finder) -> tuple[np.ndarray, np.ndarray]:
        """`(evidence [K, C], image [K])` of the items that `finder` gives: `"boxes"`
        (told), a threshold on the maxima, `"told count"` or `"predicted count"` (that
        many maxima)."""
        if finder == "boxes":
            return items[split][:2]
        if finder == "told count":
            return found_items(splits[split]["scores"], 0.0, count(split))
        if finder == "predicted count":
            return found_items(splits[split]["scores"], 0.0, predicted(split))
        return found_items(splits[split]["scores"], finder)

    @functools.cache
    def read(split: str, finder, fitted: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """`(item logits [K, C], image [K])` of `items_of(split, finder)`: the fitted item
        softmax's logits, or (`fitted` False) the head's scores themselves."""
        evidence, image = items_of(split, finder)
        if not fitted:
            return evidence, image
        return softmax.predict(evidence, batch_size=4096, verbose=0), image

    @functools.cache
    def predicted(split: str) -> np.ndarray:
        return counter.predict(maxima[split], verbose=0).argmax(1) + 1

    def per_item(split: str, setting, table=None, told=None, fitted=True) -> np.ndarray:
        finder, temperature = setting
        logits, image = read(split, finder, fitted)
        probs = tf.nn.softmax(logits / temperature).numpy().astype(np.float64)
        if table is None:
            return at_least_one(probs, image, n(split))
        return scene_marginals(probs, image, n(split), priors if fitted else uniform, table,
                               None if told is None else told[split])

    def boxes_alone(split: str, temperature: float) -> np.ndarray:
        evidence, image, _ = items[split]
        pooled = np.full((n(split), num_classes), -np.inf)
        np.maximum.at(pooled, image, evidence)
        return tf.sigmoid(pooled / temperature).numpy()

    FOUND_COUNT_RIGHT.setdefault(mode, []).append([
        100.0 * float(np.mean(np.bincount(items_of("test", finder)[1], minlength=n("test"))
                              == count("test"))) for finder in FOUND_THRESHOLDS]
        + [100.0 * float(np.mean(predicted("test") == count("test")))])
    table = SCENE_TABLES.get(config.data.scenes)
    told = table and {s: canvas_facts(run_data.benchmark_dir(config), s,
                                      splits[s]["ids"])["scene"] for s in splits}
    rows = {"spatial head": run_row(run_dir),
            "items' boxes, each class alone (oracle places)":
                best_on_validation(splits, config, facts, boxes_alone)}
    readers = (("items' boxes", ["boxes"], "oracle places", True),
               ("items found in the head's scores", FOUND_THRESHOLDS, None, True),
               ("items found, as many as the canvas has", ["told count"], "oracle count", True),
               ("items found, as many as a count classifier says", ["predicted count"], None,
                True),
               ("the same, the head's scores as the item softmax (no boxes)",
                ["predicted count"], None, False))
    for name, finders, oracle, fitted in readers:
        settings = list(itertools.product(finders, TEMPERATURES))
        suffix = f" ({oracle})" if oracle else ""
        rows[f"{name}, one class per item{suffix}"] = best_on_validation(
            splits, config, facts,
            lambda s, x, fitted=fitted: per_item(s, x, fitted=fitted), settings)
        if table:
            rows[f"{name}, the scene inferred{suffix}"] = best_on_validation(
                splits, config, facts,
                lambda s, x, fitted=fitted: per_item(s, x, table, fitted=fitted), settings)
        if table and finders == ["boxes"]:
            rows[f"{name}, told the scene (oracle places and scene)"] = best_on_validation(
                splits, config, facts, lambda s, x: per_item(s, x, table, told), settings)
    return with_main_job(rows, seed_dir)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    seeds = [int(s) for s in FLAGS.seeds]
    lines = ["Test split; every row's threshold (and the item softmax's temperature, and "
             "the found items' threshold) chosen on validation, `val` the validation "
             "objective there. The `oracle places` rows are told where each item is (its "
             "true box), never its class; the scene rows use the generator's scene table. "
             f"Mean ± std over seeds {', '.join(map(str, seeds))}; per seed below.", ""]
    for mode in FLAGS.modes:
        per_seed = {seed: rows_of(mode, seed) for seed in seeds}
        counts = "; ".join(f"seed {seed}: " + " / ".join(f"{v:.1f}" for v in values)
                           for seed, values in zip(seeds, FOUND_COUNT_RIGHT[mode]))
        lines += [f"Mode `{mode}`. Found items as many as the true ones, % of test canvases, "
                  f"at thresholds {' / '.join(f'{t:g}' for t in FOUND_THRESHOLDS)} / as the "
                  f"count classifier says: {counts}.", ""]
        lines += table_runs.mode_tables(per_seed, COLUMNS, over="spatial head")
    publish("What reading item by item could be worth", "\n".join(lines), FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
