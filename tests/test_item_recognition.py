"""benchmarks/item_recognition.py: what each item classifier reads of a told item — the
pooled features over its positions and the RoI samples at the centres of its box's cells."""

import numpy as np
import tensorflow as tf

from benchmarks.item_recognition import ROI_SIZE, bilinear_samples, item_inputs, roi_points
from ofrnn_tf.modeling.layers.spatial_label_head import SpatialLabelHead

GRID, IMAGE_SIZE = 4, 40  # cells of 10 pixels, centred at 5, 15, 25, 35


class _Model:
    """What `item_inputs` reads of a run's model (no standardizer, no label context)."""
    label_map_head = SpatialLabelHead(num_classes=3, units=4, kernel_size=3)

    @staticmethod
    def _standardized(features):
        return features

    @staticmethod
    def with_context(logits):
        return logits


def _ramp_features(batch: int) -> np.ndarray:
    """`[batch, m, 2]` maps whose channels are each position's row and column."""
    rows, cols = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
    maps = np.stack([rows, cols], axis=-1).reshape(1, GRID * GRID, 2).astype(np.float32)
    return np.repeat(maps, batch, axis=0) + np.arange(batch, dtype=np.float32)[:, None, None]


def _expected_samples(box) -> np.ndarray:
    """The feature coordinates (row, column) of the centres of the box's ROI_SIZE² cells."""
    x, y, w, h = box
    centres_y = [(y + h * (j + 0.5) / ROI_SIZE) / (IMAGE_SIZE / GRID) - 0.5
                 for j in range(ROI_SIZE)]
    centres_x = [(x + w * (j + 0.5) / ROI_SIZE) / (IMAGE_SIZE / GRID) - 0.5
                 for j in range(ROI_SIZE)]
    return np.array([[cy, cx] for cy in centres_y for cx in centres_x], np.float32)


def test_roi_points_are_the_centres_of_the_box_cells_in_feature_coordinates():
    box = (6.0, 12.0, 21.0, 15.0)  # x, y, w, h in pixels
    np.testing.assert_allclose(roi_points(box, IMAGE_SIZE, GRID), _expected_samples(box),
                               atol=1e-6)


def test_bilinear_samples_interpolate_inside_and_hold_the_edge_outside():
    maps = np.random.default_rng(0).normal(size=(GRID, GRID, 3))
    points = np.array([[1.0, 2.0], [0.25, 2.5], [-0.4, 1.0], [2.0, 3.3]])
    expected = [maps[1, 2],
                0.75 * 0.5 * (maps[0, 2] + maps[0, 3]) + 0.25 * 0.5 * (maps[1, 2] + maps[1, 3]),
                maps[0, 1],  # above the first row's centres: the first row
                maps[2, 3]]  # right of the last column's centres: the last column
    np.testing.assert_allclose(bilinear_samples(maps, points), expected, atol=1e-12)


def test_item_inputs_read_each_item_of_each_image_across_batches():
    features = _ramp_features(3)
    boxes_of = {"a": [(2, (0, 0, 20, 20))], "b": [(0, (20, 0, 20, 10)), (1, (5, 25, 10, 10))],
                "c": [(1, (10, 10, 20, 20))]}
    y_true = np.array([[0, 0, 1], [1, 1, 0], [0, 1, 0]], np.float32)
    areas = np.arange(9, dtype=np.float32).reshape(3, 3)
    dataset = [{"features": tf.constant(features[:2]), "image_id": tf.constant([b"a", b"b"]),
                "labels": tf.constant(y_true[:2]), "label_areas": tf.constant(areas[:2])},
               {"features": tf.constant(features[2:]), "image_id": tf.constant([b"c"]),
                "labels": tf.constant(y_true[2:]), "label_areas": tf.constant(areas[2:])}]
    read = item_inputs(_Model(), dataset, boxes_of, IMAGE_SIZE, margin=0.0)

    assert read["ids"] == ["a", "b", "c"]
    np.testing.assert_array_equal(read["y_true"], y_true)
    np.testing.assert_array_equal(read["areas"], areas)
    np.testing.assert_array_equal(read["image"], [0, 1, 1, 2])
    np.testing.assert_array_equal(read["label"], [2, 0, 1, 1])
    assert read["evidence"].shape == (4, 3)
    # Box (20, 0, 20, 10) of image 1 covers the cells of row 0, columns 2 and 3.
    inside = features[1].reshape(GRID, GRID, 2)[0, 2:4]
    np.testing.assert_allclose(read["pooled"][1], np.concatenate([inside.mean(0),
                                                                  inside.max(0)]))
    rois = read["roi"].reshape(4, ROI_SIZE * ROI_SIZE, 2)
    for k, (row, box) in enumerate([(0, (0, 0, 20, 20)), (1, (20, 0, 20, 10)),
                                    (1, (5, 25, 10, 10)), (2, (10, 10, 20, 20))]):
        # On the ramp, a sample's value is its (row, column), held inside the grid.
        np.testing.assert_allclose(rois[k], np.clip(_expected_samples(box), 0, GRID - 1) + row,
                                   atol=1e-5)
