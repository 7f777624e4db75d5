"""A tiny SavedModel that follows the export contract, for exercising the serving stack.

It has the ``serving_default`` and ``predict_features`` signatures of a real
``ofrnn_tf`` export, with their input and output names, dtypes and shapes
(docs/serving.md; not ``predict_with_threshold``), and writes the same warm-up file, but its
"model" is arithmetic: the score of class c (C = 3: red, green, blue) is the mean of
colour channel c over the image. Labels are the classes scoring above 0.5 in
descending score order (at least one), so results are deterministic and easy to check.
It lets the server, client and load test run without a trained model.

Usage::

    python -m ofrnn_tf.serving.stand_in_model --out=/tmp/stand_in --version=1
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import tensorflow as tf

from ofrnn_tf.export.warmup import write_warmup_requests
from ofrnn_tf.serving.server_process import DEFAULT_MODEL_NAME

STAND_IN_CLASSES = ("red", "green", "blue")
STAND_IN_GRID = 4  # H = W of the stand-in "feature map"
# A features tensor holding this value makes the stand-in raise inside the graph, so
# tests can check how a server reports a failure of the model itself.
FAULT_SENTINEL = -12345.0


class StandInModel(tf.Module):
    """Mean-colour "classifier" with the export contract's two signatures.

    Args:
        class_names: names of the C = 3 classes, in channel order (R, G, B).
        grid: spatial size H = W of the features the images are pooled to.
    """

    def __init__(self, class_names: Sequence[str] = STAND_IN_CLASSES, grid: int = STAND_IN_GRID):
        super().__init__()
        if len(class_names) != 3:
            raise ValueError(f"the stand-in model has 3 classes (R, G, B), got {list(class_names)}")
        self.class_names = tuple(class_names)
        self.grid = grid
        self._names = tf.constant(self.class_names)
        self.serve_images = tf.function(
            self._serve_images,
            input_signature=[tf.TensorSpec([None], tf.string, name="images")],
            autograph=False,
        )
        self.predict_features = tf.function(
            self._predict_features,
            input_signature=[tf.TensorSpec([None, grid, grid, 3], tf.float32, name="features")],
            autograph=False,
        )

    def _serve_images(self, images):
        def decode(encoded):
            pixels = tf.io.decode_image(encoded, channels=3, expand_animations=False)
            return tf.image.resize(tf.cast(pixels, tf.float32) / 255.0, [self.grid, self.grid])

        features = tf.map_fn(
            decode, images,
            fn_output_signature=tf.TensorSpec([self.grid, self.grid, 3], tf.float32))
        return self._predict_features(features)

    def _predict_features(self, features):
        check = tf.debugging.Assert(
            tf.reduce_all(tf.not_equal(features, FAULT_SENTINEL)),
            ["stand-in model: fault sentinel found in features"])
        with tf.control_dependencies([check]):
            scores = tf.clip_by_value(tf.reduce_mean(features, axis=[1, 2]), 1e-6, 1.0 - 1e-6)
        order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
        ranked = tf.gather(scores, order, batch_dims=1)
        first = tf.range(3)[tf.newaxis, :] == 0
        keep = tf.logical_or(ranked > 0.5, first)
        labels = tf.where(keep, order, -1)
        label_names = tf.where(keep, tf.gather(self._names, order), "")
        maps = tf.transpose(tf.gather(features, order, axis=3, batch_dims=1), [0, 3, 1, 2])
        maps = maps / (tf.reduce_sum(maps, axis=[2, 3], keepdims=True) + 1e-6)
        attention = maps * tf.cast(keep, tf.float32)[:, :, tf.newaxis, tf.newaxis]
        return {
            "labels": tf.cast(labels, tf.int32),
            "label_names": label_names,
            "num_labels": tf.reduce_sum(tf.cast(keep, tf.int32), axis=1),
            "scores": scores,
            "log_prob": tf.reduce_sum(tf.where(keep, tf.math.log(ranked), 0.0), axis=1),
            "attention": attention,
        }


def solid_png(rgb: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    """A PNG of one colour (width, height = size)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="PNG")
    return buf.getvalue()


def write_stand_in_model(base_path: str, version: int = 1,
                         class_names: Sequence[str] = STAND_IN_CLASSES,
                         model_name: str = DEFAULT_MODEL_NAME) -> str:
    """Writes ``base_path/<version>/`` (SavedModel + warm-up requests); returns that path.

    The warm-up file (``WARMUP_FILE``) holds requests of two images (no threshold
    signature here), written by the same function a real export uses.
    """
    path = os.path.join(base_path, str(int(version)))
    model = StandInModel(class_names)
    tf.saved_model.save(model, path, signatures={
        "serving_default": model.serve_images.get_concrete_function(),
        "predict_features": model.predict_features.get_concrete_function(),
    })
    write_warmup_requests(path, [solid_png((200, 30, 30)), solid_png((20, 20, 220))],
                          model_name=model_name, batch_sizes=(2,), with_threshold=False)
    return path


def _main(argv: Sequence[str]) -> None:
    del argv
    from absl import flags

    print(write_stand_in_model(flags.FLAGS.out, flags.FLAGS.version))


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("out", None, "model base path; the model goes to OUT/VERSION/", required=True)
    flags.DEFINE_integer("version", 1, "version directory name")
    from ofrnn_tf.cli import help_exits_zero

    help_exits_zero()
    app.run(_main)
