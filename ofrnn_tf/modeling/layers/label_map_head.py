"""M_map: the preliminary label prediction v_prob (paper Eq. 1–3)."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="ofrnn_tf")
class LabelMapHead(keras.layers.Layer):
    """Feature-mapping head M_map: `logits = Dense_C(mean_i v_i)`, `v_prob = sigmoid(logits)`.

    The paper adds one fully-connected layer of width C after the frozen CNN's conv
    layer (Eq. 1–3). Trained first with binary cross-entropy, then frozen (Alg. 1);
    alone it is the "ResNet-baseline" row of Tables 1–2.

    Args:
        num_classes: C, the number of labels.
        dropout: dropout rate on the pooled feature vector while training.

    Call args:
        features: `[B, m, k]` feature maps flattened over the m = H·W positions.

    Returns:
        `[B, C]` float32 logits; `sigmoid(logits)` is v_prob.

    Example:
    >>> head = LabelMapHead(num_classes=10)
    >>> head(tf.zeros([2, 49, 64])).shape
    TensorShape([2, 10])
    """

    def __init__(self, num_classes: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.dropout = dropout
        self._dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy, name="dropout")
        self._dense = keras.layers.Dense(num_classes, dtype="float32", name="logits")

    def build(self, features_shape):
        self._dense.build((features_shape[0], features_shape[-1]))

    def call(self, features, training=False):
        pooled = tf.reduce_mean(features, axis=1)
        return self._dense(self._dropout(pooled, training=training))

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "dropout": self.dropout})
        return config
