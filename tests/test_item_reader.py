"""benchmarks/item_reader.py: the items' grid positions from their boxes, and the exact
label marginals of an item-by-item reader against enumerating every reading."""

import itertools

import numpy as np

from benchmarks.item_reader import (COUNT_INPUTS, at_least_one, found_items, item_evidence,
                                    item_positions, maxima_scores, scene_marginals)
from ofrnn_tf.data.canvas_config import Scene

TABLE = (Scene("beach", 0.6, (1, 2), {"Sandal": 0.5, "Bag": 0.3, "Dress": 0.2}),
         Scene("winter", 0.4, (2, 3), {"Coat": 0.6, "Bag": 0.2, "Ankle boot": 0.2}))


def test_item_positions_are_the_grid_cells_over_the_box_or_the_nearest_one():
    # A 4×4 grid over 40 pixels: cell centres at 5, 15, 25, 35.
    found = item_positions([(0, (12, 2, 6, 6)), (1, (20, 20, 20, 20)), (2, (0, 0, 1, 1)),
                            (3, (12, 0, 6, 40))], image_size=40, grid=4)
    np.testing.assert_array_equal(found[0], [1])  # no centre inside: the nearest, (5, 15)
    np.testing.assert_array_equal(found[1], [10, 11, 14, 15])
    np.testing.assert_array_equal(found[2], [0])
    np.testing.assert_array_equal(found[3], [1, 5, 9, 13])


def test_item_evidence_is_each_item_max_over_its_positions():
    scores = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)  # 2×2 grid, 3 classes
    scores[1, 0] = [9, -1, -1]
    evidence, image, label = item_evidence(
        scores, [[(2, (0, 0, 8, 20))], [(0, (0, 0, 5, 5)), (1, (12, 12, 8, 8))]],
        image_size=20)
    np.testing.assert_array_equal(image, [0, 1, 1])
    np.testing.assert_array_equal(label, [2, 0, 1])
    np.testing.assert_array_equal(evidence, [scores[0, [0, 2]].max(0), scores[1, 0],
                                             scores[1, 3]])


def test_found_items_are_the_local_maxima_over_the_threshold_or_else_the_best_position():
    scores = np.full((2, 16, 2), -5.0, np.float32)  # two images, 4×4 grid, 2 classes
    scores[0, [0, 1], 0] = [1.0, 3.0]  # one item: a maximum at position 1
    scores[0, [2, 3], 1] = [2.0, 2.5]  # a second one touching it: a maximum at 3
    scores[0, 15] = [0.5, -0.5]  # a third in the far corner
    scores[0, 8] = [-0.5, -1.0]  # a local maximum below the threshold
    scores[1, 5, 1] = -2.0  # nothing over the threshold: the best position alone
    evidence, image = found_items(scores, threshold=0.0)
    np.testing.assert_array_equal(image, [0, 0, 0, 1])
    np.testing.assert_array_equal(evidence, [[3.0, 2.0], [-5.0, 2.5], [0.5, -0.5],
                                             [-5.0, -2.0]])


def test_found_items_told_the_count_take_that_many_highest_maxima():
    scores = np.full((2, 16, 2), -5.0, np.float32)
    scores[0, [1, 3, 15, 8], 0] = [3.0, -2.0, 0.5, -0.5]  # four maxima, one of them weak
    scores[1, 5, 1] = -2.0
    evidence, image = found_items(scores, threshold=0.0, counts=np.array([3, 1]))
    np.testing.assert_array_equal(image, [0, 0, 0, 1])
    np.testing.assert_array_equal(evidence[:, 0], [3.0, 0.5, -0.5, -5.0])  # by score
    np.testing.assert_array_equal(evidence[3], [-5.0, -2.0])


def test_maxima_scores_are_the_highest_local_maxima_in_order_then_the_floor():
    scores = np.full((1, 16, 2), -20.0, np.float32)
    scores[0, [1, 3, 15, 8], 1] = [3.0, -2.0, 0.5, -12.0]  # -12 is below the floor
    scores[0, 0, 0] = 2.0  # beside position 1: not a maximum
    got = maxima_scores(scores)
    assert got.shape == (1, COUNT_INPUTS)
    np.testing.assert_array_equal(got[0, :4], [3.0, 0.5, -2.0, -10.0])
    np.testing.assert_array_equal(got[0, 4:], -10.0)


def test_at_least_one_is_one_minus_no_item_of_the_class():
    probs = np.array([[0.5, 0.5], [0.2, 0.8], [1.0, 0.0]])
    got = at_least_one(probs, np.array([0, 0, 1]), num_images=2)
    np.testing.assert_allclose(got, [[1 - 0.5 * 0.8, 1 - 0.5 * 0.2], [1.0, 0.0]], atol=1e-8)


def enumerated(likelihoods: np.ndarray, told: int | None = None) -> np.ndarray:
    """P(y_c = 1 | evidence) by summing P(scene, classes, evidence) over every scene and
    every class of every item."""
    marginal, total = np.zeros(likelihoods.shape[1]), 0.0
    for s, scene in enumerate(TABLE):
        if told is not None and s != told:
            continue
        lo, hi = scene.item_range
        if not lo <= len(likelihoods) <= hi:
            continue
        p = scene.class_probabilities()
        for classes in itertools.product(range(likelihoods.shape[1]), repeat=len(likelihoods)):
            joint = scene.frequency / (hi - lo + 1) * np.prod(
                [p[c] * likelihoods[k, c] for k, c in enumerate(classes)])
            total += joint
            marginal[list(set(classes))] += joint
    return marginal / total


def test_scene_marginals_equal_enumerating_every_scene_and_item_class():
    rng = np.random.default_rng(0)
    priors = rng.dirichlet(np.ones(10))
    image = np.array([0, 0, 1, 1, 1, 2])  # 2, 3 and 1 items
    item_probs = rng.dirichlet(np.ones(10) * 0.5, size=len(image))
    got = scene_marginals(item_probs, image, 3, priors, TABLE)
    told = scene_marginals(item_probs, image, 3, priors, TABLE,
                           np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]))
    likelihoods = item_probs / priors
    for row, scene in enumerate((1, 1, 0)):
        items = likelihoods[image == row]
        np.testing.assert_allclose(got[row], enumerated(items), rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(told[row], enumerated(items, told=scene), rtol=1e-6,
                                   atol=1e-12)
    # Three items: only winter allows them, so knowing the scene changes nothing there.
    np.testing.assert_allclose(got[1], told[1], rtol=1e-6)
