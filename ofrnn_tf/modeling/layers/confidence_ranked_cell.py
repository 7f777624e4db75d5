"""M_pred: the confidence-ranked LSTM cell (paper Eq. 4–7), which chooses from the
candidate pool of `ofrnn_tf.modeling.candidate_pool` (Eq. 9–10)."""

from typing import Optional

import keras
import tensorflow as tf

from ofrnn_tf.config.experiment import ModelConfig
from ofrnn_tf.modeling.candidate_pool import CellState, advance, mask_chosen
from ofrnn_tf.modeling.layers.shapes import dim
from ofrnn_tf.modeling.layers.visual_attention import VisualAttention

_DEFAULTS = ModelConfig()


@keras.saving.register_keras_serializable(package="ofrnn_tf")
class ConfidenceRankedLSTMCell(keras.layers.Layer):
    """One decoding step of the confidence-ranked LSTM (paper Eq. 4–10).

    `z_t = M_att(v, h_{t-1})` (Eq. 4–5), `h_t = LSTM([v_pred, z_t, ỹ_{t-1}], h_{t-1})`
    (Eq. 6), `p_t = FC2(FC1([v_pred, z_t, ỹ_{t-1}, h_t]))` (Eq. 7),
    `l_t = argmax_{c ∉ ỹ_{t-1}} p_t` (Eq. 9), `ỹ_t = ỹ_{t-1} + onehot(l_t)` (Eq. 9–10),
    and the next v_pred is `sigmoid(p_t)`.

    Keras 3's `keras.layers.RNN` has no `constants=`, so the per-image feature maps
    travel in a `context` dict made once by `prepare` and passed to every step; the
    decoder loops (training, greedy, beam search) live in `OrderFreeRNN` and
    `ofrnn_tf.decoding`.

    Args:
        num_classes: C.
        units: LSTM width.
        attention_units: width of the attention MLP.
        fc_units: width of FC1.
        dropout: dropout rate on FC1 while training (the paper keeps 0.8, i.e. 0.2).
        use_attention: False gives the "w/o attention" ablation: `z_t = mean_i v_i`.

    Example (one greedy step of the cell alone, from a zero state; `OrderFreeRNN` starts
    from `h_0, c_0 = tanh(Dense(mean_i v_i))` and steps with `predict` and `advance`):
    >>> cell = ConfidenceRankedLSTMCell(num_classes=5, units=8, attention_units=8, fc_units=8)
    >>> v = tf.random.normal([2, 49, 16])
    >>> context = cell.prepare(v)
    >>> state = cell.zero_state(2, v_pred=tf.fill([2, 5], 0.5))
    >>> logits, alpha, state = cell(context, state)
    >>> logits.shape, alpha.shape, int(tf.reduce_sum(state.y_tilde))
    (TensorShape([2, 5]), TensorShape([2, 49]), 2)
    """

    def __init__(self, num_classes: int, units: int = _DEFAULTS.lstm_units,
                 attention_units: int = _DEFAULTS.attention_units,
                 fc_units: int = _DEFAULTS.fc_units, dropout: float = _DEFAULTS.dropout,
                 use_attention: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.units = units
        self.attention_units = attention_units
        self.fc_units = fc_units
        self.dropout = dropout
        self.use_attention = use_attention
        policy = self.dtype_policy  # the layer's own, not the session's global one
        self.attention = (VisualAttention(attention_units, dtype=policy, name="attention")
                          if use_attention else None)
        self.lstm = keras.layers.LSTMCell(units, dtype=policy, name="lstm")
        self.fc1 = keras.layers.Dense(fc_units, activation="relu", dtype=policy, name="fc1")
        self.fc1_dropout = keras.layers.Dropout(dropout, dtype=policy, name="fc1_dropout")
        self.fc2 = keras.layers.Dense(num_classes, dtype="float32", name="fc2")

    def build(self, features_shape):
        k = features_shape[-1]
        if self.attention is not None:
            self.attention.build((None, None, self.attention_units), features_shape, (None, self.units))
        step_input = 2 * self.num_classes + k
        self.lstm.build((None, step_input))
        self.fc1.build((None, step_input + self.units))
        self.fc2.build((None, self.fc_units))

    def prepare(self, features):
        """Per-image work done once before the steps: the projection `W_v v_i + b` (without
        attention: the mean `mean_i v_i`, which is every step's `z_t`)."""
        if not self.built:
            self.build(features.shape)
        if self.attention is None:
            return {"features": features, "mean": tf.reduce_mean(features, axis=1)}
        return {"features": features, "projected": self.attention.project_features(features)}

    def zero_state(self, batch_size, v_pred):
        """A zero `h`, `c` and `ỹ` with the given `v_pred`, for stepping the cell alone (the
        model's own start is `OrderFreeRNN.start`)."""
        zeros_h = tf.zeros([batch_size, self.units])
        return CellState(zeros_h, zeros_h, tf.zeros([batch_size, self.num_classes]), v_pred)

    def predict(self, context, state: CellState, training=False, beam_size: Optional[int] = None):
        """Eq. 4–7: returns `(p_t logits [B, C] float32, α_t [B, m], h_t, c_t)`.

        With `beam_size=K` the state has K rows per image of `context` (rows
        b·K .. b·K+K-1 belong to image b) and every output has B·K rows; the
        context is not repeated per beam.
        """
        features = context["features"]
        if self.attention is None:
            z = context["mean"]
            m = tf.shape(features)[1]
            if beam_size is not None:
                z = tf.repeat(z, beam_size, axis=0)
            alpha = tf.fill(tf.stack([tf.shape(z)[0], m]), 1.0 / tf.cast(m, tf.float32))
        elif beam_size is None:
            z, alpha = self.attention(context["projected"], features, state.h)
        else:
            h = tf.reshape(state.h, [-1, beam_size, dim(state.h, -1)])
            z, alpha = self.attention(context["projected"], features, h)
            z = tf.reshape(z, [-1, dim(z, -1)])
            alpha = tf.reshape(alpha, [-1, dim(alpha, -1)])
        dtype = z.dtype
        step_input = tf.concat(
            [tf.cast(state.v_pred, dtype), z, tf.cast(state.y_tilde, dtype)], axis=-1)
        h, (_, c) = self.lstm(step_input, [state.h, state.c], training=training)
        hidden = self.fc1(tf.concat([step_input, h], axis=-1))
        logits = self.fc2(self.fc1_dropout(hidden, training=training))
        return logits, tf.cast(alpha, tf.float32), h, c

    def call(self, context, state: CellState, training=False):
        """One greedy step: Eq. 4–7, then the most confident label left in the pool."""
        logits, alpha, h, c = self.predict(context, state, training=training)
        chosen = tf.argmax(mask_chosen(logits, state.y_tilde), axis=-1, output_type=tf.int32)
        return logits, alpha, advance(state, h, c, logits, chosen)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_classes": self.num_classes, "units": self.units,
            "attention_units": self.attention_units, "fc_units": self.fc_units,
            "dropout": self.dropout, "use_attention": self.use_attention,
        })
        return config
