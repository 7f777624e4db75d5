"""What many inputs cost the steps that read them all before any image: seconds and peak
memory per checkout.

Runs, for each case and each of ``--checkouts`` (this repository, or another commit's
tree), a child process that times one call on inputs written once beforehand:

- ``folder``: `expand_inputs` of a folder of ``--images`` empty ``.jpg`` files (what
  ``ofrnn-predict`` and ``ofrnn-client`` do with a folder given);
- ``json_array``: `load_manifest` of a JSON-array manifest of ``--manifest_items`` items
  (files not looked at);
- ``resume``: `resumed_lines` of an ``ofrnn-predict --all_scores`` report of
  ``--report_lines`` lines over ``--num_classes`` classes (what ``--resume`` reads);
- ``client_version``: `kept_version` of the same report as ``ofrnn-client`` writes it
  (the version ``ofrnn-client --resume`` goes on from).

It prints the seconds of the call, the child's peak RSS and what the call found (which
must be the same in every checkout), and for each case the ratio of each checkout's
seconds and peak RSS to the first's. The checkouts alternate.

    python benchmarks/bench_many_inputs.py --checkouts=.,../before
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._results import (  # noqa: E402
    check_checkouts, check_choices, checkout_label, child_result, host_load,
    measured_alternately, publish)
from benchmarks import _stops as stops  # noqa: E402

CASES = ("folder", "json_array", "resume", "client_version")

FLAGS = flags.FLAGS
flags.DEFINE_list("checkouts", ["."], "Repository trees to measure (the ratios are to the "
                  "first).")
flags.DEFINE_list("cases", list(CASES), f"Which of {', '.join(CASES)} to run.")
flags.DEFINE_integer("images", 50_000, "Files of the folder case.", lower_bound=1)
flags.DEFINE_integer("manifest_items", 20_000, "Items of the JSON-array manifest.",
                     lower_bound=1)
flags.DEFINE_integer("report_lines", 20_000, "Lines of the resumed reports.", lower_bound=1)
flags.DEFINE_integer("num_classes", 300, "Classes of each report line's all_scores.",
                     lower_bound=1)
flags.DEFINE_bool("append", True, "Append the numbers to benchmarks/RESULTS.md.")
check_checkouts()
check_choices("cases", CASES)

_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, ".")
case, data, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
if case == "folder":
    from ofrnn_tf.cli.image_inputs import expand_inputs
    call = lambda: len(expand_inputs([f"{data}/folder"]))
elif case == "json_array":
    from ofrnn_tf.data.adapters.manifest import load_manifest
    call = lambda: len(load_manifest(f"{data}/manifest.json", check_files=False)[0])
elif case == "resume":
    from ofrnn_tf.cli.image_inputs import resumed_lines
    from ofrnn_tf.cli.predict import line_fields
    entries = [f"{i:07d}.jpg" for i in range(count + 1)]
    call = lambda: resumed_lines(f"{data}/predict.jsonl", entries, "ofrnn-predict",
                                 line_fields(True)).count
else:
    import os
    from ofrnn_tf.cli.client import kept_version
    report = f"{data}/client.jsonl"
    call = lambda: kept_version(report, os.path.getsize(report))
start = time.perf_counter()
found = call()
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "found": found,
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_inputs(data: Path) -> None:
    """The folder, the manifest and the two reports the cases read."""
    (data / "folder").mkdir()
    for i in range(FLAGS.images):
        (data / "folder" / f"{i:07d}.jpg").touch()
    classes = FLAGS.num_classes
    items = [{"path": f"img/{i:07d}.jpg",
              "labels": [f"class_{(i * 7 + k * 13) % classes}" for k in range(3)]}
             for i in range(FLAGS.manifest_items)]
    (data / "manifest.json").write_text(json.dumps(items, indent=1))
    scores = {f"class_{c}": 0.123456 for c in range(FLAGS.num_classes)}
    with open(data / "predict.jsonl", "w") as predict, open(data / "client.jsonl", "w") as client:
        for i in range(FLAGS.report_lines):
            line = {"image": f"{i:07d}.jpg", "labels": ["class_0"], "label_ids": [0],
                    "scores": [0.9], "log_prob": -0.1, "all_scores": scores}
            predict.write(json.dumps({**line, "step_probabilities": [0.9]}) + "\n")
            client.write(json.dumps({**line, "model_version": 1}) + "\n")


def measure(checkout: str, case: str, data: Path) -> dict:
    return child_result(_CHILD, [case, str(data), str(FLAGS.report_lines)], checkout, case)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    checkouts = list(FLAGS.checkouts)
    sizes = {"folder": f"{FLAGS.images} files",
             "json_array": f"{FLAGS.manifest_items} items",
             "resume": f"{FLAGS.report_lines} lines × {FLAGS.num_classes} classes",
             "client_version": f"{FLAGS.report_lines} lines × {FLAGS.num_classes} classes"}
    lines = ["One call each in a child process; its seconds, the child's peak RSS, and what "
             "it found (entries, examples, kept lines, version). Ratios: a checkout's over "
             f"the first's ({checkout_label(checkouts[0])}).", "",
             "| case | size | checkout | s | peak RSS MiB | found |",
             "|---|---|---|---:|---:|---|"]
    ratios = []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_many_inputs-") as tmp:
        data = Path(tmp)
        write_inputs(data)
        for turn, case in enumerate(FLAGS.cases):
            results = measured_alternately(checkouts, turn,
                                           lambda path: measure(path, case, data))
            for path in checkouts:
                r = results[path]
                lines.append(f"| {case} | {sizes[case]} | {checkout_label(path)} | "
                             f"{r['seconds']:.2f} | {r['rss']:.0f} | {r['found']} |")
                print(lines[-1], flush=True)
            first = results[checkouts[0]]
            ratios += [f"- {case}, {checkout_label(path)}: "
                       f"{results[path]['seconds'] / first['seconds']:.1f}× the seconds, "
                       f"{results[path]['rss'] / first['rss']:.1f}× the peak RSS"
                       for path in checkouts[1:]]
    ratios.append(f"\n{host_load(load, os.getloadavg()[0])}.")
    publish("What many inputs cost before the first image", "\n".join(lines + [""] + ratios),
            FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
