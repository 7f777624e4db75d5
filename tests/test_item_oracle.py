"""benchmarks/item_oracle.py: the one-label-per-item oracle and the region-exclusion rule,
on hand-made 4×4 grids of positions."""

import numpy as np

from benchmarks.item_oracle import one_label_per_item, peak_items, region_exclusion

GRID, SIZE = 4, 64  # 16-pixel positions
# Item of class 0 in the top-left position, item of class 1 in the bottom-right one.
BOXES = ((0, (2.0, 2.0, 12.0, 12.0)), (1, (50.0, 50.0, 12.0, 12.0)))


def scores_with_peaks(peaks: dict, value: float = 5.0, num_classes: int = 4) -> np.ndarray:
    """`[m, C]` scores of -5 everywhere but `value` at each class's peak position."""
    scores = np.full((GRID * GRID, num_classes), -5.0, np.float32)
    for c, position in peaks.items():
        scores[position, c] = value
    return scores


def test_peak_items_names_the_item_under_each_class_peak():
    scores = scores_with_peaks({0: 0, 1: 15, 2: 0, 3: 6})
    assert peak_items(scores, BOXES, SIZE, GRID) == [0, 1, 0, -1]


def test_oracle_removes_only_false_labels_on_an_item_whose_class_was_predicted():
    # Class 2 peaks on item 0 (predicted): removed. Class 3 peaks on item 1, whose class
    # was not predicted in image 1: kept. A true label is never removed.
    scores = np.stack([scores_with_peaks({0: 0, 1: 15, 2: 0, 3: 15}),
                       scores_with_peaks({0: 0, 1: 15, 2: 0, 3: 15})])
    y_true = np.array([[1, 1, 0, 0], [1, 1, 0, 0]])
    y_pred = np.array([[1, 1, 1, 0], [1, 0, 0, 1]])
    kept, removed = one_label_per_item(y_true, y_pred, scores, [BOXES, BOXES], SIZE)
    np.testing.assert_array_equal(kept, [[1, 1, 0, 0], [1, 0, 0, 1]])
    assert removed == 1


def test_region_exclusion_drops_a_class_outscored_around_its_peak_by_one_taken():
    scores = scores_with_peaks({0: 0, 1: 15, 3: 15})
    scores[1, 2] = 3.0  # class 2 peaks next to class 0's peak, lower than it
    scores[15, 3] = 4.0  # class 3 peaks where class 1 does, lower than it
    v_prob = np.array([[0.9, 0.8, 0.7, 0.6]])
    np.testing.assert_array_equal(region_exclusion(v_prob, scores[None], tau=0.5),
                                  [[1, 1, 0, 0]])
    scores[15, 3] = 6.0  # ... or higher: a class taken later is kept where it outscores
    np.testing.assert_array_equal(region_exclusion(v_prob, scores[None], tau=0.5),
                                  [[1, 1, 0, 1]])
    np.testing.assert_array_equal(region_exclusion(v_prob, scores[None], tau=0.75),
                                  [[1, 1, 0, 0]])
    # At least one label, even under τ.
    np.testing.assert_array_equal(region_exclusion(v_prob * 0.1, scores[None], tau=0.5),
                                  [[1, 0, 0, 0]])
