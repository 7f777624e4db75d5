"""Tensor sizes for the layers' reshapes."""

import tensorflow as tf


def dim(x: tf.Tensor, axis: int):
    """Static size of `axis` when known, else the dynamic one (keeps shapes inferable)."""
    return x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]
