"""The splits of a run (ofrnn_tf/data/splits.py): τ never calibrated on test images, and
splits too small for a run refused before any work."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from ofrnn_tf.config.experiment import ExperimentConfig
from ofrnn_tf.data import DataLabelMapError, DataNotFoundError
from ofrnn_tf.data.example import Example
from ofrnn_tf.data.splits import (NothingToLearnError, SplitTooSmallError, check_split_sizes,
                                  load_examples)


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
    splits, label_map = load_examples("coco", {"data_dir": str(tmp_path)},
                                               val_fraction=0.2)
    ids = {split: {e.image_id for e in examples} for split, examples in splits.items()}
    assert ids["test"] == {str(i) for i in range(500, 540)}
    assert ids["val"] and not ids["val"] & ids["test"] and not ids["val"] & ids["train"]
    assert ids["val"] | ids["train"] == {str(i) for i in range(200)}
    assert 20 <= len(ids["val"]) <= 60  # about val_fraction of train
    assert label_map.names == ("cat", "dog")


def test_a_coco_2017_folder_is_read_as_its_own_splits_and_2014_wins_where_both_are(tmp_path):
    _write_coco(str(tmp_path), "train2017", range(0, 40))
    _write_coco(str(tmp_path), "val2017", range(500, 510))
    splits, _ = load_examples("coco", {"data_dir": str(tmp_path)}, val_fraction=0.2)
    assert {e.image_id for e in splits["test"]} == {str(i) for i in range(500, 510)}
    assert splits["test"][0].image == os.path.join(str(tmp_path), "val2017", "000500.png")
    _write_coco(str(tmp_path), "train2014", range(100, 140))  # the paper's release
    _write_coco(str(tmp_path), "val2014", range(600, 610))
    splits, _ = load_examples("coco", {"data_dir": str(tmp_path)}, val_fraction=0.2)
    assert {e.image_id for e in splits["test"]} == {str(i) for i in range(600, 610)}
    with pytest.raises(DataNotFoundError, match=r"COCO annotation file not found: "
                                                 r".*empty/annotations/instances_train2014.json "
                                                 r"\(nor the 2017 release's "
                                                 r"instances_train2017.json\)"):
        load_examples("coco", {"data_dir": str(tmp_path / "empty")}, val_fraction=0.2)


def test_coco_release_reads_the_release_asked_for_where_a_folder_holds_both(tmp_path):
    _write_coco(str(tmp_path), "train2014", range(100, 140))
    _write_coco(str(tmp_path), "val2014", range(600, 610))
    _write_coco(str(tmp_path), "train2017", range(0, 40))
    _write_coco(str(tmp_path), "val2017", range(500, 510))
    for release, test_ids in (("auto", range(600, 610)), ("2014", range(600, 610)),
                              ("2017", range(500, 510))):
        splits, _ = load_examples("coco", {"data_dir": str(tmp_path), "coco_release": release},
                                  val_fraction=0.2)
        assert {e.image_id for e in splits["test"]} == {str(i) for i in test_ids}, release
    assert splits["test"][0].image == os.path.join(str(tmp_path), "val2017", "000500.png")
    assert {e.image_id for e in splits["train"] + splits["val"]} == {str(i) for i in range(40)}


def test_coco_release_not_in_the_folder_is_refused_naming_the_one_it_holds(tmp_path):
    _write_coco(str(tmp_path), "train2017", range(0, 40))
    _write_coco(str(tmp_path), "val2017", range(500, 510))
    with pytest.raises(DataNotFoundError, match=r"instances_train2014.json "
                                                 r"\(--data.coco_release=2014; the folder "
                                                 r"holds instances_train2017.json\)$"):
        load_examples("coco", {"data_dir": str(tmp_path), "coco_release": "2014"}, 0.2)
    # Read as auto from train2017, a folder without val2017 names that file alone.
    os.remove(tmp_path / "annotations" / "instances_val2017.json")
    with pytest.raises(DataNotFoundError, match=r"^COCO annotation file not found: "
                                                 r".*/instances_val2017.json$"):
        load_examples("coco", {"data_dir": str(tmp_path), "coco_release": "auto"}, 0.2)
    with pytest.raises(DataNotFoundError, match=r"empty/annotations/instances_train2017.json "
                                                 r"\(--data.coco_release=2017\)$"):
        load_examples("coco", {"data_dir": str(tmp_path / "empty"), "coco_release": "2017"},
                      0.2)


def test_the_runs_coco_release_setting_reaches_the_loader(tmp_path):
    from ofrnn_tf.data import run_data
    from ofrnn_tf.config.experiment import COCO_RELEASES
    from ofrnn_tf.data.registry import COCO_RELEASES as RELEASES_ON_DISK

    assert COCO_RELEASES == ("auto", *RELEASES_ON_DISK)
    _write_coco(str(tmp_path), "train2014", range(1000, 1200))
    _write_coco(str(tmp_path), "val2014", range(2000, 2040))
    _write_coco(str(tmp_path), "train2017", range(0, 200))
    _write_coco(str(tmp_path), "val2017", range(500, 540))
    config = ExperimentConfig().replace(data={"dataset": "coco", "data_dir": str(tmp_path)})
    for release, first_test in (("auto", 2000), ("2017", 500)):
        data = run_data.load_data(config.replace(data={"coco_release": release}))
        assert min(int(e.image_id) for e in data.splits["test"]) == first_test, release


def test_hold_out_is_stable_between_runs(tmp_path):
    _write_coco(str(tmp_path), "train2014", range(0, 100))
    _write_coco(str(tmp_path), "val2014", range(500, 510))
    first, _ = load_examples("coco", {"data_dir": str(tmp_path)}, 0.05)
    again, _ = load_examples("coco", {"data_dir": str(tmp_path)}, 0.05)
    assert [e.image_id for e in first["val"]] == [e.image_id for e in again["val"]]


def test_manifest_without_val_file_holds_out_and_with_one_uses_it(tmp_path):
    for i in range(60):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{i}.png")
    rows = lambda ids: "path,labels\n" + "".join(f"{i}.png,{'a' if i % 2 else 'b'}\n" for i in ids)
    (tmp_path / "train.csv").write_text(rows(range(0, 40)))
    (tmp_path / "test.csv").write_text(rows(range(40, 50)))
    splits, _ = load_examples("manifest", {"data_dir": str(tmp_path)}, val_fraction=0.3)
    assert len(splits["val"]) + len(splits["train"]) == 40 and splits["val"]

    (tmp_path / "val.csv").write_text(rows(range(50, 60)))
    splits, _ = load_examples("manifest", {"data_dir": str(tmp_path)}, 0.05)
    assert len(splits["train"]) == 40 and len(splits["val"]) == 10


def test_one_manifest_file_holds_out_val_and_test(tmp_path):
    for i in range(400):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / f"{i}.png")
    manifest = tmp_path / "all.csv"
    manifest.write_text("path,labels\n" + "".join(f"{i}.png,{'ab'[i % 2]}\n" for i in range(400)))
    splits, _ = load_examples("manifest", {"manifest": str(manifest)}, 0.1)
    ids = {name: {e.image_id for e in examples} for name, examples in splits.items()}
    assert sum(len(v) for v in ids.values()) == 400
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    assert 20 <= len(ids["val"]) <= 60 and 20 <= len(ids["test"]) <= 60


@pytest.mark.parametrize("val_fraction", [0.5, 0.6])
def test_one_manifest_file_refuses_a_val_fraction_that_leaves_no_training_image(tmp_path,
                                                                                 val_fraction):
    for i in range(20):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / f"{i}.png")
    manifest = tmp_path / "all.csv"
    manifest.write_text("path,labels\n" + "".join(f"{i}.png,{'ab'[i % 2]}\n" for i in range(20)))
    with pytest.raises(SplitTooSmallError, match=rf"--data.val_fraction={val_fraction}: .*"
                                                 r"leaves none to train; use a value below 0.5"):
        load_examples("manifest", {"manifest": str(manifest)}, val_fraction)
    splits, _ = load_examples("manifest", {"manifest": str(manifest)}, 0.45)
    assert splits["train"]


def test_a_val_fraction_that_holds_out_every_training_image_is_named(tmp_path):
    # Told to lower --train.batch_size "to at most 1", the user could not mend it.
    for i in range(4):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / f"{i}.png")
    rows = "path,labels\n" + "".join(f"{i}.png,{'ab'[i % 2]}\n" for i in range(4))
    (tmp_path / "train.csv").write_text(rows)
    (tmp_path / "test.csv").write_text("path,labels\n" + "".join(f"t{i}.png,a\n" for i in range(2)))
    for i in range(2):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / f"t{i}.png")
    with pytest.raises(SplitTooSmallError, match=r"--data.val_fraction=0.99 held out every one "
                                                 r"of the 4 training image\(s\) for validation, "
                                                 r"leaving none to train on .*: lower it"):
        load_examples("manifest", {"data_dir": str(tmp_path)}, 0.99)
    with pytest.raises(SplitTooSmallError, match=r"--data.val_fraction=0.49 held out every one "
                                                 r"of the 4 training image\(s\) for validation "
                                                 r"and test"):
        load_examples("manifest", {"manifest": str(tmp_path / "train.csv")}, 0.49)


def test_a_test_manifest_without_a_labelled_image_is_named(tmp_path):
    for name in ("0", "1", "2", "t"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "train.csv").write_text("path,labels\n0.png,a\n1.png,b\n2.png,a\n")
    (tmp_path / "test.csv").write_text("path,labels\nt.png,\n")
    with pytest.raises(SplitTooSmallError, match=r"test.csv: no labelled image, so the test "
                                                 r"split is empty: give each test image its "
                                                 r"labels"):
        load_examples("manifest", {"data_dir": str(tmp_path)}, 0.3)


def _examples(n: int) -> list:
    return [Example(str(i), f"{i}.png", (0,)) for i in range(n)]


@pytest.mark.parametrize("sizes, message", [
    ((0, 1, 1), r"the train split is empty: add training images$"),
    ((3, 1, 1), r"the train split has 3 image\(s\), fewer than one batch of 8: lower "
                r"--train.batch_size \(to at most 3\)"),
    ((20, 0, 1), r"the validation split is empty \(train has 20 image\(s\)\): raise "
                 r"--data.val_fraction"),
    ((20, 2, 0), r"the test split is empty"),
])
def test_split_too_small_for_the_run_is_refused_naming_the_fix(sizes, message):
    splits = dict(zip(("train", "val", "test"), (_examples(n) for n in sizes)))
    with pytest.raises(SplitTooSmallError, match=message):
        check_split_sizes(splits, batch_size=8)
    check_split_sizes(dict(zip(("train", "val", "test"), (_examples(n) for n in (8, 1, 1)))), 8)


def _manifest_folder(root, labels, n_train=20, n_test=6):
    """train.csv and test.csv over blank images, row i labelled `labels(i)`."""
    for i in range(n_train + n_test):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / f"{i}.png")
    rows = lambda ids: "path,labels\n" + "".join(f"{i}.png,{labels(i)}\n" for i in ids)
    (root / "train.csv").write_text(rows(range(n_train)))
    (root / "test.csv").write_text(rows(range(n_train, n_train + n_test)))
    return str(root)


@pytest.mark.parametrize("labels, classes", [
    (lambda i: "defect" if i % 2 else "", "'defect'"),  # negatives with no label
    (lambda i: "a;b", "'a', 'b'"),
])
def test_training_images_that_all_carry_every_class_are_refused(tmp_path, labels, classes):
    root = _manifest_folder(tmp_path, labels)
    unlabeled = 13 if "defect" in classes else 0  # of 26 rows, the even ones
    with pytest.raises(NothingToLearnError,
                       match=rf"each of the \d+ training images carries every class "
                             rf"\({classes}\), so the model could only learn to predict all "
                             rf"of them on any image; {unlabeled} listed image\(s\) with no "
                             rf"label were left out of every split .*a class of their own"):
        load_examples("manifest", {"data_dir": root}, 0.2)
    (tmp_path / "all.csv").write_text((tmp_path / "train.csv").read_text())
    with pytest.raises(NothingToLearnError):
        load_examples("manifest", {"manifest": str(tmp_path / "all.csv")}, 0.2)


def test_a_class_only_in_test_is_refused_naming_the_remedy(tmp_path):
    root = _manifest_folder(tmp_path, lambda i: "ab"[i % 2] + (";new" if i == 21 else ""))
    train = os.path.join(root, "train.csv")
    with pytest.raises(DataLabelMapError,
                       match=rf"test.csv: line 3: labels \['new'\] are not in the label map "
                             rf"{train} \(2 classes\), which holds the classes of the training "
                             rf"images: remove these labels from the row, or add training images "
                             rf"of the class to {train}"):
        load_examples("manifest", {"data_dir": root}, 0.2)
    # A class of train written another way (case, spacing): the map's spelling is named.
    (tmp_path / "cased").mkdir()
    root = _manifest_folder(tmp_path / "cased", lambda i: "ab"[i % 2] + (";B" if i == 21 else ""))
    with pytest.raises(DataLabelMapError,
                       match=r"test.csv: line 3: labels \['B'\] are not in the label map "
                             r".*train.csv \(2 classes; it has 'b' \(not 'B'\)\), which holds"):
        load_examples("manifest", {"data_dir": root}, 0.2)


def test_labels_unknown_to_the_label_map_are_counted_over_the_whole_file(tmp_path):
    """One refusal says every row to mend, not one row a run."""
    extra = {21: ";new", 23: ";new;newer", 25: ";newer"}
    root = _manifest_folder(tmp_path, lambda i: "ab"[i % 2] + extra.get(i, ""))
    with pytest.raises(DataLabelMapError,
                       match=r"test.csv: line 3: labels \['new'\] are not in the label map .*"
                             r"of the class to .*train.csv \(3 rows of test.csv hold such "
                             r"labels: 'new' on 2, 'newer' on 2\)$"):
        load_examples("manifest", {"data_dir": root}, 0.2)


def test_one_manifest_file_whose_test_share_holds_no_image_names_the_fraction(tmp_path):
    for i in range(12):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "all.csv").write_text("path,labels\n" + "".join(
        f"{i}.png,{'ab'[i % 2]}\n" for i in range(12)))
    with pytest.raises(SplitTooSmallError, match=r"one manifest file: no image of the 12 found "
                                                 r"was held out for test: raise "
                                                 r"--data.val_fraction"):
        load_examples("manifest", {"manifest": str(tmp_path / "all.csv")}, 0.001)
