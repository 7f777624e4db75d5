"""The candidate pool of paper Eq. 9–10 and the recurrent state that carries it.

Both decoder cells (`ConfidenceRankedLSTMCell`, `ResidualDecoderCell`) step from a
`CellState`. Every loop over the steps (stage 2's losses, greedy decoding, beam search)
takes a step's choices through `OrderFreeRNN.step_choices`, which removes the labels
already chosen with `mask_chosen`, and moves on with `advance`."""

from typing import NamedTuple

import tensorflow as tf


class CellState(NamedTuple):
    """The recurrent state `(h, c, ỹ, v_pred)` of paper Fig. 2.

    h, c: `[B, units]` LSTM state. y_tilde: `[B, C]` hard label vector ỹ_{t-1} (1 for
    every label chosen so far; its complement is the candidate pool C'_t of Eq. 10).
    v_pred: `[B, C]` soft confidence vector (v_prob at t = 1, sigmoid(p_{t-1}) after).
    """

    h: tf.Tensor
    c: tf.Tensor
    y_tilde: tf.Tensor
    v_pred: tf.Tensor


def mask_chosen(logits: tf.Tensor, y_tilde: tf.Tensor, fill: float = float("-inf")) -> tf.Tensor:
    """Removes already chosen labels from the candidate pool (Eq. 9–10).

    Chosen labels get `fill` (-inf: `argmax` never returns them again, and no arithmetic
    is done on them, so no NaN can appear; the training losses give a finite stand-in).
    """
    return tf.where(y_tilde > 0, tf.constant(fill, logits.dtype), logits)


def advance(state: CellState, h, c, logits, chosen) -> CellState:
    """Eq. 9–10: adds the chosen labels `[B]` to ỹ; the next v_pred is sigmoid(p_t)."""
    onehot = tf.one_hot(chosen, tf.shape(logits)[-1], dtype=state.y_tilde.dtype)
    return CellState(h, c, state.y_tilde + onehot, tf.sigmoid(logits))
