"""Label context: M_map's logits corrected from all of its class probabilities (not the paper's)."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="ofrnn_tf")
class LabelContext(keras.layers.Layer):
    """`L' = L + W_3 ReLU(W_2 Dropout(ReLU(W_1 sigmoid(L) + b_1)) + b_2) + b_3`.

    Reads M_map's logits `L` (whose sigmoid is v_prob, Eq. 3) as probabilities and adds
    a correction from all of them at once: where labels co-occur, a confident "Coat" can
    raise "Ankle boot" and lower "Sandal". It never sees the image, so what it adds is
    the labels' co-occurrence. `W_3` and `b_3` start at zero: the untrained layer returns `L`
    unchanged, so a model that has one still decodes as M_map until it is trained.
    The decoder then reads `L'` where it read `L` (`v_pred`, and the residual base of
    Eq. 7; docs/model.md, "Label context").

    Args:
        num_classes: C.
        units: width of both hidden layers.
        dropout: dropout after the first hidden layer while training.

    Call args:
        logits: `[B, C]` M_map logits.

    Returns:
        `[B, C]` float32 corrected logits.

    Example:
    >>> context = LabelContext(num_classes=4, units=8)
    >>> logits = tf.constant([[2.0, -1.0, 0.5, -3.0]])
    >>> bool(tf.reduce_all(context(logits) == logits))  # zero correction until trained
    True
    """

    def __init__(self, num_classes: int, units: int = 256, dropout: float = 0.2, **kwargs):
        # float32 even under mixed precision: it is small, and its input and output are
        # logits that half precision would round.
        super().__init__(**{"dtype": "float32", **kwargs})
        self.num_classes = num_classes
        self.units = units
        self.dropout = dropout
        self._hidden_1 = keras.layers.Dense(units, activation="relu", dtype="float32",
                                            name="hidden_1")
        self._dropout = keras.layers.Dropout(dropout, dtype="float32", name="dropout")
        self._hidden_2 = keras.layers.Dense(units, activation="relu", dtype="float32",
                                            name="hidden_2")
        self._correction = keras.layers.Dense(num_classes, kernel_initializer="zeros",
                                              dtype="float32", name="correction")

    def build(self, logits_shape):
        self._hidden_1.build((None, self.num_classes))
        self._hidden_2.build((None, self.units))
        self._correction.build((None, self.units))
        self.built = True

    def call(self, logits, training=False):
        logits = tf.cast(logits, tf.float32)
        hidden = self._dropout(self._hidden_1(tf.sigmoid(logits)), training=training)
        return logits + self._correction(self._hidden_2(hidden))

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "units": self.units,
                       "dropout": self.dropout})
        return config
