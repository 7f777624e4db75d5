r"""How much of the F1 a label-set decision can still win, given the spatial head's scores.

A decoder over the spatial head decides two things per image: which classes and how
many. This script separates the two on the paper table's runs: for every mode and seed
it scores, on the test split,

- `spatial head (τ)`: the head at its validation threshold (the paper table's row);
- `spatial head, top-T_i`: the same scores, each image given its **true** label count
  `T_i` and labelled with its `T_i` best classes — an oracle for "how many";
- `main job (τ)`: the decoder over that head (the paper table's row);
- `main job, top-T_i`: the main job's per-class scores under the same oracle.

When the head's top-T_i is only a point or two above the head at τ, a decoder that
keeps the head's ranking of classes cannot win more than that by deciding how many
labels to give; more has to come from ranking the classes better (recognising the
items better, or, where labels co-occur, reading one label from another).
It also prints the head's precision and recall per class.

    python benchmarks/count_oracle.py --root=runs/table

Needs the paper table's `spatial_head` and `main_job` runs; about a minute per mode and
seed on 2 CPU cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import _table_runs as table_runs  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from benchmarks._results import publish  # noqa: E402
from ofrnn_tf.metrics import format_table, label_set_metrics  # noqa: E402

FLAGS = flags.FLAGS
table_runs.define_flags()
flags.adopt_module_key_flags(table_runs)

COLUMNS = ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1")


def top_true_count(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each image's `T_i` highest-scoring classes, `T_i` its true label count."""
    ranks = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1)
    return (ranks < y_true.sum(1, keepdims=True)).astype(np.int32)


def per_class(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> dict[str, dict]:
    hits = (y_true * y_pred).sum(0)
    return {name: {"P": 100.0 * hits[c] / max(y_pred[:, c].sum(), 1),
                   "R": 100.0 * hits[c] / max(y_true[:, c].sum(), 1)}
            for c, name in enumerate(names)}


def rows_of(mode: str, seed: int) -> tuple[dict[str, dict], dict[str, dict]]:
    rows, classes = {}, {}
    for row, name in (("spatial head", "spatial_head"), ("main job", "main_job")):
        run_dir = table_runs.table_run(mode, seed, name)
        rows[f"{row} (τ)"] = run_dir.load_metrics("test")
        y_true, y_pred, scores, facts = table_runs.decoded_split(run_dir)
        rows[f"{row}, top-T_i"] = label_set_metrics(y_true, top_true_count(y_true, scores))
        if name == "spatial_head":
            classes = per_class(y_true, y_pred, facts.label_names)
    return rows, classes


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    seeds = [int(s) for s in FLAGS.seeds]
    lines = ["Test split; `τ` rows are the paper table's (thresholds on validation); "
             "`top-T_i` rows give every image its true label count and its best classes by "
             f"the run's own scores. Mean ± std over seeds {', '.join(map(str, seeds))}.", ""]
    for mode in FLAGS.modes:
        per_seed = {seed: rows_of(mode, seed) for seed in seeds}
        table = table_runs.mean_std_rows([per_seed[s][0] for s in seeds], COLUMNS)
        class_table = table_runs.mean_std_rows([per_seed[s][1] for s in seeds], ("P", "R"))
        lines += [f"Mode `{mode}`:", "", format_table(table, columns=list(COLUMNS),
                                                      name_header="row"), "",
                  f"The spatial head at τ per class, mode `{mode}` (precision, recall):", "",
                  format_table(class_table, columns=["P", "R"], name_header="class"), ""]
    publish("What deciding the label count is worth", "\n".join(lines), FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
