"""The project's decoder step: M_pred refining M_map's logits (not the paper's Eq. 7)."""

from typing import Optional

import keras
import tensorflow as tf

from ofrnn_tf.config.experiment import ModelConfig
from ofrnn_tf.modeling.candidate_pool import CellState
from ofrnn_tf.modeling.layers.shapes import dim

_DEFAULTS = ModelConfig()


@keras.saving.register_keras_serializable(package="ofrnn_tf")
class ResidualDecoderCell(keras.layers.Layer):
    """One decoding step over a spatial M_map (docs/model.md, "The main job's model").

    The paper's step (Eq. 4–10) with three changes, each measured on the benchmark:

    - attention reads the spatial head's per-position hidden features `A_i` (frozen),
      by scaled dot product: `e_{i,t} = A_i · (W_q h_{t-1} + b_q) / √d`,
      `α_t = softmax_i(e_t)` (Eq. 4);
    - the step input is `[v_pred, ỹ_{t-1}, Σ_i α_i A_i, Σ_i α_i S_i]`: besides the
      attended features (Eq. 5), the attended region's own class scores `S_i`;
    - the step's logits are M_map's plus a correction,
      `p_t = L + FC2(FC1([input, h_t]))` (Eq. 7), with FC2 starting at zero, so an
      untrained decoder reproduces M_map.

    The LSTM (Eq. 6), the candidate pool (Eq. 9–10) and the state `(h, c, ỹ, v_pred)` are
    the paper's. Matrix products that share an input are fused: `h_{t-1}` meets the
    attention query and the LSTM's recurrent kernel in one product, the step input
    the LSTM's input kernel and FC1's in another; the concatenated kernels are made
    once per decoding call (`prepare`), not per step.

    Args:
        num_classes: C.
        units: LSTM width.
        fc_units: FC1 width.
        dropout: dropout on FC1 while training.

    Example:
    >>> cell = ResidualDecoderCell(num_classes=5, units=8, fc_units=8)
    >>> features, scores = tf.random.normal([2, 49, 6]), tf.zeros([2, 49, 5])
    >>> context = cell.prepare(features, scores, logits=tf.zeros([2, 5]))
    >>> state = CellState(tf.zeros([2, 8]), tf.zeros([2, 8]), tf.zeros([2, 5]), tf.fill([2, 5], 0.5))
    >>> p, alpha, h, c = cell.predict(context, state)
    >>> p.shape, alpha.shape, float(tf.reduce_max(tf.abs(p)))  # untrained: M_map's logits
    (TensorShape([2, 5]), TensorShape([2, 49]), 0.0)
    """

    def __init__(self, num_classes: int, units: int = _DEFAULTS.lstm_units,
                 fc_units: int = _DEFAULTS.fc_units, dropout: float = _DEFAULTS.dropout,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.units = units
        self.fc_units = fc_units
        self.dropout = dropout
        self.fc1_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy,
                                                name="fc1_dropout")
        self.fc2 = keras.layers.Dense(num_classes, kernel_initializer="zeros", dtype="float32",
                                      name="fc2")

    def build(self, head_features_shape):
        d, n, C = head_features_shape[-1], self.units, self.num_classes
        step_input = 3 * C + d
        weight = lambda name, shape, init: self.add_weight(name=name, shape=shape, initializer=init)
        self.query_kernel = weight("query_kernel", (n, d), "glorot_uniform")  # W_q
        self.query_bias = weight("query_bias", (d,), "zeros")
        self.recurrent_kernel = weight("recurrent_kernel", (n, 4 * n), "orthogonal")
        self.input_kernel = weight("input_kernel", (step_input, 4 * n), "glorot_uniform")
        self.lstm_bias = self.add_weight(
            name="lstm_bias", shape=(4 * n,),
            initializer=lambda shape, dtype=None: tf.concat(
                [tf.zeros([n]), tf.ones([n]), tf.zeros([2 * n])], 0))  # forget gate bias 1
        self.fc1_input_kernel = weight("fc1_input_kernel", (step_input, self.fc_units),
                                       "glorot_uniform")
        self.fc1_hidden_kernel = weight("fc1_hidden_kernel", (n, self.fc_units), "glorot_uniform")
        self.fc1_bias = weight("fc1_bias", (self.fc_units,), "zeros")
        self.fc2.build((None, self.fc_units))
        self.built = True

    def prepare(self, head_features, scores, logits):
        """Per-call context: the head's `A [B, m, d]` (`head_features`), `S [B, m, C]`,
        `L [B, C]` (one row per image) and, under ``"weights"``, the fused kernels every
        row shares (``hidden_*`` multiply the LSTM state `h_{t-1}`)."""
        if not self.built:
            self.build(head_features.shape)
        dtype = self.compute_dtype
        cast = lambda x: tf.cast(x, dtype)
        scale = tf.math.rsqrt(tf.cast(dim(head_features, -1), self.query_kernel.dtype))
        return {
            "head_features": cast(head_features),
            # What attention reads out per position: A_i and S_i side by side.
            "memory": cast(tf.concat([tf.cast(head_features, scores.dtype), scores], -1)),
            "logits": tf.cast(logits, tf.float32),
            # Shared by every image and beam (not per-image rows). The query's 1/√d and
            # the LSTM and FC1 biases are folded into the products' kernels and biases.
            "weights": {
                "hidden_kernel": cast(tf.concat([self.query_kernel * scale,
                                                 self.recurrent_kernel], 1)),
                "hidden_bias": cast(tf.concat([self.query_bias * scale, self.lstm_bias], 0)),
                "input_kernel": cast(tf.concat([self.input_kernel, self.fc1_input_kernel], 1)),
                "input_bias": cast(tf.concat([tf.zeros([4 * self.units]), self.fc1_bias], 0)),
            },
        }

    def predict(self, context, state: CellState, training=False, beam_size: Optional[int] = None):
        """Eq. 4–7 for one step: `(p_t logits [B, C] float32, α_t [B, m], h_t, c_t)`.

        With `beam_size=K` the state holds K rows per image of `context` (rows
        b·K .. b·K+K-1 belong to image b); the context is not repeated per beam.
        """
        dtype = self.compute_dtype
        n, weights = self.units, context["weights"]
        head_features, memory = context["head_features"], context["memory"]
        d = dim(head_features, -1)
        beams = 1 if beam_size is None else beam_size
        # h_{t-1} meets the attention query and the LSTM's recurrent kernel in one product.
        projected = tf.matmul(tf.cast(state.h, dtype), weights["hidden_kernel"]) + weights["hidden_bias"]
        query = tf.reshape(projected[:, :d], [-1, beams, d])  # already scaled by 1/√d
        alpha = tf.nn.softmax(  # [B, K, m]
            tf.matmul(query, head_features, transpose_b=True), axis=-1)
        read = tf.reshape(tf.matmul(alpha, memory), [-1, dim(memory, -1)])  # Σα A, Σα S
        step_input = tf.concat(
            [tf.cast(state.v_pred, dtype), tf.cast(state.y_tilde, dtype), read], -1)
        # The step input meets the LSTM's input kernel and FC1's in one product.
        fused = tf.matmul(step_input, weights["input_kernel"]) + weights["input_bias"]
        i, f, g, o = tf.split(fused[:, :4 * n] + projected[:, d:], 4, axis=-1)
        c = tf.sigmoid(f) * tf.cast(state.c, dtype) + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        fc1 = tf.nn.relu(fused[:, 4 * n:] + tf.matmul(h, tf.cast(self.fc1_hidden_kernel, dtype)))
        correction = tf.cast(self.fc2(self.fc1_dropout(fc1, training=training)), tf.float32)
        logits = tf.reshape(tf.reshape(correction, [-1, beams, self.num_classes])
                            + context["logits"][:, None, :], [-1, self.num_classes])
        return logits, tf.cast(tf.reshape(alpha, [-1, dim(alpha, -1)]), tf.float32), h, c

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "units": self.units,
                       "fc_units": self.fc_units, "dropout": self.dropout})
        return config



