"""A spatial M_map: per-position class scores pooled over positions (not the paper's)."""

import keras
import tensorflow as tf

from ofrnn_tf.config.experiment import ModelConfig

_DEFAULTS = ModelConfig()


@keras.saving.register_keras_serializable(package="ofrnn_tf")
class SpatialLabelHead(keras.layers.Layer):
    """M_map as a per-position MLP whose class scores are pooled over the m positions.

    `A_i = ReLU(W_1 v_i + b_1)`, `S_i = W_2 A_i + b_2` (class scores of position i),
    with `kernel_size > 1` `A_i = ReLU(W_1 * v)_i`, a convolution over the grid of
    positions (position i with its neighbours; the maps must be square, m = side²),
    `logits_c = (1/r) · log mean_i exp(r · S_{i,c})` (log-sum-exp pooling: between the
    mean, r → 0, and the max, r → ∞). It plays the role of the paper's M_map (Eq. 1–3:
    `v_prob = sigmoid(logits)`) with a stronger model: a small object scores at its
    own positions instead of being averaged away. The residual decoder reads `A` and
    `S` (docs/model.md, "The main job's model").

    Args:
        num_classes: C.
        units: width of the per-position hidden layer (the main job's: 128).
        dropout: dropout on the input features while training.
        sharpness: r of the log-sum-exp pooling.
        kernel_size: the hidden layer's reach over the grid (1: each position alone;
            the main job's: 3).

    Call args:
        features: `[B, m, k]` (standardised) feature maps.

    Returns:
        `[B, C]` float32 logits.

    Example:
    >>> head = SpatialLabelHead(num_classes=10, units=8)
    >>> head(tf.zeros([2, 49, 16])).shape
    TensorShape([2, 10])
    >>> hidden, scores = head.per_position(tf.zeros([2, 49, 16]))
    >>> hidden.shape, scores.shape
    (TensorShape([2, 49, 8]), TensorShape([2, 49, 10]))
    >>> SpatialLabelHead(num_classes=10, units=8, kernel_size=3)(tf.zeros([2, 49, 16])).shape
    TensorShape([2, 10])
    """

    def __init__(self, num_classes: int, units: int = _DEFAULTS.head_units,
                 dropout: float = _DEFAULTS.head_dropout, sharpness: float = 5.0,
                 kernel_size: int = _DEFAULTS.head_kernel_size, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.units = units
        self.dropout = dropout
        self.sharpness = sharpness
        self.kernel_size = kernel_size
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number; got {kernel_size}")
        policy = self.dtype_policy  # the layer's own, not the session's global one
        self._dropout = keras.layers.Dropout(dropout, dtype=policy, name="dropout")
        if kernel_size == 1:
            self._hidden = keras.layers.Dense(units, activation="relu", dtype=policy,
                                              name="hidden")
        else:
            self._hidden = keras.layers.Conv2D(units, kernel_size, padding="same",
                                               activation="relu", dtype=policy, name="hidden")
        self._scores = keras.layers.Dense(num_classes, dtype="float32", name="scores")

    def build(self, features_shape):
        if self.kernel_size == 1:
            self._hidden.build((None, features_shape[-1]))
        else:
            positions = features_shape[-2]
            if positions is not None and round(positions ** 0.5) ** 2 != positions:
                raise ValueError(f"kernel_size={self.kernel_size} needs square feature maps; "
                                 f"got {positions} positions, not a square number")
            self._hidden.build((None, None, None, features_shape[-1]))
        self._scores.build((None, self.units))
        self.built = True

    def per_position(self, features, training=False):
        """`(A [B, m, units], S [B, m, C])`: hidden features and class scores per position."""
        if not self.built:
            self.build(features.shape)
        x = self._dropout(features, training=training)
        if self.kernel_size == 1:
            hidden = self._hidden(x)
        else:
            positions = tf.shape(x)[1]
            side = tf.cast(tf.round(tf.sqrt(tf.cast(positions, tf.float32))), tf.int32)
            grid = self._hidden(tf.reshape(x, [-1, side, side, x.shape[-1]]))
            hidden = tf.reshape(grid, [-1, positions, self.units])
        return hidden, self._scores(hidden)

    def pool(self, scores):
        """Log-sum-exp pooling of `[B, m, C]` position scores into `[B, C]` logits."""
        m = tf.cast(tf.shape(scores)[1], scores.dtype)
        r = self.sharpness
        return (tf.reduce_logsumexp(r * scores, axis=1) - tf.math.log(m)) / r

    def call(self, features, training=False):
        return self.pool(self.per_position(features, training=training)[1])

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "units": self.units,
                       "dropout": self.dropout, "sharpness": self.sharpness,
                       "kernel_size": self.kernel_size})
        return config
