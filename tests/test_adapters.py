"""COCO, NUS-WIDE and manifest adapters on tiny fixtures of each layout."""

import json
import os
import re

import pytest

from ofrnn_tf.data import DataFileError, DataLabelMapError
from ofrnn_tf.data.adapters import load_coco, load_manifest, load_nuswide
from ofrnn_tf.data.registry import load_split
from ofrnn_tf.labels import LabelMap, LabelMapMismatchError


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\xff\xd8not really a jpeg")
    return str(path)


# -- COCO ----------------------------------------------------------------------------

def _coco_dict():
    return {
        "images": [
            {"id": 0, "file_name": "a.jpg", "width": 100, "height": 50},
            {"id": 1, "file_name": "b.jpg", "width": 10, "height": 10},
            {"id": 2, "file_name": "c.jpg", "width": 20, "height": 20},  # no label
        ],
        "annotations": [
            {"id": 10, "image_id": 0, "category_id": 7, "bbox": [0, 0, 10, 10], "area": 3},
            {"id": 11, "image_id": 0, "category_id": 7, "bbox": [5, 5, 20, 10], "area": 3},
            {"id": 12, "image_id": 0, "category_id": 3, "bbox": [1, 2, 5, 4], "area": 3},
            {"id": 13, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "area": 3},
        ],
        # Unsorted ids; "unused" has no annotation.
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"},
                       {"id": 5, "name": "unused"}],
    }


def _write_coco(tmp_path, data, name="instances.json"):
    for img in data["images"]:
        _touch(tmp_path / "images" / img["file_name"])
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path), str(tmp_path / "images")


def test_coco_loads_ids_from_zero_unused_category_and_drops_unlabeled(tmp_path):
    ann, img_dir = _write_coco(tmp_path, _coco_dict())
    examples, label_map, stats = load_coco(ann, img_dir)

    assert label_map.names == ("cat", "unused", "dog")  # sorted by category id
    assert [e.image_id for e in examples] == ["0", "1"]
    assert stats.images == 2 and stats.dropped_unlabeled == 1
    assert str(stats) == f"{ann}: of 3 listed, 2 images kept, 1 dropped with no label, 0 " \
                         f"dropped with a missing file"

    first = examples[0]
    assert first.image == os.path.join(img_dir, "a.jpg")
    assert first.label_ids == (0, 2)
    # largest object of each class / (100 * 50); bbox area, not the "area" field
    assert first.label_areas == pytest.approx((20 / 5000, 200 / 5000))
    assert first.boxes == ((0, (1.0, 2.0, 5.0, 4.0)), (2, (0.0, 0.0, 10.0, 10.0)),
                           (2, (5.0, 5.0, 20.0, 10.0)))
    assert examples[1].label_ids == (0,) and examples[1].label_areas == (0.25,)


def test_coco_missing_image_file_is_dropped_and_counted(tmp_path):
    ann, img_dir = _write_coco(tmp_path, _coco_dict())
    os.remove(os.path.join(img_dir, "b.jpg"))
    examples, _, stats = load_coco(ann, img_dir)
    assert [e.image_id for e in examples] == ["0"] and stats.dropped_missing == 1
    with pytest.raises(FileNotFoundError, match="none of the 2 labelled images"):
        load_coco(ann, str(tmp_path / "wrong_dir"))


@pytest.mark.parametrize("field,value,message", [
    ("image_id", 99, "annotation id 12 refers to unknown image id 99"),
    ("category_id", 42, "annotation id 12 refers to unknown category id 42"),
])
def test_coco_bad_annotation_reference_names_the_annotation(tmp_path, field, value, message):
    data = _coco_dict()
    data["annotations"][2][field] = value
    ann, img_dir = _write_coco(tmp_path, data)
    with pytest.raises(ValueError, match=message):
        load_coco(ann, img_dir)


def _set(data, where, value):
    """`data` with the field at `where` (keys and indices) set to `value`."""
    *parents, last = where
    target = data
    for key in parents:
        target = target[key]
    target[last] = value
    return data


@pytest.mark.parametrize("where,value,message", [
    (("annotations", 3, "bbox", 2), None,
     r"annotation id 13 has a malformed bbox \[0, 0, None, 5\] \(expected four finite "
     r"numbers"),
    (("annotations", 3, "bbox", 0), "5px", r"annotation id 13 has a malformed bbox"),
    (("annotations", 3, "bbox", 1), float("nan"), r"annotation id 13 has a malformed bbox"),
    (("images", 1, "width"), "ten", r"image id 1 has width 'ten' \(expected a finite number"),
    (("images", 1, "file_name"), None, r"image id 1 has file_name None"),
    (("images", 1, "id"), [1], r"images\[1\] has id \[1\] \(expected an integer or a string\)"),
    (("categories", 2, "id"), 5.0, r"categories\[2\] has id 5.0 \(expected an integer or a "
                                   r"string\)"),
    (("categories", 2, "id"), "unused",
     r"categories have integer ids \(7\) and string ids \('unused'\), which have no order "
     r"together: give every category an id of one kind"),
    (("annotations", 3, "image_id"), [1], r"annotation id 13 has image_id \[1\]"),
    (("images", 1, "id"), "0", r"duplicate image id '0'"),
], ids=["bbox-null", "bbox-text", "bbox-nan", "width-text", "file_name-null", "image-id-list",
        "category-id-float", "category-ids-mixed", "image_id-list", "ids-0-and-'0'"])
def test_coco_malformed_values_name_the_record_and_the_file(tmp_path, where, value, message):
    data = _set(_coco_dict(), where, value)
    for img in data["images"]:  # _write_coco would choke on a file_name of None
        if isinstance(img["file_name"], str):
            _touch(tmp_path / "images" / img["file_name"])
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"{ann}: {message}"):
        load_coco(str(ann), str(tmp_path / "images"))


def test_coco_area_without_a_box_must_be_a_number(tmp_path):
    data = _coco_dict()
    del data["annotations"][3]["bbox"]
    data["annotations"][3]["area"] = "big"
    ann, img_dir = _write_coco(tmp_path, data)
    with pytest.raises(ValueError, match=r"annotation id 13 has area 'big'"):
        load_coco(ann, img_dir)


def test_coco_missing_or_broken_file_is_named(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco(missing, str(tmp_path))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not a valid JSON"):
        load_coco(str(broken), str(tmp_path))
    no_images = tmp_path / "no_images.json"
    no_images.write_text(json.dumps({"categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(ValueError, match="'images'"):
        load_coco(str(no_images), str(tmp_path))


def test_coco_label_map_mismatch_names_both(tmp_path):
    ann, img_dir = _write_coco(tmp_path, _coco_dict())
    expected = LabelMap(["cat", "unused", "horse"], source="/models/run1/label_map.json")
    with pytest.raises(LabelMapMismatchError) as err:
        load_coco(ann, img_dir, label_map=expected)
    assert "/models/run1/label_map.json" in str(err.value)
    assert ann in str(err.value) and "'horse' vs 'dog'" in str(err.value)
    # The same map passes.
    examples, _, _ = load_coco(ann, img_dir, label_map=LabelMap(["cat", "unused", "dog"]))
    assert len(examples) == 2


def test_coco_annotations_without_id_or_bbox(tmp_path):
    data = _coco_dict()
    for a in data["annotations"]:
        del a["id"]
    del data["annotations"][3]["bbox"]
    ann, img_dir = _write_coco(tmp_path, data)
    examples, _, _ = load_coco(ann, img_dir)
    assert examples[1].boxes is None and examples[1].label_areas == (0.03,)
    data["annotations"][0]["image_id"] = 77
    ann, img_dir = _write_coco(tmp_path, data)
    with pytest.raises(ValueError, match=r"annotation #0 \(no id\)"):
        load_coco(ann, img_dir)


def test_registry_reads_coco_2014_layout(tmp_path):
    data = _coco_dict()
    os.makedirs(tmp_path / "annotations")
    (tmp_path / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
    for img in data["images"]:
        _touch(tmp_path / "val2014" / img["file_name"])
    examples, label_map, stats = load_split("coco", "val", data_dir=str(tmp_path))
    assert len(examples) == 2 and label_map.num_classes == 3
    assert examples[0].image == os.path.join(str(tmp_path), "val2014", "a.jpg")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_split("imagenet", "train", data_dir=str(tmp_path))


# -- NUS-WIDE ------------------------------------------------------------------------

def _write_nuswide(root, concepts=("animal", "sky", "water")):
    (root / "ImageList").mkdir(parents=True)
    (root / "Groundtruth" / "TrainTestLabels").mkdir(parents=True)
    (root / "Concepts81.txt").write_text("\r\n".join(concepts) + "\r\n")
    lists = {"Train": ["actor\\0001_11.jpg", "sky\\0002_22.jpg", "sky\\0003_33.jpg",
                       "water\\0004_44.jpg"],
             "Test": ["actor\\0005_55.jpg", "water\\0006_66.jpg"]}
    labels = {"Train": {"animal": [1, 0, 0, 0], "sky": [1, 1, 0, 0], "water": [0, 0, 0, 1]},
              "Test": {"animal": [0, 0], "sky": [0, 1], "water": [1, 1]}}
    for split, names in lists.items():
        (root / "ImageList" / f"{split}Imagelist.txt").write_text("\n".join(names) + "\n")
        for rel in names:
            _touch(root / "Flickr" / rel.replace("\\", "/"))
        for concept in concepts:
            values = labels[split][concept]
            (root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{split}.txt"
             ).write_text("".join(f"{v} \n" for v in values))


def test_nuswide_standard_layout(tmp_path):
    _write_nuswide(tmp_path)
    examples, label_map, stats = load_nuswide(str(tmp_path), "train")
    assert label_map.names == ("animal", "sky", "water")
    assert [e.image_id for e in examples] == ["actor/0001_11.jpg", "sky/0002_22.jpg",
                                              "water/0004_44.jpg"]
    assert [e.label_ids for e in examples] == [(0, 1), (1,), (2,)]
    assert examples[0].image == os.path.join(str(tmp_path), "Flickr", "actor", "0001_11.jpg")
    assert os.path.exists(examples[0].image)
    assert stats.images == 3 and stats.dropped_unlabeled == 1

    test_examples, _, test_stats = load_split("nuswide", "test", data_dir=str(tmp_path))
    assert [e.label_ids for e in test_examples] == [(2,), (1, 2)]
    assert test_stats.dropped_unlabeled == 0


def test_nuswide_concept_list_as_distributed_in_concepts_list(tmp_path):
    _write_nuswide(tmp_path)
    (tmp_path / "ConceptsList").mkdir()
    os.replace(tmp_path / "Concepts81.txt", tmp_path / "ConceptsList" / "Concepts81.txt")
    examples, label_map, _ = load_nuswide(str(tmp_path), "train")
    assert label_map.names == ("animal", "sky", "water") and len(examples) == 3
    assert label_map.source == os.path.join(str(tmp_path), "ConceptsList", "Concepts81.txt")
    os.remove(tmp_path / "ConceptsList" / "Concepts81.txt")
    with pytest.raises(FileNotFoundError, match=r"looked for .*Concepts81.txt and "
                                                r".*ConceptsList/Concepts81.txt"):
        load_nuswide(str(tmp_path), "train")


def test_nuswide_wrong_length_label_file_is_named(tmp_path):
    _write_nuswide(tmp_path)
    bad = tmp_path / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Train.txt"
    bad.write_text("1\n0\n1\n")
    with pytest.raises(ValueError, match=r"Labels_sky_Train.txt: 3 labels but .*"
                                         r"TrainImagelist.txt lists 4 images"):
        load_nuswide(str(tmp_path), "train")
    bad.write_text("1\n0\nyes\n0\n")
    with pytest.raises(ValueError, match=r"Labels_sky_Train.txt: line 3: expected 0 or 1"):
        load_nuswide(str(tmp_path), "train")
    os.remove(bad)
    with pytest.raises(FileNotFoundError, match="Labels_sky_Train.txt"):
        load_nuswide(str(tmp_path), "train")


def test_nuswide_label_map_mismatch_and_bad_split(tmp_path):
    _write_nuswide(tmp_path)
    with pytest.raises(LabelMapMismatchError, match="Concepts81.txt"):
        load_nuswide(str(tmp_path), "train",
                     LabelMap(["animal", "sky"], source="expected.json"))
    with pytest.raises(ValueError, match="split"):
        load_nuswide(str(tmp_path), "val")


# -- manifest ------------------------------------------------------------------------

def test_manifest_csv(tmp_path):
    _touch(tmp_path / "img" / "1.jpg")
    _touch(tmp_path / "img" / "2.jpg")
    _touch(tmp_path / "img" / "3.jpg")
    (tmp_path / "m.csv").write_text(
        "path,labels\nimg/1.jpg,dog;cat\nimg/2.jpg,person|dog\nimg/3.jpg,\n")
    examples, label_map, stats = load_manifest(str(tmp_path / "m.csv"))
    assert label_map.names == ("cat", "dog", "person")
    assert [e.label_ids for e in examples] == [(0, 1), (1, 2)]
    assert examples[0].image == os.path.join(str(tmp_path), "img", "1.jpg")
    assert examples[0].image_id == "img/1.jpg"
    assert stats.dropped_unlabeled == 1 and "1 dropped with no label" in str(stats)



def test_manifest_csv_lines_are_counted_by_their_line_feeds_or_old_mac_returns(tmp_path):
    for name in ("1.jpg", "2.jpg"):
        _touch(tmp_path / name)
    (tmp_path / "crcr.csv").write_text("path,labels\r\r\n1.jpg,dog\r\r\ngone.jpg,cat\r\r\n")
    examples, _, stats = load_manifest(str(tmp_path / "crcr.csv"))
    assert [e.image_id for e in examples] == ["1.jpg"]
    assert stats.first_missing.endswith("gone.jpg, line 3"), stats.first_missing
    (tmp_path / "mac.csv").write_text("path,labels\r1.jpg,dog\r2.jpg,\"cat;x\"\r")
    examples, label_map, _ = load_manifest(str(tmp_path / "mac.csv"))
    assert [e.image_id for e in examples] == ["1.jpg", "2.jpg"]
    assert label_map.names == ("cat", "dog", "x")


def test_manifest_jsonl_with_ids_and_given_label_map(tmp_path):
    _touch(tmp_path / "a.png")
    absolute = _touch(tmp_path / "elsewhere" / "b.png")
    lines = [{"path": "a.png", "labels": ["sky"], "id": "first"},
             {"path": absolute, "labels": ["sea", "sky"]}]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    label_map = LabelMap(["sea", "sky", "tree"], source="lm.json")
    examples, got_map, _ = load_manifest(str(path), label_map)
    assert got_map is label_map
    assert [(e.image_id, e.label_ids) for e in examples] == [("first", (1,)),
                                                            (absolute, (0, 1))]
    assert examples[1].image == absolute

    with pytest.raises(LabelMapMismatchError, match=r"line 1: .*'sky'.*lm.json"):
        load_manifest(str(path), LabelMap(["sea"], source="lm.json"))


def test_manifest_label_names_are_one_class_in_either_unicode_form(tmp_path):
    # "café" typed (NFC) and taken from a macOS file name (NFD) look the same.
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    for i in range(4):
        _touch(tmp_path / f"{i}.png")
    (tmp_path / "m.csv").write_text(f"path,labels\n0.png,{nfc}\n1.png,{nfd};dog\n",
                                    encoding="utf-8")
    examples, label_map, _ = load_manifest(str(tmp_path / "m.csv"))
    assert label_map.names == (nfc, "dog")
    assert [e.label_ids for e in examples] == [(0,), (0, 1)]
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"path": "2.png", "labels": [nfd]}) + "\n"
        + json.dumps({"path": "3.png", "labels": f"{nfd}|dog"}) + "\n", encoding="utf-8")
    examples, _, _ = load_manifest(str(tmp_path / "m.jsonl"), label_map)
    assert [e.label_ids for e in examples] == [(0,), (0, 1)]


def test_manifest_jsonl_null_labels_are_no_label(tmp_path):
    _touch(tmp_path / "a.png")
    _touch(tmp_path / "b.png")
    (tmp_path / "m.jsonl").write_text('{"path": "a.png", "labels": ["sky"]}\n'
                                      '{"path": "b.png", "labels": null}\n')
    examples, _, stats = load_manifest(str(tmp_path / "m.jsonl"))
    assert [e.image_id for e in examples] == ["a.png"] and stats.dropped_unlabeled == 1


@pytest.mark.parametrize("name,text,message", [
    ("bad.jsonl", '{"path": "a.png", "labels": ["x"]}\n{"path": "b.png", "labels": [\n',
     r"bad.jsonl: line 2: not valid JSON"),
    ("bad2.jsonl", '{"path": "a.png", "labels": "x"}\n\n{"labels": ["x"]}\n',
     r"bad2.jsonl: line 3: missing or empty 'path'"),
    ("blank.jsonl", '{"path": "a.png", "labels": "x"}\n{"path": "  ", "labels": ["x"]}\n',
     r"blank.jsonl: line 2: missing or empty 'path'"),  # as a CSV's blank path is
    ("bad.csv", "path,labels\na.png,x\nb.png,x,extra\n", r"bad.csv: line 3: 3 fields"),
    ("nohead.csv", "a.png,x\n", r"nohead.csv: line 1: header"),
    ("dup.csv", "path,labels\na.png,x\na.png,y\n", r"dup.csv: line 3: duplicate id"),
    # A stray quote: the reader took the rest of the file as one field without a word, or
    # stopped with a bare csv.Error past its field size limit.
    ("open.csv", 'path,labels\na.png,x\n"b.png,y\nc.png,z\nd.png,z\n',
     r"open.csv: line 3: a quoted field is not closed: a '\"' opens it and no '\"' ends it "
     r"before the end of the file \(line 5\), so the rest of the file was read as one "
     r"field; close it, or remove the '\"'"),
    ("open_labels.csv", 'path,labels\na.png,"x\nb.png,y\n',
     r"open_labels.csv: line 2: a quoted field is not closed"),
    ("open_long.csv", 'path,labels\n"a.png,x\n' + "img/b.png,y\n" * 12000,
     r"open_long.csv: line 2: a quoted field is not closed: a '\"' opens it and no '\"' ends "
     r"it within 131072 characters \(up to line \d+\)"),
    ("open_head.csv", '"path,labels\n' + "img/b.png,y\n" * 12000,
     r"open_head.csv: line 1: a quoted field is not closed"),
    # A stray carriage return: numbered as editors number lines (a universal-newline
    # reader counted each as a line, and named a line below the damage).
    ("crcr.csv", "path,labels\r\r\na.png,x\r\r\nb.png,x,extra\r\r\n",
     r"crcr.csv: line 3: 3 fields"),
    ("cr_inside.csv", "path,labels\r\na.png,x\r\nb.png,x\r;y\r\nc.png,z\r\n",
     r"cr_inside.csv: line 3: a carriage return \('\\r'\) inside the row, not at its end"),
    # Nested deeper than Python's parser goes: a RecursionError.
    ("deep.jsonl", '{"path": "a.png", "labels": ["x"]}\n' + "[" * 100000 + "\n",
     r"deep.jsonl: line 2: JSON nested too deep to read; each item of a manifest is an object"),
    ("deep.json", "[" * 100000, r"deep.json: item 1 \(line 1\): JSON nested too deep to read"),
    # Half of an emoji's surrogate pair (a string cut by a JavaScript exporter): it trained,
    # then no tensor could hold the label map and the run could not be exported.
    ("half.jsonl", '{"path": "a.png", "labels": ["x"]}\n{"path": "b.png", "labels": ["\\ud83d"]}\n',
     r"half.jsonl: line 2: the class name '\\ud83d' holds U\+D83D, half of a UTF-16 "
     r"surrogate pair .*: fix the name"),
    ("half_id.jsonl", '{"path": "a.png", "id": "a\\udc80", "labels": ["x"]}\n',
     r"half_id.jsonl: line 1: the id 'a\\udc80' holds U\+DC80.*: fix the id"),
    ("half_path.jsonl", '{"path": "\\ud800.png", "labels": ["x"]}\n',
     r"half_path.jsonl: line 1: the path '\\ud800.png' holds U\+D800.*names no file"),
])
def test_manifest_bad_line_names_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        load_manifest(str(tmp_path / name))


def test_manifest_csv_closed_quoted_fields_may_hold_a_line_break_up_to_the_files_end(tmp_path):
    (tmp_path / "m.csv").write_text('path,labels\n"a\nb.png",x\nc.png,"y;z"\n"d.png","w"')
    examples, label_map, _ = load_manifest(str(tmp_path / "m.csv"), check_files=False)
    assert [os.path.basename(e.image) for e in examples] == ["a\nb.png", "c.png", "d.png"]
    assert list(label_map.names) == ["w", "x", "y", "z"]


def test_manifest_whose_images_all_miss_is_refused_naming_the_first(tmp_path):
    _touch(tmp_path / "data" / "img" / "1.jpg")
    (tmp_path / "data" / "lists").mkdir()
    manifest = tmp_path / "data" / "lists" / "all.csv"  # paths written as from data/
    manifest.write_text("path,labels\nimg/1.jpg,cat\nimg/2.jpg,dog\n")
    first = os.path.join(str(tmp_path / "data" / "lists"), "img", "1.jpg")
    with pytest.raises(FileNotFoundError,
                       match=rf"{manifest}: none of the 2 labelled images exists \(first: "
                             rf"{first}, line 2\); relative paths are read from the manifest's "
                             rf"folder"):
        load_manifest(str(manifest))
    examples, _, stats = load_manifest(str(manifest), check_files=False)
    assert len(examples) == 2
    (tmp_path / "data" / "lists" / "some.csv").write_text(
        "path,labels\n../img/1.jpg,cat\nimg/2.jpg,dog\n")
    examples, _, stats = load_manifest(str(tmp_path / "data" / "lists" / "some.csv"))
    assert len(examples) == 1 and stats.dropped_missing == 1  # some missing: dropped, counted


def test_manifest_json_id_null_or_empty_is_the_path_as_an_empty_csv_cell(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        _touch(tmp_path / name)
    rows = [{"path": "a.png", "labels": ["x"], "id": None},
            {"path": "b.png", "labels": ["x"], "id": None},
            {"path": "c.png", "labels": ["x"], "id": ""}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    examples, _, _ = load_manifest(str(tmp_path / "m.jsonl"))
    assert [e.image_id for e in examples] == ["a.png", "b.png", "c.png"]


@pytest.mark.parametrize("sep", ["\t", ";"])
def test_manifest_header_of_another_separator_is_named(tmp_path, sep):
    (tmp_path / "m.csv").write_text(f"path{sep}labels\na.png{sep}x\n")
    named = re.escape(repr(sep))
    with pytest.raises(DataFileError, match=rf"line 1: header must name the columns 'path' "
                                            rf"and 'labels', .*: this file separates its "
                                            rf"fields by {named}, a manifest by ','"):
        load_manifest(str(tmp_path / "m.csv"))


def test_manifest_class_names_alike_but_for_case_or_spacing_are_warned_of(tmp_path, capsys):
    for name in ("a.png", "b.png"):
        _touch(tmp_path / name)
    (tmp_path / "m.csv").write_text("path,labels\na.png,Cat;dog\nb.png,cat\n")
    _, label_map, _ = load_manifest(str(tmp_path / "m.csv"))
    assert label_map.names == ("Cat", "cat", "dog")
    assert ("WARNING: class names that differ only in case or spacing are distinct classes: "
            "'Cat', 'cat'. Write each class one way") in capsys.readouterr().err
    (tmp_path / "m.csv").write_text("path,labels\na.png,Ankle  boot;dog\nb.png,ankle boot\n")
    _, label_map, _ = load_manifest(str(tmp_path / "m.csv"))
    assert label_map.names == ("Ankle  boot", "ankle boot", "dog")
    assert ("distinct classes: 'Ankle  boot', 'ankle boot'. Write each class one way"
            ) in capsys.readouterr().err
    (tmp_path / "m.csv").write_text("path,labels\na.png,cat;dog\nb.png,cat\n")
    load_manifest(str(tmp_path / "m.csv"))
    assert "WARNING" not in capsys.readouterr().err


def test_manifest_folder_holding_a_split_twice_is_refused(tmp_path):
    _touch(tmp_path / "x.jpg")
    (tmp_path / "train.csv").write_text("path,labels\nx.jpg,a\n")
    (tmp_path / "train.jsonl").write_text(json.dumps({"path": "x.jpg", "labels": ["b"]}))
    with pytest.raises(DataFileError, match=r"train.csv and train.jsonl both hold the train "
                                            r"split: keep one of them"):
        load_split("manifest", "train", data_dir=str(tmp_path))


def test_manifest_path_typed_in_another_unicode_form_than_its_file_finds_it(tmp_path):
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    stored = _touch(tmp_path / f"{nfd}.png")  # as a copy from macOS names it
    _touch(tmp_path / f"{nfc}_typed.png")
    (tmp_path / "m.csv").write_text(f"path,labels\n{nfc}.png,x\n{nfd}_typed.png,y\n"
                                    f"gone.png,x\n", encoding="utf-8")
    examples, _, stats = load_manifest(str(tmp_path / "m.csv"))
    assert [e.image for e in examples] == [stored, str(tmp_path / f"{nfc}_typed.png")]
    assert [e.image_id for e in examples] == [f"{nfc}.png", f"{nfd}_typed.png"]  # as listed
    assert stats.dropped_missing == 1
    unchecked, _, _ = load_manifest(str(tmp_path / "m.csv"), check_files=False)
    assert [e.image for e in unchecked[:2]] == [e.image for e in examples]


def test_manifest_csv_path_spaces_are_dropped_unless_the_file_is_named_with_them(tmp_path):
    spaced = _touch(tmp_path / " lead.png")  # names an archive may hold
    _touch(tmp_path / "typed.png")
    (tmp_path / "m.csv").write_text('path,labels\n lead.png,x\n"typed.png ",y\n')
    examples, _, stats = load_manifest(str(tmp_path / "m.csv"))
    assert [e.image for e in examples] == [spaced, str(tmp_path / "typed.png")]
    assert [e.image_id for e in examples] == ["lead.png", "typed.png"]
    assert stats.dropped_missing == 0
    # A JSON string is the path to the letter, as it always was.
    (tmp_path / "m.jsonl").write_text('{"path": " lead.png", "labels": ["x"]}\n'
                                      '{"path": "typed.png ", "labels": ["y"]}\n')
    examples, _, stats = load_manifest(str(tmp_path / "m.jsonl"))
    assert [e.image for e in examples] == [spaced] and stats.dropped_missing == 1


def test_registry_manifest_by_split_name(tmp_path):
    _touch(tmp_path / "x.jpg")
    (tmp_path / "val.jsonl").write_text(json.dumps({"path": "x.jpg", "labels": ["a"]}))
    examples, _, _ = load_split("manifest", "val", data_dir=str(tmp_path))
    assert examples[0].label_ids == (0,)
    with pytest.raises(FileNotFoundError, match="train.csv") as refused:
        load_split("manifest", "train", data_dir=str(tmp_path))
    assert "is a file" not in str(refused.value)
    # A manifest file given where its folder goes: the flag that takes one is named.
    one_file = str(tmp_path / "val.jsonl")
    with pytest.raises(FileNotFoundError, match=rf"val.jsonl/train.csv.* exists; "
                                                rf"{re.escape(one_file)} is a file, not a "
                                                rf"folder: give one manifest file as "
                                                rf"--data.manifest={re.escape(one_file)}$"):
        load_split("manifest", "train", data_dir=one_file)


def test_label_map_names_every_id_and_skips_the_padding():
    label_map = LabelMap(["a", "b", "c"])
    assert label_map.names_of([0, 2, -1, -1]) == ["a", "c"]
    assert label_map.ids_of(["c", "a"]) == [2, 0]


def test_a_label_map_file_without_classes_or_with_one_twice_is_named(tmp_path):
    for name, names, message in (
            ("empty.json", [], r"a label map needs at least one class"),
            ("twice.json", ["a", "a"], r"duplicate class names in label map: \['a'\]"),
            ("half.json", ["a\ud83d"], r"class name 'a\\ud83d' holds U\+D83D.*: fix the name")):
        (tmp_path / name).write_text(json.dumps({"names": names}))
        with pytest.raises(ValueError, match=f"{tmp_path / name}: {message}"):
            LabelMap.load(str(tmp_path / name))


def test_coco_and_nuswide_class_names_are_read_in_nfc(tmp_path):
    data = _coco_dict()
    data["categories"][0]["name"] = "cafe\u0301"  # as a macOS tool may write it
    ann, img_dir = _write_coco(tmp_path / "coco", data)
    assert "caf\u00e9" in load_coco(ann, img_dir)[1].names
    root = tmp_path / "nus"
    _write_nuswide(root)
    (root / "Concepts81.txt").write_text("animal\r\ncafe\u0301\r\nwater\r\n")
    for split in ("Train", "Test"):
        labels = root / "Groundtruth" / "TrainTestLabels"
        os.rename(labels / f"Labels_sky_{split}.txt", labels / f"Labels_cafe\u0301_{split}.txt")
    examples, label_map, _ = load_nuswide(str(root), "train")
    assert label_map.names == ("animal", "caf\u00e9", "water") and examples  # files found


def test_coco_and_nuswide_class_lists_naming_one_class_twice_are_named(tmp_path):
    data = _coco_dict()
    data["categories"][1]["name"] = data["categories"][0]["name"]
    ann, img_dir = _write_coco(tmp_path / "coco", data)
    with pytest.raises(DataFileError, match=rf"{ann}: categories: duplicate class names"):
        load_coco(ann, img_dir)
    root = tmp_path / "nus"
    _write_nuswide(root)
    (root / "Concepts81.txt").write_text("animal\nsky\nanimal\n")
    with pytest.raises(DataFileError, match=r"Concepts81.txt: duplicate class names"):
        load_nuswide(str(root), "train")
    _write_nuswide(tmp_path / "nus2")
    with pytest.raises(DataLabelMapError, match="Concepts81.txt"):
        load_nuswide(str(tmp_path / "nus2"), "train", LabelMap(["animal"], source="x.json"))


def test_a_json_manifest_may_name_a_file_whose_name_is_not_utf8(tmp_path):
    # json.dump of os.listdir()'s name writes the byte 0xE9 as "\udce9", which open() takes.
    name = os.fsdecode(b"caf\xe9.png")
    _touch(tmp_path / name)
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": name, "labels": ["x"]}) + "\n")
    examples, _, _ = load_manifest(str(tmp_path / "m.jsonl"))
    assert [os.path.basename(e.image) for e in examples] == [name]
