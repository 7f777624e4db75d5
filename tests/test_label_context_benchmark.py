"""benchmarks/label_context.py: the scene oracle's facts read from a COCO file, the
label-context MLP that reads them beside M_map's logits, the one that reads the head's
per-position scores, and the exact label-set posterior."""

import itertools
import json

import keras
import numpy as np
import pytest

from benchmarks.label_context import (ORACLE_LOGIT, all_label_sets, canvas_facts,
                                      label_context_model, label_set_likelihoods,
                                      label_set_posterior, position_context_model)

SCENE_TABLE = [{"name": "beach", "frequency": 0.75, "item_range": [1, 2],
                "classes": {"Sandal": 0.5, "Bag": 0.5}},
               {"name": "winter", "frequency": 0.25, "item_range": [2, 3],
                "classes": {"Coat": 0.8, "Bag": 0.2}}]
CATEGORIES = [{"id": 1, "name": "Sandal"}, {"id": 2, "name": "Bag"}, {"id": 3, "name": "Coat"}]


def test_canvas_facts_are_each_canvas_scene_and_item_count_in_the_order_asked(tmp_path):
    coco = {"info": {"config": {"scene_table": SCENE_TABLE}}, "categories": CATEGORIES,
            "images": [{"id": 0, "scene": "winter"}, {"id": 1, "scene": "beach"},
                       {"id": 2, "scene": "winter"}, {"id": 3, "scene": "winter"}],
            "annotations": [{"image_id": 0, "category_id": 3},
                            {"image_id": 0, "category_id": 3},
                            {"image_id": 0, "category_id": 2},
                            {"image_id": 1, "category_id": 1},
                            {"image_id": 2, "category_id": 2},
                            {"image_id": 2, "category_id": 2},
                            {"image_id": 3, "category_id": 3}]}
    (tmp_path / "val.json").write_text(json.dumps(coco))
    facts = canvas_facts(str(tmp_path), "val", ["1", "2", "0", "3"])
    np.testing.assert_array_equal(facts["scene"], [[1, 0], [0, 1], [0, 1], [0, 1]])
    np.testing.assert_array_equal(facts["items"], [[1, 0, 0], [0, 1, 0], [0, 0, 1],
                                                   [1, 0, 0]])


@pytest.mark.slow
def test_oracle_mlp_starts_as_m_map_and_learns_from_the_facts_it_is_told():
    keras.utils.set_random_seed(0)
    model = label_context_model(num_classes=3, num_extra=2, units=16, dropout=0.0)
    logits = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    facts = np.eye(2, dtype=np.float32)[np.arange(64) % 2]
    inputs = np.concatenate([logits, ORACLE_LOGIT * (2 * facts - 1)], axis=1)
    np.testing.assert_allclose(model.predict(inputs, verbose=0), logits, atol=1e-6)

    # Class 0 is present exactly when the first fact is: M_map's logits say nothing.
    y = np.stack([facts[:, 0], np.zeros(64), np.ones(64)], axis=1).astype(np.float32)
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(inputs, y, epochs=60, batch_size=64, verbose=0)
    scores = model.predict(inputs, verbose=0)[:, 0]
    assert scores[facts[:, 0] == 1].min() > scores[facts[:, 0] == 0].max()


def test_label_set_posterior_under_an_independent_prior_returns_the_scores():
    # With P(y) = Π π_c^y_c (1-π_c)^(1-y_c) the evidence is all there is: q comes back.
    marginals = np.array([0.2, 0.5, 0.7])
    sets = all_label_sets(3)
    log_prior = (np.log(marginals) @ sets.T) + (np.log(1 - marginals) @ (1 - sets).T)
    logits = np.array([[2.0, -1.0, 0.3], [-3.0, 0.0, 4.0]])
    np.testing.assert_allclose(label_set_posterior(logits, sets, log_prior, marginals),
                               1 / (1 + np.exp(-logits)), rtol=1e-5)


def test_label_set_posterior_matches_bayes_rule_by_hand():
    # Two classes that never come together: prior P(00) = .4, P(10) = .3, P(01) = .3,
    # P(11) = 0, so π = (.3, .3). Scores q = (.9, .6) at temperature 2 (logits doubled).
    sets = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], float)
    log_prior = np.log([0.4, 0.3, 0.3, 1e-300])
    marginals = np.array([0.3, 0.3])
    q = np.array([0.9, 0.6])
    logits = 2 * np.log(q / (1 - q))[None, :]
    ratio = lambda c, y: q[c] / 0.3 if y else (1 - q[c]) / 0.7  # noqa: E731
    joint = {(a, b): p * ratio(0, a) * ratio(1, b)
             for (a, b), p in {(0, 0): 0.4, (1, 0): 0.3, (0, 1): 0.3}.items()}
    total = sum(joint.values())
    expected = [joint[1, 0] / total, joint[0, 1] / total]
    np.testing.assert_allclose(
        label_set_posterior(logits, sets, log_prior, marginals, temperature=2.0)[0],
        expected, rtol=1e-6)
    assert expected[1] < 0.6  # the confident first class pushes the second one down


def test_label_set_likelihoods_match_enumerating_every_draw():
    table = [{"name": "a", "frequency": 0.5, "item_range": [1, 3],
              "classes": {"Sandal": 0.5, "Bag": 0.3, "Coat": 0.2}},
             {"name": "b", "frequency": 0.5, "item_range": [2, 2],
              "classes": {"Bag": 0.6, "Coat": 0.4}}]
    names = ["Sandal", "Bag", "Coat", "Dress"]
    y_true = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]])
    expected = np.zeros((len(y_true), len(table)))
    for k, scene in enumerate(table):
        lo, hi = scene["item_range"]
        for n in range(lo, hi + 1):
            for draw in itertools.product(names, repeat=n):
                p = np.prod([scene["classes"].get(c, 0.0) for c in draw]) / (hi - lo + 1)
                for row, labels in enumerate(y_true):
                    if {names.index(c) for c in draw} == set(np.flatnonzero(labels)):
                        expected[row, k] += p
    np.testing.assert_allclose(label_set_likelihoods(table, names, y_true), expected,
                               atol=1e-12)
    assert expected[1, 1] == pytest.approx(2 * 0.6 * 0.4)  # Bag and Coat in two draws


def test_canvas_facts_refuse_a_canvas_without_items(tmp_path):
    coco = {"info": {"config": {"scene_table": SCENE_TABLE}}, "categories": CATEGORIES,
            "images": [{"id": 0, "scene": "beach"}, {"id": 1, "scene": "beach"}],
            "annotations": [{"image_id": 0, "category_id": 1}]}
    (tmp_path / "test.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="test.json: image 1 has 0 items"):
        canvas_facts(str(tmp_path), "test", ["0", "1"])


@pytest.mark.slow
def test_position_context_starts_as_m_map_and_counts_items_the_pooled_scores_do_not():
    keras.utils.set_random_seed(0)
    model = position_context_model(num_classes=2, positions=9, position_units=8, units=16,
                                   dropout=0.0)
    rng = np.random.default_rng(0)
    two_items = np.arange(128) % 2 == 1
    scores = np.full((128, 9, 2), -4.0, np.float32)
    scores[:, 0, 0] = 3.0  # every canvas has a class-0 item ...
    scores[two_items, 5, 0] = 3.0  # ... and half of them a second one
    scores += rng.normal(scale=0.1, size=scores.shape).astype(np.float32)
    logits = np.zeros((128, 2), np.float32)  # M_map's pooled logits tell nothing
    np.testing.assert_allclose(model.predict([logits, scores], verbose=0), logits, atol=1e-6)

    # Class 1 is present exactly on the canvases with two class-0 items.
    y = np.stack([np.ones(128), two_items], axis=1).astype(np.float32)
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit([logits, scores], y, epochs=60, batch_size=64, verbose=0)
    predicted = model.predict([logits, scores], verbose=0)[:, 1]
    assert predicted[two_items].min() > predicted[~two_items].max()
