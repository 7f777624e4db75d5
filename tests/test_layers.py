"""The layers of paper Eq. 1–10: shapes, numpy references, the candidate pool, configs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_config_holds_every_argument
from ofrnn_tf.modeling.layers import ConfidenceRankedLSTMCell, LabelMapHead, VisualAttention
from ofrnn_tf.modeling.candidate_pool import CellState, mask_chosen

B, M, K, C, UNITS = 3, 4, 6, 5, 8


def features(seed: int = 0, batch: int = B) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).normal(size=(batch, M, K)), tf.float32)


def make_cell(use_attention: bool = True, seed: int = 0) -> ConfidenceRankedLSTMCell:
    keras.utils.set_random_seed(seed)
    cell = ConfidenceRankedLSTMCell(num_classes=C, units=UNITS, attention_units=UNITS,
                                    fc_units=UNITS, dropout=0.2, use_attention=use_attention)
    cell.build((None, M, K))
    return cell


def first_state(cell: ConfidenceRankedLSTMCell, batch: int = B) -> CellState:
    return cell.zero_state(batch, v_pred=tf.fill([batch, C], 0.5))


# -- M_map ----------------------------------------------------------------------------
def test_label_map_head_is_dense_of_mean_features():
    head = LabelMapHead(num_classes=C)
    x = features()
    logits = head(x)
    assert logits.shape == (B, C) and logits.dtype == tf.float32
    expected = x.numpy().mean(axis=1) @ head._dense.kernel.numpy() + head._dense.bias.numpy()
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_label_map_head_dropout_only_while_training():
    head = LabelMapHead(num_classes=C, dropout=0.5)
    x = features()
    np.testing.assert_array_equal(head(x).numpy(), head(x, training=False).numpy())
    assert not np.allclose(head(x, training=True).numpy(), head(x).numpy())


# -- M_att ----------------------------------------------------------------------------
def make_attention(**kwargs) -> VisualAttention:
    att = VisualAttention(units=UNITS, **kwargs)
    att.build((None, M, UNITS), (None, M, K), (None, UNITS))
    return att


def test_visual_attention_docstring_usage_builds_lazily():
    att = VisualAttention(units=UNITS)
    v = features()
    z, alpha = att(att.project_features(v), v, tf.zeros([B, UNITS]))
    assert z.shape == (B, K) and alpha.shape == (B, M)


def attention_reference(att: VisualAttention, v: np.ndarray, h: np.ndarray):
    """Eq. 4–5 in numpy: e = w·tanh(W_v v_i + W_h h + b), α = softmax_i e, z = Σ α_i v_i."""
    projected = v @ att._feature_proj.kernel.numpy() + att._feature_proj.bias.numpy()
    hidden = h @ att._hidden_proj.kernel.numpy()
    e = (np.tanh(projected + hidden[:, None, :]) @ att._score.kernel.numpy())[..., 0]
    alpha = np.exp(e - e.max(-1, keepdims=True))
    alpha /= alpha.sum(-1, keepdims=True)
    return np.einsum("bm,bmk->bk", alpha, v), alpha


def test_visual_attention_matches_numpy_reference():
    att = make_attention()
    v = features()
    h = tf.constant(np.random.default_rng(1).normal(size=(B, UNITS)), tf.float32)
    z, alpha = att(att.project_features(v), v, h)
    assert z.shape == (B, K) and alpha.shape == (B, M)
    np.testing.assert_allclose(alpha.numpy().sum(-1), np.ones(B), rtol=1e-6)
    assert np.all(alpha.numpy() > 0)
    np.testing.assert_allclose(z.numpy(), np.einsum("bm,bmk->bk", alpha.numpy(), v.numpy()),
                               rtol=1e-5, atol=1e-6)
    z_ref, alpha_ref = attention_reference(att, v.numpy(), h.numpy())
    np.testing.assert_allclose(alpha.numpy(), alpha_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z.numpy(), z_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("images", [1, B])  # one image takes its own matmul
def test_visual_attention_of_several_beams_matches_each_beam_alone(images):
    # Beam search passes K hidden states per image as [B, K, d]: each must attend as a
    # [B, d] state alone would, normalised over the positions, not across the beams.
    att = make_attention()
    v = features()[:images]
    beams = 3
    h = tf.constant(np.random.default_rng(2).normal(size=(images, beams, UNITS)), tf.float32)
    z, alpha = att(att.project_features(v), v, h)
    assert z.shape == (images, beams, K) and alpha.shape == (images, beams, M)
    for k in range(beams):
        z_ref, alpha_ref = attention_reference(att, v.numpy(), h[:, k].numpy())
        np.testing.assert_allclose(alpha[:, k].numpy(), alpha_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z[:, k].numpy(), z_ref, rtol=1e-5, atol=1e-6)


def test_visual_attention_depends_on_hidden_state():
    att = make_attention()
    v = features()
    projected = att.project_features(v)
    _, a0 = att(projected, v, tf.zeros([B, UNITS]))
    _, a1 = att(projected, v, tf.ones([B, UNITS]))
    assert not np.allclose(a0.numpy(), a1.numpy())


# -- M_pred and the candidate pool -----------------------------------------------------
@pytest.mark.parametrize("use_attention", [True, False])
def test_cell_step_shapes(use_attention):
    cell = make_cell(use_attention)
    context = cell.prepare(features())
    state = first_state(cell)
    logits, alpha, new_state = cell(context, state)
    assert logits.shape == (B, C) and logits.dtype == tf.float32
    assert alpha.shape == (B, M)
    np.testing.assert_allclose(alpha.numpy().sum(-1), np.ones(B), rtol=1e-6)
    assert isinstance(new_state, CellState)
    assert new_state.h.shape == (B, UNITS) and new_state.c.shape == (B, UNITS)
    assert new_state.y_tilde.shape == (B, C) and new_state.v_pred.shape == (B, C)
    np.testing.assert_allclose(new_state.v_pred.numpy(), tf.sigmoid(logits).numpy(), rtol=1e-6)
    if not use_attention:
        np.testing.assert_allclose(alpha.numpy(), np.full((B, M), 1 / M), rtol=1e-6)


def test_cell_chooses_each_label_once_over_c_steps():
    cell = make_cell()
    # Make label 0 the most confident at every step: without the candidate pool the
    # cell would choose it again and again.
    cell.fc2.bias.assign([50.0] + [0.0] * (C - 1))
    context = cell.prepare(features())
    state = first_state(cell)
    chosen_order = []
    for t in range(C):
        logits, _, new_state = cell(context, state)
        gained = new_state.y_tilde.numpy() - state.y_tilde.numpy()
        np.testing.assert_array_equal(gained.sum(-1), np.ones(B))  # exactly one label per step
        assert set(np.unique(gained)) <= {0.0, 1.0}
        chosen = gained.argmax(-1)
        expected = np.where(state.y_tilde.numpy() > 0, -np.inf, logits.numpy()).argmax(-1)
        np.testing.assert_array_equal(chosen, expected)
        chosen_order.append(chosen)
        state = new_state
    assert chosen_order[0].tolist() == [0] * B
    np.testing.assert_array_equal(state.y_tilde.numpy(), np.ones((B, C)))  # never twice
    for row in np.stack(chosen_order, 1):
        assert sorted(row.tolist()) == list(range(C))


def test_mask_chosen_gives_minus_inf_and_never_nan():
    logits = tf.constant([[3.0, -1e30, 2.0, 1e30, 0.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    y_tilde = tf.constant([[1.0, 1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0, 1.0]])  # all but one
    with tf.GradientTape() as tape:
        tape.watch(logits)
        masked = mask_chosen(logits, y_tilde)
        log_probs = tf.nn.log_softmax(masked, axis=-1)
        picked = tf.reduce_sum(tf.where(y_tilde > 0, 0.0, log_probs))
    masked = masked.numpy()
    assert np.all(masked[y_tilde.numpy() > 0] == -np.inf)
    np.testing.assert_array_equal(masked[y_tilde.numpy() == 0], [2.0, 1.0])
    np.testing.assert_array_equal(tf.argmax(masked, -1).numpy(), [2, 0])
    assert not np.any(np.isnan(masked))
    assert not np.any(np.isnan(log_probs.numpy()))
    np.testing.assert_allclose(log_probs.numpy()[y_tilde.numpy() == 0], [0.0, 0.0])
    grad = tape.gradient(picked, logits).numpy()
    assert np.all(np.isfinite(grad))


def test_cell_all_but_one_chosen_has_no_nan():
    cell = make_cell()
    context = cell.prepare(features())
    y_tilde = np.ones((B, C), "float32")
    y_tilde[np.arange(B), [1, 3, 4]] = 0.0
    state = CellState(tf.zeros([B, UNITS]), tf.zeros([B, UNITS]), tf.constant(y_tilde),
                      tf.fill([B, C], 0.5))
    logits, alpha, new_state = cell(context, state)
    for tensor in (logits, alpha, *new_state):
        assert not np.any(np.isnan(tensor.numpy()))
    np.testing.assert_array_equal(new_state.y_tilde.numpy(), np.ones((B, C)))


@pytest.mark.parametrize("use_attention", [True, False])
def test_cell_gradients_reach_every_variable(use_attention):
    cell = make_cell(use_attention)
    v = features()
    h0 = tf.constant(np.random.default_rng(2).normal(size=(B, UNITS)), tf.float32)
    with tf.GradientTape() as tape:
        context = cell.prepare(v)
        state = CellState(h0, h0, tf.zeros([B, C]), tf.fill([B, C], 0.5))
        loss = 0.0
        for _ in range(2):
            logits, _, state = cell(context, state, training=True)
            loss += tf.reduce_mean(tf.square(logits))
    grads = tape.gradient(loss, cell.trainable_variables)
    assert len(grads) == len(cell.trainable_variables) > 0
    for var, grad in zip(cell.trainable_variables, grads):
        assert grad is not None, var.path
        assert np.any(grad.numpy() != 0), var.path


# -- config round trips -------------------------------------------------------------
def _copy_round_trip(layer, **given):
    """The clone from `get_config`, which must hold every argument (`given` with its value)."""
    config = layer.get_config()
    assert_config_holds_every_argument(type(layer), config, given)
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    return clone


def test_label_map_head_config_round_trip():
    head = LabelMapHead(num_classes=C, dropout=0.3, name="m_map")
    x = features()
    head(x)
    clone = _copy_round_trip(head, num_classes=C, dropout=0.3)
    assert (clone.num_classes, clone.dropout, clone.name) == (C, 0.3, "m_map")
    clone(x)
    clone.set_weights(head.get_weights())
    np.testing.assert_array_equal(clone(x).numpy(), head(x).numpy())


def test_visual_attention_config_round_trip():
    att = make_attention(name="m_att")
    v, h = features(), tf.ones([B, UNITS])
    out = att(att.project_features(v), v, h)
    clone = _copy_round_trip(att, units=UNITS)
    assert clone.units == UNITS
    clone.build((None, M, UNITS), (None, M, K), (None, UNITS))
    clone.set_weights(att.get_weights())
    for a, b in zip(clone(clone.project_features(v), v, h), out):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("use_attention", [True, False])
def test_cell_config_round_trip(use_attention):
    cell = make_cell(use_attention)
    clone = _copy_round_trip(cell, num_classes=C, units=UNITS, attention_units=UNITS,
                             fc_units=UNITS, dropout=0.2, use_attention=use_attention)
    assert clone.use_attention == use_attention and clone.dropout == 0.2
    clone.build((None, M, K))
    assert len(clone.weights) == len(cell.weights)
    clone.set_weights(cell.get_weights())
    v = features()
    out = cell(cell.prepare(v), first_state(cell))
    out_clone = clone(clone.prepare(v), first_state(clone))
    np.testing.assert_array_equal(out[0].numpy(), out_clone[0].numpy())
    for a, b in zip(out[2], out_clone[2]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# -- the main job's layers: standardisation, spatial M_map, residual decoder cell -------
def test_feature_standardizer_statistics_over_unequal_batches_are_the_whole_splits():
    from ofrnn_tf.modeling.layers import FeatureStandardizer

    rng = np.random.default_rng(5)
    # Channels of different means and spreads, as a frozen CNN's are.
    x = (rng.normal(size=(11, M, K)) * rng.uniform(0.5, 5.0, K) + rng.normal(0, 4, K)).astype(
        np.float32)
    layer = FeatureStandardizer(depth=K)
    layer.adapt(tf.constant(part) for part in (x[:5], x[5:6], x[6:]))  # one pass, a generator
    flat = x.reshape(-1, K).astype(np.float64)
    np.testing.assert_allclose(layer.mean.numpy(), flat.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.std.numpy(), flat.std(0) + layer.epsilon, rtol=1e-4)


def test_feature_standardizer_refuses_labelled_batches_and_another_depth_naming_the_batch():
    from ofrnn_tf.modeling.layers import FeatureStandardizer

    layer = FeatureStandardizer(depth=K)
    labelled = tf.data.Dataset.from_tensor_slices(
        (np.ones([8, M, K], np.float32), np.zeros([8, 2], np.float32))).batch(4)
    with pytest.raises(TypeError, match=r"batch 0 is a tuple .*: pass "
                                        r"ds.map\(lambda features, labels: features\)"):
        layer.adapt(labelled)
    with pytest.raises(TypeError, match=r"batch 1 is a dict .*: pass "
                                        r"ds.map\(lambda batch: batch\[\"features\"\]\)"):
        layer.adapt([np.ones([2, M, K]), {"features": np.ones([2, M, K])}])
    with pytest.raises(ValueError, match=f"batch 1 has 5 channels .*, the layer {K}"):
        layer.adapt([np.ones([2, M, K]), np.ones([2, M, 5])])
    assert not layer.is_adapted


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_feature_standardizer_refuses_a_batch_holding_nan_or_inf_naming_it(value):
    from ofrnn_tf.modeling.layers import FeatureStandardizer

    layer = FeatureStandardizer(depth=K)
    bad = np.ones([2, M, K], np.float32)
    bad[1, 0, 2] = value  # one value makes its channel's statistics NaN
    with pytest.raises(ValueError, match=r"batch 1 holds NaN or Inf \(channel 2\), which would "
                                         r"make the statistics NaN"):
        layer.adapt([np.ones([2, M, K], np.float32), bad])
    assert not layer.is_adapted


def test_spatial_head_pools_position_scores_between_mean_and_max():
    from ofrnn_tf.modeling.layers import SpatialLabelHead

    keras.utils.set_random_seed(0)
    head = SpatialLabelHead(num_classes=C, units=UNITS, dropout=0.0, sharpness=5.0)
    x = features()
    hidden, scores = head.per_position(x)
    assert hidden.shape == (B, M, UNITS) and scores.shape == (B, M, C)
    s = scores.numpy()
    expected = (np.log(np.mean(np.exp(5.0 * s), axis=1))) / 5.0
    np.testing.assert_allclose(head(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert (head(x).numpy() <= s.max(1) + 1e-6).all() and (head(x).numpy() >= s.mean(1) - 1e-6).all()
    np.testing.assert_allclose(hidden.numpy(), np.maximum(
        x.numpy() @ head._hidden.kernel.numpy() + head._hidden.bias.numpy(), 0.0), rtol=1e-5,
        atol=1e-6)


def test_spatial_head_with_a_kernel_reads_each_position_with_its_neighbours():
    from ofrnn_tf.modeling.layers import SpatialLabelHead

    keras.utils.set_random_seed(0)
    side = 3
    head = SpatialLabelHead(num_classes=C, units=UNITS, dropout=0.0, kernel_size=3)
    x = tf.constant(np.random.default_rng(4).normal(size=(B, side * side, K)), tf.float32)
    hidden, scores = head.per_position(x)
    assert hidden.shape == (B, side * side, UNITS) and scores.shape == (B, side * side, C)
    # A 3x3 "same" convolution over the row-major grid of positions, in plain numpy.
    grid = np.pad(x.numpy().reshape(B, side, side, K), ((0, 0), (1, 1), (1, 1), (0, 0)))
    kernel, bias = head._hidden.kernel.numpy(), head._hidden.bias.numpy()
    want = np.zeros((B, side, side, UNITS), "float32")
    for i in range(side):
        for j in range(side):
            want[:, i, j] = np.einsum("bhwk,hwku->bu", grid[:, i:i + 3, j:j + 3], kernel)
    want = np.maximum(want + bias, 0.0).reshape(B, side * side, UNITS)
    np.testing.assert_allclose(hidden.numpy(), want, rtol=1e-5, atol=1e-5)

    with pytest.raises(ValueError, match="square feature maps; got 6 positions"):
        SpatialLabelHead(num_classes=C, kernel_size=3).build((None, 6, K))
    with pytest.raises(ValueError, match="positive odd number; got 2"):
        SpatialLabelHead(num_classes=C, kernel_size=2)


def test_residual_cell_matches_numpy_lstm_reference():
    """Fused products, gates and the residual: one step against plain numpy."""
    from ofrnn_tf.modeling.layers import ResidualDecoderCell

    keras.utils.set_random_seed(1)
    cell = ResidualDecoderCell(num_classes=C, units=UNITS, fc_units=UNITS, dropout=0.0)
    rng = np.random.default_rng(3)
    hidden = rng.normal(size=(B, M, K)).astype("float32")
    scores = rng.normal(size=(B, M, C)).astype("float32")
    base = rng.normal(size=(B, C)).astype("float32")
    cell.build((None, M, K))
    cell.fc2.kernel.assign(rng.normal(size=cell.fc2.kernel.shape).astype("float32"))
    state = CellState(*(tf.constant(rng.normal(size=(B, n)), tf.float32) for n in (UNITS, UNITS)),
                      tf.constant(rng.random((B, C)) < 0.4, tf.float32),
                      tf.constant(rng.random((B, C)), tf.float32))
    logits, alpha, h, c = cell.predict(cell.prepare(hidden, scores, base), state)

    w = {v.path.split("/")[-1]: v.numpy() for v in cell.weights}
    sig = lambda z: 1 / (1 + np.exp(-z))
    q = state.h.numpy() @ w["query_kernel"] + w["query_bias"]
    e = np.einsum("bmd,bd->bm", hidden, q) / np.sqrt(K)
    a = np.exp(e - e.max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    u = np.concatenate([state.v_pred.numpy(), state.y_tilde.numpy(),
                        np.einsum("bm,bmd->bd", a, hidden),
                        np.einsum("bm,bmc->bc", a, scores)], 1)
    z = u @ w["input_kernel"] + state.h.numpy() @ w["recurrent_kernel"] + w["lstm_bias"]
    i, f, g, o = np.split(z, 4, axis=1)
    c_ref = sig(f) * state.c.numpy() + sig(i) * np.tanh(g)
    h_ref = sig(o) * np.tanh(c_ref)
    fc1 = np.maximum(u @ w["fc1_input_kernel"] + h_ref @ w["fc1_hidden_kernel"] + w["fc1_bias"], 0)
    p_ref = base + fc1 @ cell.fc2.kernel.numpy() + cell.fc2.bias.numpy()
    for got, want in ((alpha, a), (c, c_ref), (h, h_ref), (logits, p_ref)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)


def test_residual_cell_lstm_starts_with_its_forget_gate_open():
    """Gates in Keras order (input, forget, cell, output): the forget gate's bias starts
    at 1, the others at 0."""
    from ofrnn_tf.modeling.layers import ResidualDecoderCell

    cell = ResidualDecoderCell(num_classes=C, units=UNITS, fc_units=UNITS)
    cell.build((None, M, K))
    bias = cell.lstm_bias.numpy()
    np.testing.assert_array_equal(bias[UNITS:2 * UNITS], 1.0)
    np.testing.assert_array_equal(np.delete(bias, np.s_[UNITS:2 * UNITS]), 0.0)


def test_paper_cell_matches_numpy_reference_of_eq_4_to_7():
    """The paper's step against plain numpy: attention (Eq. 4–5), the LSTM over
    `[v_pred, z_t, ỹ_{t-1}]` (Eq. 6) and FC2(FC1([v_pred, z_t, ỹ_{t-1}, h_t])) (Eq. 7)."""
    cell = make_cell(seed=2)
    rng = np.random.default_rng(4)
    cell.fc2.kernel.assign(rng.normal(size=cell.fc2.kernel.shape).astype("float32"))
    v = features(seed=5)
    state = CellState(*(tf.constant(rng.normal(size=(B, UNITS)), tf.float32) for _ in range(2)),
                      tf.constant(rng.random((B, C)) < 0.4, tf.float32),
                      tf.constant(rng.random((B, C)), tf.float32))
    logits, alpha, h, c = cell.predict(cell.prepare(v), state)

    att, sig = cell.attention, lambda q: 1 / (1 + np.exp(-q))
    e = (np.tanh(v.numpy() @ att._feature_proj.kernel.numpy() + att._feature_proj.bias.numpy()
                 + (state.h.numpy() @ att._hidden_proj.kernel.numpy())[:, None])
         @ att._score.kernel.numpy())[..., 0]
    a = np.exp(e - e.max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    x = np.concatenate([state.v_pred.numpy(), np.einsum("bm,bmk->bk", a, v.numpy()),
                        state.y_tilde.numpy()], 1)
    kernel, recurrent, bias = (w.numpy() for w in cell.lstm.weights)
    i, f, g, o = np.split(x @ kernel + state.h.numpy() @ recurrent + bias, 4, axis=1)
    c_ref = sig(f) * state.c.numpy() + sig(i) * np.tanh(g)
    h_ref = sig(o) * np.tanh(c_ref)
    fc1 = np.maximum(np.concatenate([x, h_ref], 1) @ cell.fc1.kernel.numpy()
                     + cell.fc1.bias.numpy(), 0)
    p_ref = fc1 @ cell.fc2.kernel.numpy() + cell.fc2.bias.numpy()
    for got, want in ((alpha, a), (c, c_ref), (h, h_ref), (logits, p_ref)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)


def test_new_layers_config_round_trip():
    from ofrnn_tf.modeling.layers import (
        FeatureStandardizer, LabelContext, ResidualDecoderCell, SpatialLabelHead)

    for cls, given in (
            (SpatialLabelHead, dict(num_classes=C, units=UNITS, dropout=0.1, sharpness=3.0)),
            (LabelContext, dict(num_classes=C, units=UNITS, dropout=0.3)),
            (SpatialLabelHead, dict(num_classes=C, units=UNITS, kernel_size=3)),
            (ResidualDecoderCell, dict(num_classes=C, units=UNITS, fc_units=4, dropout=0.3)),
            (FeatureStandardizer, dict(depth=K, epsilon=1e-2))):
        _copy_round_trip(cls(**given), **given)


# -- label context ---------------------------------------------------------------------
def make_context(seed: int = 0, dropout: float = 0.0, correct: bool = True):
    from ofrnn_tf.modeling.layers import LabelContext

    keras.utils.set_random_seed(seed)
    context = LabelContext(num_classes=C, units=UNITS, dropout=dropout)
    context.build((None, C))
    if correct:  # a fitted context: its last layer away from zero
        rng = np.random.default_rng(seed)
        for variable in context._correction.weights:
            variable.assign(rng.normal(0, 1.0, variable.shape).astype("float32"))
    return context


def test_label_context_starts_as_the_identity():
    logits = tf.constant(np.random.default_rng(1).normal(0, 3, (B, C)), tf.float32)
    context = make_context(correct=False)
    np.testing.assert_array_equal(context(logits).numpy(), logits.numpy())
    grads = dict(zip([v.path for v in context.trainable_variables],
                     _context_gradients(context, logits)))
    # Only the last layer learns at first; the hidden layers follow once it moves.
    assert {p for p, g in grads.items() if g is not None and np.any(g.numpy())} == {
        p for p in grads if "/correction/" in p}


def _context_gradients(context, logits):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.ones_like(logits), logits=context(logits)))
    return tape.gradient(loss, context.trainable_variables)


def test_label_context_matches_numpy_reference():
    context = make_context()
    logits = np.random.default_rng(2).normal(0, 3, (B, C)).astype("float32")
    w = {v.path.split("/", 1)[1]: v.numpy() for v in context.weights}
    relu = lambda x: np.maximum(x, 0)
    hidden = relu(1 / (1 + np.exp(-logits)) @ w["hidden_1/kernel"] + w["hidden_1/bias"])
    hidden = relu(hidden @ w["hidden_2/kernel"] + w["hidden_2/bias"])
    want = logits + hidden @ w["correction/kernel"] + w["correction/bias"]
    got = context(tf.constant(logits)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, logits)


def test_label_context_dropout_only_while_training():
    context = make_context(dropout=0.5)
    logits = tf.constant(np.random.default_rng(3).normal(0, 3, (64, C)), tf.float32)
    np.testing.assert_array_equal(context(logits).numpy(), context(logits).numpy())
    assert not np.allclose(context(logits, training=True).numpy(), context(logits).numpy())
