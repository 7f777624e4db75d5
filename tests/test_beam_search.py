"""Beam search (paper Eq. 11, docs/model.md) against plain-Python greedy and exhaustive
references."""

import functools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from ofrnn_tf.decoding.beam_search import (
    _log_threshold_tensor, baseline_decode, beam_search, beam_size_problem, decode_dataset,
    greedy_decode, labels_to_multi_hot, log_threshold, make_decoder, select_baseline,
    select_for_threshold)
from ofrnn_tf.decoding.calibration import default_grid
from ofrnn_tf.modeling.model import OrderFreeRNN, fixed_label_order

C, M, K_FEAT = 5, 4, 6
NUM_IMAGES = 5
FLOAT_KEYS = ("log_prob", "scores", "attention", "v_prob")


def make_model(mode: str = "order_free", seed: int = 0, decoder: str = "paper",
               loss: str = "bce") -> OrderFreeRNN:
    keras.utils.set_random_seed(seed)
    parts = (dict(head="mean_linear", decoder="paper", standardize=False) if decoder == "paper"
             else dict(head="spatial", decoder="residual", head_units=8))
    model = OrderFreeRNN(num_classes=C, variant=mode, lstm_units=8, attention_units=8, fc_units=8,
                         stage2_loss=loss, label_order=fixed_label_order([5, 3, 8, 1, 2], mode),
                         **parts)
    model.build((None, M, K_FEAT))
    if model.uses_decoder:  # random weights give step probabilities near 0.5: sharpen them
        kernel = model.cell.fc2.kernel
        kernel.assign(kernel * 10.0 if decoder == "paper" else
                      np.random.default_rng(seed).normal(0, 2.0, kernel.shape).astype("float32"))
    return model


def make_features(n: int = NUM_IMAGES, seed: int = 1) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).normal(size=(n, M, K_FEAT)), tf.float32)


_MODELS = {}
# (mode, decoder, stage-2 loss) of the models the references check.
CASES = {"order_free": ("order_free", "paper", "bce"), "no_attention": ("no_attention", "paper", "bce"),
         "frequency_first": ("frequency_first", "paper", "bce"),
         "residual": ("order_free", "residual", "bce"), "pla": ("order_free", "residual", "pla"),
         "baseline": ("baseline", "paper", "bce")}


def model_for(case: str) -> OrderFreeRNN:
    if case not in _MODELS:
        mode, decoder, loss = CASES[case]
        _MODELS[case] = make_model(mode, decoder=decoder, loss=loss)
    return _MODELS[case]


def to_numpy(outputs):
    return {k: np.asarray(v) for k, v in outputs.items()}


def _step_one(model, context, state):
    logits, alpha, h, c = model.step(context, state)
    step_lp = model.step_log_probs(logits, state, h).numpy()[0]
    probs = np.exp(step_lp) if model.softmax_steps else tf.sigmoid(logits).numpy()[0]
    return logits, alpha.numpy()[0], h, c, step_lp, probs


def greedy_reference(model, x, max_steps, tau, min_labels):
    """One image, a Python loop over steps: the best label at every step, T_max steps; the
    answer is the longest admissible prefix, the scores those of the whole path."""
    log_tau = -math.inf if tau == 0 else math.log(tau)
    context, state = model.start(x)
    labels, lps, scores, attention = [], [], np.zeros(C), []
    lp = 0.0
    for t in range(max_steps):
        logits, alpha, h, c, step_lp, probs = _step_one(model, context, state)
        best = int(np.argmax(step_lp))
        if not np.isfinite(step_lp[best]):
            break
        lp += float(step_lp[best])
        labels.append(best)
        lps.append(lp)
        scores = np.maximum(scores, probs)
        attention.append(alpha)
        state = model.advance(state, h, c, logits, tf.constant([best]))
    n = sum(1 for t, v in enumerate(lps) if t < min_labels or v >= log_tau)
    return labels[:n], (lps[n - 1] if n else 0.0), scores, attention[:n]


def enumerate_paths(model, x, max_steps):
    """Every label sequence without repetition up to max_steps, model called on one image."""
    context, state = model.start(x)
    paths = []

    def visit(state, labels, lp, scores, attention):
        if len(labels) == max_steps:
            return
        logits, alpha, h, c, step_lp, probs = _step_one(model, context, state)
        for label in range(C):
            if not np.isfinite(step_lp[label]):
                continue
            path = (labels + [label], lp + float(step_lp[label]), np.maximum(scores, probs),
                    attention + [alpha])
            paths.append(path)
            visit(model.advance(state, h, c, logits, tf.constant([label])), *path)

    visit(state, [], 0.0, np.zeros(C), [])
    return paths, state.v_pred.numpy()[0]


def exhaustive_reference(paths, v_prob, tau, min_labels, max_steps=None):
    """The decoding rule: the longest admissible length, then the best path of it; the
    scores are those of the best path of full length."""
    log_tau = -math.inf if tau == 0 else math.log(tau)
    full = max((p for p in paths if len(p[0]) == max_steps), key=lambda p: p[1],
               default=None) if max_steps else None
    scores = full[2] if full is not None else v_prob
    admissible = [p for p in paths if len(p[0]) <= min_labels or p[1] >= log_tau]
    if not admissible:
        return [], 0.0, scores, []
    longest = max(len(p[0]) for p in admissible)
    labels, lp, _, attention = max((p for p in admissible if len(p[0]) == longest),
                                   key=lambda p: p[1])
    return labels, lp, scores, attention


def python_beam_search(model, x, beam_size, max_steps, tau, min_labels):
    """Beam search for one image as plain Python: beams are objects, every successor of
    every beam is scored with its own `model.step` call, ties keep generation order. τ
    prunes as the search goes (where the batched decoder searches without it and picks
    the last admissible step afterwards): past `min_labels`, a successor below τ leaves
    the candidates, the search ends at the first step with none left, and the labels are
    the best beam of the last step reached. The scores are those of the best beam of a
    search without τ, at T_max steps."""
    log_tau = -math.inf if tau == 0 else math.log(tau)
    context, state = model.start(x)
    beams = [{"labels": [], "lp": 0.0, "state": state, "scores": np.zeros(C), "attention": []}]
    chosen = {"labels": [], "lp": 0.0, "attention": [], "scores": np.zeros(C)}
    for t in range(max_steps):
        candidates = []
        for beam in beams:
            logits, alpha, h, c, step_lp, probs = _step_one(model, context, beam["state"])
            for label in range(C):
                lp = beam["lp"] + float(step_lp[label])
                if np.isfinite(step_lp[label]) and (t < min_labels or lp >= log_tau):
                    candidates.append((beam, label, lp, logits, h, c, alpha, probs))
        if not candidates:
            break
        candidates.sort(key=lambda cand: -cand[2])  # stable: generation order breaks ties
        beams = [{"labels": beam["labels"] + [label], "lp": lp,
                  "state": model.advance(beam["state"], h, c, logits, tf.constant([label])),
                  "scores": np.maximum(beam["scores"], probs),
                  "attention": beam["attention"] + [alpha]}
                 for beam, label, lp, logits, h, c, alpha, probs in candidates[:beam_size]]
        chosen = beams[0]
    scores = (chosen["scores"] if tau == 0 else
              python_beam_search(model, x, beam_size, max_steps, 0.0, 0)[2])
    return chosen["labels"], chosen["lp"], scores, chosen["attention"]


def assert_matches(out, i, reference, max_steps):
    labels, lp, scores, attention = reference
    n = len(labels)
    assert out["num_labels"][i] == n
    np.testing.assert_array_equal(out["labels"][i], labels + [-1] * (max_steps - n))
    np.testing.assert_allclose(out["log_prob"][i], lp, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["scores"][i], scores, rtol=1e-4, atol=1e-5)
    if n:
        np.testing.assert_allclose(out["attention"][i, :n], np.stack(attention), atol=1e-5)
    np.testing.assert_array_equal(out["attention"][i, n:], 0.0)


def taus_between(log_probs, count=5):
    """Thresholds in the middle of gaps between path probabilities (no borderline case)."""
    values = np.unique(np.round(np.asarray(log_probs), 4))
    picks = np.linspace(0, len(values) - 2, count).astype(int)
    return [0.0] + [float(np.exp(0.5 * (values[j] + values[j + 1]))) for j in picks] + [1.0]


@pytest.mark.parametrize("case", ["order_free", "no_attention", "frequency_first", "residual",
                                  "pla"])
def test_k1_equals_python_greedy(case):
    model = model_for(case)
    x = make_features()
    for tau, min_labels in ((0.0, 1), (0.6, 1), (0.3, 2), (0.9, 0)):
        out = to_numpy(greedy_decode(model, x, max_steps=3, threshold=tau, min_labels=min_labels))
        for i in range(x.shape[0]):
            assert_matches(out, i, greedy_reference(model, x[i:i + 1], 3, tau, min_labels), 3)


@pytest.mark.parametrize("case", ["order_free", "frequency_first", "residual"])
def test_large_beam_equals_exhaustive_search(case):
    model = model_for(case)
    x = make_features(4)
    max_steps = 3
    enumerated = [enumerate_paths(model, x[i:i + 1], max_steps) for i in range(4)]
    taus = taus_between([p[1] for paths, _ in enumerated for p in paths])
    lengths = set()
    for tau in taus:
        for min_labels in (0, 1):
            # K at full width: every ordering of max_steps of the C labels stays a beam.
            full_width = math.perm(C, max_steps)
            out = to_numpy(beam_search(model, x, beam_size=full_width, max_steps=max_steps,
                                       threshold=tau, min_labels=min_labels))
            for i, (paths, v_prob) in enumerate(enumerated):
                assert_matches(out, i, exhaustive_reference(paths, v_prob, tau, min_labels,
                                                            max_steps), max_steps)
            lengths.update(out["num_labels"].tolist())
    assert len(lengths) >= 3, f"the τ values did not change the path lengths: {lengths}"


@pytest.mark.parametrize("case", ["order_free", "no_attention", "residual"])
@pytest.mark.parametrize("batch", [1, 3])
def test_beam_shaped_step_equals_step_on_repeated_context(case, batch):
    """`step(..., beam_size=K)` reads each image's context once; same as repeating it K times."""
    model = model_for(case)
    beams = 4
    context, state = model.start(make_features(batch, seed=21))
    rng = np.random.default_rng(2)
    repeat = lambda x: tf.repeat(x, beams, axis=0)
    # Beams of one image differ in h, c, ỹ and v_pred, as they do after step 1.
    tiled = state._replace(
        h=repeat(state.h) + tf.constant(rng.normal(size=(batch * beams, 8)), tf.float32),
        c=repeat(state.c) + tf.constant(rng.normal(size=(batch * beams, 8)), tf.float32),
        y_tilde=tf.constant(rng.random((batch * beams, C)) < 0.3, tf.float32),
        v_pred=tf.constant(rng.random((batch * beams, C)), tf.float32))
    per_image = {k: v for k, v in context.items() if k != "weights"}  # "weights": shared
    repeated = dict(tf.nest.map_structure(repeat, per_image), **{
        k: v for k, v in context.items() if k == "weights"})
    expected = model.step(repeated, tiled)
    got = model.step(context, tiled, beam_size=beams)
    for name, want, have in zip(("logits", "attention", "h", "c"), expected, got):
        assert have.shape == want.shape, name
        np.testing.assert_allclose(have.numpy(), want.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["order_free", "frequency_first", "residual", "pla"])
@pytest.mark.parametrize("beam_size", [2, 3])
def test_pruned_beam_equals_plain_python_beam_search(case, beam_size):
    """K smaller than the number of paths: the batched search keeps the same K beams as a
    plain-Python search over beam objects, and its rule (the last admissible step, picked
    after a search without τ) gives what pruning by τ during the search gives."""
    model = model_for(case)
    x = make_features(4, seed=31)
    max_steps = 3
    recorded = to_numpy(beam_search(model, x, beam_size=beam_size, max_steps=max_steps,
                                    all_steps=True))
    taus = taus_between(recorded["step_log_prob"][np.isfinite(recorded["step_log_prob"])], 3)
    for tau in taus:
        for min_labels in (0, 1):
            out = to_numpy(beam_search(model, x, beam_size=beam_size, max_steps=max_steps,
                                       threshold=tau, min_labels=min_labels))
            for i in range(x.shape[0]):
                assert_matches(out, i, python_beam_search(model, x[i:i + 1], beam_size,
                                                          max_steps, tau, min_labels), max_steps)


def test_pruning_changes_the_answer_somewhere():
    """The K=2 search is not the exhaustive one: the pruned-beam test can tell them apart."""
    model = model_for("order_free")
    x = make_features(12, seed=33)
    pruned = to_numpy(beam_search(model, x, beam_size=2, max_steps=3))
    full = to_numpy(beam_search(model, x, beam_size=math.perm(C, 3), max_steps=3))
    assert (pruned["log_prob"] < full["log_prob"] - 1e-6).any()


def test_one_step_beam_search_is_the_most_probable_label():
    model = model_for("order_free")
    x = make_features(4, seed=23)
    out = to_numpy(beam_search(model, x, beam_size=3, max_steps=1, threshold=0.0))
    for i in range(x.shape[0]):
        assert_matches(out, i, greedy_reference(model, x[i:i + 1], 1, 0.0, 1), 1)


@pytest.mark.slow
def test_threshold_selection_equals_decoding_at_that_threshold():
    model = model_for("order_free")
    x = make_features(8, seed=3)
    for beam_size in (1, 3):
        recorded = to_numpy(beam_search(model, x, beam_size=beam_size, max_steps=4,
                                        threshold=0.0, all_steps=True))
        for tau in taus_between(recorded["step_log_prob"][np.isfinite(recorded["step_log_prob"])]):
            for min_labels in (0, 1, 2):
                direct = to_numpy(beam_search(model, x, beam_size=beam_size, max_steps=4,
                                              threshold=tau, min_labels=min_labels))
                selected = select_for_threshold(recorded, tau, min_labels)
                for key in ("labels", "num_labels"):
                    np.testing.assert_array_equal(selected[key], direct[key], err_msg=f"{key} τ={tau}")
                for key in ("log_prob", "scores"):
                    np.testing.assert_allclose(selected[key], direct[key], rtol=1e-5, atol=1e-6)


def exact_threshold(log_prob: np.float32):
    """A τ whose `log_threshold` is `log_prob` to the bit, or None."""
    tau = np.float32(np.exp(np.float64(log_prob)))
    for _ in range(4):
        got = log_threshold(float(tau))
        if got == log_prob:
            return float(tau)
        tau = np.nextafter(tau, np.float32(np.inf if got < log_prob else 0.0))
    return None


def test_a_threshold_equal_to_a_paths_probability_keeps_that_path():
    """τ is "at least": a path whose probability is τ exactly is kept, by the graph and by
    the selection from a recorded pass alike."""
    model = model_for("order_free")
    x = make_features(8, seed=3)
    recorded = to_numpy(beam_search(model, x, beam_size=2, max_steps=4, threshold=0.0,
                                    all_steps=True))
    tried = 0
    for image, step in zip(*np.nonzero(np.isfinite(recorded["step_log_prob"]))):
        tau = exact_threshold(recorded["step_log_prob"][image, step])
        if tau is None or tried == 3:
            continue
        tried += 1
        selected = select_for_threshold(recorded, tau, 0)
        # τ as a number, and as a tensor (the SavedModel's variable, a request's input).
        for threshold in (tau, tf.constant(tau, tf.float32)):
            direct = to_numpy(beam_search(model, x, beam_size=2, max_steps=4,
                                          threshold=threshold, min_labels=0))
            np.testing.assert_array_equal(selected["num_labels"], direct["num_labels"])
            np.testing.assert_array_equal(selected["labels"], direct["labels"])
            assert direct["num_labels"][image] >= step + 1
    assert tried == 3


def test_log_tau_is_the_same_float32_for_a_number_and_a_tensor():
    """Float32 logs of NumPy and TensorFlow differ in the last bit for some τ of the
    calibration grid; the graph and the selection must compare against the same value."""
    taus = np.concatenate([default_grid(), np.random.default_rng(0).uniform(0, 1, 2000)])
    as_tensor = _log_threshold_tensor(tf.constant(taus, tf.float32)).numpy()
    as_number = np.array([log_threshold(float(t)) for t in taus])
    np.testing.assert_array_equal(as_tensor, as_number)


def test_result_does_not_depend_on_batch_composition():
    model = model_for("order_free")
    x = make_features(6, seed=5)
    decode = make_decoder(model, beam_size=3, max_steps=3, threshold=0.5, feature_shape=(M, K_FEAT))
    together = to_numpy(decode(x))
    shuffled = to_numpy(decode(tf.gather(x, [4, 1, 5, 0, 3, 2])))
    for pos, i in enumerate([4, 1, 5, 0, 3, 2]):
        alone = to_numpy(decode(x[i:i + 1]))
        for other, row in ((together, i), (shuffled, pos)):
            np.testing.assert_array_equal(alone["labels"][0], other["labels"][row])
            assert alone["num_labels"][0] == other["num_labels"][row]
            for key in FLOAT_KEYS:
                np.testing.assert_allclose(alone[key][0], other[key][row], rtol=1e-5, atol=1e-6)
    assert decode.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("case", ["order_free", "no_attention", "frequency_first", "pla"])
def test_padding_min_labels_and_no_nan(case):
    model = model_for(case)
    x = make_features(4, seed=7)
    # max_steps = C: the last step's pool holds one label (a softmax over it and "stop"
    # must not leak NaN); a longer path than C labels cannot be.
    with pytest.raises(ValueError, match=f"max_steps={C + 1} exceeds num_classes={C}"):
        beam_search(model, x, beam_size=3, max_steps=C + 1)
    with pytest.raises(ValueError, match="min_labels=4 cannot hold: .* max_steps=3 labels"):
        beam_search(model, x, beam_size=3, max_steps=3, min_labels=4)
    for tau, min_labels, max_steps in ((1.0, 1, 3), (1.0, 2, 3), (0.0, 1, C), (0.5, 0, 4)):
        out = to_numpy(beam_search(model, x, beam_size=3, max_steps=max_steps, threshold=tau,
                                   min_labels=min_labels))
        assert out["labels"].shape == (4, max_steps) and out["labels"].dtype == np.int32
        assert out["attention"].shape == (4, max_steps, M)
        for key in FLOAT_KEYS:
            assert np.isfinite(out[key]).all(), key
        for i, n in enumerate(out["num_labels"]):
            assert min_labels <= n <= min(max_steps, C)
            row = out["labels"][i]
            assert (row[n:] == -1).all() and (row[:n] >= 0).all()
            assert len(set(row[:n].tolist())) == n
            np.testing.assert_allclose(out["attention"][i, :n].sum(-1), 1.0, rtol=1e-5)
            assert (out["attention"][i, n:] == 0).all()
            assert out["log_prob"][i] <= 0
            assert ((out["scores"][i] >= 0) & (out["scores"][i] <= 1)).all()
        if tau == 0.0 and max_steps == C:
            assert (out["num_labels"] == C).all()


def test_baseline_thresholds_v_prob():
    model = model_for("baseline")
    x = make_features(6, seed=9)
    v_prob = tf.sigmoid(model(x)).numpy()
    for tau, min_labels in ((None, 1), (0.5, 0), (0.45, 2), (1.0, 1)):
        decode = make_decoder(model, max_steps=3, threshold=tau, min_labels=min_labels)
        out = to_numpy(decode(x))
        expected = select_baseline(v_prob, 0.5 if tau is None else tau, min_labels)
        np.testing.assert_array_equal(labels_to_multi_hot(out["labels"], C), expected)
        np.testing.assert_allclose(out["scores"], v_prob, rtol=1e-6)
        for i, n in enumerate(out["num_labels"]):
            chosen = out["labels"][i, :n]
            assert (out["labels"][i, n:] == -1).all() and n >= min_labels
            assert (np.diff(v_prob[i, chosen]) <= 0).all()  # most probable first
            # The path's log-probability is the chosen labels' alone.
            assert out["log_prob"][i] == pytest.approx(np.log(v_prob[i, chosen]).sum(),
                                                       rel=1e-5, abs=1e-6)
        assert out["attention"].shape == (6, 3, M)
    # A class whose v_prob is τ exactly is kept ("at least τ"), in the graph and in numpy.
    scores = out["scores"]  # v_prob as the graph computes it
    tau = float(scores[2, 1])
    out = to_numpy(make_decoder(model, max_steps=3, threshold=tau, min_labels=0)(x))
    assert 1 in out["labels"][2] and select_baseline(scores, tau, 0)[2, 1] == 1


def test_baseline_log_prob_stays_finite_where_v_prob_rounds_to_zero():
    """τ = 0 keeps every class, one of logit -200 too (v_prob 0 in float32): the path's
    log-probability is still the sum of log-sigmoids, finite, as the beam search's is."""
    model = model_for("baseline")
    x = make_features(2, seed=9)
    logits = model(x).numpy() - np.eye(C)[0] * 200.0

    class FarClassZero:  # M_map with class 0's logit moved to about -200
        num_classes = C

        def __call__(self, features, training=False):
            return model(features, training=training) - tf.one_hot(0, C) * 200.0

    out = to_numpy(baseline_decode(FarClassZero(), x, max_steps=3, threshold=0.0,
                                   min_labels=0))
    assert (out["num_labels"] == C).all() and (out["scores"][:, 0] == 0.0).all()
    expected = -np.logaddexp(0.0, -logits).sum(-1)
    np.testing.assert_allclose(out["log_prob"], expected, rtol=1e-5)


def test_xla_matches_graph():
    model = model_for("order_free")
    x = make_features(4, seed=11)
    kwargs = dict(beam_size=3, max_steps=3, threshold=0.4, all_steps=True)
    plain = to_numpy(make_decoder(model, **kwargs)(x))
    xla = to_numpy(make_decoder(model, jit_compile=True, **kwargs)(x))
    assert plain.keys() == xla.keys()
    for key in plain:
        if plain[key].dtype.kind == "f":
            np.testing.assert_allclose(xla[key], plain[key], rtol=1e-4, atol=1e-5, err_msg=key)
        else:
            np.testing.assert_array_equal(xla[key], plain[key], err_msg=key)


def test_decode_dataset_concatenates_batches():
    model = model_for("order_free")
    x = make_features(7, seed=13).numpy()
    y = (np.random.default_rng(0).random((7, C)) < 0.4).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices({
        "features": x.astype(np.float16), "labels": y, "label_areas": y * 0.1,
        "image_id": np.arange(7, dtype=np.int64) + 100}).batch(3)
    decode = make_decoder(model, beam_size=2, max_steps=3, threshold=0.3)
    out = decode_dataset(decode, data, progress=False)
    direct = to_numpy(decode(tf.cast(tf.cast(x, tf.float16), tf.float32)))
    np.testing.assert_array_equal(out["labels"], direct["labels"])
    np.testing.assert_array_equal(out["y_true"], y)
    np.testing.assert_array_equal(out["image_ids"], np.arange(7) + 100)
    assert out["label_areas"].shape == (7, C)


def test_bad_arguments_are_named():
    model = model_for("order_free")
    x = make_features(2)
    with pytest.raises(ValueError, match="threshold"):
        beam_search(model, x, max_steps=3, threshold=1.5)
    with pytest.raises(ValueError, match="min_labels"):
        beam_search(model, x, max_steps=2, min_labels=3)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, x, max_steps=2, beam_size=0)
    with pytest.raises(ValueError, match="features"):
        beam_search(model, tf.zeros([2, M]), max_steps=2)
    # A 20-digit width overflowed the graph; any beam past the C·(C−1)·… paths stays empty.
    with pytest.raises(ValueError, match=rf"^beam_size={C * (C - 1) + 1} is wider than the "
                                         rf"{C * (C - 1)} distinct label paths of T_max = 2 "
                                         rf"labels from C = {C} classes .*; use at most "
                                         rf"{C * (C - 1)}$"):
        beam_search(model, x, max_steps=2, beam_size=C * (C - 1) + 1)
    with pytest.raises(ValueError, match=r"^beam_size=100000000000000000000 is wider than"):
        beam_search(model, x, max_steps=C, beam_size=10**20)
    assert beam_size_problem(1001, 80, 4).startswith("is above 1000, the widest beam decoded")
    assert beam_size_problem(1000, 80, 4) is None
    assert beam_size_problem(3, 2, 1) is None  # the default width runs on any data
    with pytest.raises(ValueError, match=r"labels\[0, 1\]"):
        labels_to_multi_hot(np.array([[0, 7]]), C)
    with pytest.raises(ValueError, match=rf"labels\[0, 0\] = {C}"):
        labels_to_multi_hot(np.array([[C]]), C)
    with pytest.raises(ValueError, match="all_steps"):
        select_for_threshold({"labels": np.zeros((1, 2))}, 0.5)
    unbuilt = OrderFreeRNN(num_classes=C, lstm_units=8, attention_units=8, fc_units=8)
    with pytest.raises(ValueError, match="not built"):
        make_decoder(unbuilt, max_steps=2)


@pytest.mark.parametrize("weight", [-0.1, 2.0, float("nan")])
def test_a_score_mix_outside_0_1_is_refused_as_the_inference_module_refuses_it(weight):
    model = model_for("order_free")
    x = make_features(2)
    message = (r"^score_mix is the weight of M_map's scores and must be in \[0, 1\]; "
               rf"got {weight}$")
    for decode in (functools.partial(beam_search, model, x, beam_size=2),
                   functools.partial(greedy_decode, model, x),
                   functools.partial(make_decoder, model)):
        with pytest.raises(ValueError, match=message):
            decode(max_steps=2, score_mix=weight)
    # A tensor (a SavedModel's variable) is read at run time, not checked here.
    scores = beam_search(model, x, max_steps=2, score_mix=tf.constant(0.5))["scores"]
    assert scores.shape == (2, C)

def test_numpy_integer_sizes_decode_as_python_ints_do():
    model = model_for("order_free")
    x = make_features(2)
    t_max = np.array([[1, 0, 1], [1, 1, 1]]).sum(axis=1).max()  # numpy.int64
    from_numpy = beam_search(model, x, max_steps=t_max, beam_size=np.int64(2),
                             min_labels=np.int64(1))
    from_int = beam_search(model, x, max_steps=3, beam_size=2, min_labels=1)
    np.testing.assert_array_equal(from_numpy["labels"], from_int["labels"])
    decode = make_decoder(model, max_steps=t_max, beam_size=np.int64(2), threshold=0.3)
    assert decode(x)["labels"].shape == (2, 3)


def test_numpy_features_decode_as_tensors_do():
    model = model_for("order_free")
    x = make_features(2)
    from_numpy = beam_search(model, x.numpy(), max_steps=3)
    np.testing.assert_array_equal(from_numpy["labels"], beam_search(model, x, max_steps=3)["labels"])


@pytest.mark.parametrize("shape", [(2, 2, 2, K_FEAT), (2, K_FEAT)], ids=["unflattened_maps", "pooled"])
def test_the_model_refuses_features_that_are_not_b_m_k(shape):
    # Broadcasting let [B, H, W, k] through as logits of shape [B, H, C].
    model = model_for("order_free")
    with pytest.raises(ValueError, match=r"features must be \[batch, m, k\]: the backbone's"):
        model(tf.zeros(shape))


def test_exhaustive_reference_rule_sanity():
    """The reference itself: longest admissible length wins over a better shorter path."""
    paths = [([0], math.log(0.9), None, []), ([1], math.log(0.8), None, []),
             ([1, 0], math.log(0.5), None, []), ([0, 1], math.log(0.4), None, [])]
    assert exhaustive_reference(paths, None, 0.45, 1)[0] == [1, 0]
    assert exhaustive_reference(paths, None, 0.6, 1)[0] == [0]
    assert exhaustive_reference(paths, None, 0.95, 0)[0] == []
    assert exhaustive_reference(paths, None, 0.95, 2)[0] == [1, 0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["order_free", "frequency_first", "no_attention", "residual"])
def test_unrolled_steps_equal_the_loop(mode):
    model = model_for(mode)
    x = make_features()
    for tau, min_labels in ((0.0, 1), (0.3, 1), (0.9, 0)):
        kwargs = dict(beam_size=3, max_steps=3, threshold=tau, min_labels=min_labels)
        looped = to_numpy(tf.function(lambda f: beam_search(model, f, **kwargs))(x))
        unrolled = to_numpy(tf.function(lambda f: beam_search(model, f, unroll=True, **kwargs))(x))
        for key in looped:
            np.testing.assert_allclose(unrolled[key], looped[key], rtol=1e-6, atol=1e-7,
                                       err_msg=f"{mode} τ={tau} {key}")


@pytest.mark.parametrize("case", list(CASES))
def test_step_probabilities_carried_with_the_beams_equal_the_replayed_ones(case):
    """Each returned label's probability at its step, tracked through the search, is the
    one replaying the decoder along the returned path gives, and they multiply to the
    path's probability."""
    from ofrnn_tf.decoding.beam_search import path_step_probabilities

    model = model_for(case)
    x = make_features(6, seed=11)
    for beam_size, unroll, tau in ((1, False, 0.3), (3, True, 0.3), (3, False, 0.0)):
        out = to_numpy(beam_search(model, x, beam_size=beam_size, max_steps=3, threshold=tau,
                                   unroll=unroll, step_probabilities=True))
        replayed = path_step_probabilities(model, x, out["labels"]).numpy()
        np.testing.assert_allclose(out["step_probabilities"], replayed, atol=1e-5)
        if case != "baseline":
            counts = out["num_labels"]
            assert all((out["step_probabilities"][i, n:] == 0).all() for i, n in enumerate(counts))
            logs = np.log(np.where(out["step_probabilities"] > 0, out["step_probabilities"], 1))
            np.testing.assert_allclose(logs.sum(1), out["log_prob"], atol=1e-4)


def test_without_a_threshold_every_path_runs_to_max_steps():
    # beam_search's default τ is 0: nothing stops a path before T_max.
    tf.random.set_seed(0)
    model = OrderFreeRNN(num_classes=5, lstm_units=8, attention_units=8, fc_units=8)
    model.build((None, 49, 16))
    x = tf.random.normal([4, 49, 16], seed=1)
    out = beam_search(model, x, beam_size=2, max_steps=4)
    np.testing.assert_array_equal(out["num_labels"].numpy(), [4, 4, 4, 4])
    assert (out["labels"].numpy() >= 0).all()
