"""Stage 2's copy of M_map's per-position outputs, kept in memory: its rows written in
place, the batches of row indices the input pipeline yields instead of records, and the
float16 range every output must fit in."""

from __future__ import annotations

import tensorflow as tf


# The smallest magnitude a cast to float16 makes ±inf: its largest value, 65504, plus half
# its step there (32); that tie rounds to even, which is inf.
_FLOAT16_OVERFLOW = 65520.0


def beyond_float16(values: tf.Tensor) -> tf.Tensor:
    """How many of `values` float16 cannot hold (NaN, or ±inf once cast), as a float32
    scalar: the number of M_map's outputs that stage 2 refuses
    (`Trainer._head_outputs_overflow`)."""
    magnitude = tf.abs(tf.cast(values, tf.float32))
    return tf.reduce_sum(tf.cast(tf.logical_not(magnitude < _FLOAT16_OVERFLOW), tf.float32))


@tf.autograph.experimental.do_not_convert
def index_batch(index: tf.Tensor) -> dict[str, tf.Tensor]:
    """A batch of stage 2's input when M_map's outputs are kept: the rows to gather."""
    return {"index": index}


def write_rows(kept: dict, rows: dict, start: int, count: int) -> int:
    """Writes `rows` (name → `[n, ...]`) from row `start` into `kept`'s variables of
    `count` rows, each made at its first batch; returns the next row. Variables, not
    tensors: the stage-2 step reads them by handle (`tf.gather`) instead of capturing a
    copy, and the input pipeline carries only indices, so steps never wait for it."""
    size = int(next(iter(rows.values())).shape[0])
    if start + size > count:
        raise records_changed(start + size, count)
    with tf.device("CPU:0"):
        for name, value in rows.items():
            if name not in kept:
                kept[name] = tf.Variable(tf.zeros([count, *value.shape[1:]], value.dtype),
                                         trainable=False)
            # In place: `variable[a:b].assign` would first copy the whole variable.
            tf.raw_ops.ResourceStridedSliceAssign(ref=kept[name].handle, begin=[start],
                                                  end=[start + size], strides=[1], value=value)
    return start + size


def records_changed(seen: int, count: int) -> ValueError:
    return ValueError(f"this input pipeline's training records gave {seen} examples where "
                      f"{count} were counted: were the feature shards changed during the run?")
