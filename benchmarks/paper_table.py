"""The paper's ablation table (Tables 1–2) on the embedded benchmark.

Trains and evaluates the five rows — baseline, no_attention, frequency_first,
rare_first, order_free — with the same cached canvases and features, and appends a
markdown table to benchmarks/RESULTS.md:

    .venv/bin/python benchmarks/paper_table.py --root=runs/table

Each row is one `train.py` run (resumable: rerunning skips finished rows). Extra
train.py flags can be passed after `--`, e.g. `-- --epochs_stage2=6`.
About 5 minutes on 2 CPU cores at the default benchmark size with the default stage-5
features (once they are cached), about 20 with `-- --feature_layer=top`.
"""

import json
import os
import subprocess
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import append_result  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "runs/table", "One work directory per row goes under it.")
flags.DEFINE_string("cache_dir", "data", "Shared canvases and feature cache.")
flags.DEFINE_list("variants", ["baseline", "no_attention", "frequency_first", "rare_first",
                               "order_free"], "Rows of the table.")

COLUMNS = ["C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1", "mAP", "AP-small", "AP-large",
           "train time (s)"]


def run_variant(variant: str, extra: list[str]) -> dict:
    workdir = os.path.join(FLAGS.root, variant)
    metrics_path = os.path.join(workdir, "metrics_test.json")
    timing_path = os.path.join(workdir, "timing_train.json")
    if not (os.path.exists(metrics_path) and os.path.exists(timing_path)):
        command = [sys.executable, "train.py", f"--workdir={workdir}", f"--variant={variant}",
                   f"--cache_dir={FLAGS.cache_dir}", *extra]
        print("+", " ".join(command), file=sys.stderr, flush=True)
        subprocess.run(command, check=True)
    with open(metrics_path) as f:
        metrics = json.load(f)
    with open(timing_path) as f:
        metrics["train time (s)"] = round(json.load(f)["training"])
    return metrics


def main(argv):
    from ofrnn_tf.metrics import format_table

    extra = argv[1:]
    rows = {variant: run_variant(variant, extra) for variant in FLAGS.variants}
    table = format_table(rows, columns=COLUMNS, name_header="variant")
    print(table)
    lines = [table, ""]
    if "order_free" in rows and "baseline" in rows:
        full, base = rows["order_free"], rows["baseline"]
        lines.append(f"order_free − baseline: C-F1 {full['C-F1'] - base['C-F1']:+.1f}, "
                     f"O-F1 {full['O-F1'] - base['O-F1']:+.1f} (goal: ≥ +5 on both).")
        others = [v for v in rows if v not in ("order_free",)]
        beaten = [v for v in others if full["C-F1"] > rows[v]["C-F1"] and full["O-F1"] > rows[v]["O-F1"]]
        lines.append(f"order_free above every other row on C-F1 and O-F1: "
                     f"{'yes' if len(beaten) == len(others) else 'no (not above: ' + ', '.join(sorted(set(others) - set(beaten))) + ')'}.")
    lines.append("Train time: both stages with validation after every epoch (features cached).")
    append_result("Paper table on the embedded benchmark (Tables 1–2 ablations)",
                  " ".join(["python benchmarks/paper_table.py", f"--root={FLAGS.root}",
                            f"--cache_dir={FLAGS.cache_dir}", *extra]),
                  lines)


if __name__ == "__main__":
    app.run(main)
