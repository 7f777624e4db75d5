"""benchmarks/decision_rules.py: thresholds on per-class scores, against hand-computed
cases."""

import numpy as np
import pytest

from benchmarks.decision_rules import at_thresholds, example_f1, per_class_thresholds

SCORES = np.array([[0.9, 0.2, 0.6],
                   [0.1, 0.3, 0.2],
                   [0.5, 0.8, 0.7]])


def test_one_threshold_keeps_the_best_class_of_an_image_below_it():
    assert at_thresholds(SCORES, 0.55).tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 1]]
    assert at_thresholds(SCORES, 0.55, min_labels=2).tolist() == [
        [1, 0, 1], [0, 1, 1], [0, 1, 1]]


def test_a_threshold_per_class():
    # Image 0 reaches no threshold and keeps its best class (0) all the same.
    assert at_thresholds(SCORES, [0.95, 0.25, 0.65]).tolist() == [
        [1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_per_class_thresholds_maximise_each_class_f1():
    y_true = np.array([[1, 0, 1],
                       [0, 1, 0],
                       [1, 1, 0]])
    grid = np.array([0.0, 0.15, 0.25, 0.4, 0.65, 0.75, 0.85])
    chosen = per_class_thresholds(y_true, SCORES, grid)
    # Class 0, positives scored 0.9 and 0.5, the negative 0.1: 0.15 and 0.4 keep both
    # positives only (F1 1.0); ties go to the smaller.
    # Class 1, positives 0.3 and 0.8, negative 0.2: 0.25 (F1 1.0).
    # Class 2, positive 0.6, negatives 0.2 and 0.7: 0.25 keeps 0.6 and 0.7 (F1 2/3), 0.0
    # all three (F1 1/2), 0.65 only 0.7 (F1 0); so 0.25.
    assert chosen.tolist() == pytest.approx([0.15, 0.25, 0.25])


def test_a_class_that_no_threshold_finds_is_never_predicted():
    y_true = np.array([[1, 0], [0, 0]])
    scores = np.array([[0.9, 0.3], [0.2, 0.5]])
    grid = np.array([0.0, 0.4, 0.6])
    # Class 1 has no positive, so its F1 is 0 at every threshold: it gets the largest,
    # not the smallest, which would predict it for every image.
    assert per_class_thresholds(y_true, scores, grid).tolist() == [0.4, 0.6]


def test_example_f1_averages_each_image_f1():
    y_true = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0]])
    y_pred = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    # Image 0: 2·1 / (2 + 2) = 0.5; image 1: 1; image 2 (nothing true, nothing said): 1.
    assert example_f1(y_true, y_pred) == pytest.approx(100.0 * (0.5 + 1.0 + 1.0) / 3)
