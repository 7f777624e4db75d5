"""Two ways to make a SavedModel that TensorFlow Serving's loader can run, compared.

TF Serving restores a SavedModel through a session over its SignatureDefs, which
restores only the variables tracked as `tf.Variable`s. A `tf.Module` holding Keras 3
layers leaves theirs out ("Could not find variable ..."). Two exports restore:

- `module`: the project's `InferenceModule`, which tracks the underlying `tf.Variable`
  of every Keras weight itself (what `ofrnn-export` writes);
- `export_archive`: `keras.export.ExportArchive` tracking the Keras models, with the
  same serving function as endpoint and the module's own variables (τ, names, limit)
  added as a variable collection;

and the one that does not, for contrast:

- `keras_layers`: a `tf.Module` that holds the Keras objects as attributes.

For each: size on disk, whether a request runs through the session loader (and gives
the module's labels), and the median latency of `serving_default` at batch 1 there.

    python benchmarks/bench_export_formats.py --workdir=runs/order_free
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Before TensorFlow: ofrnn_tf sets its oneDNN default, read when TensorFlow loads.
import ofrnn_tf  # noqa: F401
import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from ofrnn_tf.export.saved_model import signatures
from ofrnn_tf.inference.module import InferenceModule
from ofrnn_tf.tf_errors import op_error_text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import _table_runs as table_runs  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from benchmarks._results import publish  # noqa: E402
from benchmarks._session import SessionModel, median_seconds  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/order_free", "A finished training run.")
flags.DEFINE_integer("repeats", 30, "Timed batch-1 calls per format.", lower_bound=1)
flags.DEFINE_bool("append", True, "Append the results to benchmarks/RESULTS.md.")


def size_mib(path: str) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2 ** 20


def save_module(module: InferenceModule, path: str) -> None:
    tf.saved_model.save(module, path, signatures=signatures(module))


def save_export_archive(module: InferenceModule, path: str) -> None:
    archive = keras.export.ExportArchive()
    archive.track(module.backbone.feature_model)
    archive.track(module.model)
    archive.add_variable_collection(
        "decoding", [module.tau, module.score_mix, module.label_names, module.max_image_pixels])
    archive.add_endpoint("serving_default", module.serve_images)
    archive.write_out(path, verbose=False)


class KerasLayersModule(tf.Module):
    """The trap: the Keras objects are attributes, so they (not their tf.Variables) are tracked."""

    def __init__(self, module: InferenceModule):
        super().__init__()
        self.model = module.model
        self.feature_model = module.backbone.feature_model
        self.tau, self.score_mix = module.tau, module.score_mix
        self.label_names = module.label_names
        self.max_image_pixels = module.max_image_pixels
        self.serve_images = module.serve_images


def save_keras_layers(module: InferenceModule, path: str) -> None:
    holder = KerasLayersModule(module)
    tf.saved_model.save(holder, path, signatures={
        "serving_default": module.serve_images.get_concrete_function()})


def session_latency(path: str, images: np.ndarray, repeats: int):
    """(labels, median seconds) of serving_default through the session loader, or the error."""
    model = SessionModel(path)
    try:
        labels = model(images)["labels"]
    except tf.errors.OpError as error:
        return None, f"{type(error).__name__}: {op_error_text(error)[:160]}"
    return labels, median_seconds(lambda: model(images), repeats)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    run_dir = table_runs.workdir_run()
    module = InferenceModule.from_run(run_dir)
    example = run_dir.example_images()[0]
    images = np.array([Path(example).read_bytes()], object)
    want = module.serve_images(tf.constant(images))["labels"].numpy()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_export_formats_") as tmp:
        for name, save in (("module", save_module), ("export_archive", save_export_archive),
                           ("keras_layers", save_keras_layers)):
            path = os.path.join(tmp, name)
            save(module, path)
            labels, latency = session_latency(path, images, FLAGS.repeats)
            ok = labels is not None and np.array_equal(labels, want)
            rows.append((name, size_mib(path), ok, latency))
    lines = [f"Run `{FLAGS.workdir}`: the same `InferenceModule` saved three ways, each loaded "
             f"through TF Serving's session loader and run on one example image "
             f"(median of {FLAGS.repeats} calls).", "",
             "| format | size (MiB) | restores and gives the module's labels | batch-1 latency |",
             "|:---|---:|:---|---:|"]
    for name, size, ok, latency in rows:
        shown = f"{latency * 1e3:.1f} ms" if isinstance(latency, float) else latency
        lines.append(f"| `{name}` | {size:.1f} | {'yes' if ok else 'no'} | {shown} |")
    publish("Export formats through TF Serving's loader", "\n".join(lines), FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
