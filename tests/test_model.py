"""OrderFreeRNN (paper Fig. 2, Eq. 8–10, Alg. 1): variants, both decoders, the stage-2 losses,
config and saving."""

import dataclasses
import inspect
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_config_holds_every_argument
from ofrnn_tf.config.experiment import HEADS, VARIANTS, ExperimentConfig, ModelConfig
from ofrnn_tf.modeling import model as model_module
from ofrnn_tf.modeling.candidate_pool import mask_chosen
from ofrnn_tf.modeling.model import (
    HEAD_LAYERS, OrderFreeRNN, build_model, fixed_label_order, model_arguments)

B, M, K, C, UNITS = 4, 4, 6, 5, 8
LABEL_COUNTS = [5, 3, 8, 1, 3]
# Counts 1, 2, 0, 2: no image takes step 3 of 3.
LABELS = np.array([[0, 0, 1, 0, 0],
                   [1, 0, 0, 1, 0],
                   [0, 0, 0, 0, 0],
                   [0, 1, 0, 0, 1]], "float32")
# Counts 4, 1, 3, 5: steps beyond max_steps are cut off.
MANY_LABELS = np.array([[1, 1, 0, 1, 1],
                        [0, 0, 0, 1, 0],
                        [1, 0, 1, 1, 0],
                        [1, 1, 1, 1, 1]], "float32")


DECODERS = ["paper", "residual"]
PAPER = dict(head="mean_linear", decoder="paper", standardize=False)
RESIDUAL = dict(head="spatial", decoder="residual", head_units=UNITS, standardize=True)


def make_model(mode: str = "order_free", seed: int = 0, label_order=None, decoder="paper",
               sharpen: bool = True, **kwargs) -> OrderFreeRNN:
    keras.utils.set_random_seed(seed)
    if label_order is None:
        label_order = fixed_label_order(LABEL_COUNTS, mode)
    parts = dict(PAPER if decoder == "paper" else RESIDUAL, **kwargs)
    model = OrderFreeRNN(num_classes=C, variant=mode, lstm_units=UNITS, attention_units=UNITS,
                         fc_units=UNITS, label_order=label_order, **parts)
    model.build((None, M, K))
    if model.uses_decoder and sharpen:
        # Random weights give logits near 0 (and the residual decoder starts at exactly
        # M_map's): spread the steps' logits out.
        kernel = model.cell.fc2.kernel
        rng = np.random.default_rng(seed + 7)
        kernel.assign(kernel * 10.0 if model.decoder == "paper"
                      else rng.normal(0, 1.0, kernel.shape).astype("float32"))
    return model


def features(seed: int = 1, batch: int = B) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).normal(size=(batch, M, K)), tf.float32)


def bce(labels, logits) -> np.ndarray:
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.constant(labels), logits=logits), -1).numpy()


def reference_losses(model, x, labels, max_steps, train_steps="gt_count"):
    """Eq. 8 step by step through the public start/step/advance interface.

    Returns `(per_example [B], per_step [T], chosen [B, T])`.
    """
    truth = labels.sum(-1)
    counts = truth
    if train_steps == "max" and not model.softmax_steps:
        counts = np.full_like(counts, max_steps)
    if train_steps == "gt_count_plus_one" or model.softmax_steps:
        counts = counts + 1
    counts = np.minimum(counts, max_steps)
    if model.teacher_forced:
        rank = np.argsort(model.label_order)
        ordered = [sorted(np.flatnonzero(row), key=lambda c: rank[c]) for row in labels]
    context, state = model.start(x, training=False)
    step_losses, chosen_steps = [], []
    for t in range(max_steps):
        logits, _, h, c = model.step(context, state, training=False)
        if model.softmax_steps:
            masked = mask_chosen(logits, state.y_tilde).numpy()
            if model.teacher_forced:
                target = np.array([o[t] if t < len(o) else 0 for o in ordered], "int32")
            else:  # PLA: the model's own choice if true, else the best true label left
                own = masked.argmax(-1)
                left = (labels > 0) & (state.y_tilde.numpy() <= 0)
                best_true = np.where(left, masked, -np.inf).argmax(-1)
                target = np.where(labels[np.arange(len(labels)), own] > 0, own, best_true)
            # The labels left and "stop" (index C), the target once every true label is in.
            stop = model.stop_logit(h).numpy()
            log_probs = tf.nn.log_softmax(np.concatenate([masked, stop], -1), -1).numpy()
            wanted = np.where(t >= truth, C, target)
            loss = np.where(t < counts, -log_probs[np.arange(len(labels)), wanted], 0.0)
            chosen = target.astype("int32")
        else:
            loss = bce(labels, logits)
            chosen = tf.argmax(mask_chosen(logits, state.y_tilde), -1, output_type=tf.int32).numpy()
        step_losses.append(loss)
        chosen_steps.append(chosen)
        state = model.advance(state, h, c, logits, tf.constant(chosen))
    step_losses = np.stack(step_losses, 1)
    active = np.arange(max_steps)[None, :] < counts[:, None]
    per_example = (step_losses * active).sum(1) / np.maximum(np.minimum(counts, max_steps), 1)
    taken = active.sum(0)
    per_step = np.where(taken > 0, (step_losses * active).sum(0) / np.maximum(taken, 1), np.nan)
    return per_example, per_step, np.stack(chosen_steps, 1)


class Recorder:
    """Wraps `model.advance` to see what `sequence_loss` feeds back at each step."""

    def __init__(self, model):
        self.chosen, self.y_tilde, self.logits = [], [], []
        self._advance = model.advance

    def __call__(self, state, h, c, logits, chosen):
        new_state = self._advance(state, h, c, logits, chosen)
        self.chosen.append(chosen.numpy())
        self.logits.append(logits.numpy())
        self.y_tilde.append(new_state.y_tilde.numpy())
        return new_state


def record(monkeypatch, model, *args, **kwargs):
    recorder = Recorder(model)
    monkeypatch.setattr(model, "advance", recorder)
    losses = model.sequence_loss(*args, **kwargs)
    monkeypatch.undo()
    return losses, recorder


# -- modes ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", VARIANTS)
def test_every_mode_builds_and_has_a_finite_loss(mode):
    model = make_model(mode)
    x = features()
    assert model(x).shape == (B, C)
    map_loss = model.map_loss(x, LABELS)
    assert map_loss.shape == (B,) and np.all(np.isfinite(map_loss.numpy()))
    if mode == "baseline":
        assert not model.uses_decoder and model.decoder_variables == []
        return
    for train_steps in ("gt_count", "max"):
        per_example, per_step = model.sequence_loss(x, MANY_LABELS, max_steps=3,
                                                    train_steps=train_steps, training=True)
        assert per_example.shape == (B,) and per_step.shape == (3,)
        assert np.all(np.isfinite(per_example.numpy())) and np.all(np.isfinite(per_step.numpy()))
        assert np.all(per_example.numpy() > 0)


def test_map_and_decoder_variables_split_the_model():
    model = make_model()
    map_ids = {id(v) for v in model.map_variables}
    decoder_ids = {id(v) for v in model.decoder_variables}
    assert map_ids and decoder_ids and not map_ids & decoder_ids
    assert map_ids | decoder_ids == {id(v) for v in model.trainable_variables}
    assert all("/label_map_head/" in v.path for v in model.map_variables)
    assert not any("label_map_head" in v.path for v in model.decoder_variables)


@pytest.mark.parametrize("mode, decoder", [("order_free", "paper"), ("no_attention", "paper"),
                                           ("frequency_first", "paper"), ("order_free", "residual")])
def test_stage2_loss_reaches_every_decoder_variable(mode, decoder):
    model = make_model(mode, decoder=decoder)
    with tf.GradientTape() as tape:
        per_example, _ = model.sequence_loss(features(), MANY_LABELS, max_steps=3)
        loss = tf.reduce_mean(per_example)
    grads = tape.gradient(loss, model.decoder_variables)
    for var, grad in zip(model.decoder_variables, grads):
        assert grad is not None, var.path
        assert np.any(grad.numpy() != 0), var.path


@pytest.mark.parametrize("decoder", ["paper", "residual"])
def test_stage2_loss_leaves_m_map_without_gradient(decoder):
    """Algorithm 1: the decoder learns over a frozen M_map, whichever variables a caller
    hands the optimiser (M_map's logits enter the decoder behind a stop_gradient)."""
    model = make_model("order_free", decoder=decoder)
    with tf.GradientTape() as tape:
        per_example, _ = model.sequence_loss(features(), MANY_LABELS, max_steps=3)
        loss = tf.reduce_mean(per_example)
    grads = tape.gradient(loss, model.map_variables)
    assert model.map_variables and all(
        g is None or not np.any(g.numpy()) for g in grads), [v.path for v in model.map_variables]


def test_step2_loss_has_gradient_through_v_pred():
    """v_pred = sigmoid(p_1) carries step 1's confidence into step 2 (Eq. 6–7)."""
    model = make_model()
    x = features()
    context, state = model.start(x)
    logits1, _, h, c = model.step(context, state)
    chosen = tf.argmax(mask_chosen(logits1, state.y_tilde), -1, output_type=tf.int32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits1)
        state2 = model.advance(state, h, c, logits1, chosen)
        p2 = state2.v_pred
        logits2, _, _, _ = model.step(context, state2)
        loss2 = tf.reduce_sum(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=LABELS, logits=logits2))
    np.testing.assert_allclose(p2.numpy(), tf.sigmoid(logits1).numpy(), rtol=1e-6)
    d_logits1 = tape.gradient(loss2, logits1).numpy()
    d_p2 = tape.gradient(loss2, p2).numpy()
    assert np.all(np.abs(d_p2).sum(-1) > 0) and np.all(np.abs(d_logits1).sum(-1) > 0)
    sig = tf.sigmoid(logits1).numpy()
    np.testing.assert_allclose(d_logits1, d_p2 * sig * (1 - sig), rtol=1e-4, atol=1e-7)
    assert tape.gradient(logits2, state2.v_pred) is not None


# -- the stage-2 loss (Eq. 8) ----------------------------------------------------------
@pytest.mark.parametrize("mode, decoder, loss", [
    ("order_free", "paper", "bce"), ("no_attention", "paper", "bce"),
    ("frequency_first", "paper", "bce"), ("rare_first", "paper", "bce"),
    ("order_free", "residual", "bce"), ("order_free", "residual", "pla"),
    ("order_free", "paper", "pla")])
@pytest.mark.parametrize("train_steps", ["gt_count", "gt_count_plus_one"])
@pytest.mark.parametrize("labels", [LABELS, MANY_LABELS], ids=["few", "many"])
def test_sequence_loss_matches_step_by_step_reference(mode, decoder, loss, train_steps, labels):
    model = make_model(mode, decoder=decoder, stage2_loss=loss)
    x = features()
    per_example, per_step = model.sequence_loss(x, labels, max_steps=3, train_steps=train_steps,
                                                training=False)
    ref_example, ref_step, _ = reference_losses(model, x, labels, max_steps=3,
                                                train_steps=train_steps)
    np.testing.assert_allclose(per_example.numpy(), ref_example, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(per_step.numpy(), ref_step, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", ["bce", "pla"])
def test_sequence_loss_from_head_outputs_computed_beforehand_is_the_same(loss):
    """Stage 2 may compute the frozen head's outputs once and train on them."""
    model = make_model(decoder="residual", stage2_loss=loss)
    x = features()
    head_outputs = model.head_outputs(x)
    hidden, scores = head_outputs
    assert hidden.shape == (B, M, UNITS) and scores.shape == (B, M, C)
    expected = model.sequence_loss(x, MANY_LABELS, max_steps=3, training=False)
    got = model.sequence_loss(None, MANY_LABELS, max_steps=3, training=False,
                              head_outputs=head_outputs)
    for want, have in zip(expected, got):
        np.testing.assert_allclose(have.numpy(), want.numpy(), rtol=1e-6, atol=1e-7)
    with tf.GradientTape() as tape:  # frozen: nothing reaches M_map through them
        tape.watch(x)
        hidden, scores = model.head_outputs(x)
        total = tf.reduce_sum(hidden) + tf.reduce_sum(scores)
    assert tape.gradient(total, x) is None


def test_only_the_residual_decoder_takes_head_outputs():
    model = make_model(decoder="paper")
    with pytest.raises(ValueError, match="only the residual decoder"):
        model.head_outputs(features())
    residual = make_model(decoder="residual")
    with pytest.raises(ValueError, match="reads the feature maps"):
        model.start(None, head_outputs=residual.head_outputs(features()))


def test_gt_count_masks_steps_beyond_the_label_count():
    model = make_model()
    x = features()
    per_example, per_step = model.sequence_loss(x, LABELS, max_steps=3, train_steps="gt_count",
                                                training=False)
    assert np.isnan(per_step.numpy()[2])  # no image has 3 labels: no loss, not a zero one
    assert per_example.numpy()[2] == 0.0  # no labels, no steps
    _, _, chosen = reference_losses(model, x, LABELS, max_steps=3)
    context, state = model.start(x)
    step_loss = []
    for t in range(2):
        logits, _, h, c = model.step(context, state)
        step_loss.append(bce(LABELS, logits))
        state = model.advance(state, h, c, logits, tf.constant(chosen[:, t]))
    np.testing.assert_allclose(per_example.numpy()[[0, 1, 3]],
                               [step_loss[0][0], np.mean([s[1] for s in step_loss]),
                                np.mean([s[3] for s in step_loss])], rtol=1e-5)
    np.testing.assert_allclose(per_step.numpy()[1], np.mean([step_loss[1][1], step_loss[1][3]]),
                               rtol=1e-5)


def test_max_train_steps_uses_every_step():
    model = make_model()
    x = features()
    per_example, per_step = model.sequence_loss(x, LABELS, max_steps=3, train_steps="max",
                                                training=False)
    ref_example, ref_step, _ = reference_losses(model, x, LABELS, max_steps=3, train_steps="max")
    np.testing.assert_allclose(per_example.numpy(), ref_example, rtol=1e-5)
    np.testing.assert_allclose(per_step.numpy(), ref_step, rtol=1e-5)
    assert np.all(per_step.numpy() > 0) and np.all(per_example.numpy() > 0)


def _coverage(model, x, labels, chosen, counts):
    """`Σ_t α_t` over each image's first `counts` steps, feeding back `chosen`."""
    context, state = model.start(x, training=False)
    coverage = np.zeros((len(labels), M))
    for t in range(chosen.shape[1]):
        logits, alpha, h, c = model.step(context, state, training=False)
        coverage += alpha.numpy() * (t < counts)[:, None]
        state = model.advance(state, h, c, logits, tf.constant(chosen[:, t]))
    return coverage


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("form", ["doubly_stochastic", "overlap"])
def test_attention_penalty_adds_its_weight_times_the_coverage_penalty(decoder, form):
    model = make_model(decoder=decoder)
    if decoder == "residual":  # peaked attention, so that some position is attended twice
        model.cell.query_kernel.assign(model.cell.query_kernel * 30.0)
    else:
        model.cell.attention._score.kernel.assign(model.cell.attention._score.kernel * 30.0)
    x, weight = features(), 0.5
    plain, plain_step = model.sequence_loss(x, MANY_LABELS, 3, "gt_count_plus_one",
                                            training=False)
    penalised, per_step = model.sequence_loss(x, MANY_LABELS, 3, "gt_count_plus_one",
                                              training=False, attention_penalty=weight,
                                              attention_penalty_form=form)
    _, _, chosen = reference_losses(model, x, MANY_LABELS, 3, "gt_count_plus_one")
    counts = np.minimum(MANY_LABELS.sum(-1) + 1, 3)
    coverage = _coverage(model, x, MANY_LABELS, chosen, counts)
    excess = 1.0 - coverage if form == "doubly_stochastic" else np.maximum(coverage - 1.0, 0.0)
    penalty = (excess ** 2).sum(-1)
    assert (penalty > 1e-3).sum() >= 2  # not vacuous
    np.testing.assert_allclose(penalised.numpy(), plain.numpy() + weight * penalty / counts,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(per_step.numpy(), plain_step.numpy(), rtol=1e-6)  # BCE's curve


def test_attention_penalty_reaches_the_attention_and_needs_attention():
    model = make_model(decoder="residual")
    x = features()
    with tf.GradientTape() as tape:
        extra = tf.reduce_sum(
            model.sequence_loss(x, MANY_LABELS, 3, training=True, attention_penalty=1.0)[0]
            - model.sequence_loss(x, MANY_LABELS, 3, training=True)[0])
    assert np.abs(tape.gradient(extra, model.cell.query_kernel).numpy()).sum() > 0
    with pytest.raises(ValueError, match="no attention to penalise"):
        make_model("no_attention").sequence_loss(x, LABELS, 3, attention_penalty=1.0)
    with pytest.raises(ValueError, match="attention_penalty_form must be one of"):
        model.sequence_loss(x, LABELS, 3, attention_penalty=1.0, attention_penalty_form="l1")


def test_order_free_feeds_back_its_own_argmax(monkeypatch):
    model = make_model()
    x = features()
    _, seen = record(monkeypatch, model, x, MANY_LABELS, 3, training=False)
    np.testing.assert_array_equal(seen.chosen[0], seen.logits[0].argmax(-1))
    for t in range(1, 3):
        masked = np.where(seen.y_tilde[t - 1] > 0, -np.inf, seen.logits[t])
        np.testing.assert_array_equal(seen.chosen[t], masked.argmax(-1))
    # Labels that never contain the model's choice: a teacher-forced decoder would feed
    # them; the order-free one still feeds back its own path.
    wrong = np.eye(C, dtype="float32")[(seen.chosen[0] + 1) % C]
    _, seen_wrong = record(monkeypatch, model, x, wrong, 3, train_steps="max", training=False)
    np.testing.assert_array_equal(np.stack(seen_wrong.chosen), np.stack(seen.chosen))
    assert not np.any(wrong[np.arange(B), seen_wrong.chosen[0]])


def test_order_free_ignores_label_order():
    x = features()
    a = make_model(label_order=[0, 1, 2, 3, 4]).sequence_loss(x, MANY_LABELS, 3, training=False)
    b = make_model(label_order=[4, 2, 0, 3, 1]).sequence_loss(x, MANY_LABELS, 3, training=False)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u.numpy(), v.numpy())


@pytest.mark.parametrize("mode", ["frequency_first", "rare_first"])
def test_fixed_order_feeds_the_true_labels_in_label_order(monkeypatch, mode):
    model = make_model(mode)
    order = model.label_order
    assert order == fixed_label_order(LABEL_COUNTS, mode)
    _, seen = record(monkeypatch, model, features(), MANY_LABELS, 3, training=False)
    for i, row in enumerate(MANY_LABELS):
        true_in_order = [c for c in order if row[c]]
        for t in range(min(3, len(true_in_order))):
            assert seen.chosen[t][i] == true_in_order[t]
            expected = np.zeros(C)
            expected[true_in_order[:t + 1]] = 1
            np.testing.assert_array_equal(seen.y_tilde[t][i], expected)


def test_fixed_label_order_from_counts():
    assert fixed_label_order(LABEL_COUNTS, "frequency_first") == [2, 0, 1, 4, 3]  # ties by id
    assert fixed_label_order(LABEL_COUNTS, "rare_first") == [3, 4, 1, 0, 2]
    for mode in ("order_free", "baseline", "no_attention"):
        assert fixed_label_order(LABEL_COUNTS, mode) is None


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="variant must be one of .*'bogus'"):
        OrderFreeRNN(num_classes=C, variant="bogus")
    with pytest.raises(ValueError, match="'frequency_first' needs label_order"):
        OrderFreeRNN(num_classes=C, variant="frequency_first")
    with pytest.raises(ValueError, match="'rare_first' needs label_order.*0..4"):
        OrderFreeRNN(num_classes=C, variant="rare_first", label_order=[0, 0, 1, 2, 3])
    with pytest.raises(ValueError, match="train_steps must be one of"):
        make_model().sequence_loss(features(), LABELS, 3, train_steps="all")
    with pytest.raises(ValueError, match="needs head='spatial'"):
        OrderFreeRNN(num_classes=C, head="mean_linear", decoder="residual")
    # M_map alone builds no decoder, so the default decoder's head is not asked for.
    baseline = OrderFreeRNN(num_classes=C, variant="baseline", head="mean_linear",
                            decoder="residual")
    assert not baseline.residual and not baseline.uses_decoder
    with pytest.raises(ValueError, match="no_attention ablation is of the paper's decoder"):
        OrderFreeRNN(num_classes=C, variant="no_attention", decoder="residual")


@pytest.mark.parametrize("head", HEADS)
def test_every_head_builds_its_own_layer_and_saves_its_name(head):
    model = OrderFreeRNN(num_classes=C, head=head, decoder="paper", head_units=UNITS)
    model.build((None, M, K))
    layer = HEAD_LAYERS[head][0]
    assert type(model.label_map_head) is layer
    assert [name for name in HEADS if HEAD_LAYERS[name][0] is layer] == [head]
    assert model(features()).shape == (B, C)
    clone = OrderFreeRNN.from_config(model.get_config())
    assert clone.get_config()["head"] == head and type(clone.label_map_head) is layer


def test_a_head_name_without_a_layer_is_refused(monkeypatch):
    """A name added to HEADS alone would otherwise build some other head."""
    monkeypatch.setattr(model_module, "HEADS", (*HEADS, "gem_linear"))
    with pytest.raises(ValueError, match="head 'gem_linear' is in HEADS .* but has no layer: "
                                         "add its entry to HEAD_LAYERS"):
        OrderFreeRNN(num_classes=C, head="gem_linear", decoder="paper")


def test_build_model_refuses_what_is_not_a_model_config_over_m_k_maps():
    config = ExperimentConfig().model
    for shape, given in (((14, 14, 112), "(14, 14, 112)"), ((196,), "(196,)"), (196, "(196,)")):
        with pytest.raises(ValueError, match=r"feature_shape must be \(m, k\) = \(H·W, k\).* got "
                           + re.escape(given) + ": pass the run facts' positions_and_depth"):
            build_model(config, C, shape)
    with pytest.raises(TypeError, match="must be a ModelConfig .*; got ExperimentConfig: "
                                        "pass its .model"):
        build_model(ExperimentConfig(), C, (M, K))
    with pytest.raises(TypeError, match="must be a ModelConfig .*; got dict$"):
        build_model({"lstm_units": UNITS}, C, (M, K))
    assert build_model(config, C, tf.TensorShape([M, K])).standardizer.depth == K


SMALL = ModelConfig(lstm_units=UNITS, attention_units=UNITS, fc_units=UNITS, head_units=UNITS)
# For each ModelConfig field, a valid value other than SMALL's and OrderFreeRNN's default,
# with the other fields that value needs.
CHANGED_FIELDS = {
    "variant": {"variant": "baseline"},
    "head": {"head": "mean_linear", "decoder": "paper"},
    "head_units": {"head_units": 12}, "head_kernel_size": {"head_kernel_size": 3},
    "head_dropout": {"head_dropout": 0.15},
    "label_context_units": {"label_context_units": 4},
    "label_context_dropout": {"label_context_dropout": 0.15},
    "label_context_training": {"label_context_training": "joint", "label_context_units": 4},
    "standardize_features": {"standardize_features": False},
    "decoder": {"decoder": "paper"},
    "lstm_units": {"lstm_units": 12}, "attention_units": {"attention_units": 12},
    "fc_units": {"fc_units": 12}, "dropout": {"dropout": 0.15},
    "feature_dropout": {"feature_dropout": 0.15},
}


@pytest.mark.parametrize("field", [field.name for field in dataclasses.fields(ModelConfig)])
def test_every_model_setting_reaches_the_model(field):
    """A field of ModelConfig that build_model, OrderFreeRNN or its get_config leaves out
    would be recorded in run.json and ignored."""
    assert field in CHANGED_FIELDS, f"give ModelConfig.{field} a value in CHANGED_FIELDS"
    config = dataclasses.replace(SMALL, **CHANGED_FIELDS[field])
    argument = {"standardize_features": "standardize"}.get(field, field)
    value = getattr(config, field)
    assert model_arguments(config)[argument] == value
    default = inspect.signature(OrderFreeRNN).parameters[argument].default
    assert value not in (getattr(SMALL, field), default)
    model = build_model(config, C, (M, K))
    assert getattr(model, argument) == value
    assert model.get_config()[argument] == value
    assert OrderFreeRNN.from_config(model.get_config()).get_config()[argument] == value

# -- config and saving -----------------------------------------------------------------
def _outputs(model, x):
    per_example, per_step = model.sequence_loss(x, MANY_LABELS, 3, training=False)
    return [model(x).numpy(), per_example.numpy(), per_step.numpy()]


@pytest.mark.parametrize("mode, decoder", [("order_free", "paper"), ("no_attention", "paper"),
                                           ("rare_first", "paper"), ("order_free", "residual")])
def test_model_config_round_trip(mode, decoder):
    model = make_model(mode, decoder=decoder, dropout=0.1, feature_dropout=0.25,
                       label_context_units=UNITS, label_context_dropout=0.3,
                       label_context_training="joint")
    correct_labels(model)
    config = model.get_config()
    assert_config_holds_every_argument(OrderFreeRNN, config, dict(
        num_classes=C, variant=mode, decoder=decoder, dropout=0.1, feature_dropout=0.25,
        label_context_units=UNITS, label_context_dropout=0.3, label_context_training="joint",
        lstm_units=UNITS, attention_units=UNITS, fc_units=UNITS))
    clone = OrderFreeRNN.from_config(config)
    assert clone.get_config() == config
    assert (clone.variant, clone.label_order, clone.dropout) == (mode, model.label_order, 0.1)
    clone.build((None, M, K))
    assert [v.path for v in clone.weights] == [v.path for v in model.weights]
    clone.set_weights(model.get_weights())
    x = features()
    for a, b in zip(_outputs(clone, x), _outputs(model, x)):
        np.testing.assert_array_equal(a, b)
    # A config saved when the argument was named `mode` loads as the same model.
    older = {("mode" if key == "variant" else key): value for key, value in config.items()}
    assert OrderFreeRNN.from_config(older).get_config() == config


@pytest.mark.parametrize("mode, decoder, extra", [
    ("order_free", "paper", {}), ("frequency_first", "paper", {}), ("order_free", "residual", {}),
    ("order_free", "residual", {"head_kernel_size": 3}),
    ("order_free", "residual", {"label_context_units": UNITS})])
def test_model_keras_file_round_trip(tmp_path, mode, decoder, extra):
    model = make_model(mode, decoder=decoder, **extra)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, OrderFreeRNN)
    assert loaded.get_config() == model.get_config()
    for a, b in zip(loaded.weights, model.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x = features()
    for a, b in zip(_outputs(loaded, x), _outputs(model, x)):
        np.testing.assert_array_equal(a, b)



# Layers that compute in float32 whatever the model's policy: M_map's class scores, the
# decoder's logits and the label context (logits that half precision would round).
FLOAT32_PARTS = ("/scores", "/logits", "/fc2", "label_context")


def policies(layer: keras.layers.Layer, path: str = "") -> dict:
    """`{layer path: its dtype policy}` for every layer inside `layer`."""
    found = {}
    for part in layer._flatten_layers(include_self=False, recursive=False):
        found[f"{path}/{part.name}"] = part.dtype_policy.name
        found.update(policies(part, f"{path}/{part.name}"))
    return found


@pytest.mark.parametrize("decoder, extra", [("paper", {}), ("residual", {
    "head_kernel_size": 3, "label_context_units": UNITS})])
def test_the_model_computes_in_its_own_dtype_policy_not_the_sessions(tmp_path, decoder, extra):
    """A `.keras` file loads in the precision it was saved in (a notebook's global
    mixed_float16 does not leak into its parts), and `dtype=` reaches every part but the
    float32 ones."""
    model = make_model(decoder=decoder, **extra)
    x = features()
    want = _outputs(model, x)
    path = str(tmp_path / "model.keras")
    model.save(path)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        loaded = keras.saving.load_model(path)
        assert set(policies(loaded).values()) == {"float32"}
        for a, b in zip(_outputs(loaded, x), want):
            np.testing.assert_array_equal(a, b)
        asked = make_model(decoder=decoder, dtype="float32", **extra)
        assert set(policies(asked).values()) == {"float32"}
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed = make_model(decoder=decoder, dtype="mixed_float16", **extra)
    for layer_path, policy in policies(mixed).items():
        pinned = any(part in layer_path for part in FLOAT32_PARTS)
        assert policy == ("float32" if pinned else "mixed_float16"), layer_path



# -- the label context -----------------------------------------------------------------
def correct_labels(model: OrderFreeRNN, seed: int = 5) -> None:
    """Gives the model's `LabelContext` a correction of its own (a fitted one)."""
    rng = np.random.default_rng(seed)
    for variable in model.label_context._correction.weights:
        variable.assign(rng.normal(0, 1.0, variable.shape).astype("float32"))


@pytest.mark.parametrize("decoder", DECODERS)
def test_the_decoder_reads_the_logits_the_label_context_corrected(decoder):
    model = make_model(decoder=decoder, sharpen=False, label_context_units=UNITS)
    x = features()
    np.testing.assert_array_equal(model(x).numpy(), model.map_logits(x).numpy())  # unfitted
    correct_labels(model)
    corrected = model(x).numpy()
    np.testing.assert_allclose(corrected, model.label_context(model.map_logits(x)).numpy(),
                               rtol=1e-6)
    assert not np.allclose(corrected, model.map_logits(x).numpy())
    context, state = model.start(x)
    np.testing.assert_allclose(state.v_pred.numpy(), tf.sigmoid(corrected).numpy(), rtol=1e-6)
    if decoder == "residual":  # the residual base of every step is L', not L
        logits, _, _, _ = model.step(context, state)
        np.testing.assert_allclose(logits.numpy(), corrected, rtol=1e-5, atol=1e-5)


def test_the_label_context_has_variables_of_its_own_and_no_stage_trains_it():
    model = make_model(decoder="residual", label_context_units=UNITS)
    correct_labels(model)
    parts = [{id(v) for v in group} for group in
             (model.map_variables, model.context_variables, model.decoder_variables)]
    assert all(parts) and not (parts[0] & parts[1] or parts[1] & parts[2] or parts[0] & parts[2])
    assert set().union(*parts) == {id(v) for v in model.trainable_variables}
    x = features()
    with tf.GradientTape(persistent=True) as tape:
        map_loss = tf.reduce_mean(model.map_loss(x, MANY_LABELS, training=False))
        sequence_loss = tf.reduce_mean(model.sequence_loss(x, MANY_LABELS, max_steps=3)[0])
    np.testing.assert_allclose(  # stage 1 fits M_map alone, before the context
        map_loss.numpy(), bce(MANY_LABELS, model.map_logits(x)).mean(), rtol=1e-6)
    for loss in (map_loss, sequence_loss):
        assert all(g is None for g in tape.gradient(loss, model.context_variables))


def test_a_jointly_trained_label_context_belongs_to_stage_1_and_its_loss():
    model = make_model(decoder="residual", label_context_units=UNITS,
                       label_context_training="joint")
    correct_labels(model)
    context = {id(v) for v in model.label_context.trainable_variables}
    assert context <= {id(v) for v in model.map_variables} and not model.context_variables
    assert not context & {id(v) for v in model.decoder_variables}
    x = features()
    logits = model.map_logits(x)
    want = bce(MANY_LABELS, logits) + bce(MANY_LABELS, model.label_context(logits))
    with tf.GradientTape() as tape:
        map_loss = model.map_loss(x, MANY_LABELS, training=False)
    np.testing.assert_allclose(map_loss.numpy(), want, rtol=1e-5)
    assert all(g is not None for g in tape.gradient(map_loss, model.map_variables))
    with pytest.raises(ValueError, match="label_context_training"):
        make_model(decoder="residual", label_context_units=UNITS,
                   label_context_training="later")


# -- the residual decoder --------------------------------------------------------------
def test_untrained_residual_decoder_reproduces_m_map_at_every_step():
    model = make_model(decoder="residual", sharpen=False)
    x = features()
    context, state = model.start(x)
    m_map = model(x).numpy()
    for _ in range(3):
        logits, _, h, c = model.step(context, state)
        np.testing.assert_allclose(logits.numpy(), m_map, rtol=1e-6, atol=1e-6)
        state = model.advance(state, h, c, logits, tf.argmax(
            mask_chosen(logits, state.y_tilde), -1, output_type=tf.int32))


def test_untrained_residual_decoder_learns_through_its_last_layer_first():
    """At zero FC2 only FC2 gets a gradient; the rest follows once FC2 moves."""
    model = make_model(decoder="residual", sharpen=False)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model.sequence_loss(features(), MANY_LABELS, max_steps=3)[0])
    grads = dict(zip([v.path for v in model.decoder_variables],
                     tape.gradient(loss, model.decoder_variables)))
    moving = {path for path, grad in grads.items() if grad is not None and np.any(grad.numpy())}
    assert moving == {path for path in grads if "/fc2/" in path}


def test_residual_decoder_reads_the_frozen_spatial_head():
    model = make_model(decoder="residual")
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model.sequence_loss(features(), MANY_LABELS, max_steps=3)[0])
    grads = tape.gradient(loss, model.map_variables)
    assert all(g is None or not np.any(g.numpy()) for g in grads)  # M_map stays frozen
    assert model.softmax_steps is False
    assert make_model(decoder="residual", stage2_loss="pla").softmax_steps


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_bce_trained_steps_factor_is_the_sigmoid_of_its_logit_and_chosen_labels_are_out(
        decoder):
    """Eq. 11: a path's probability is the product of `sigmoid(p_t[l_t])`; a label on the
    path (ỹ) cannot be chosen again. Computed from the logits here, not through the model's
    own `step_log_probs`, which the beam-search references use."""
    model = make_model(decoder=decoder)
    context, state = model.start(features())
    for chosen in ([0, 1, 2, 3], [4, 4, 0, 2]):
        logits, _, h, c = model.step(context, state)
        expected = np.log(1.0 / (1.0 + np.exp(-logits.numpy().astype("float64"))))
        taken = state.y_tilde.numpy() > 0
        step = model.step_log_probs(logits, state, h).numpy()
        assert np.all(np.isneginf(step[taken]))
        np.testing.assert_allclose(step[~taken], expected[~taken], rtol=1e-5, atol=1e-6)
        state = model.advance(state, h, c, logits, tf.constant(chosen))
    assert state.y_tilde.numpy().sum() == 2 * B


@pytest.mark.parametrize("case", [dict(decoder="residual", stage2_loss="pla"),
                                  dict(mode="frequency_first")])
def test_softmax_steps_leave_the_rest_of_their_mass_to_stop(case):
    model = make_model(**case)
    context, state = model.start(features())
    logits, _, h, _ = model.step(context, state)
    label_probs = np.exp(model.step_log_probs(logits, state, h).numpy())
    stop = tf.nn.softmax(model.step_choices(logits, state, h)).numpy()[:, -1]
    np.testing.assert_allclose(label_probs.sum(-1) + stop, 1.0, rtol=1e-5)
    assert np.all(stop > 0) and np.all(label_probs.sum(-1) < 1.0)
    # With every label chosen only "stop" is left: -inf for every label, never NaN.
    full = model.step_log_probs(logits, state._replace(y_tilde=tf.ones_like(state.y_tilde)), h)
    assert np.all(np.isneginf(full.numpy()))
    with pytest.raises(ValueError, match="h_t"):
        model.step_log_probs(logits, state)
    assert any("stop_logit" in v.path for v in model.decoder_variables)


def test_feature_standardisation_is_adapted_once_and_saved():
    model = make_model(decoder="residual")
    x = features(batch=16)
    assert model.needs_adapting
    model.adapt([x])
    assert not model.needs_adapting
    standardized = model.standardizer(x).numpy().reshape(-1, K)
    np.testing.assert_allclose(standardized.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(standardized.std(0), 1.0, atol=1e-2)
    clone = make_model(decoder="residual")
    clone.set_weights(model.get_weights())
    assert not clone.needs_adapting


def test_a_model_restored_before_it_was_built_decodes_with_its_standardizer(tmp_path):
    """The usual restore pattern (a model from its config, a checkpoint restored into it
    unbuilt, then decoding) must standardize the features as the saved model did."""
    from ofrnn_tf.decoding.beam_search import beam_search

    model = make_model(decoder="residual")
    x = features(batch=8)
    model.adapt([x * 3.0 + 1.0])
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    restored = OrderFreeRNN.from_config(model.get_config())
    status = tf.train.Checkpoint(model=restored).restore(path)
    want = beam_search(model, x, beam_size=2, max_steps=3)
    got = beam_search(restored, x, beam_size=2, max_steps=3)
    status.assert_consumed()
    assert restored.built and not restored.needs_adapting
    for key in ("labels", "v_prob", "log_prob"):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-6)
    assert restored(x).shape == (8, C)  # and it can still be called


def test_the_inference_module_refuses_a_model_that_is_not_built(tiny_backbone):
    from ofrnn_tf.inference import InferenceModule
    from ofrnn_tf.labels import LabelMap

    with pytest.raises(ValueError, match="the model is not built: call it"):
        InferenceModule(OrderFreeRNN(num_classes=C), tiny_backbone,
                        LabelMap([f"c{i}" for i in range(C)]), tau=0.5, beam_size=2,
                        max_steps=3)


@pytest.mark.parametrize("decoder", ["paper", "residual"])
def test_the_decoder_starts_from_tanh_dense_of_the_mean_read_vector(decoder):
    # h_0, c_0 = tanh(W mean_i v_i + b), over what the decoder reads: the feature maps, or
    # the spatial head's per-position features for the residual decoder.
    tf.random.set_seed(3)
    kwargs = dict(head="spatial", head_units=6) if decoder == "residual" else {}
    model = OrderFreeRNN(num_classes=5, lstm_units=8, attention_units=8, fc_units=8,
                         decoder=decoder, standardize=False, **kwargs)
    model.build((None, 9, 4))
    x = tf.random.stateless_normal([3, 9, 4], seed=[4, 5])
    _, state = model.start(x)
    read = model.head_outputs(x)[0].numpy() if decoder == "residual" else x.numpy()
    pooled = read.mean(axis=1)
    for dense, got in ((model.init_h, state.h), (model.init_c, state.c)):
        kernel, bias = (w.numpy() for w in dense.weights)
        np.testing.assert_allclose(got.numpy(), np.tanh(pooled @ kernel + bias), atol=1e-5)
