"""Tests for ofrnn_tf.evaluation.metrics (hand-computed cases)."""

import math

import numpy as np
import pytest

from ofrnn_tf import metrics as M

# Shared hand case: 4 images, 4 classes.
#   class 0: true in images 0,1,3; predicted in 0,2,3  -> Nc=2 Np=3 Ng=3  P=2/3 R=2/3
#   class 1: true in images 1,2;   predicted in 1      -> Nc=1 Np=1 Ng=2  P=1   R=1/2
#   class 2: never true;           predicted in 0      -> Nc=0 Np=1 Ng=0  P=0   R=(excluded)
#   class 3: true in image 1;      never predicted     -> Nc=0 Np=0 Ng=1  P=0   R=0
Y_TRUE = np.array([[1, 0, 0, 0],
                   [1, 1, 0, 1],
                   [0, 1, 0, 0],
                   [1, 0, 0, 0]])
Y_PRED = np.array([[1, 0, 1, 0],
                   [0, 1, 0, 0],
                   [1, 0, 0, 0],
                   [1, 0, 0, 0]])


def test_counts_of_hand_case():
    nc, np_, ng = M.class_counts(Y_TRUE, Y_PRED)
    assert nc.tolist() == [2, 1, 0, 0]
    assert np_.tolist() == [3, 1, 1, 0]
    assert ng.tolist() == [3, 2, 0, 1]


def test_label_set_metrics_hand_case():
    m = M.label_set_metrics(Y_TRUE, Y_PRED)
    # C-P over all 4 classes, never-predicted class 3 counts as 0:
    #   (2/3 + 1 + 0 + 0) / 4 = 5/12
    cp = 5 / 12
    # C-R over the 3 classes with positives (class 2 excluded): (2/3 + 1/2 + 0) / 3 = 7/18
    cr = 7 / 18
    # C-F1 = 2*(5/12)*(7/18) / (5/12 + 7/18) = (35/108) / (29/36) = 35/87
    assert m["C-P"] == pytest.approx(100 * cp)
    assert m["C-R"] == pytest.approx(100 * cr)
    assert m["C-F1"] == pytest.approx(100 * 35 / 87)
    # O-P = ΣNc/ΣNp = 3/5, O-R = ΣNc/ΣNg = 3/6, O-F1 = 2*.6*.5/1.1 = 6/11
    assert m["O-P"] == pytest.approx(60.0)
    assert m["O-R"] == pytest.approx(50.0)
    assert m["O-F1"] == pytest.approx(100 * 6 / 11)
    assert list(m) == list(M.LABEL_SET_KEYS)


def test_never_predicted_class_has_precision_zero_and_counts_in_cp():
    # Class 0 perfect, class 1 (true in image 1) never predicted.
    # C-P = (1 + 0)/2 = 50, not 100 (which dropping class 1 would give).
    y = np.array([[1, 0], [0, 1]])
    p = np.array([[1, 0], [0, 0]])
    m = M.label_set_metrics(y, p)
    assert m["C-P"] == pytest.approx(50.0)
    assert m["C-R"] == pytest.approx(50.0)  # (1 + 0)/2
    assert m["O-P"] == pytest.approx(100.0)  # 1/1


def test_class_without_positives_is_excluded_from_cr_only():
    # Class 1 has no positive and is never predicted; class 0 is perfect.
    # C-R = 1 (class 1 excluded); C-P = (1 + 0)/2 = 0.5 (every class counts).
    y = np.array([[1, 0], [1, 0], [0, 0]])
    m = M.label_set_metrics(y, y)
    assert m["C-R"] == pytest.approx(100.0)
    assert m["C-P"] == pytest.approx(50.0)
    # C-F1 = 2*0.5*1/1.5 = 2/3
    assert m["C-F1"] == pytest.approx(100 * 2 / 3)
    assert m["O-P"] == m["O-R"] == m["O-F1"] == pytest.approx(100.0)


def test_perfect_predictions_give_100():
    rng = np.random.default_rng(0)
    y = (rng.random((20, 5)) < 0.4).astype(int)
    y[0] = 1  # every class has a positive and a prediction
    m = M.label_set_metrics(y, y)
    for key in M.LABEL_SET_KEYS:
        assert m[key] == pytest.approx(100.0), key


@pytest.mark.parametrize("truth", ["some", "none"])
def test_empty_predictions_give_zero_not_nan(truth):
    y = np.zeros((3, 4), int)
    if truth == "some":
        y[0, 1] = y[2, 3] = 1
    m = M.label_set_metrics(y, np.zeros_like(y))
    for key, value in m.items():
        assert not math.isnan(value), key
        assert value == 0.0, key


def test_cf1_is_harmonic_mean_of_means_not_mean_of_f1():
    # class 0: Nc=1 Np=1 Ng=1 -> P=1 R=1 F1=1
    # class 1: Nc=1 Np=1 Ng=4 -> P=1 R=1/4 F1=2*.25/1.25=0.4
    # mean of per-class F1 = 0.7
    # CP = 1, CR = (1 + 0.25)/2 = 0.625, C-F1 = 2*0.625/1.625 = 10/13 ≈ 0.769
    y = np.array([[1, 1], [0, 1], [0, 1], [0, 1]])
    p = np.array([[1, 1], [0, 0], [0, 0], [0, 0]])
    m = M.label_set_metrics(y, p)
    assert m["C-P"] == pytest.approx(100.0)
    assert m["C-R"] == pytest.approx(62.5)
    assert m["C-F1"] == pytest.approx(100 * 10 / 13)
    assert m["C-F1"] != pytest.approx(70.0, abs=1.0)


def test_bool_and_float_inputs_are_accepted():
    m_int = M.label_set_metrics(Y_TRUE, Y_PRED)
    m_mixed = M.label_set_metrics(Y_TRUE.astype(bool), Y_PRED.astype(np.float32))
    assert m_int == m_mixed


# -- top-k ---------------------------------------------------------------------------
def test_top_k_predictions_with_ties_to_lower_index():
    scores = np.array([[0.1, 0.5, 0.5, 0.5, 0.2],   # three-way tie -> 1, 2, 3
                       [0.3, 0.3, 0.3, 0.3, 0.9],   # 4, then lowest tied 0, 1
                       [-2., -1., 0.0, 5.0, 4.0]])  # 3, 4, 2
    top = M.top_k_predictions(scores, k=3)
    assert top.tolist() == [[0, 1, 1, 1, 0],
                            [1, 1, 0, 0, 1],
                            [0, 0, 1, 1, 1]]
    # ML-GCN variant: drop top-3 classes with a negative logit.
    top0 = M.top_k_predictions(scores[2:], k=3, min_score=0.0)
    assert top0.tolist() == [[0, 0, 1, 1, 1]]
    top1 = M.top_k_predictions(scores[2:], k=3, min_score=1.0)
    assert top1.tolist() == [[0, 0, 0, 1, 1]]
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="min_score"):
            M.top_k_metrics(np.ones_like(scores), scores, k=3, min_score=bad)


def test_top_k_metrics_hand_case():
    # 2 images, 4 classes, k=2.
    # image 0: truth {0}, top-2 of scores = {0, 1}
    # image 1: truth {2, 3}, top-2 = {2, 1}
    # Nc = [1, 0, 1, 0], Np = [1, 2, 1, 0], Ng = [1, 0, 1, 1]
    # C-P = (1 + 0 + 1 + 0)/4 = 0.5; C-R over classes 0,2,3 = (1 + 1 + 0)/3 = 2/3
    # O-P = 2/4, O-R = 2/3
    y = np.array([[1, 0, 0, 0], [0, 0, 1, 1]])
    s = np.array([[0.9, 0.8, 0.1, 0.0], [0.1, 0.7, 0.8, 0.2]])
    m = M.top_k_metrics(y, s, k=2)
    assert set(m) == {"C-P@2", "C-R@2", "C-F1@2", "O-P@2", "O-R@2", "O-F1@2"}
    assert m["C-P@2"] == pytest.approx(50.0)
    assert m["C-R@2"] == pytest.approx(100 * 2 / 3)
    assert m["O-P@2"] == pytest.approx(50.0)
    assert m["O-R@2"] == pytest.approx(100 * 2 / 3)
    # F1 = 2*(1/2)*(2/3)/(1/2+2/3) = (2/3)/(7/6) = 4/7
    assert m["C-F1@2"] == pytest.approx(100 * 4 / 7)


def test_top_k_rejects_bad_k():
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 3\]"):
        M.top_k_predictions(np.zeros((2, 3)), k=4)
    with pytest.raises(ValueError, match="k must be"):
        M.top_k_predictions(np.zeros((2, 3)), k=0)


# -- AP / mAP ------------------------------------------------------------------------
def test_average_precision_by_hand():
    # ranks 1..5 labels 1,0,1,0,1: precision at positives 1/1, 2/3, 3/5
    # AP = (1 + 2/3 + 3/5)/3 = (15 + 10 + 9)/45 = 34/45
    scores = np.array([0.5, 0.9, 0.6, 0.8, 0.7])  # shuffled: rank order is 1,3,4,2,0
    labels = np.array([1, 1, 0, 0, 1])
    assert M.average_precision(labels, scores) == pytest.approx(34 / 45)


def test_average_precision_ties_keep_index_order():
    # Sorted stably by -score: image 2 (0.9), image 0 (0.5), image 1 (0.5).
    # The positive (image 1) is at rank 3 -> AP = 1/3 (not 1/2).
    assert M.average_precision([0, 1, 0], [0.5, 0.5, 0.9]) == pytest.approx(1 / 3)
    # Same scores with the positive first among the tie -> rank 2 -> AP = 1/2.
    assert M.average_precision([1, 0, 0], [0.5, 0.5, 0.9]) == pytest.approx(1 / 2)


def test_average_precision_extremes():
    assert M.average_precision([1, 1, 0], [0.9, 0.8, 0.1]) == pytest.approx(1.0)
    # 1 positive at the bottom of 4: 1/4
    assert M.average_precision([0, 0, 0, 1], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.25)
    assert M.average_precision([0, 0], [0.3, 0.1]) == 0.0


def _brute_force_ap(labels, scores):
    """AP by definition: rank(i) = 1 + #{j: s_j > s_i or (s_j == s_i and j < i)}."""
    n = len(labels)
    rank = [1 + sum(1 for j in range(n)
                    if scores[j] > scores[i] or (scores[j] == scores[i] and j < i))
            for i in range(n)]
    positives = [i for i in range(n) if labels[i] == 1]
    if not positives:
        return 0.0
    total = 0.0
    for i in positives:
        hits_above = sum(1 for j in positives if rank[j] <= rank[i])
        total += hits_above / rank[i]
    return total / len(positives)


def test_average_precision_matches_brute_force_on_random_data():
    rng = np.random.default_rng(123)
    for trial in range(40):
        n = int(rng.integers(1, 30))
        labels = (rng.random(n) < rng.uniform(0.1, 0.7)).astype(int)
        # Few distinct values so ties are frequent.
        scores = rng.integers(0, 6, n).astype(float) if trial % 2 else rng.normal(size=n)
        assert M.average_precision(labels, scores) == pytest.approx(
            _brute_force_ap(labels.tolist(), scores.tolist())), trial


def test_per_class_ap_matches_single_class_ap():
    rng = np.random.default_rng(7)
    y = (rng.random((25, 6)) < 0.3).astype(int)
    y[:, 4] = 0
    s = rng.integers(0, 4, (25, 6)).astype(float)
    per_class = M.per_class_average_precision(y, s)
    for j in range(6):
        if j == 4:
            assert math.isnan(per_class[j])
        else:
            assert per_class[j] == pytest.approx(M.average_precision(y[:, j], s[:, j]))


def test_map_skips_class_without_positives():
    # class 0: labels [1,0,1] scores [.9,.8,.1] -> ranks 1,3 -> (1 + 2/3)/2 = 5/6
    # class 1: labels [0,0,0] -> skipped (would pull the mean down if counted as 0)
    # class 2: labels [0,1,0] scores [.2,.5,.4] -> rank 1 -> 1
    # mAP = (5/6 + 1)/2 = 11/12
    y = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0]])
    s = np.array([[0.9, 0.3, 0.2], [0.8, 0.2, 0.5], [0.1, 0.1, 0.4]])
    assert M.mean_average_precision(y, s) == pytest.approx(100 * 11 / 12)


def test_map_with_no_positive_at_all_is_zero():
    assert M.mean_average_precision(np.zeros((2, 3)), np.ones((2, 3))) == 0.0


# -- size-split AP -------------------------------------------------------------------
SIZE_Y = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1]])
SIZE_S = np.array([[0.9, 0.2], [0.8, 0.7], [0.3, 0.1], [0.5, 0.6], [0.1, 0.3]])
SIZE_A = np.array([[0.05, -1], [0.5, -1], [0.02, -1], [-1, 0.4], [0.3, 0.6]])


def test_size_split_ap_by_hand():
    # small_area = 0.1
    # class 0 small: negatives {3, 4} + small positives {0 (.05), 2 (.02)}
    #   ranked: img0 .9 (+), img3 .5, img2 .3 (+), img4 .1 -> (1/1 + 2/3)/2 = 5/6
    # class 0 large: negatives {3, 4} + positive {1 (.5)}: img1 .8 first -> 1
    # class 1: no small positive (skipped for AP-small);
    #   large: all images: img1 .7, img3 .6 (+), img4 .3 (+), img0 .2, img2 .1
    #   -> (1/2 + 2/3)/2 = 7/12
    # AP-small = 5/6; AP-large = (1 + 7/12)/2 = 19/24
    # (negatives' areas, e.g. image 4 class 0 = 0.3 or -1, are ignored)
    r = M.size_split_average_precision(SIZE_Y, SIZE_S, SIZE_A, small_area=0.1)
    assert set(r) == {"AP-small", "AP-large"}
    assert r["AP-small"] == pytest.approx(100 * 5 / 6)
    assert r["AP-large"] == pytest.approx(100 * 19 / 24)


def test_a_size_without_any_object_has_no_ap_not_a_zero_one():
    # Every positive small: AP-large has no object to rank (it read 0.0, "misses them all").
    r = M.size_split_average_precision(SIZE_Y, SIZE_S, np.where(SIZE_Y > 0, 0.01, -1),
                                       small_area=0.1)
    assert r["AP-large"] is None and r["AP-small"] > 0
    assert "n/a" in M.format_table({"run": r})


def test_size_split_threshold_is_inclusive_for_large():
    # small_area = 0.4: class 1 image 3 has area exactly 0.4 -> large, so class 1 still
    # has no small positive. Class 0: small = {0, 2} (5/6 as above), large = {1} (1).
    # Class 1 large = {3, 4} -> 7/12 as above.
    r = M.size_split_average_precision(SIZE_Y, SIZE_S, SIZE_A, small_area=0.4)
    assert r["AP-small"] == pytest.approx(100 * 5 / 6)
    assert r["AP-large"] == pytest.approx(100 * 19 / 24)
    # small_area = 0.45: image 3 (0.4) becomes small for class 1.
    #   class 1 small: negatives {0,1,2} + {3}: img1 .7, img3 .6 (+) -> 1/2
    #   class 1 large: negatives + {4}: img1 .7, img4 .3 (+) -> 1/2
    r = M.size_split_average_precision(SIZE_Y, SIZE_S, SIZE_A, small_area=0.45)
    assert r["AP-small"] == pytest.approx(100 * (5 / 6 + 1 / 2) / 2)
    assert r["AP-large"] == pytest.approx(100 * (1 + 1 / 2) / 2)


def test_size_split_object_at_the_threshold_is_large_after_float32_storage():
    # Areas travel as float32 (TFRecords); (10/100)^2 = 0.010000000000000002 in float64
    # rounds down to 0.0099999998 in float32. An object whose area is the threshold
    # exactly stays large, as the rule says, not small by a rounding.
    threshold = (10 / 100) ** 2
    stored = np.float32(threshold)
    assert float(stored) < threshold
    areas = SIZE_A.astype(np.float32).copy()
    areas[3, 1] = stored
    at = M.size_split_average_precision(SIZE_Y, SIZE_S, areas, small_area=threshold)
    above = M.size_split_average_precision(SIZE_Y, SIZE_S, np.where(areas == stored, 0.5, areas),
                                           small_area=threshold)
    assert at == above


def test_size_split_rejects_unknown_areas_with_count():
    areas = SIZE_A.copy()
    areas[0, 0] = -1
    areas[4, 1] = -1
    with pytest.raises(ValueError, match=r"label_areas: 2 positive labels .* unknown.*image 0, class 0"):
        M.size_split_average_precision(SIZE_Y, SIZE_S, areas, small_area=0.1)


def test_size_split_rejects_pixel_areas_and_bad_threshold():
    with pytest.raises(ValueError, match="not pixels"):
        M.size_split_average_precision(SIZE_Y, SIZE_S, SIZE_A * 1000, small_area=0.1)
    # Areas in percent (0 to 100) are not fractions either, nor is one area of 1.5.
    with pytest.raises(ValueError, match=r"^label_areas: 5 positive labels have an area above 1, "
                                         r"first at image 0, class 0 = .*not pixels$"):
        M.size_split_average_precision(SIZE_Y, SIZE_S, SIZE_A * 100, small_area=0.1)
    one_above = SIZE_A.copy()
    one_above[4, 1] = 1.5
    with pytest.raises(ValueError, match=r"^label_areas: 1 positive labels have an area above 1, "
                                         r"first at image 4, class 1 = 1\.5; .*not pixels$"):
        M.size_split_average_precision(SIZE_Y, SIZE_S, one_above, small_area=0.1)
    barely_above = SIZE_A.copy()
    barely_above[4, 1] = 1.0005  # a box rounded past the image border: within the tolerance
    M.size_split_average_precision(SIZE_Y, SIZE_S, barely_above, small_area=0.1)
    with pytest.raises(ValueError, match="small_area"):
        M.size_split_average_precision(SIZE_Y, SIZE_S, SIZE_A, small_area=0.0)
    with pytest.raises(ValueError, match="label_areas has shape"):
        M.size_split_average_precision(SIZE_Y, SIZE_S, SIZE_A[:, :1], small_area=0.1)


# -- evaluate_all / format_table -----------------------------------------------------
def test_evaluate_all_combines_everything():
    # Two classes, so the top-k variant is top-2.
    p = np.array([[1, 0], [0, 0], [1, 1], [0, 1], [0, 0]])
    r = M.evaluate_all(SIZE_Y, p, SIZE_S, label_areas=SIZE_A, small_area=0.1, k=2)
    expected = dict(M.label_set_metrics(SIZE_Y, p))
    expected.update(M.top_k_metrics(SIZE_Y, SIZE_S, k=2))
    expected["mAP"] = M.mean_average_precision(SIZE_Y, SIZE_S)
    expected["AP-small"] = 100 * 5 / 6   # hand value from test_size_split_ap_by_hand
    expected["AP-large"] = 100 * 19 / 24
    assert list(r) == list(expected)
    for key, value in expected.items():
        assert r[key] == pytest.approx(value), key
    # With k=2 of 2 classes every class is predicted: O-R@2 = 100.
    assert r["O-R@2"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 2\]"):
        M.evaluate_all(SIZE_Y, p, SIZE_S)


def test_evaluate_all_keys_and_values():
    rng = np.random.default_rng(3)
    y = (rng.random((12, 5)) < 0.4).astype(int)
    s = rng.random((12, 5))
    p = (s > 0.5).astype(int)
    r = M.evaluate_all(y, p, s)
    assert list(r) == list(M.LABEL_SET_KEYS) + [f"{k}@3" for k in M.LABEL_SET_KEYS] + ["mAP"]
    assert r["mAP"] == pytest.approx(M.mean_average_precision(y, s))
    assert r["O-F1@3"] == pytest.approx(M.top_k_metrics(y, s, k=3)["O-F1@3"])
    assert all(0.0 <= v <= 100.0 for v in r.values())
    with pytest.raises(ValueError, match="together"):
        M.evaluate_all(y, p, s, label_areas=np.zeros_like(s))


def test_format_table():
    rows = {"baseline": {"C-F1": 55.555, "O-F1": 60.0, "epochs": 3},
            "order|free": {"C-F1": 61.04, "mAP": 70.25}}
    table = M.format_table(rows)
    assert table.splitlines() == [
        "| run | C-F1 | O-F1 | epochs | mAP |",
        "|:---|---:|---:|---:|---:|",
        "| baseline | 55.6 | 60.0 | 3 | n/a |",
        "| order\\|free | 61.0 | n/a | n/a | 70.2 |",
    ]
    chosen = M.format_table(rows, columns=["mAP", "C-F1"], name_header="model")
    assert chosen.splitlines()[0] == "| model | mAP | C-F1 |"
    assert chosen.splitlines()[3] == "| order\\|free | 70.2 | 61.0 |"
    with pytest.raises(ValueError, match="at least one row"):
        M.format_table({})


# -- validation ----------------------------------------------------------------------
def test_shape_errors_name_argument_and_shape():
    with pytest.raises(ValueError, match=r"y_pred has shape \(4, 3\) but y_true has shape \(4, 4\)"):
        M.label_set_metrics(Y_TRUE, Y_PRED[:, :3])
    with pytest.raises(ValueError, match=r"y_true must be 2-D \[N, C\]; got shape \(4,\)"):
        M.label_set_metrics(Y_TRUE[:, 0], Y_PRED[:, 0])
    with pytest.raises(ValueError, match=r"scores has shape \(4, 2\)"):
        M.mean_average_precision(Y_TRUE, np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"scores_k has shape \(3,\) but y_true_k has shape \(2,\)"):
        M.average_precision([1, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"y_true is empty: shape \(0, 4\)"):
        M.label_set_metrics(np.zeros((0, 4)), np.zeros((0, 4)))


def test_value_errors_name_argument_and_index():
    bad = Y_TRUE.copy().astype(np.float64)
    for value in (2, 0.5, np.nan):  # a soft label or a NaN is no 0 either
        bad[2, 1] = value
        with pytest.raises(ValueError, match=r"y_true \(shape \(4, 4\)\) must hold only 0 and 1; 1 entries do not, first at \[2, 1\]"):
            M.label_set_metrics(bad, Y_PRED)
        with pytest.raises(ValueError, match=r"y_pred .* first at \[2, 1\]"):
            M.label_set_metrics(Y_TRUE, bad)
    scores = np.zeros((4, 4))
    scores[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"scores .* must be finite; 1 entries do not, first at \[1, 3\]"):
        M.mean_average_precision(Y_TRUE, scores)
    with pytest.raises(ValueError, match="dtype"):
        M.label_set_metrics(np.array([["a"]]), np.array([[1]]))


def test_baseline_at_fixed_half_forces_no_label(monkeypatch):
    """The fixed 0.5 rule names no class where none reaches 0.5; the calibrated rule,
    with `min_labels=1`, still names each image's best class."""
    from types import SimpleNamespace

    from ofrnn_tf.evaluation import evaluate as E
    v_prob = np.array([[0.30, 0.10, 0.05], [0.20, 0.60, 0.10]], np.float32)
    y_true = np.array([[1, 0, 0], [0, 1, 1]])
    monkeypatch.setattr(E, "decode_all_steps",
                        lambda *a, **k: {"v_prob": v_prob, "y_true": y_true})
    result = E.evaluate(SimpleNamespace(uses_decoder=False), None, tau=0.5, beam_size=1,
                        max_steps=3, min_labels=1, progress=False)
    assert result["mean_labels_predicted"] == 1.0
    fixed = result[E.FIXED_THRESHOLD_KEY]
    assert fixed["mean_labels_predicted"] == 0.5
    assert fixed["O-P"] == pytest.approx(100.0) and fixed["O-R"] == pytest.approx(100 / 3)


def test_the_classes_a_split_lacks_are_named_by_index(monkeypatch):
    """A split with no positive of a class caps C-P (the convention): the metrics say
    which classes, once (not again under the fixed-threshold baseline's)."""
    from types import SimpleNamespace

    from ofrnn_tf.evaluation import evaluate as E
    y_true = np.array([[1, 0, 0, 0], [0, 1, 0, 0]])
    monkeypatch.setattr(E, "decode_all_steps", lambda *a, **k: {
        "v_prob": y_true.astype(np.float32) * 0.9, "y_true": y_true})
    result = E.evaluate(SimpleNamespace(uses_decoder=False), None, tau=0.5, beam_size=1,
                        max_steps=2, min_labels=1, progress=False)
    assert result[E.ABSENT_CLASSES_KEY] == [2, 3]
    assert result["C-P"] == pytest.approx(50.0) and result["C-R"] == pytest.approx(100.0)
    assert E.ABSENT_CLASSES_KEY not in result[E.FIXED_THRESHOLD_KEY]
    y_true[0, 2] = y_true[1, 3] = 1
    assert E.ABSENT_CLASSES_KEY not in E.evaluate(
        SimpleNamespace(uses_decoder=False), None, tau=0.5, beam_size=1, max_steps=2,
        min_labels=1, progress=False)


@pytest.mark.parametrize("unknown", [-1.0, np.nan])
def test_metrics_leave_out_the_size_split_when_a_positive_has_an_unknown_area(unknown):
    from ofrnn_tf.evaluation import evaluate as E
    areas = np.where(SIZE_A < 0, 0.2, SIZE_A)
    outputs = {"v_prob": SIZE_S.astype(np.float32), "y_true": SIZE_Y, "label_areas": areas}
    assert "AP-small" in E.metrics_at(outputs, 0.5, small_area=0.1)
    areas[3, 1] = unknown
    assert "AP-small" not in E.metrics_at(outputs, 0.5, small_area=0.1)


def test_a_positive_with_a_nan_area_is_refused_as_an_unknown_one():
    # NaN < small_area is False: taken as known, it would count as a large object.
    y = np.array([[1, 0], [0, 1], [1, 1]])
    s = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6]])
    areas = np.array([[np.nan, -1.0], [-1.0, 0.5], [0.02, 0.3]])
    with pytest.raises(ValueError, match=r"unknown object area.*image 0, class 0"):
        M.size_split_average_precision(y, s, areas, small_area=0.1)
