"""Tests for ofrnn_tf/evaluation/predictor.py and predict.py.

Fast tests use a run directory made by hand (run config, a freshly initialised
checkpoint, calibration.json, label_map.json) over a tiny random CNN `Backbone`;
the slow ones use the real EfficientNet-Lite0 backbone, the CLI as a child process,
and the shared trained tiny run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ofrnn_tf.decoding.beam_search import make_decoder
from ofrnn_tf.evaluation.predictor import Predictor
from ofrnn_tf.features.backbones import Backbone
from ofrnn_tf.features.images import decode_and_resize
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.training.run_config import RunConfig
from ofrnn_tf.training.trainer import build_model

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("circle", "square", "stripe", "dot", "ring")
TINY_BACKBONE = "tiny_test_cnn"
TAU, BEAM, MAX_STEPS = 0.05, 2, 3


def tiny_backbone(image_size: int = 32) -> Backbone:
    """A random two-layer CNN giving 4x4x8 maps from 32x32 images."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu", name="maps")(x)
    return Backbone(TINY_BACKBONE, "maps", keras.Model(inputs, x),
                    lambda images: tf.cast(images, tf.float32) / 127.5 - 1.0, image_size)


def make_run(workdir: Path, backbone_name: str, feature_shape, *, variant: str = "order_free",
             tau: float = TAU, calibrate: bool = True) -> Path:
    """A finished-looking run directory with freshly initialised weights."""
    config = RunConfig(backbone=backbone_name, label_names=NAMES, variant=variant,
                       lstm_units=16, attention_units=16, fc_units=16, max_steps=MAX_STEPS,
                       beam_size=3, min_labels=1)
    config.save(str(workdir))
    LabelMap(NAMES).save(str(workdir))
    keras.utils.set_random_seed(0)
    height, width, depth = feature_shape
    model = build_model(config, (height * width, depth))
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                               str(workdir / "checkpoints"), max_to_keep=1).save()
    if calibrate:
        (workdir / "calibration.json").write_text(json.dumps(
            {"tau": tau, "beam_size": BEAM, "min_labels": 1, "max_steps": MAX_STEPS,
             "objective": "mean_f1"}))
    return workdir


def write_images(folder: Path) -> list[Path]:
    """Three real JPEGs of different sizes (one grayscale) and one corrupt file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (size, mode) in enumerate([((64, 48), "RGB"), ((40, 40), "L"), ((90, 30), "RGB")]):
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3 if mode == "RGB" else 1),
                              dtype=np.uint8)
        path = folder / f"img{i}.jpg"
        Image.fromarray(pixels.squeeze()).convert(mode).save(path, quality=90)
        paths.append(path)
    corrupt = folder / "broken.jpg"
    corrupt.write_bytes(paths[0].read_bytes()[:300])  # a JPEG cut short
    return paths[:1] + [corrupt] + paths[1:]


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, backbone):
    return make_run(tmp_path_factory.mktemp("run"), TINY_BACKBONE, backbone.feature_shape)


@pytest.fixture(scope="module")
def predictor(workdir, backbone):
    return Predictor.from_workdir(str(workdir), backbone=backbone, batch_size=2)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"))


def reference_outputs(predictor: Predictor, paths) -> dict:
    """decode_and_resize + backbone + make_decoder, outside the predictor."""
    pixels = tf.stack([decode_and_resize(tf.io.read_file(str(p)), predictor.image_size)
                       for p in paths])
    height, width, depth = predictor.backbone.feature_shape
    features = tf.reshape(predictor.backbone(pixels), [-1, height * width, depth])
    decoder = make_decoder(predictor.model, beam_size=predictor.beam_size,
                           max_steps=predictor.max_steps, threshold=predictor.tau,
                           min_labels=predictor.min_labels)
    return {k: v.numpy() for k, v in decoder(features).items()}


def test_from_workdir_reads_calibration(predictor):
    assert (predictor.tau, predictor.beam_size, predictor.min_labels) == (TAU, BEAM, 1)
    assert predictor.max_steps == MAX_STEPS and predictor.label_map.names == NAMES


def test_predict_files_reports_corrupt_file_and_predicts_the_rest(predictor, images):
    results = predictor.predict_files(images)
    assert [r["image"] for r in results] == [str(p) for p in images]
    error = results[1]
    assert set(error) == {"image", "error"}
    assert error["error"].startswith(f"{images[1]}: ") and "JPEG" in error["error"]
    good = [results[0], results[2], results[3]]
    for result in good:
        n = len(result["labels"])
        assert 1 <= n <= MAX_STEPS
        assert result["labels"] == [NAMES[c] for c in result["label_ids"]]
        assert len(result["scores"]) == len(result["step_probabilities"]) == n
        assert result["attention"].shape == (n, 4, 4)
        np.testing.assert_allclose(result["attention"].sum(axis=(1, 2)), 1.0, rtol=1e-5)
        assert set(result["all_scores"]) == set(NAMES)
        assert result["scores"] == [result["all_scores"][name] for name in result["labels"]]
    # The broken file shared its batch with images[0]; the others are unaffected by it.
    alone = predictor.predict_files([images[0], images[2], images[3]])
    for a, b in zip(good, alone):
        assert a["label_ids"] == b["label_ids"]
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5)


def test_missing_file_is_an_error_entry(predictor, tmp_path):
    missing = tmp_path / "nope.png"
    (result,) = predictor.predict_files([missing])
    assert result == {"image": str(missing), "error": f"{missing}: No such file or directory"}


def test_predictions_equal_decoder_on_backbone_features(predictor, images):
    paths = [images[0], images[2], images[3]]
    results = predictor.predict_files(paths)
    expected = reference_outputs(predictor, paths)
    for i, result in enumerate(results):
        n = int(expected["num_labels"][i])
        assert result["label_ids"] == expected["labels"][i][:n].tolist()
        np.testing.assert_allclose(result["scores"], expected["scores"][i][result["label_ids"]],
                                   rtol=1e-5)
        np.testing.assert_allclose(result["log_prob"], expected["log_prob"][i], rtol=1e-5)
        np.testing.assert_allclose(result["attention"].reshape(n, -1),
                                   expected["attention"][i][:n], rtol=1e-4, atol=1e-6)


def test_step_probabilities_multiply_to_the_path_probability(predictor, images):
    for result in predictor.predict_files([images[0], images[2], images[3]]):
        probabilities = result["step_probabilities"]
        assert all(0.0 < p < 1.0 for p in probabilities)
        assert math.fsum(math.log(p) for p in probabilities) == pytest.approx(
            result["log_prob"], abs=1e-4)
        assert math.exp(result["log_prob"]) >= TAU or len(probabilities) == 1


def test_predict_bytes_matches_files_and_names_entries(predictor, images):
    data = [p.read_bytes() for p in images]
    results = predictor.predict_bytes(data, names=["a", "b", "c", "d"], attention=False,
                                      all_scores=False)
    files = predictor.predict_files(images)
    assert results[1]["error"].startswith("b: ")
    for got, want in zip(results[::2] + results[3:], files[::2] + files[3:]):
        assert "attention" not in got and "all_scores" not in got
        assert got["label_ids"] == want["label_ids"]
    with pytest.raises(TypeError, match=r"images\[0\] must be bytes"):
        predictor.predict_bytes(["not bytes"])


def test_tau_and_beam_overrides(workdir, backbone, images):
    loose = Predictor.from_workdir(str(workdir), tau=0.0, beam_size=1, backbone=backbone)
    strict = Predictor.from_workdir(str(workdir), tau=1.0, backbone=backbone)
    assert (loose.tau, loose.beam_size, strict.beam_size) == (0.0, 1, BEAM)
    paths = [images[0], images[2]]
    assert [len(r["labels"]) for r in loose.predict_files(paths)] == [MAX_STEPS] * 2
    assert [len(r["labels"]) for r in strict.predict_files(paths)] == [1, 1]


def test_from_workdir_errors(tmp_path, backbone):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        Predictor.from_workdir(str(tmp_path), backbone=backbone)
    run = make_run(tmp_path / "uncalibrated", TINY_BACKBONE, backbone.feature_shape,
                   calibrate=False)
    with pytest.raises(FileNotFoundError, match="calibration.json is missing"):
        Predictor.from_workdir(str(run), backbone=backbone)
    assert Predictor.from_workdir(str(run), tau=0.3, backbone=backbone).tau == 0.3
    other = make_run(tmp_path / "other", "efficientnet_lite0", backbone.feature_shape)
    with pytest.raises(ValueError, match="efficientnet_lite0 features; got a tiny_test_cnn"):
        Predictor.from_workdir(str(other), backbone=backbone)


def test_baseline_variant_has_no_attention(tmp_path, backbone, images):
    run = make_run(tmp_path / "baseline", TINY_BACKBONE, backbone.feature_shape,
                   variant="baseline", tau=0.5)
    predictor = Predictor.from_workdir(str(run), backbone=backbone)
    (result,) = predictor.predict_files([images[0]])
    assert "attention" not in result and len(result["labels"]) >= 1
    np.testing.assert_allclose(result["step_probabilities"], result["scores"], rtol=1e-6)


# -- the real backbone and the command line -------------------------------------------


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("lite0_run"), "efficientnet_lite0", (7, 7, 1280))


@pytest.mark.slow
def test_real_backbone_predictions_equal_decoder_on_features(lite0_run, images):
    predictor = Predictor.from_workdir(str(lite0_run), batch_size=4)
    assert predictor.backbone.feature_shape == (7, 7, 1280)
    paths = [images[0], images[2], images[3]]
    results = predictor.predict_files(paths)
    expected = reference_outputs(predictor, paths)
    for i, result in enumerate(results):
        n = int(expected["num_labels"][i])
        assert result["label_ids"] == expected["labels"][i][:n].tolist()
        np.testing.assert_allclose(result["log_prob"], expected["log_prob"][i], rtol=1e-4)


@pytest.mark.slow
def test_cli_on_a_folder_writes_json_lines(lite0_run, images, tmp_path):
    out = tmp_path / "out.jsonl"
    folder = images[0].parent
    (folder / "notes.txt").write_text("not an image, not listed")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, "predict.py", f"--workdir={lite0_run}", str(folder), str(empty),
         f"--output={out}", "--batch_size=2", "--all_scores"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    expected_files = sorted(str(folder / p.name) for p in images)
    assert [r["image"] for r in lines] == expected_files + [str(empty)]
    errors = {r["image"] for r in lines if "error" in r}
    assert errors == {str(images[1]), str(empty)}
    for record in lines:
        if "error" not in record:
            assert set(record) == {"image", "labels", "label_ids", "scores",
                                   "step_probabilities", "log_prob", "all_scores"}
    assert "3 image(s) predicted, 2 failed" in done.stderr

    bad_only = subprocess.run(
        [sys.executable, "predict.py", f"--workdir={lite0_run}", str(images[1])],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad_only.returncode == 1
    assert json.loads(bad_only.stdout)["error"].startswith(f"{images[1]}: ")


@pytest.mark.slow
def test_trained_run_matches_in_process_decoder(tiny_export_run, in_process_decoder):
    predictor = Predictor.from_workdir(str(tiny_export_run.workdir), batch_size=3)
    paths = list(tiny_export_run.test_images[:5])
    results = predictor.predict_files(paths)
    expected = in_process_decoder.decode_images([p.read_bytes() for p in paths])
    assert [r["labels"] for r in results] == in_process_decoder.names(expected)
    for i, result in enumerate(results):
        np.testing.assert_allclose(result["log_prob"], expected["log_prob"][i], rtol=1e-4)
