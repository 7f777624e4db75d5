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
  the frozen M_map of that run.

    python benchmarks/label_context.py --root=runs/table --modes=independent,scenes

Needs the paper table's `spatial_head` and `main_job` runs; about a minute per run on
2 CPU cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import _table_runs as table_runs  # noqa: E402
from benchmarks._results import publish  # noqa: E402
from ofrnn_tf import pipeline  # noqa: E402
from ofrnn_tf.decoding.calibration import calibrate_from_outputs  # noqa: E402
from ofrnn_tf.evaluation import evaluate as evaluation  # noqa: E402
from ofrnn_tf.metrics import format_table  # noqa: E402
from ofrnn_tf.modeling.layers import LabelContext  # noqa: E402
from ofrnn_tf.run_dir import RunDir  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402  (after ofrnn_tf, which sets TensorFlow's CPU options)

FLAGS = flags.FLAGS
table_runs.define_flags()
flags.adopt_module_key_flags(table_runs)
flags.DEFINE_integer("units", 256, "Width of the MLP's two hidden layers.")
flags.DEFINE_float("dropout", 0.2, "Dropout after the first hidden layer.")
flags.DEFINE_integer("epochs", 40, "Training epochs; the best by validation is kept.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam's learning rate.")
flags.DEFINE_integer("batch_size", 64, "Training batch size.")

COLUMNS = ("C-F1", "O-F1", "mAP", "AP-small", "val")
RUNS = (("spatial head", "spatial_head"), ("main job", "main_job"))


def map_logits(run_dir: RunDir) -> tuple[dict, object]:
    """Per split: M_map's logits `L`, the labels and the label areas; and the run's config."""
    model, config, facts = run_dir.load_model()
    features_dir = pipeline.locate_features(config, facts)
    splits = {}
    for split in ("train", "val", "test"):
        logits, labels, areas = [], [], []
        for batch in pipeline.eval_dataset(features_dir, facts, split):
            logits.append(model.map_logits(batch["features"]).numpy())  # without its own context
            labels.append(batch["labels"].numpy())
            areas.append(batch["label_areas"].numpy())
        splits[split] = {"logits": np.concatenate(logits).astype(np.float32),
                         "y_true": np.concatenate(labels), "areas": np.concatenate(areas)}
    return splits, (config, facts)


def label_context_model(num_classes: int) -> keras.Model:
    """`L ↦ L + MLP(sigmoid(L))`: the package's `LabelContext`, fitted here with Keras."""
    return keras.Sequential([keras.Input((num_classes,)),
                             LabelContext(num_classes, units=FLAGS.units, dropout=FLAGS.dropout)])


def context_row(splits: dict, config, facts, seed: int) -> dict:
    """Trains the label-context MLP over one run's frozen M_map; test metrics at the
    threshold chosen on validation, and the validation objective (`val`)."""
    keras.utils.set_random_seed(seed)
    decoding = config.decoding
    model = label_context_model(splits["train"]["y_true"].shape[1])
    model.compile(keras.optimizers.Adam(FLAGS.learning_rate),
                  keras.losses.BinaryCrossentropy(from_logits=True))

    def outputs(split: str) -> dict:
        logits = model.predict(splits[split]["logits"], batch_size=1024, verbose=0)
        return {"v_prob": tf.sigmoid(logits).numpy(), "y_true": splits[split]["y_true"],
                "label_areas": splits[split]["areas"]}

    best = None
    for epoch in range(FLAGS.epochs):
        model.fit(splits["train"]["logits"], splits["train"]["y_true"],
                  batch_size=FLAGS.batch_size, epochs=1, shuffle=True, verbose=0)
        tau, table = calibrate_from_outputs(outputs("val"), min_labels=decoding.min_labels,
                                            objective=decoding.calibration_objective)
        score = dict(table)[tau]
        if best is None or score > best[0]:
            best = (score, tau, epoch + 1, model.get_weights())
    score, tau, epoch, weights = best
    model.set_weights(weights)
    metrics = evaluation.metrics_at(outputs("test"), tau, min_labels=decoding.min_labels,
                                    small_area=facts.small_area)
    print(f"[label_context] epoch {epoch} of {FLAGS.epochs}, τ {tau:.3g}, validation "
          f"{score:.1f}", file=sys.stderr, flush=True)
    return {**metrics, "val": score}


def rows_of(mode: str, seed: int) -> dict[str, dict]:
    rows = {}
    for row, name in RUNS:
        run_dir = RunDir(str(Path(FLAGS.root) / mode / f"seed{seed}" / name)).require()
        own = run_dir.load_metrics("test")
        splits, (config, facts) = map_logits(run_dir)
        calibration = run_dir.calibration(config.decoding.beam_size)
        rows[row] = {**own, "val": dict(map(tuple, calibration["grid"]))[calibration["tau"]]}
        label = "spatial head + label context" if name == "spatial_head" else \
            "main job's M_map + label context"
        rows[label] = context_row(splits, config, facts, seed)
    return rows


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    seeds = [int(s) for s in FLAGS.seeds]
    lines = ["Test split, thresholds on validation; `val` is the validation objective that "
             "chose each row's threshold (and epoch). Label-context MLP: "
             f"{FLAGS.units}-{FLAGS.units} ReLU, dropout {FLAGS.dropout}, Adam "
             f"{FLAGS.learning_rate:g}, batch {FLAGS.batch_size}, best of {FLAGS.epochs} "
             f"epochs. Mean ± std over seeds {', '.join(map(str, seeds))}; per seed below.", ""]
    for mode in FLAGS.modes:
        per_seed = {seed: rows_of(mode, seed) for seed in seeds}
        names = list(per_seed[seeds[0]])
        table = table_runs.mean_std_rows([per_seed[s] for s in seeds], COLUMNS)
        lines += [f"Mode `{mode}`:", "", format_table(table, columns=list(COLUMNS),
                                                      name_header="row"), ""]
        for seed in seeds if len(seeds) > 1 else ():
            seed_table = {row: {column: f"{per_seed[seed][row][column]:.1f}"
                                for column in COLUMNS} for row in names}
            lines += [f"Seed {seed}:", "", format_table(seed_table, columns=list(COLUMNS),
                                                        name_header="row"), ""]
    publish("A label-context MLP over M_map", "\n".join(lines), FLAGS.append)


if __name__ == "__main__":
    app.run(main)
