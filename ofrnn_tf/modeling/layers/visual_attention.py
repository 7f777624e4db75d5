"""M_att: soft visual attention over feature-map positions (paper Eq. 4–5)."""

import keras
import tensorflow as tf

from ofrnn_tf.modeling.layers.shapes import dim


@keras.saving.register_keras_serializable(package="ofrnn_tf")
class VisualAttention(keras.layers.Layer):
    """Additive (Bahdanau / Show-Attend-Tell) attention of paper Eq. 4–5.

    `e_{i,t} = w · tanh(W_v v_i + W_h h_{t-1} + b)`, `α_t = softmax_i(e_t)`,
    `z_t = Σ_i α_{i,t} v_i`.

    `W_v v_i + b` does not depend on t, so `project_features` computes it once per
    image and every decoding step (and every beam) reuses it. Beam search passes the
    K hidden states of an image as `[B, K, d]`: all K attend over that image's
    features, which are then read once per image instead of once per beam.

    Args:
        units: width of the attention MLP (the rows of W_v and W_h).

    Call args:
        projected: `[B, m, units]`, the output of `project_features(features)`.
        features: `[B, m, k]` the feature maps v_1..v_m.
        hidden: `[B, d]` the previous LSTM state h_{t-1}, or `[B, K, d]` for K
            states (beams) per image.

    Returns:
        `(z_t [B, k], α_t [B, m])`, or `(z_t [B, K, k], α_t [B, K, m])` for a
        `[B, K, d]` hidden.

    Example:
    >>> att = VisualAttention(units=8)
    >>> v = tf.random.normal([2, 49, 16])
    >>> z, alpha = att(att.project_features(v), v, tf.zeros([2, 4]))
    >>> z.shape, alpha.shape
    (TensorShape([2, 16]), TensorShape([2, 49]))
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        policy = self.dtype_policy  # the layer's own, not the session's global one
        self._feature_proj = keras.layers.Dense(units, dtype=policy, name="feature_proj")  # W_v, b
        self._hidden_proj = keras.layers.Dense(units, use_bias=False, dtype=policy,
                                               name="hidden_proj")  # W_h
        self._score = keras.layers.Dense(1, use_bias=False, dtype=policy, name="score")  # w

    def build(self, projected_shape, features_shape=None, hidden_shape=None):
        # `project_features` may already have built the feature projection.
        if features_shape is not None and not self._feature_proj.built:
            self._feature_proj.build(features_shape)
        if hidden_shape is not None and not self._hidden_proj.built:
            self._hidden_proj.build(hidden_shape)
        if not self._score.built:
            self._score.build((None, None, self.units))

    def project_features(self, features):
        """`W_v v_i + b` for every position i: `[B, m, k] -> [B, m, units]`."""
        return self._feature_proj(features)

    def call(self, projected, features, hidden):
        if len(hidden.shape) == 3:
            return self._attend_beams(projected, features, hidden)
        scores = self._score(tf.tanh(projected + self._hidden_proj(hidden)[:, None, :]))
        alpha = tf.nn.softmax(tf.squeeze(scores, -1), axis=-1)
        context = tf.einsum("bm,bmk->bk", alpha, tf.cast(features, alpha.dtype))
        return context, alpha

    def _attend_beams(self, projected, features, hidden):
        """Eq. 4–5 for `[B, K, d]` hidden states against each image's `[B, m, ·]` maps.

        Built from plain ops: at beam-search sizes (a few rows of m = 49 to 196) the fused
        softmax and batched-matmul kernels cost more in per-call overhead than the
        arithmetic, and the decoder runs them at every step.
        """
        beams = tf.shape(hidden)[:2]
        hidden_proj = self._hidden_proj(tf.reshape(hidden, [-1, dim(hidden, -1)]))
        hidden_proj = tf.reshape(hidden_proj, tf.concat([beams, [1, self.units]], 0))
        energy = tf.tanh(projected[:, None, :, :] + hidden_proj)  # [B, K, m, units]
        w = tf.cast(self._score.kernel, energy.dtype)  # [units, 1]
        scores = tf.reshape(tf.matmul(tf.reshape(energy, [-1, self.units]), w),
                            tf.shape(energy)[:3])
        scores = tf.exp(scores - tf.reduce_max(scores, axis=-1, keepdims=True))
        alpha = scores / tf.reduce_sum(scores, axis=-1, keepdims=True)
        features = tf.cast(features, alpha.dtype)
        # One image (serving at batch 1) takes a plain matmul: much cheaper than a batched one.
        context = tf.cond(
            tf.equal(tf.shape(alpha)[0], 1),
            lambda: tf.matmul(alpha[0], features[0])[None],
            lambda: tf.matmul(alpha, features))
        return context, alpha

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units})
        return config
