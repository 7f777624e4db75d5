r"""A non-recurrent rival for the decoder: M_map's scores corrected by a label-context MLP.

Where labels co-occur, a recurrent decoder can read one label from another. So can a
much simpler model: a small MLP that looks at all of M_map's class probabilities at
once and corrects its logits,

    L' = L + W_3 ReLU(W_2 Dropout(ReLU(W_1 sigmoid(L) + b_1)) + b_2) + b_3,

with `W_3, b_3` starting at zero (so it starts as M_map). M_map stays frozen; the MLP
is trained with binary cross-entropy on the training split's M_map logits, its epoch
and its threshold chosen on validation like the `baseline` row's. It sees only the
class scores, not the image, so whatever it adds over M_map comes from the labels'
co-occurrence.

For every mode and seed this scores, on the test split, the paper table's runs

- `spatial head` and `main job`: their own rows (as in the table);
- `spatial head + label context` and `main job's M_map + label context`: the MLP over
  the frozen M_map of that run;
- `spatial head + context over per-position scores` (`--position_context`): the same
  MLP also reading the head's class scores at every position, `S_i`, through a small
  set encoder (a 128-unit ReLU layer and a linear one per position, their mean and
  max over the positions beside M_map's probabilities). The head's hidden features
  pooled over the canvas only let the MLP memorise (docs/experiments.md); the position scores
  could tell one item with two likely names from two items, and how many items there
  are, which the pooled probabilities blur;
- `spatial head + exact label-set posterior` (for C ≤ 14): a second, non-learned
  reader of co-occurrence over the same head. M_map's probabilities are taken as
  independent evidence about each class and combined by Bayes' rule with a prior over
  whole label sets, the training split's label-set frequencies; the posterior is summed
  over all 2^C sets (`label_set_posterior`);
- in the scene mode, with `--scene_oracle`, a bound on what co-occurrence can be worth
  over the spatial head: the same MLP over its M_map told each canvas's true scene, its
  item count, and both. Given the scene and count the generator draws the items' classes
  independently, so all that one label can tell of another passes through them, and a
  model that reads co-occurrence from the image can at best infer them.
  It also prints how often a test canvas's true label set tells its scene (the most
  probable scene given the set, `label_set_likelihoods`, is the canvas's own).

    python benchmarks/label_context.py --root=runs/table --modes=independent,scenes

Needs the paper table's runs named by `--runs` (`spatial_head` and `main_job`); about
a minute per run on 2 CPU cores.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import _table_runs as table_runs  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from benchmarks._results import publish  # noqa: E402
from benchmarks.item_oracle import position_scores  # noqa: E402
from ofrnn_tf import pipeline  # noqa: E402
from ofrnn_tf.data import run_data  # noqa: E402
from ofrnn_tf.features import run_cache  # noqa: E402
from ofrnn_tf.data.canvas_config import SCENE_TABLES  # noqa: E402
from ofrnn_tf.decoding.calibration import calibrate_from_outputs  # noqa: E402
from ofrnn_tf.evaluation import evaluate as evaluation  # noqa: E402
from ofrnn_tf.modeling.layers import LabelContext  # noqa: E402
from ofrnn_tf.run_dir import RunDir  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402  (after ofrnn_tf, which sets TensorFlow's CPU options)

FLAGS = flags.FLAGS
table_runs.define_flags()
flags.adopt_module_key_flags(table_runs)
flags.DEFINE_integer("units", 256, "Width of the MLP's two hidden layers.", lower_bound=1)
flags.DEFINE_float("dropout", 0.2, "Dropout after the first hidden layer.")
flags.DEFINE_integer("epochs", 40, "Training epochs; the best by validation is kept.",
                     lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Adam's learning rate.")
flags.DEFINE_integer("batch_size", 64, "Training batch size.", lower_bound=1)
flags.DEFINE_list("runs", ["spatial_head", "main_job"], "The paper table's runs to read.")
flags.DEFINE_bool("position_context", True, "Add the row of the MLP that also reads the "
                  "spatial head's per-position class scores (a set encoder).")
flags.DEFINE_integer("position_units", 128, "Width of the set encoder's per-position layers.",
                     lower_bound=1)
flags.DEFINE_bool("scene_oracle", True, "In the scene mode, add the rows of the MLP told "
                  "each canvas's true scene (and item count).")

COLUMNS = ("C-F1", "O-F1", "mAP", "AP-small", "val")
RUNS = {"spatial_head": ("spatial head", "spatial head + label context"),
        "main_job": ("main job", "main job's M_map + label context")}
flags.register_validator("runs", lambda runs: bool(runs) and set(runs) <= set(RUNS),
                         f"--runs takes one or more of {', '.join(RUNS)}")
# An oracle's one-hot facts enter the MLP as logits of ±ORACLE_LOGIT, i.e. as 0/1
# probabilities beside M_map's.
ORACLE_LOGIT = 10.0
# The label-set posterior enumerates all 2^C label sets, so only for small C.
MAX_LABEL_SET_CLASSES = 14
LABEL_SET_SMOOTHING = 0.1
LABEL_SET_TEMPERATURES = (0.7, 1.0, 1.5, 2.0, 3.0)
# Oracle rows of the scene mode: what the MLP is told → the `canvas_facts` it reads.
ORACLES = {"the scene": ("scene",), "the item count": ("items",),
           "the scene and item count": ("scene", "items")}
# Per mode, for each seed: % of test canvases whose true label set tells their scene.
SCENE_TOLD_BY_LABELS: dict[str, list[float]] = {}


def map_logits(run_dir: RunDir, per_position: bool = False) -> tuple[dict, object]:
    """Per split: M_map's logits `L`, the labels, the label areas and the image ids (with
    `per_position`, also the spatial head's `[N, m, C]` position scores `S`); and the
    run's config."""
    model, config, facts = table_runs.load_run(run_dir)
    features_dir = run_cache.locate_features(config, facts)
    splits = {}
    for split in ("train", "val", "test"):
        dataset = pipeline.eval_dataset(features_dir, facts, split)
        if per_position:
            outputs = position_scores(model, dataset)
            splits[split] = {key: outputs[key] for key in
                             ("logits", "scores", "y_true", "areas", "ids")}
            continue
        logits, labels, areas, ids = [], [], [], []
        for batch in dataset:
            logits.append(model.map_logits(batch["features"]).numpy())  # without its own context
            labels.append(batch["labels"].numpy())
            areas.append(batch["label_areas"].numpy())
            ids += [i.decode() for i in batch["image_id"].numpy()]
        splits[split] = {"logits": np.concatenate(logits).astype(np.float32),
                         "y_true": np.concatenate(labels), "areas": np.concatenate(areas),
                         "ids": ids}
    return splits, (config, facts)


def canvas_facts(benchmark_dir: str, split: str, ids: list[str]) -> dict[str, np.ndarray]:
    """What the scene-mode generator drew for each canvas of `split` before its items'
    classes, in the order of `ids`, from the split's COCO file: `scene` (`[N, S]`
    one-hot over the benchmark's scene table) and `items` (`[N, I]` one-hot item count,
    1 … the table's largest)."""
    with open(Path(benchmark_dir) / f"{split}.json") as f:
        coco = json.load(f)
    table = coco["info"]["config"]["scene_table"]
    max_items = max(scene["item_range"][1] for scene in table)
    images = {str(image["id"]): image for image in coco["images"]}
    items = dict.fromkeys(images, 0)
    for annotation in coco["annotations"]:
        items[str(annotation["image_id"])] += 1
    scenes = [scene["name"] for scene in table]
    told = {"scene": np.zeros((len(ids), len(table)), np.float32),
            "items": np.zeros((len(ids), max_items), np.float32)}
    for row, image_id in enumerate(ids):
        if not 1 <= items[image_id] <= max_items:
            raise ValueError(f"{benchmark_dir}/{split}.json: image {image_id} has "
                             f"{items[image_id]} items, outside 1..{max_items}")
        told["scene"][row, scenes.index(images[image_id]["scene"])] = 1
        told["items"][row, items[image_id] - 1] = 1
    return told


def label_set_likelihoods(table: list[dict], label_names: list[str],
                          y_true: np.ndarray) -> np.ndarray:
    """`[N, S]` P(a canvas's label set | scene), exactly, for each row of `y_true`.

    A scene draws its item count `n` uniformly from its range and each item's class
    independently from its distribution `p`; the label set is the set of classes drawn.
    By inclusion–exclusion, P(the classes drawn are exactly L | n) =
    Σ_{K ⊆ L} (−1)^{|L|−|K|} p(K)^n, with p(K) the mass of the classes in K."""
    likelihoods = np.zeros((len(y_true), len(table)))
    for row, labels in enumerate(y_true):
        present = [label_names[c] for c in np.flatnonzero(labels)]
        for k, scene in enumerate(table):
            lo, hi = scene["item_range"]
            p = [scene["classes"].get(name, 0.0) for name in present]
            total = sum(
                (-1) ** (len(p) - len(subset)) * sum(subset) ** n
                for size in range(len(p) + 1) for subset in itertools.combinations(p, size)
                for n in range(lo, hi + 1))
            likelihoods[row, k] = max(total, 0.0) / (hi - lo + 1)
    return likelihoods


def scene_told_by_labels(table: list[dict], label_names: list[str], y_true: np.ndarray,
                         scenes: np.ndarray) -> float:
    """% of canvases whose most probable scene given their true label set (by Bayes'
    rule from the scene `table`) is their own; `scenes` is their `[N, S]` one-hot scene
    (`canvas_facts`)."""
    posterior = (label_set_likelihoods(table, label_names, y_true)
                 * np.array([scene["frequency"] for scene in table]))
    return 100.0 * float(np.mean(posterior.argmax(axis=1) == scenes.argmax(axis=1)))


def label_context_model(num_classes: int, num_extra: int = 0, units: int = 256,
                        dropout: float = 0.2) -> keras.Model:
    """`L ↦ L + MLP(sigmoid(L))`: the package's `LabelContext`, fitted here with Keras.

    With `num_extra`, the input is `[L, extra logits]` and the output its first C
    entries: the MLP reads the extra probabilities beside M_map's (an oracle's facts)."""
    inputs = keras.Input((num_classes + num_extra,))
    corrected = LabelContext(num_classes + num_extra, units=units, dropout=dropout)(inputs)
    return keras.Model(inputs, corrected[:, :num_classes])


def position_context_model(num_classes: int, positions: int, position_units: int = 128,
                           units: int = 256, dropout: float = 0.2) -> keras.Model:
    """`(L, S) ↦ L + MLP([sigmoid(L), sigmoid(mean_i φ(S_i)), sigmoid(max_i φ(S_i))])`.

    `φ(S_i) = W_5 ReLU(W_4 S_i + b_4) + b_5`, both `position_units` wide, reads each
    position's class scores `S_i` (`[positions, C]`); its mean and max over the
    positions enter the package's `LabelContext` beside `L`, as its extra inputs
    (through the same sigmoid), and the output is the corrected first C entries. It
    starts as M_map, as the MLP does."""
    logits = keras.Input((num_classes,), name="logits")
    scores = keras.Input((positions, num_classes), name="scores")
    hidden = keras.layers.Dense(position_units, activation="relu", name="position_1")(scores)
    # Linear, so the pooled values reach LabelContext's sigmoid over its whole range.
    encoded = keras.layers.Dense(position_units, name="position_2")(hidden)
    pooled = [keras.layers.GlobalAveragePooling1D()(encoded),
              keras.layers.GlobalMaxPooling1D()(encoded)]
    inputs = keras.layers.Concatenate()([logits, *pooled])
    corrected = LabelContext(num_classes + 2 * position_units, units=units,
                             dropout=dropout)(inputs)
    return keras.Model([logits, scores], corrected[:, :num_classes])


def split_outputs(splits: dict, split: str, v_prob: np.ndarray) -> dict:
    """The outputs `calibrate_from_outputs` and `metrics_at` read: `v_prob` on `split`."""
    return {"v_prob": v_prob, "y_true": splits[split]["y_true"],
            "label_areas": splits[split]["areas"]}


def validation_score(outputs: dict, decoding) -> tuple[float, float]:
    """`(objective, τ)`: the validation objective at the threshold calibration picks."""
    tau, table = calibrate_from_outputs(outputs, min_labels=decoding.min_labels,
                                        objective=decoding.calibration_objective)
    return dict(table)[tau], tau


def scored_on_test(outputs: dict, tau: float, score: float, decoding, facts) -> dict:
    """Test metrics at the validation threshold `tau`, with the validation objective."""
    return {**evaluation.metrics_at(outputs, tau, min_labels=decoding.min_labels,
                                    small_area=facts.small_area), "val": score}


def context_row(splits: dict, config, facts, seed: int,
                extra: dict[str, np.ndarray] | None = None,
                per_position: bool = False) -> dict:
    """Trains the label-context MLP over one run's frozen M_map (reading `extra[split]`,
    0/1 facts per image, beside M_map's probabilities; or, with `per_position`, the
    head's position scores through `position_context_model`); test metrics at the
    threshold chosen on validation, and the validation objective (`val`)."""
    keras.utils.set_random_seed(seed)
    decoding = config.decoding
    num_classes = splits["train"]["y_true"].shape[1]

    def inputs(split: str):
        if per_position:
            return [splits[split]["logits"], splits[split]["scores"]]
        if extra is None:
            return splits[split]["logits"]
        return np.concatenate([splits[split]["logits"],
                               ORACLE_LOGIT * (2.0 * extra[split] - 1.0)], axis=1)

    if per_position:
        model = position_context_model(num_classes, splits["train"]["scores"].shape[1],
                                       FLAGS.position_units, FLAGS.units, FLAGS.dropout)
    else:
        model = label_context_model(num_classes,
                                    0 if extra is None else extra["train"].shape[1],
                                    FLAGS.units, FLAGS.dropout)
    model.compile(keras.optimizers.Adam(FLAGS.learning_rate),
                  keras.losses.BinaryCrossentropy(from_logits=True))

    def outputs(split: str) -> dict:
        logits = model.predict(inputs(split), batch_size=1024, verbose=0)
        return split_outputs(splits, split, tf.sigmoid(logits).numpy())

    best = None
    for epoch in range(FLAGS.epochs):
        model.fit(inputs("train"), splits["train"]["y_true"],
                  batch_size=FLAGS.batch_size, epochs=1, shuffle=True, verbose=0)
        score, tau = validation_score(outputs("val"), decoding)
        if best is None or score > best[0]:
            best = (score, tau, epoch + 1, model.get_weights())
    score, tau, epoch, weights = best
    model.set_weights(weights)
    print(f"[label_context] epoch {epoch} of {FLAGS.epochs}, τ {tau:.3g}, validation "
          f"{score:.1f}", file=sys.stderr, flush=True)
    return scored_on_test(outputs("test"), tau, score, decoding, facts)


def label_set_posterior(logits: np.ndarray, label_sets: np.ndarray, log_prior: np.ndarray,
                        marginals: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """`[N, C]` P(y_c = 1 | M_map's scores) under a prior over whole label sets.

    M_map, trained with per-class BCE, estimates `q_c ≈ P(y_c = 1 | image)` as if each
    class stood alone with its training frequency `π_c`; read as independent evidence,
    its likelihood ratio for a label set `y` is `Π_c (q_c/π_c)^{y_c} ((1-q_c)/(1-π_c))^{1-y_c}`.
    Times the prior `P(y)` and normalised over `label_sets` (`[S, C]`, 0/1, with
    `log_prior` `[S]`), that is the posterior of each set; its marginals are returned.
    `q = sigmoid(logits / temperature)`."""
    q = np.clip(1.0 / (1.0 + np.exp(-logits / temperature)), 1e-6, 1 - 1e-6)
    present = np.log(q / marginals) @ label_sets.T
    absent = np.log((1 - q) / (1 - marginals)) @ (1 - label_sets).T
    log_joint = present + absent + log_prior[None, :]
    posterior = np.exp(log_joint - log_joint.max(axis=1, keepdims=True))
    return (posterior / posterior.sum(axis=1, keepdims=True)) @ label_sets


def all_label_sets(num_classes: int) -> np.ndarray:
    """`[2^C, C]` every label set as 0/1 rows; row k holds the bits of k (class c ↔ 2^c)."""
    return ((np.arange(2 ** num_classes)[:, None] >> np.arange(num_classes)) & 1).astype(
        np.float64)


def label_set_row(splits: dict, config, facts) -> dict:
    """M_map's scores read through the exact posterior over all 2^C label sets, the
    prior being the training split's label-set frequencies (plus `LABEL_SET_SMOOTHING`
    for every set); the temperature and threshold chosen on validation."""
    y_train = splits["train"]["y_true"].astype(np.int64)
    num_classes = y_train.shape[1]
    label_sets = all_label_sets(num_classes)
    counts = np.bincount(y_train @ (1 << np.arange(num_classes)), minlength=2 ** num_classes)
    log_prior = np.log(counts + LABEL_SET_SMOOTHING)
    marginals = np.clip(y_train.mean(axis=0), 1e-6, 1 - 1e-6)

    def outputs(split: str, temperature: float) -> dict:
        return split_outputs(splits, split, label_set_posterior(
            splits[split]["logits"].astype(np.float64), label_sets, log_prior, marginals,
            temperature))

    decoding = config.decoding
    score, tau, temperature = max(validation_score(outputs("val", t), decoding) + (t,)
                                  for t in LABEL_SET_TEMPERATURES)
    print(f"[label_context] label-set posterior: temperature {temperature:g}, τ {tau:.3g}, "
          f"validation {score:.1f}", file=sys.stderr, flush=True)
    return scored_on_test(outputs("test", temperature), tau, score, decoding, facts)


def rows_of(mode: str, seed: int) -> dict[str, dict]:
    rows = {}
    for name in FLAGS.runs:
        row, label = RUNS[name]
        run_dir = table_runs.table_run(mode, seed, name)
        own = run_dir.load_metrics("test")
        per_position = FLAGS.position_context and name == "spatial_head"
        splits, (config, facts) = map_logits(run_dir, per_position)
        rows[row] = {**own, "val": table_runs.run_validation(run_dir)}
        rows[label] = context_row(splits, config, facts, seed)
        if per_position:
            rows["spatial head + context over per-position scores"] = context_row(
                splits, config, facts, seed, per_position=True)
        if name == "spatial_head" and facts.num_classes <= MAX_LABEL_SET_CLASSES:
            rows["spatial head + exact label-set posterior"] = label_set_row(splits, config, facts)
        if FLAGS.scene_oracle and name == "spatial_head" and config.data.scenes != "none":
            benchmark_dir = run_data.benchmark_dir(config)
            told = {split: canvas_facts(benchmark_dir, split, splits[split]["ids"])
                    for split in splits}
            table = [scene.to_dict() for scene in SCENE_TABLES[config.data.scenes]]
            SCENE_TOLD_BY_LABELS.setdefault(mode, []).append(scene_told_by_labels(
                table, list(facts.label_names), splits["test"]["y_true"],
                told["test"]["scene"]))
            for what, keys in ORACLES.items():
                rows[f"{label} told {what} (oracle)"] = context_row(
                    splits, config, facts, seed,
                    {split: np.concatenate([told[split][k] for k in keys], axis=1)
                     for split in splits})
    return rows


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    seeds = [int(s) for s in FLAGS.seeds]
    lines = ["Test split, thresholds on validation; `val` is the validation objective that "
             "chose each row's threshold (and epoch). Label-context MLP: "
             f"{FLAGS.units}-{FLAGS.units} ReLU, dropout {FLAGS.dropout}, Adam "
             f"{FLAGS.learning_rate:g}, batch {FLAGS.batch_size}, best of {FLAGS.epochs} "
             f"epochs. Context over per-position scores: the same MLP, also reading the "
             f"mean and max over positions of a {FLAGS.position_units}-unit ReLU layer and a "
             "linear one applied to each position's class scores. Exact label-set "
             "posterior: prior the training split's label-set counts + "
             f"{LABEL_SET_SMOOTHING:g}, temperature from "
             f"{', '.join(map(str, LABEL_SET_TEMPERATURES))} by validation. Oracle rows: "
             "the MLP also reads the canvas's true scene or item count (one-hot). Mean ± "
             f"std over seeds {', '.join(map(str, seeds))}; per seed below.", ""]
    for mode in FLAGS.modes:
        per_seed = {seed: rows_of(mode, seed) for seed in seeds}
        lines += [f"Mode `{mode}`:", ""]
        if SCENE_TOLD_BY_LABELS.get(mode):
            lines += ["The most probable scene given a test canvas's true label set (Bayes' "
                      "rule from the scene table) is its own for "
                      f"{', '.join(f'{v:.1f}' for v in SCENE_TOLD_BY_LABELS[mode])} % of "
                      "the canvases (by seed).", ""]
        lines += table_runs.mode_tables(per_seed, COLUMNS)
    publish("A label-context MLP over M_map", "\n".join(lines), FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
