"""τ calibration: grid search over one τ = 0 decoding pass of the validation set."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from ofrnn_tf.decoding.beam_search import (
    labels_to_multi_hot, make_decoder, mix_scores, select_baseline)
from ofrnn_tf.decoding.calibration import (
    calibrate_decoding, calibrate_from_outputs, calibrate_outputs, choose_score_mix,
    decode_all_steps, default_grid, objective_value, predictions_at)
from ofrnn_tf.metrics import label_set_metrics, mean_average_precision
from ofrnn_tf.modeling.model import OrderFreeRNN

C, M, K_FEAT = 4, 3, 5


def recorded_outputs():
    """Two images whose best path per step is known; τ in (0.3, 0.6) gets both exactly right."""
    lp = np.log
    return {
        "step_labels": np.array([[[0, -1, -1], [0, 1, -1], [0, 1, 2]],
                                 [[2, -1, -1], [2, 0, -1], [2, 0, 3]]], np.int32),
        "step_log_prob": np.array([[lp(0.9), lp(0.6), lp(0.2)],
                                   [lp(0.8), lp(0.3), lp(0.1)]], np.float32),
        "path_scores": np.full((2, C), 0.5, np.float32),
        "v_prob": np.full((2, C), 0.5, np.float32),
        "y_true": np.array([[1, 1, 0, 0], [0, 0, 1, 0]], np.float32),
    }


def test_grid_search_finds_the_known_best_threshold():
    outputs = recorded_outputs()
    grid = [0.0, 0.1, 0.25, 0.35, 0.5, 0.55, 0.7, 0.95]
    best, table = calibrate_from_outputs(outputs, grid=grid)
    assert best == 0.35  # the smallest τ of the perfect plateau (0.3, 0.6)
    values = dict(table)
    perfect = objective_value(label_set_metrics(outputs["y_true"], outputs["y_true"]), "mean_f1")
    assert values[0.35] == values[0.5] == values[0.55] == perfect
    assert max(values[0.0], values[0.25], values[0.7]) < perfect
    # τ = 0.95: min_labels keeps one label per image.
    assert values[0.95] == objective_value(
        label_set_metrics(outputs["y_true"], [[1, 0, 0, 0], [0, 0, 1, 0]]), "mean_f1")
    best0, table0 = calibrate_from_outputs(outputs, grid=[0.95], min_labels=0)
    assert table0[0][1] == 0.0  # no label predicted at all


def test_ties_equal_in_exact_arithmetic_go_to_the_smallest_tau():
    # τ = 0: 6 of 12 predicted right, recall 1; τ = 0.075: 5 of 9 right, recall 5/6.
    # Both O-F1 are 2/3 exactly, computed from different counts.
    outputs = {"y_true": np.array([[0, 0, 1], [0, 1, 0], [1, 0, 1], [0, 1, 1]], np.float32),
               "v_prob": np.array([[.05, .9, .25], [.7, .1, .2], [.55, .95, .2],
                                   [.05, .15, .05]], np.float32)}
    best, table = calibrate_from_outputs(outputs, min_labels=0, objective="o_f1",
                                         grid=[0.0, 0.075])
    assert [round(v, 9) for _, v in table] == [round(200 / 3, 9)] * 2
    assert best == 0.0


def _random_outputs(mode: str, seed: int, n: int = 200, c: int = 6, t: int = 4) -> dict:
    """Made-up validation outputs of either mode, with tied scores and ended paths."""
    rng = np.random.default_rng(seed)
    outputs = {"y_true": (rng.random((n, c)) < 0.3).astype(np.float32),
               "v_prob": rng.random((n, c)).astype(np.float32)}
    outputs["v_prob"][:20] = 1.0  # saturated: equal scores, ranked by class index
    # Scores on the grid itself (a logit of 0, an underflowed sigmoid, a grid value):
    # a τ takes a class whose score equals it.
    outputs["v_prob"][20:80:3, :2] = 0.5
    outputs["v_prob"][21:80:3, 2:4] = 0.0
    outputs["v_prob"][22:80:3, 4:] = np.float32(default_grid()[30])
    if mode == "decoder":
        labels = np.full((n, t, t), -1, np.int32)
        for i in range(n):
            order = rng.permutation(c)[:t]
            for step in range(t):
                labels[i, step, :step + 1] = order[:step + 1]
        log_prob = np.cumsum(np.log(rng.uniform(0.05, 1.0, (n, t))), axis=1).astype(np.float32)
        log_prob[rng.random(n) < 0.2, 2:] = -np.inf  # paths that ended before T
        outputs.update(step_labels=labels, step_log_prob=log_prob,
                       path_scores=rng.random((n, c)).astype(np.float32))
    return outputs


@pytest.mark.parametrize("mode", ["decoder", "baseline"])
@pytest.mark.parametrize("min_labels", [0, 1, 2])
def test_the_threshold_search_scores_each_tau_as_predictions_at_labels_there(mode, min_labels):
    """The search reads each τ's label sets its own way (without the ranking scores, the
    baseline's top classes found once, the true sets checked once): every value of its
    table is still the objective of the label sets `predictions_at` gives at that τ."""
    outputs = _random_outputs(mode, seed=min_labels)
    _, table = calibrate_from_outputs(outputs, min_labels=min_labels)
    assert len(table) == len(default_grid())
    for tau, value in table:
        y_pred, _ = predictions_at(outputs, tau, min_labels)
        assert value == objective_value(label_set_metrics(outputs["y_true"], y_pred),
                                        "mean_f1"), tau


def test_a_true_set_that_is_not_0_and_1_is_named_before_the_search():
    outputs = dict(recorded_outputs(), y_true=np.array([[1, 2, 0, 0], [0, 0, 1, 0]]))
    with pytest.raises(ValueError, match=r"^y_true \(shape \(2, 4\)\) must hold only 0 "
                                         r"and 1; 1 entries do not, first at \[0, 1\] = 2"):
        calibrate_from_outputs(outputs)


def test_objectives_differ_and_are_validated():
    outputs = recorded_outputs()
    outputs["y_true"] = np.array([[1, 1, 1, 0], [0, 0, 1, 1]], np.float32)
    grid = [0.0, 0.15, 0.5, 0.95]
    for objective in ("mean_f1", "c_f1", "o_f1"):
        best, table = calibrate_from_outputs(outputs, grid=grid, objective=objective)
        assert dict(table)[best] == max(v for _, v in table)
    assert calibrate_from_outputs(outputs, grid=grid, objective="o_f1")[0] == 0.0
    with pytest.raises(ValueError, match="objective"):
        calibrate_from_outputs(outputs, objective="f1")
    with pytest.raises(ValueError, match=r"grid\[1\]"):
        calibrate_from_outputs(outputs, grid=[0.1, 1.5])
    assert [t for t, _ in calibrate_from_outputs(outputs, grid=[0.0, 1.0])[1]] == [0.0, 1.0]
    del outputs["y_true"]
    with pytest.raises(ValueError, match="y_true"):
        calibrate_from_outputs(outputs)


def test_each_objective_reads_its_own_metric():
    metrics = {"C-F1": 60.0, "O-F1": 80.0}
    assert objective_value(metrics, "c_f1") == 60.0
    assert objective_value(metrics, "o_f1") == 80.0
    assert objective_value(metrics, "mean_f1") == 70.0


def test_score_mix_ties_go_to_m_maps_own_scores():
    """Scores that rank as M_map's do tie at every weight: the weight is 1, so the served
    scores are M_map's."""
    outputs = recorded_outputs()
    mix, table = choose_score_mix(dict(outputs, path_scores=outputs["v_prob"]))
    assert len({round(v, 9) for _, v in table}) == 1 and mix == 1.0


def test_score_mix_ranks_validation_at_least_as_well_as_m_map():
    rng = np.random.default_rng(4)
    y = (rng.random((200, C)) < 0.4).astype(np.float32)
    noisy = np.clip(y * 0.3 + rng.random((200, C)) * 0.7, 0, 1).astype(np.float32)  # overlapping
    outputs = dict(recorded_outputs(), y_true=y, v_prob=noisy,
                   step_labels=np.zeros((200, 3, 3), np.int32),
                   step_log_prob=np.zeros((200, 3), np.float32))
    # A decoder that ranks perfectly gets all the weight; one that ranks at random none.
    mix, table = choose_score_mix(dict(outputs, path_scores=y * 0.9 + 0.05))
    assert dict(table)[mix] == 100.0 > dict(table)[1.0] and mix < 1.0
    mix, table = choose_score_mix(dict(outputs, path_scores=rng.random((200, C), np.float32)))
    assert mix == 1.0 and dict(table)[1.0] == mean_average_precision(y, noisy)
    # Whatever the decoder's scores, the chosen mix is never below M_map on this split.
    for seed in range(3):
        scores = np.clip(noisy + np.random.default_rng(seed).normal(0, 0.3, noisy.shape), 0, 1)
        mix, _ = choose_score_mix(dict(outputs, path_scores=scores.astype(np.float32)))
        _, mixed = predictions_at(dict(outputs, path_scores=scores.astype(np.float32)), 0.5,
                                  score_mix=mix)
        assert mean_average_precision(y, mixed) >= mean_average_precision(y, noisy)


def test_the_score_mix_table_holds_the_map_its_weight_is_then_evaluated_at():
    """The weights are tried on float32 mixes, as evaluation and serving mix: where a
    float64 mix would break a tie the other way, the table would promise a mAP the chosen
    weight does not get (here below M_map's own)."""
    y = np.array([[0], [0], [1]], np.float32)
    v_prob = np.array([[1.0], [1 / 3], [2 / 3]], np.float32)
    outputs = dict(y_true=y, v_prob=v_prob,
                   path_scores=np.array([[1 / 3], [1.0], [2 / 3]], np.float32),
                   step_labels=-np.ones((3, 1, 1), np.int32),
                   step_log_prob=np.zeros((3, 1), np.float32))
    mix, table = choose_score_mix(outputs)
    for weight, value in table:
        assert value == mean_average_precision(y, predictions_at(outputs, 0.0,
                                                                 score_mix=weight)[1])
    assert dict(table)[mix] >= mean_average_precision(y, v_prob)


def test_default_grid():
    grid = default_grid()
    assert grid[0] == 0.0 and grid.max() <= 0.95 and np.isclose(grid[1], 1e-4)
    assert (np.diff(grid) > 0).all() and 0.5 in np.round(grid, 6)


def _model_and_data(mode: str):
    keras.utils.set_random_seed(0)
    model = OrderFreeRNN(num_classes=C, variant=mode, lstm_units=8, attention_units=8, fc_units=8,
                         head="mean_linear", decoder="paper", standardize=False)
    model.build((None, M, K_FEAT))
    if model.uses_decoder:
        model.cell.fc2.kernel.assign(model.cell.fc2.kernel * 10.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, M, K_FEAT)).astype(np.float32)
    y = (rng.random((20, C)) < 0.5).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices({"features": x, "labels": y}).batch(8)
    return model, x, y, data


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["order_free", "baseline"])
def test_calibrated_threshold_reproduces_its_score_when_decoding(mode):
    model, x, y, data = _model_and_data(mode)
    grid = [0.0, 0.01, 0.05, 0.2, 0.4, 0.5, 0.6, 0.8, 0.95]
    chosen = calibrate_decoding(model, data, beam_size=2, max_steps=3, grid=grid,
                                progress=False)
    best, table = chosen.tau, chosen.tau_grid
    # The ranking scores' weight comes from the same pass.
    outputs = decode_all_steps(model, data, beam_size=2, max_steps=3, progress=False)
    assert (chosen.score_mix, chosen.score_mix_grid) == choose_score_mix(outputs)
    assert [t for t, _ in table] == grid
    assert dict(table)[best] == max(v for _, v in table)
    assert len({round(v, 6) for _, v in table}) > 1, "τ made no difference on this data"
    # Decoding afresh at each τ scores exactly what the grid search reported.
    for tau, value in table:
        out = make_decoder(model, beam_size=2, max_steps=3, threshold=tau)(tf.constant(x))
        if model.uses_decoder:
            y_pred = labels_to_multi_hot(out["labels"].numpy(), C)
        else:
            y_pred = select_baseline(out["v_prob"].numpy(), tau)
            np.testing.assert_array_equal(labels_to_multi_hot(out["labels"].numpy(), C), y_pred)
        assert math.isclose(objective_value(label_set_metrics(y, y_pred), "mean_f1"), value,
                            rel_tol=1e-9), f"τ={tau}"


@pytest.mark.parametrize("objective", ["c_f1", "o_f1", "mean_f1"])
def test_stage_2_validation_scores_the_objective_asked_for_and_ranks_by_the_mixed_scores(
        objective):
    """The score that picks stage 2's best epoch is the calibration objective's, and its
    mAP ranks by the scores the export serves (M_map's mixed with the decoder's)."""
    from ofrnn_tf.config.experiment import DecodingConfig
    from ofrnn_tf.evaluation.evaluate import metrics_at, validate

    model, _, y, data = _model_and_data("order_free")
    decoding = DecodingConfig(beam_size=2, calibration_objective=objective)
    metrics = validate(model, data, 2, decoding, max_steps=3)
    assert metrics["C-F1"] != metrics["O-F1"]  # else the objectives could not be told apart
    assert metrics["score"] == objective_value(metrics, objective)
    outputs = decode_all_steps(model, data, beam_size=2, max_steps=3, progress=False)
    chosen = calibrate_outputs(outputs, objective=objective)
    assert (metrics["tau"], metrics["score_mix"]) == (chosen.tau, chosen.score_mix)
    _, scores = predictions_at(outputs, chosen.tau, 1, chosen.score_mix)
    assert metrics["mAP"] == mean_average_precision(y, scores)
    # The test metrics rank by the same mix, at any weight given.
    mixed = mix_scores(outputs["v_prob"], outputs["path_scores"], np.float32(0.3))
    assert mean_average_precision(y, mixed) != mean_average_precision(y, outputs["v_prob"])
    assert metrics_at(outputs, chosen.tau, score_mix=0.3)["mAP"] == pytest.approx(
        mean_average_precision(y, mixed), abs=1e-9)


def test_validation_keeps_no_attention_maps(monkeypatch):
    """No metric reads the attention maps: validation (as calibration and the test pass,
    through `decode_all_steps`) keeps none, which would grow with images × T_max ×
    positions; a decoder made for predictions still gives them."""
    from ofrnn_tf.config.experiment import DecodingConfig
    from ofrnn_tf.decoding import calibration
    from ofrnn_tf.evaluation.evaluate import validate

    model, x, _, data = _model_and_data("order_free")
    kept, decode_dataset = [], calibration.decode_dataset
    monkeypatch.setattr(calibration, "decode_dataset",
                        lambda *args, **kwargs: kept.append(decode_dataset(*args, **kwargs))
                        or kept[-1])
    validate(model, data, 2, DecodingConfig(beam_size=2), max_steps=3)
    assert len(kept) == 1 and "attention" not in kept[0] and "step_labels" in kept[0]
    assert "attention" in make_decoder(model, beam_size=2, max_steps=3)(tf.constant(x))
    baseline, _, _, data = _model_and_data("baseline")  # its zeros are left out too
    assert "attention" not in decode_all_steps(baseline, data, beam_size=2, max_steps=3,
                                               progress=False)


def test_repeated_decoding_passes_trace_the_decoder_once():
    # Validation decodes after every epoch: a decoder made afresh each time traced again,
    # and TensorFlow warned of retracing after five.
    from ofrnn_tf.decoding import calibration

    model, _, _, data = _model_and_data("order_free")
    first = calibration.decode_all_steps(model, data, beam_size=2, max_steps=3, progress=False)
    decoder = next(iter(calibration._LAST_DECODER.values()))
    for _ in range(5):
        again = calibration.decode_all_steps(model, data, beam_size=2, max_steps=3,
                                             progress=False)
    np.testing.assert_array_equal(again["step_labels"], first["step_labels"])
    assert decoder.experimental_get_tracing_count() == 1
    calibration.decode_all_steps(model, data, beam_size=3, max_steps=3, progress=False)
    assert list(calibration._LAST_DECODER.values()) != [decoder]  # other settings, another decoder
    assert len(calibration._LAST_DECODER) == 1


def test_the_baseline_ranks_by_m_maps_scores_alone():
    # No decoder scores: the mix recorded (calibration.json, the export) is v_prob's, 1.
    outputs = {"y_true": np.array([[1, 0], [0, 1], [1, 1]]),
               "v_prob": np.array([[0.9, 0.2], [0.1, 0.7], [0.6, 0.8]], np.float32)}
    mix, table = choose_score_mix(outputs)
    assert mix == 1.0 and table == [(1.0, pytest.approx(100.0))]
    assert calibrate_outputs(outputs).score_mix == 1.0
