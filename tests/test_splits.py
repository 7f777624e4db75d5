"""The run pipeline's data step: splits, and τ never calibrated on test images."""

import json
import os

import numpy as np
from PIL import Image

from ofrnn_tf import pipeline


def _write_coco(root, name, image_ids, classes=("cat", "dog")):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    images, annotations = [], []
    for i in image_ids:
        file_name = f"{i:06d}.png"
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(root, name, file_name))
        images.append({"id": i, "file_name": file_name, "width": 8, "height": 8})
        annotations.append({"id": 1000 + i, "image_id": i, "category_id": 1 + i % len(classes),
                            "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0})
    categories = [{"id": c + 1, "name": n} for c, n in enumerate(classes)]
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", f"instances_{name}.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def test_coco_validation_is_held_out_of_train_not_taken_from_test(tmp_path):
    _write_coco(str(tmp_path), "train2014", range(0, 200))
    _write_coco(str(tmp_path), "val2014", range(500, 540))
    splits, label_map = pipeline.load_examples("coco", {"data_dir": str(tmp_path)},
                                               val_fraction=0.2)
    ids = {split: {e.image_id for e in examples} for split, examples in splits.items()}
    assert ids["test"] == {str(i) for i in range(500, 540)}
    assert ids["val"] and not ids["val"] & ids["test"] and not ids["val"] & ids["train"]
    assert ids["val"] | ids["train"] == {str(i) for i in range(200)}
    assert 20 <= len(ids["val"]) <= 60  # about val_fraction of train
    assert label_map.names == ("cat", "dog")


def test_hold_out_is_stable_between_runs(tmp_path):
    _write_coco(str(tmp_path), "train2014", range(0, 100))
    _write_coco(str(tmp_path), "val2014", range(500, 510))
    first, _ = pipeline.load_examples("coco", {"data_dir": str(tmp_path)})
    again, _ = pipeline.load_examples("coco", {"data_dir": str(tmp_path)})
    assert [e.image_id for e in first["val"]] == [e.image_id for e in again["val"]]


def test_manifest_without_val_file_holds_out_and_with_one_uses_it(tmp_path):
    for i in range(60):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{i}.png")
    rows = lambda ids: "path,labels\n" + "".join(f"{i}.png,{'a' if i % 2 else 'b'}\n" for i in ids)
    (tmp_path / "train.csv").write_text(rows(range(0, 40)))
    (tmp_path / "test.csv").write_text(rows(range(40, 50)))
    splits, _ = pipeline.load_examples("manifest", {"data_dir": str(tmp_path)}, val_fraction=0.3)
    assert len(splits["val"]) + len(splits["train"]) == 40 and splits["val"]

    (tmp_path / "val.csv").write_text(rows(range(50, 60)))
    splits, _ = pipeline.load_examples("manifest", {"data_dir": str(tmp_path)})
    assert len(splits["train"]) == 40 and len(splits["val"]) == 10
