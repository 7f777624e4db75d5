"""Tests for ofrnn_tf/inference/predictor.py and predict.py.

Fast tests use a run folder made by hand (`make_fake_run`) over a tiny random CNN
`Backbone`; the slow ones use the real EfficientNet-Lite0 backbone, the CLI as a child
process, and the shared trained tiny run.
"""

from __future__ import annotations

import errno
import gc
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from absl import app
from PIL import Image

from conftest import FAKE_BEAM as BEAM
from conftest import FAKE_MAX_STEPS as MAX_STEPS
from conftest import FAKE_NAMES as NAMES
from conftest import FAKE_SCORE_MIX as SCORE_MIX
from conftest import FAKE_TAU as TAU
from conftest import ROOT, ctrl_c_as_in_a_terminal, run_checked
from ofrnn_tf.cli.image_inputs import (
    close_iterable, expand_inputs, given_inputs, merge_results, open_report,
    pixel_limit_remedied, write_report)
from ofrnn_tf.cli.client import versions_noted, with_remedies
from ofrnn_tf.cli.predict import _with_pictures
from ofrnn_tf.decoding.beam_search import make_decoder, mix_scores
from ofrnn_tf.features.images import decode_and_resize
from ofrnn_tf.inference import Predictor, UncalibratedBeamSizeError
from ofrnn_tf.inference.module import BeamSizeError
from ofrnn_tf.run_dir import RunDir
from ofrnn_tf.status import progress_bar


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, make_fake_run):
    """A fake run folder over the tiny backbone's maps (`make_fake_run`)."""
    return make_fake_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def predictor(workdir, tiny_backbone):
    """The fake run's `Predictor`, two images a batch (batches split and merge)."""
    return Predictor.from_run(str(workdir), backbone=tiny_backbone, batch_size=2)


@pytest.fixture(scope="module")
def images(sample_images):
    return sample_images


def reference_outputs(predictor: Predictor, paths, score_mix: float) -> dict:
    """decode_and_resize + backbone (its maps in float16, as the feature cache holds them)
    + make_decoder, assembled outside the predictor; the
    ranking scores mixed as evaluation mixes them (`mix_scores` of the decoder's path
    scores and v_prob) with `score_mix`, the weight the run's calibration.json holds."""
    module = predictor.module
    pixels = tf.stack([decode_and_resize(tf.io.read_file(str(p)), module.image_size)
                       for p in paths])
    height, width, depth = module.feature_shape
    maps = tf.cast(tf.cast(module.backbone(pixels), tf.float16), tf.float32)  # as extracted
    features = tf.reshape(maps, [-1, height * width, depth])
    decoder = make_decoder(module.model, beam_size=module.beam_size,
                           max_steps=module.max_steps, threshold=float(module.tau.numpy()),
                           min_labels=module.min_labels, all_steps=True)
    out = {k: v.numpy() for k, v in decoder(features).items()}
    out["scores"] = mix_scores(out["v_prob"], out["path_scores"], np.float32(score_mix))
    return out


def calibrated_score_mix(workdir) -> float:
    run_dir = RunDir(str(workdir))
    return float(run_dir.calibration(run_dir.load()[0].decoding.beam_size)["score_mix"])


def test_from_run_reads_calibration(predictor):
    module = predictor.module
    assert (float(module.tau.numpy()), float(module.score_mix.numpy()), module.beam_size,
            module.min_labels) == (pytest.approx(TAU), pytest.approx(SCORE_MIX), BEAM, 1)
    assert module.max_steps == MAX_STEPS and predictor.label_map.names == NAMES


def test_the_decision_rule_says_whether_tau_was_chosen_on_validation(predictor, workdir,
                                                                      tiny_backbone):
    assert predictor.module.decision_rule() == (
        f"beam search of width K={BEAM}: labels are added while the path's probability stays "
        f"at least τ={TAU:.4g} (chosen on validation), and at least 1 whatever τ")
    given = Predictor.from_run(str(workdir), tau=0.5, backbone=tiny_backbone)
    assert "at least τ=0.5 (given, not the one chosen on validation)," in (
        given.module.decision_rule())


def test_min_labels_may_be_given_within_what_a_prediction_holds(workdir, tiny_backbone, images):
    from ofrnn_tf.inference.module import MinLabelsError

    with pytest.raises(MinLabelsError, match=rf"min_labels={MAX_STEPS + 1} cannot hold: a "
                                             rf"prediction holds 0 to {MAX_STEPS} labels \(T_max"):
        Predictor.from_run(str(workdir), backbone=tiny_backbone, min_labels=MAX_STEPS + 1)
    # τ = 1 keeps no label but those asked for whatever τ.
    for wanted in (0, MAX_STEPS):
        predictor = Predictor.from_run(str(workdir), backbone=tiny_backbone, tau=1.0,
                                       min_labels=wanted)
        results = [r for r in predictor.predict_files(images) if "error" not in r]
        assert results and all(len(r["labels"]) == wanted for r in results)
    done = run_checked([sys.executable, "predict.py", f"--workdir={workdir}",
                        "--min_labels=-1", str(images[0])], expect_failure=True)
    assert "--min_labels must be 0 or more, got -1" in done.stderr


def test_keep_bytes_gives_each_predicted_result_the_bytes_it_read(predictor, images):
    kept = predictor.predict_files(images, keep_bytes=True)
    assert [r.get("image_bytes") for r in kept] == [
        None if i == 1 else p.read_bytes() for i, p in enumerate(images)]  # [1]: an error
    plain = predictor.predict_files(images)
    assert not any("image_bytes" in r for r in plain)
    assert [r.get("labels") for r in plain] == [r.get("labels") for r in kept]


def test_predict_files_reports_corrupt_file_and_predicts_the_rest(predictor, images):
    results = predictor.predict_files(images)
    assert [r["image"] for r in results] == [str(p) for p in images]
    error = results[1]
    assert set(error) == {"image", "error"}
    assert error["error"].startswith(f"{images[1]}: its JPEG header (") and (
        ") is sound but the data behind it is truncated or corrupt (" in error["error"])
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


@pytest.mark.parametrize("kind", ["PNG", "GIF"])
def test_a_damaged_png_or_gif_among_other_images_is_named_with_what_is_wrong(
        predictor, images, tmp_path, kind):
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, format=kind)
    good = buf.getvalue()
    damaged = {"cut": good[:len(good) * 2 // 3],
               "flipped": good[:40] + bytes(b ^ 0xFF for b in good[40:-12]) + good[-12:]}
    paths = []
    for name, data in damaged.items():
        paths.append(str(tmp_path / f"{name}.{kind.lower()}"))
        with open(paths[-1], "wb") as f:
            f.write(data)
    results = predictor.predict_files([images[0], *paths], attention=False)
    assert "labels" in results[0]
    for path, result in zip(paths, results[1:]):
        assert result["error"].startswith(
            f"{path}: its {kind} header (40x30) is sound but the data behind it is truncated "
            f"or corrupt (Invalid {kind}"), result


def test_missing_file_is_an_error_entry(predictor, tmp_path):
    missing = tmp_path / "nope.png"
    (result,) = predictor.predict_files([missing])
    assert result == {"image": str(missing), "error": f"{missing}: No such file or directory"}


@pytest.mark.timeout(60)
def test_a_pipe_nothing_writes_to_and_a_device_cost_their_own_lines(predictor, images,
                                                                      tmp_path, monkeypatch):
    # A plain open() of the pipe waits for a writer for ever; a link to a device
    # (/dev/zero) would be read until memory runs out: ofrnn-client refuses both too.
    from ofrnn_tf import input_files

    monkeypatch.setattr(input_files, "PIPE_WAIT_SECONDS", 0.3)
    silent = tmp_path / "silent.png"
    os.mkfifo(silent)
    device = tmp_path / "device.png"
    device.symlink_to(os.devnull)
    inputs = [images[0], silent, device, images[2]]
    results = predictor.predict_files(inputs)
    # The image after the two errors of its batch keeps its own name.
    assert [r["image"] for r in results] == [str(p) for p in inputs]
    assert results[1:3] == [
        {"image": str(silent), "error": f"{silent}: a pipe nothing was written to within 0.3 s"},
        {"image": str(device), "error": f"{device}: not a regular file or a pipe"}]
    assert [r["labels"] for r in (results[0], results[3])] == [
        r["labels"] for r in predictor.predict_files([images[0], images[2]])]


def test_iter_files_gives_each_batch_as_it_is_predicted(predictor, images, monkeypatch):
    calls = []
    predict_pixels = predictor.predict_pixels
    monkeypatch.setattr(predictor, "predict_pixels",
                        lambda pixels: calls.append(len(pixels)) or predict_pixels(pixels))
    monkeypatch.setattr(predictor, "batch_size", 1)
    results = predictor.iter_files([images[0], images[2], images[3]], attention=False)
    assert next(results)["image"] == str(images[0]) and calls == [1]
    assert [r["image"] for r in results] == [str(images[2]), str(images[3])]
    assert calls == [1, 1, 1]
    with pytest.raises(TypeError, match="pass \\[path\\] for a single image"):
        predictor.iter_files(str(images[0]))  # said at the call, not at the first result


def test_the_progress_bar_ends_before_the_summary(predictor, images, tmp_path, capsys):
    # A stream's consumer stops at the last input: the bar must still reach its end, and
    # close, before the summary is printed.
    paths = [str(images[0]), str(images[2]), str(images[3])]
    with open_report(str(tmp_path / "out.jsonl")) as out:
        results = predictor.iter_files(paths, attention=False, progress=True)
        assert write_report(merge_results(paths, results), out, "predict", "predicted") == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("[predict] 3 image(s) predicted"), lines
    assert lines[-2].startswith("predicting: 100%") and "3/3" in lines[-2], lines


def _inner_results(closed: list):
    """Three results of a stream that notes in `closed` when it is closed."""
    try:
        for name in ("a.jpg", "b.jpg", "c.jpg"):
            yield {"image": name, "labels": [], "model_version": 1}
    finally:
        closed.append(True)


def _lines_of_the_client(results):
    lines = merge_results(["a.jpg", "b.jpg", "c.jpg"], with_remedies(versions_noted(results)))
    return progress_bar(lines, total=3, enabled=False)


@pytest.mark.parametrize("wrap", [
    versions_noted,
    lambda results: pixel_limit_remedied(results, " (raise it)"),
    lambda results: merge_results(["a.jpg", "b.jpg", "c.jpg"], results),
    lambda results: _with_pictures(results, ["a.jpg", "b.jpg", "c.jpg"], "pictures"),
    _lines_of_the_client,
], ids=["versions_noted", "pixel_limit_remedied", "merge_results", "with_pictures",
        "client_lines_under_a_bar"])
def test_a_stopped_report_closes_the_stream_its_lines_come_from_at_once(wrap):
    """A report that stops (`write_report` closes its lines) closes each generator the
    lines pass through, and the stream they come from (its progress bar, its gRPC
    channel), then and there: not when CPython collects them, which a reference held
    elsewhere (here the test's own) puts off."""
    closed = []
    results = _inner_results(closed)
    lines = wrap(results)
    next(iter(lines))
    close_iterable(lines)
    assert closed == [True]


def test_a_full_disk_closes_the_progress_bar_before_the_command_says_so(
        predictor, images, tmp_path, capsys, monkeypatch):
    # The bar of the predictions a full disk stops is closed as the error leaves the
    # report, not when the stopped predictions are collected: its last state was drawn
    # after the line that says how far the report got.
    from ofrnn_tf.cli import image_inputs

    real_write = os.write
    paths = [str(images[0]), str(images[2]), str(images[3])]
    monkeypatch.setattr(predictor, "batch_size", 1)

    def filling(fd, data):  # room for the first image's line only
        if str(images[2]).encode() in data:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(image_inputs.os, "write", filling)
    with open_report(str(tmp_path / "out.jsonl")) as out:
        results = predictor.iter_files(paths, attention=False, progress=True)
        with pytest.raises(OSError) as caught:
            write_report(merge_results(paths, results), out, "predict", "predicted")
    assert capsys.readouterr().err.splitlines()[-1].startswith("predicting:  67%")
    del caught, results
    gc.collect()
    assert capsys.readouterr().err == ""  # nothing drawn after the command's last line


def test_a_url_is_said_not_to_be_fetched():
    assert expand_inputs(["https://example.com/cat.jpg", "s3://bucket/a.png"]) == [
        {"image": "https://example.com/cat.jpg",
         "error": "https://example.com/cat.jpg: a URL, which is not fetched: download the "
                  "image and give its file"},
        {"image": "s3://bucket/a.png",
         "error": "s3://bucket/a.png: a URL, which is not fetched: download the image and "
                  "give its file"}]


def test_a_quoted_wildcard_pattern_is_said_not_to_be_expanded(tmp_path):
    (tmp_path / "a*.jpg").write_bytes(b"x")  # a file of that name is a file
    pattern = str(tmp_path / "*.png")
    assert expand_inputs([pattern, str(tmp_path / "a*.jpg")]) == [
        {"image": pattern,
         "error": f"{pattern}: no such file; a pattern is not expanded here: leave it "
                  f"unquoted for the shell to expand, or list the files with --files_from"},
        str(tmp_path / "a*.jpg")]


def assert_predictions_equal_reference(predictor: Predictor, paths, rtol: float,
                                       score_mix: float = SCORE_MIX) -> None:
    """The predictor's labels, scores, path log-probabilities and attention are the reference's."""
    results = predictor.predict_files(paths)
    expected = reference_outputs(predictor, paths, score_mix)
    for i, result in enumerate(results):
        n = int(expected["num_labels"][i])
        assert result["label_ids"] == expected["labels"][i][:n].tolist()
        np.testing.assert_allclose(result["scores"], expected["scores"][i][result["label_ids"]],
                                   rtol=rtol)
        np.testing.assert_allclose([result["all_scores"][name] for name in NAMES],
                                   expected["scores"][i], rtol=rtol)
        np.testing.assert_allclose(result["log_prob"], expected["log_prob"][i], rtol=rtol)
        np.testing.assert_allclose(result["attention"].reshape(n, -1),
                                   expected["attention"][i][:n], rtol=1e-4, atol=1e-6)


def test_predictions_equal_decoder_on_backbone_features(predictor, images):
    assert_predictions_equal_reference(predictor, [images[0], images[2], images[3]], rtol=1e-5)


def test_the_decoder_reads_the_backbones_maps_rounded_as_the_feature_cache_holds_them(
        predictor, images):
    """Training and evaluation read float16 maps: the served model rounds its backbone's
    maps alike (a float16 cast and back), or a score could fall on the other side of τ.
    The untrained model here is too flat for the predictions to show it."""
    module = predictor.module
    pixels = module._pixels(tf.constant([images[0].read_bytes(), images[2].read_bytes()]))
    raw = module.backbone(pixels).numpy()
    maps = module._maps(pixels).numpy()
    assert not np.array_equal(maps, raw)  # the rounding changes something here
    np.testing.assert_array_equal(maps, raw.astype(np.float16).astype(np.float32))


def test_step_probabilities_multiply_to_the_path_probability(predictor, images):
    for result in predictor.predict_files([images[0], images[2], images[3]]):
        probabilities = result["step_probabilities"]
        assert all(0.0 < p < 1.0 for p in probabilities)
        assert math.fsum(math.log(p) for p in probabilities) == pytest.approx(
            result["log_prob"], abs=1e-4)
        assert math.exp(result["log_prob"]) >= TAU or len(probabilities) == 1


def test_empty_bytes_are_named_as_such(predictor):
    assert predictor.predict_bytes([b""], names=["empty.png"]) == [
        {"image": "empty.png", "error": "empty.png: empty (no image bytes)"}]


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


def test_tau_and_beam_overrides(workdir, tiny_backbone, images):
    loose = Predictor.from_run(str(workdir), tau=0.0, beam_size=1, backbone=tiny_backbone)
    strict = Predictor.from_run(str(workdir), tau=1.0, backbone=tiny_backbone)
    assert (float(loose.module.tau.numpy()), loose.module.beam_size) == (0.0, 1)
    assert strict.module.beam_size == BEAM
    paths = [images[0], images[2]]
    assert [len(r["labels"]) for r in loose.predict_files(paths)] == [MAX_STEPS] * 2
    assert [len(r["labels"]) for r in strict.predict_files(paths)] == [1, 1]


def test_beam_width_without_its_calibration_is_refused(workdir, tiny_backbone):
    with pytest.raises(UncalibratedBeamSizeError,
                       match=r"no τ for beam width K=5 \(calibrated: \[2\]\).*"
                             r"--mode=eval --decoding.beam_size=5"):
        Predictor.from_run(str(workdir), beam_size=5, backbone=tiny_backbone)


def test_a_beam_wider_than_the_runs_label_paths_is_refused(workdir, tiny_backbone):
    # 5 classes, T_max = 3: 60 paths. Refused before its τ is asked for (with a τ given, the
    # graph's trace raised it).
    for tau in (None, 0.3):
        with pytest.raises(BeamSizeError, match=rf"^beam_size=61 is wider than the 60 distinct "
                                                rf"label paths of T_max = {MAX_STEPS} labels "
                                                rf"from C = {len(NAMES)} classes .*; use at "
                                                rf"most 60$"):
            Predictor.from_run(str(workdir), beam_size=61, tau=tau, backbone=tiny_backbone)


def test_a_runs_own_beam_too_wide_is_named_as_the_runs(workdir, tiny_backbone, tmp_path):
    # No --beam_size given: the width is the run's setting, which the message must not
    # present as a flag of the command.
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    run = json.loads((copy / "run.json").read_text())
    run["config"].setdefault("decoding", {})["beam_size"] = 61
    (copy / "run.json").write_text(json.dumps(run))
    with pytest.raises(BeamSizeError, match=r"^beam_size=61 is wider than .* \(the run's own "
                                            r"decoding.beam_size, in .*run.json: give a "
                                            r"narrower one\)$") as raised:
        Predictor.from_run(str(copy), tau=0.3, backbone=tiny_backbone)
    assert not raised.value.given


def test_from_run_errors(tmp_path, tiny_backbone, make_fake_run):
    with pytest.raises(FileNotFoundError, match="is not a run folder"):
        Predictor.from_run(str(tmp_path), backbone=tiny_backbone)
    run = make_fake_run(tmp_path / "uncalibrated", calibrate=False)
    with pytest.raises(UncalibratedBeamSizeError, match="calibrated: none"):
        Predictor.from_run(str(run), backbone=tiny_backbone)
    assert float(Predictor.from_run(str(run), tau=0.3, backbone=tiny_backbone)
                 .module.tau.numpy()) == pytest.approx(0.3)
    other = make_fake_run(tmp_path / "other", feature_shape=(7, 7, 1280))
    with pytest.raises(ValueError, match=r"gives \(4, 4, 8\) maps but the run .* was trained "
                                         r"on \(7, 7, 1280\)"):
        Predictor.from_run(str(other), backbone=tiny_backbone)


def test_image_above_the_pixel_limit_is_refused_unread(workdir, tiny_backbone, tmp_path):
    big = tmp_path / "big.png"
    Image.new("1", (3000, 2000)).save(big)
    predictor = Predictor.from_run(str(workdir), backbone=tiny_backbone, max_image_pixels=10**6)
    (result,) = predictor.predict_files([big])
    assert result["error"] == (f"{big}: PNG of 3000x2000 = 6000000 pixels is above the limit "
                               f"of 1000000 pixels")


def test_an_array_above_the_pixel_limit_is_refused_before_it_is_encoded(workdir, tiny_backbone,
                                                                       monkeypatch):
    predictor = Predictor.from_run(str(workdir), backbone=tiny_backbone, max_image_pixels=10**6)
    encode_png, encoded = tf.io.encode_png, []
    monkeypatch.setattr(tf.io, "encode_png",
                        lambda image: encoded.append(image.shape) or encode_png(image))
    big, small = np.zeros((2000, 3000), np.uint8), np.zeros((40, 30, 3), np.uint8)
    results = predictor.predict_arrays([big, small], attention=False)
    assert results[0] == {"image": "<image 0>", "error": (
        "<image 0>: array of 2000x3000 (H x W) = 6000000 pixels is above the limit of "
        "1000000 pixels")}
    assert "labels" in results[1] and encoded == [(40, 30, 3)]


def test_baseline_variant_has_no_attention(tmp_path, tiny_backbone, images, make_fake_run):
    run = make_fake_run(tmp_path / "baseline", variant="baseline", tau=0.5)
    predictor = Predictor.from_run(str(run), backbone=tiny_backbone)
    (result,) = predictor.predict_files([images[0]])
    assert "attention" not in result and len(result["labels"]) >= 1
    np.testing.assert_allclose(result["step_probabilities"], result["scores"], rtol=1e-6)
    # M_map alone has no beam: any width uses the run's own τ.
    wider = Predictor.from_run(str(run), beam_size=5, backbone=tiny_backbone)
    assert float(wider.module.tau.numpy()) == pytest.approx(0.5)
    assert wider.predict_files([images[0]])[0]["labels"] == result["labels"]


# -- the real backbone and the command line -------------------------------------------


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory, make_fake_run):
    """A fake run over EfficientNet-Lite0's top maps (224-pixel images, random head)."""
    return make_fake_run(tmp_path_factory.mktemp("lite0_run"), backbone="efficientnet_lite0",
                         feature_shape=(7, 7, 1280), image_size=224,
                         feature_layer="top_activation")


@pytest.mark.slow
def test_real_backbone_predictions_equal_decoder_on_features(lite0_run, images):
    predictor = Predictor.from_run(str(lite0_run), batch_size=4)
    assert predictor.module.backbone.feature_shape == (7, 7, 1280)
    assert_predictions_equal_reference(predictor, [images[0], images[2], images[3]], rtol=1e-4)


@pytest.mark.slow
def test_cli_on_a_folder_writes_json_lines(lite0_run, images, tmp_path):
    out = tmp_path / "out.jsonl"
    folder = images[0].parent
    (folder / "notes.txt").write_text("not an image")
    (folder / "photo.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, "predict.py", f"--workdir={lite0_run}", str(folder), str(empty),
         f"--output={out}", "--batch_size=2", "--all_scores",
         f"--attention_dir={tmp_path / 'attention'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    expected_files = sorted(str(folder / p.name) for p in images) + [
        str(folder / "notes.txt"), str(folder / "photo.webp")]
    assert [r["image"] for r in lines] == expected_files + [str(empty)]
    errors = {r["image"]: r["error"] for r in lines if "error" in r}
    assert set(errors) == {str(images[1]), str(empty), str(folder / "notes.txt"),
                           str(folder / "photo.webp")}
    assert errors[str(folder / "photo.webp")] == (
        f"{folder / 'photo.webp'}: skipped by its extension (.webp): accepted formats are "
        f"JPEG, PNG, GIF and BMP")
    pictures = []
    for place, record in enumerate(lines):
        if "error" not in record:
            assert set(record) == {"image", "labels", "label_ids", "scores",
                                   "step_probabilities", "log_prob", "all_scores",
                                   "attention_png"}
            stem = os.path.splitext(os.path.basename(record["image"]))[0]
            assert record["attention_png"] == str(tmp_path / "attention" / f"{place:03d}_{stem}.png")
            with Image.open(record["attention_png"]) as picture:  # the image, then a panel a step
                assert picture.format == "PNG" and picture.width > picture.height
            pictures.append(record["attention_png"])
    assert sorted(os.listdir(tmp_path / "attention")) == sorted(map(os.path.basename, pictures))
    assert (f"3 image(s) predicted, 4 failed or skipped; written to {out}; 3 attention "
            f"picture(s) in {tmp_path / 'attention'}") in done.stderr
    # The bar (pictures drawn as the lines go) ends before the summary, not after it.
    said = done.stderr.splitlines()
    summary = next(i for i, line in enumerate(said) if "image(s) predicted" in line)
    assert any(line.startswith("predicting: 100%") for line in said[:summary]), said
    assert not any(line.startswith("predicting") for line in said[summary:]), said
    assert re.search(r"\[predict\] beam search of width K=\d+: labels are added while the "
                     r"path's probability stays at least τ=[0-9.e-]+ \(chosen on validation\), "
                     r"and at least 1 whatever τ",
                     done.stderr), done.stderr
    assert "skipped by its extension (.txt)" in done.stderr

    for flag, message in ((f"--output={tmp_path / 'nowhere' / 'out.jsonl'}",
                           "--output=" + str(tmp_path / "nowhere" / "out.jsonl")),
                          ("--tau=1.5", "--tau must be a probability in [0, 1], got 1.5")):
        refused = subprocess.run(
            [sys.executable, "predict.py", f"--workdir={lite0_run}", str(images[0]), flag],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 1 and message in refused.stderr, refused.stderr[-2000:]
        assert "Traceback" not in refused.stderr

    bad_only = subprocess.run(
        [sys.executable, "predict.py", f"--workdir={lite0_run}", str(images[1])],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad_only.returncode == 1
    assert json.loads(bad_only.stdout)["error"].startswith(f"{images[1]}: ")

    # Its reader gone (`| head -1`), it ends quietly at its first line, as SIGPIPE would.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        unread = subprocess.run(
            [sys.executable, "predict.py", f"--workdir={lite0_run}", str(images[0]),
             str(images[2])], cwd=ROOT, env=env, stdout=write_end, stderr=subprocess.PIPE,
            text=True, timeout=300)
    finally:
        os.close(write_end)
    assert unread.returncode == 141, unread.stderr[-2000:]
    assert "Traceback" not in unread.stderr and "Exception ignored" not in unread.stderr

    # The pixel limit is the export's default unless --max_image_pixels sets it, as on
    # ofrnn-export; a refusal for it says so.
    limited = subprocess.run(
        [sys.executable, "predict.py", f"--workdir={lite0_run}", str(images[0]),
         "--max_image_pixels=100"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    error = json.loads(limited.stdout)["error"]
    assert "pixels is above the limit of 100 pixels" in error, error
    assert error.endswith(" (raise it with --max_image_pixels)")


@pytest.mark.slow
def test_cli_refuses_a_decoding_the_run_cannot_give_in_one_line(lite0_run, images, tmp_path,
                                                                make_fake_run):
    """What the run's calibration and variant allow is checked by the command: a width
    without its τ, more labels than a prediction holds, a beam wider than the label paths,
    and a baseline run's missing beam and attention are each refused in one line; a
    baseline run's labels are said to be M_map's classes above τ."""
    baseline = make_fake_run(tmp_path / "baseline", variant="baseline",
                             backbone="efficientnet_lite0", feature_shape=(7, 7, 1280),
                             image_size=224, feature_layer="top_activation")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def predict(run, *flags):
        return subprocess.run(
            [sys.executable, "predict.py", f"--workdir={run}", *flags, str(images[0])],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    for run, flags, message in (
            (lite0_run, ["--beam_size=3"],
             f"predict.py: {lite0_run / 'calibration.json'} has no τ for beam width K=3 "
             f"(calibrated: [{BEAM}]). Calibrate it on validation with `ofrnn-train "
             f"--workdir={lite0_run} --mode=eval --decoding.beam_size=3`. Or pass --tau."),
            (lite0_run, ["--min_labels=9"],
             f"predict.py: --min_labels=9 cannot hold: a prediction holds 0 to {MAX_STEPS} "
             f"labels"),
            (lite0_run, ["--beam_size=64", "--tau=0.1"],
             "predict.py: --beam_size=64 is wider than the 60 distinct label paths"),
            (baseline, ["--beam_size=2"],
             f"predict.py: --beam_size=2: {baseline} is a baseline run (M_map alone), which "
             f"has no beam"),
            (baseline, [f"--attention_dir={tmp_path / 'attention'}"],
             "predict.py: --attention_dir: the run's baseline variant has no attention to "
             "draw")):
        refused = predict(run, *flags)
        assert refused.returncode == 1 and message in refused.stderr, refused.stderr[-2000:]
        assert "Traceback" not in refused.stderr and refused.stdout == ""
    assert not (tmp_path / "attention").exists()

    done = predict(baseline)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["labels"]
    assert (f"[predict] M_map alone: the classes of score at least τ={TAU:.4g} (chosen on "
            f"validation) are the labels, and at least 1 whatever τ") in done.stderr, (
        done.stderr[-2000:])


@pytest.mark.slow
def test_cli_draws_an_image_read_from_a_pipe_from_the_bytes_it_read(lite0_run, images,
                                                                    tmp_path):
    """`cat photo.jpg | ofrnn-predict --attention_dir=... /dev/stdin`: the pipe gives its
    bytes once, so the picture is drawn from those the prediction read, not from the
    path opened again (which read nothing, and drew no picture)."""
    pictures = tmp_path / "attention"
    done = subprocess.run(
        [sys.executable, "predict.py", f"--workdir={lite0_run}", f"--attention_dir={pictures}",
         "/dev/stdin", str(images[0])],
        cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), input=images[0].read_bytes(),
        capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    piped, from_file = (json.loads(line) for line in done.stdout.splitlines())
    assert piped["image"] == "/dev/stdin" and piped["labels"] == from_file["labels"]
    assert piped["attention_png"] == str(pictures / "000_stdin.png"), done.stderr[-2000:]
    assert b"no attention picture" not in done.stderr
    with Image.open(piped["attention_png"]) as drawn, \
            Image.open(from_file["attention_png"]) as reference:
        assert drawn.size == reference.size  # the same image, the same panels


@pytest.mark.slow
def test_a_stopped_predict_keeps_the_lines_of_the_images_it_finished(lite0_run, images,
                                                                      tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"image": "earlier"}\n')
    command = [sys.executable, "predict.py", f"--workdir={lite0_run}", f"--output={out}",
               "--batch_size=1", *[str(images[0])] * 1000]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with subprocess.Popen(ctrl_c_as_in_a_terminal(command), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as proc:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            text = out.read_text()
            if "earlier" not in text and text.count("\n") >= 2:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert 2 <= len(lines) < 1000 and all(
        line["image"] == str(images[0]) and line["labels"] for line in lines), lines[-1]
    assert err.rstrip().endswith(
        f"interrupted; {len(lines)} of 1000 input(s) have their line in {out}; the first "
        f"without one is {images[0]}: run the same command with --resume to go on"), err[-2000:]


@pytest.mark.slow
def test_predict_with_resume_keeps_the_lines_written_and_predicts_the_rest(lite0_run, images,
                                                                           tmp_path):
    """The lines a stopped run wrote stay as they are (a line cut short at their end goes);
    the inputs after them are predicted, their pictures numbered by their place among all
    the inputs; once every input has its line, a rerun does nothing."""
    inputs = [str(images[0]), str(images[1]), str(images[2]), str(images[3])]
    out = tmp_path / "out.jsonl"
    kept = (json.dumps({"image": str(images[0]), "labels": ["kept"], "label_ids": [0],
                        "scores": [0.9], "step_probabilities": [0.9], "log_prob": -0.1})
            + f'\n{{"image": "{images[1]}", "error": "kept too"}}\n')
    out.write_text(kept + f'{{"image": "{images[2]}", "lab')  # killed while writing it
    command = [sys.executable, "predict.py", f"--workdir={lite0_run}", f"--output={out}",
               f"--attention_dir={tmp_path / 'attention'}", "--resume", *inputs]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    assert text.startswith(kept), text[:500]
    lines = [json.loads(line) for line in text[len(kept):].splitlines()]
    assert [line["image"] for line in lines] == inputs[2:]
    stem = images[3].stem
    assert lines[1]["attention_png"] == str(tmp_path / "attention" / f"003_{stem}.png")
    assert ("3 image(s) predicted, 1 failed or skipped, 2 of them on the lines --resume kept"
            in done.stderr), done.stderr[-2000:]

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and out.read_text() == text, again.stderr[-2000:]
    assert again.stderr.splitlines()[-1] == (
        f"[predict] every input already has its line in {out}: nothing to do")
    other = subprocess.run(command[:-1], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    assert other.returncode == 1 and out.read_text() == text
    assert f"--resume: {out} holds 4 lines, more than the 3 inputs given" in other.stderr


@pytest.mark.slow
def test_a_predicted_image_gets_what_its_evaluation_counted(tiny_export_run):
    # Evaluation decodes the feature cache (float16); prediction runs the backbone anew.
    from ofrnn_tf import pipeline
    from ofrnn_tf.features import run_cache

    run_dir = RunDir(str(tiny_export_run.workdir))
    config, facts = run_dir.load()
    config = config.replace(runtime={"cache_dir": str(tiny_export_run.cache_dir)})
    batch = next(iter(pipeline.eval_dataset(run_cache.locate_features(config, facts), facts,
                                            "test", batch_size=8)))
    predictor = Predictor.from_run(str(tiny_export_run.workdir))
    height, width, depth = predictor.module.feature_shape
    cached = predictor.module.serve_features(tf.reshape(batch["features"],
                                                        [-1, height, width, depth]))
    by_id = {str(int(path.stem)): str(path) for path in tiny_export_run.test_images}
    results = predictor.predict_files([by_id[i.decode()] for i in batch["image_id"].numpy()])
    for k, result in enumerate(results):
        n = int(cached["num_labels"][k])
        assert result["label_ids"] == cached["labels"][k][:n].numpy().tolist()
        np.testing.assert_allclose(result["scores"], cached["scores"][k].numpy()[
            result["label_ids"]], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_trained_run_matches_decoder_on_its_features(tiny_export_run):
    predictor = Predictor.from_run(str(tiny_export_run.workdir), batch_size=3)
    paths = list(tiny_export_run.test_images[:5])
    results = predictor.predict_files(paths)
    expected = reference_outputs(predictor, paths, calibrated_score_mix(tiny_export_run.workdir))
    for i, result in enumerate(results):
        n = int(expected["num_labels"][i])
        assert result["label_ids"] == expected["labels"][i][:n].tolist()
        np.testing.assert_allclose(result["log_prob"], expected["log_prob"][i], rtol=1e-4)
        np.testing.assert_allclose(result["scores"], expected["scores"][i][result["label_ids"]],
                                   rtol=1e-4)
        names = predictor.label_map.names
        np.testing.assert_allclose([result["all_scores"][name] for name in names],
                                   expected["scores"][i], rtol=1e-4, atol=1e-6)


def test_expand_inputs_names_every_file_it_skips(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.PNG").write_bytes(b"x")
    (tmp_path / "c.webp").write_bytes(b"x")
    (tmp_path / "README").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "d.jpg").mkdir()  # a folder, whatever its name says
    (tmp_path / "e.jpg").symlink_to(tmp_path / "gone.jpg")  # a broken link: refused when read
    (tmp_path / "f.jfif").write_bytes(b"x")  # a JPEG as browsers save it
    for hidden in (".DS_Store", "._a.jpg"):  # a file system's, passed over
        (tmp_path / hidden).write_bytes(b"x")
    entries = expand_inputs([str(tmp_path), "missing.jpg"])  # a folder: sorted, not recursive
    assert [e if isinstance(e, str) else e["image"] for e in entries] == [
        str(tmp_path / name) for name in ("README", "a.jpg", "b.PNG", "c.webp", "d.jpg",
                                          "e.jpg", "f.jfif", "sub")] + ["missing.jpg"]
    assert "skipped (no extension)" in entries[0]["error"]
    assert "skipped by its extension (.webp)" in entries[3]["error"]
    assert entries[4]["error"].endswith("skipped (a folder): folders are read one level deep; "
                                        "name it to read it")
    assert entries[5] == str(tmp_path / "e.jpg") and entries[6] == str(tmp_path / "f.jfif")
    assert "skipped (a folder)" in entries[7]["error"]


def test_an_attention_picture_never_overwrites_an_input(predictor, images, tmp_path, capsys):
    # Pictures are named `<place>_<stem>.png`, the stem alone where it starts so (a run's
    # example copies): predicting such a folder into itself would draw over its images.

    folder = tmp_path / "numbered"
    folder.mkdir()
    for name, source in (("000_a.png", images[0]), ("b.png", images[2])):
        shutil.copy(source, folder / name)
    before = (folder / "000_a.png").read_bytes()
    entries = expand_inputs([str(folder)])
    results = list(_with_pictures(predictor.iter_files(entries, attention=True), entries,
                                  str(folder)))
    assert (folder / "000_a.png").read_bytes() == before
    assert "attention_png" not in results[0] and "attention" not in results[0]
    assert results[0]["labels"] == predictor.predict_files([str(folder / "000_a.png")])[0][
        "labels"]
    assert (f"[predict] {folder / '000_a.png'}: no attention picture: {folder / '000_a.png'} "
            f"is one of the inputs, which it would overwrite") in capsys.readouterr().err
    assert results[1]["attention_png"] == str(folder / "001_b.png")  # drawn beside them
    assert sorted(os.listdir(folder)) == ["000_a.png", "001_b.png", "b.png"]


def test_a_full_disk_stops_the_pictures_once_and_the_predictions_go_on(tmp_path, monkeypatch,
                                                                       capsys):
    from ofrnn_tf.visualization import attention_maps

    def full(result, out_dir, index, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(attention_maps, "draw_prediction", full)
    entries = [str(tmp_path / f"{name}.jpg") for name in "abc"]
    predictions = [{"image": path, "labels": ["x"], "attention": [[1.0]]} for path in entries]
    results = list(_with_pictures(iter(predictions), entries, str(tmp_path / "pictures")))
    assert [r["labels"] for r in results] == [["x"]] * 3
    assert not any("attention" in r or "attention_png" in r for r in results)
    err = capsys.readouterr().err
    assert err.count("No space left on device") == 1, err
    assert (f"[predict] --attention_dir={tmp_path / 'pictures'}: No space left on device writing "
            f"{tmp_path / 'pictures' / '000_a.png'}: no more attention pictures are drawn; the "
            f"predictions go on") in err


def test_a_folder_s_names_are_not_compared_with_each_of_its_images(tmp_path, monkeypatch):
    # A folder of 10^5 images took minutes when each name was looked up in the list of them.
    compared = []

    class Name(str):
        __hash__ = str.__hash__

        def __eq__(self, other):
            compared.append(1)
            return str.__eq__(self, other)

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(300):
        (folder / f"{i:03d}.jpg").write_bytes(b"x")
    (folder / "notes.txt").write_text("x")
    listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path=".": [Name(n) for n in listdir(path)])
    entries = expand_inputs([str(folder)], str(tmp_path / "report.jsonl"))
    assert entries[:300] == [str(folder / f"{i:03d}.jpg") for i in range(300)]
    assert "skipped by its extension (.txt)" in entries[300]["error"]
    assert len(compared) < 300, len(compared)


def test_a_folder_that_cannot_be_read_costs_its_own_line(tmp_path, monkeypatch):
    # Root reads a chmod 000 folder: the refusal of a user who may not is played here.
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.jpg").write_bytes(b"x")
    (tmp_path / "locked").mkdir()
    listdir = os.listdir

    def refusing_listdir(path="."):
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", refusing_listdir)
    locked = str(tmp_path / "locked")
    assert expand_inputs([str(tmp_path / "ok"), locked, "b.jpg"]) == [
        str(tmp_path / "ok" / "a.jpg"),
        {"image": locked, "error": f"{locked}: folder cannot be read (Permission denied)"},
        "b.jpg"]


def test_files_from_lists_inputs_by_line_or_by_nul_after_the_arguments(tmp_path, monkeypatch):
    odd = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes, as an old archive names a file
    (tmp_path / "lines.txt").write_bytes(b"a.jpg\r\n\nsub dir/b.png\n" + os.fsencode(odd) + b"\n")
    assert given_inputs(["first.jpg"], str(tmp_path / "lines.txt")) == [
        "first.jpg", "a.jpg", "sub dir/b.png", odd]
    (tmp_path / "nul.txt").write_bytes(b"one\nline.jpg\0two.jpg\0")  # find -print0
    assert given_inputs([], str(tmp_path / "nul.txt")) == ["one\nline.jpg", "two.jpg"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"x.jpg\ny.jpg\n")))
    assert given_inputs([], "-") == ["x.jpg", "y.jpg"]
    (tmp_path / "empty.txt").write_bytes(b"\n")
    with pytest.raises(app.UsageError, match=r"--files_from=.*empty.txt lists no file"):
        given_inputs([], str(tmp_path / "empty.txt"))
    assert given_inputs(["a.jpg"], str(tmp_path / "empty.txt")) == ["a.jpg"]
    with pytest.raises(app.UsageError, match=r"--files_from=.*gone.txt: No such file"):
        given_inputs(["a.jpg"], str(tmp_path / "gone.txt"))
    with pytest.raises(app.UsageError, match=r"give at least one image file or folder"):
        given_inputs([], None)
    (tmp_path / "notepad.txt").write_bytes(b"\xef\xbb\xbfa.jpg\r\nb.jpg\r\n")
    assert given_inputs([], str(tmp_path / "notepad.txt")) == ["a.jpg", "b.jpg"]
    for encoding in ("utf-16", "utf-16-le", "utf-32"):  # with a byte-order mark or without
        (tmp_path / "wide.txt").write_bytes("a.jpg\nb.jpg\n".encode(encoding))
        with pytest.raises(app.UsageError, match=r"wide.txt is not UTF-8 text \(UTF-16 or "
                                                 r"UTF-32, by its bytes\): save it as UTF-8"):
            given_inputs([], str(tmp_path / "wide.txt"))


def test_a_closed_standard_stream_or_a_dash_input_is_refused_in_one_line(monkeypatch):
    """A command started with stdin or stdout closed (a daemon's, `>&-`) is refused
    before any work, as is `-` as an input; `--output=-` is standard output."""
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(app.UsageError, match=r"^--files_from=-: standard input is closed$"):
        given_inputs([], "-")
    with pytest.raises(app.UsageError, match=r"an input '-' is not read as standard input: "
                                             r"give --files_from=- for a list of paths"):
        given_inputs(["a.jpg", "-"], None)
    assert open_report("-") is sys.stdout
    monkeypatch.setattr(sys, "stdout", None)
    for output in (None, "-"):
        with pytest.raises(app.UsageError, match=r"^standard output is closed: give "
                                                 r"--output=FILE$"):
            open_report(output)


def test_a_report_over_one_of_the_input_images_is_refused(tmp_path):
    image = tmp_path / "photo.png"
    image.write_bytes(b"not read")
    for given in (str(image), str(tmp_path / "." / "photo.png")):
        with pytest.raises(app.UsageError, match=r"--output=.*photo.png is one of the input "
                                                 r"images: writing the report there would "
                                                 r"empty it"):
            open_report(given, ["missing.jpg", str(image)])
    assert image.read_bytes() == b"not read"


def test_an_unwritable_report_is_refused_before_any_work(tmp_path):
    with pytest.raises(app.UsageError, match=r"--output=.*/no/such/folder/out.jsonl: "
                                             r"No such file or directory"):
        open_report(str(tmp_path / "no" / "such" / "folder" / "out.jsonl"))
    with open_report(str(tmp_path / "out.jsonl")) as out:
        assert write_report([{"image": "a", "labels": []}], out, "predict", "predicted") == 0
    assert json.loads((tmp_path / "out.jsonl").read_text()) == {"image": "a", "labels": []}


def test_a_line_a_full_disk_cuts_short_is_taken_out_and_the_report_named(tmp_path,
                                                                          monkeypatch):
    from ofrnn_tf.cli import disk_full, image_inputs

    real_write, written = os.write, []

    def filling(fd, data):  # room for the first line and half of the second
        if written:
            real_write(fd, data[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(data)
        return real_write(fd, data)

    report = tmp_path / "out.jsonl"
    monkeypatch.setattr(image_inputs.os, "write", filling)
    with open_report(str(report)) as out:
        with pytest.raises(OSError) as caught:
            write_report(iter([{"image": "a", "labels": []}, {"image": "b", "labels": []}]),
                         out, "predict", "predicted")
    assert report.read_text() == '{"image": "a", "labels": []}\n'
    assert disk_full(caught.value) == f"No space left on device writing {report}"


def test_a_signal_as_a_line_is_written_leaves_it_counted(tmp_path, monkeypatch):
    """SIGTERM (or Ctrl-C) landing just after a line reached the report, before it was
    counted, stopped the command saying that input had no line yet: the line and its
    count are one step."""
    from ofrnn_tf.cli import image_inputs, interrupts
    from ofrnn_tf.cli.image_inputs import ReportProgress

    real_write = os.write

    def signalled(fd, data):  # the handler runs as the second line's write returns
        done = real_write(fd, data)
        if b'"b.jpg"' in data:
            interrupts._note(signal.SIGTERM, None)
        return done

    monkeypatch.setattr(interrupts, "_RECEIVED", [])
    report = tmp_path / "out.jsonl"
    entries = ["a.jpg", "b.jpg", "c.jpg"]
    progress = ReportProgress(entries, str(report))
    monkeypatch.setattr(image_inputs.os, "write", signalled)
    with open_report(str(report)) as out:
        with pytest.raises(KeyboardInterrupt):
            write_report(merge_results(entries, [{"image": e} for e in entries]),
                         out, "client", "labelled", progress=progress)
    assert len(report.read_text().splitlines()) == 2
    assert progress.where().startswith("2 of 3 input(s) have their line")


def test_a_second_signal_as_the_report_closes_does_not_close_its_number_again(tmp_path,
                                                                            monkeypatch):
    """A second Ctrl-C landing as a stopped report's descriptor was closed, before it was
    forgotten, had the context manager's close() close that number again: by then another
    file's (a gRPC channel's), or an EBADF in place of the stop's own line."""
    from ofrnn_tf.cli import image_inputs

    real_close, bystander = os.close, []

    def interrupted(fd):
        real_close(fd)
        if not bystander:  # a file opened now takes the number just freed
            bystander.append(os.open(os.devnull, os.O_RDONLY))
            raise KeyboardInterrupt

    report = tmp_path / "out.jsonl"
    monkeypatch.setattr(image_inputs.os, "close", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with open_report(str(report)) as out:
            out.write('{"image": "a.jpg"}\n')
            out.abandon()
    os.fstat(bystander[0])  # still open
    real_close(bystander[0])
    assert report.read_text() == '{"image": "a.jpg"}\n'


def test_a_report_stopped_midway_says_which_input_resume_goes_on_from(tmp_path, monkeypatch):
    """The line a full disk (or Ctrl-C) ends with counts the lines written, not the one
    taken back out, and says to go on with --resume: the same command without it starts
    the report again."""
    from ofrnn_tf.cli import image_inputs
    from ofrnn_tf.cli.image_inputs import ReportProgress, stopped_report

    real_write, written = os.write, []

    def filling(fd, data):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(data)
        return real_write(fd, data)

    monkeypatch.setattr(ReportProgress, "latest", None)
    assert stopped_report() == ""  # stopped before any report: nothing to say
    report = tmp_path / "out.jsonl"
    entries = ["a.jpg", {"image": "notes.txt", "error": "skipped"}, "b.jpg", "c.jpg"]
    progress = ReportProgress(entries, str(report))
    assert stopped_report() == ""  # no line yet: the same command again, as it was
    monkeypatch.setattr(image_inputs.os, "write", filling)
    with open_report(str(report)) as out:
        with pytest.raises(OSError):
            write_report(merge_results(entries, [{"image": "a.jpg"}, {"image": "b.jpg"}]),
                         out, "client", "labelled", progress=progress)
    assert progress.written == 2 and len(report.read_text().splitlines()) == 2
    assert stopped_report("free space, then ") == (
        f"2 of 4 input(s) have their line in {report}; the first without one is b.jpg: free "
        f"space, then run the same command with --resume to go on")


def test_a_resumed_reports_summary_and_exit_status_count_the_lines_it_kept(tmp_path,
                                                                           capsys):
    """The report is the kept lines and the new ones: a resumed run whose inputs left all
    fail still exits with 0 when a kept line has labels (it exited with 1, saying "0
    image(s) predicted" of a report of predictions)."""
    from ofrnn_tf.cli.image_inputs import resumable_report

    report = tmp_path / "out.jsonl"
    kept = ('{"image": "a.jpg", "labels": [], "attention_png": "p/000_a.png"}\n'
            '{"image": "notes.txt", "error": "notes.txt: skipped"}\n'
            '{"image": "b.jpg", "labels": []}\n')
    report.write_text(kept)
    entries = ["a.jpg", {"image": "notes.txt", "error": "notes.txt: skipped"}, "b.jpg",
               {"image": "c.txt", "error": "c.txt: skipped"}]
    out, progress = resumable_report(entries, str(report), True, "ofrnn-predict")
    assert write_report(merge_results(progress.left, []), out, "predict", "predicted",
                        pictures_dir="p", progress=progress) == 0
    assert report.read_text() == kept + '{"image": "c.txt", "error": "c.txt: skipped"}\n'
    assert capsys.readouterr().err.splitlines() == [
        f"[predict] --resume: 3 of 4 input(s) have their line in {report}; going on from c.txt",
        "[predict] c.txt: skipped",
        f"[predict] 2 image(s) predicted, 2 failed or skipped, 3 of them on the lines "
        f"--resume kept; written to {report}; 1 attention picture(s) in p"]


def test_resume_says_what_it_goes_on_from_a_missing_report_included(tmp_path, capsys):
    """A mistyped --output started the report again from the first input, without a word."""
    from ofrnn_tf.cli.image_inputs import resumable_report

    report = tmp_path / "typo.jsonl"
    out, progress = resumable_report(["a.jpg", "b.jpg"], str(report), True, "ofrnn-predict")
    out.abandon()
    assert progress.left == ["a.jpg", "b.jpg"] and not report.exists()
    assert capsys.readouterr().err == (f"[predict] --resume: 0 of 2 input(s) have their line "
                                       f"in {report} (no such file yet); going on from a.jpg\n")


def test_resume_with_every_input_done_exits_as_the_whole_report_does(tmp_path, capsys):
    """Nothing is left to do: the exit status is still the report's, 1 where no line has
    labels (it was 0, after a run that had exited with 1 for the same lines)."""
    from ofrnn_tf.cli.image_inputs import resumable_report

    report = tmp_path / "out.jsonl"
    entries = ["a.jpg", {"image": "b.txt", "error": "b.txt: skipped"}]
    report.write_text('{"image": "a.jpg", "error": "a.jpg: not an image"}\n'
                      '{"image": "b.txt", "error": "b.txt: skipped"}\n')
    assert resumable_report(entries, str(report), True, "ofrnn-predict") == 1
    report.write_text('{"image": "a.jpg", "labels": []}\n'
                      '{"image": "b.txt", "error": "b.txt: skipped"}\n')
    assert resumable_report(entries, str(report), True, "ofrnn-predict") == 0
    assert capsys.readouterr().err == 2 * (f"[predict] every input already has its line in "
                                           f"{report}: nothing to do\n")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="writes to /dev/full (Linux)")
def test_a_device_report_a_full_disk_stops_is_named(tmp_path):
    from ofrnn_tf.cli import disk_full

    out = open_report("/dev/full")  # a device: opened as it is, nothing to keep
    with pytest.raises(OSError) as caught:
        write_report(iter([{"image": "a", "labels": []}]), out, "predict", "predicted")
    assert disk_full(caught.value) == "No space left on device writing /dev/full"


def test_an_interrupt_whose_raise_was_lost_stops_the_report_after_its_line(tmp_path,
                                                                           monkeypatch):
    # A signal that lands in a garbage-collector callback has its KeyboardInterrupt
    # printed as ignored; the report stops at its next line all the same, keeping it.
    from ofrnn_tf.cli import interrupts

    monkeypatch.setattr(interrupts, "_RECEIVED", [signal.SIGINT])
    with open_report(str(tmp_path / "out.jsonl")) as out:
        with pytest.raises(KeyboardInterrupt):
            write_report(iter([{"image": "a", "labels": []}, {"image": "b", "labels": []}]),
                         out, "predict", "predicted")
    assert (tmp_path / "out.jsonl").read_text() == '{"image": "a", "labels": []}\n'


def test_a_file_name_holding_escape_sequences_is_shown_not_acted_on_by_the_terminal(
        tmp_path, capsys):
    # A name in an upload folder that would set the window title, clear the screen and
    # print a line of its own; the JSON line escapes it already, stderr must too.
    name = "x\x1b]0;pwned\x07\x1b[2J\r\n\x9b31mFAKE: all good.txt"
    with open_report(str(tmp_path / "out.jsonl")) as out:
        assert write_report([{"image": name, "error": f"{name}: not an image"},
                             {"image": "a", "labels": []}], out, "predict", "predicted") == 0
    err = capsys.readouterr().err
    assert not set("\x1b\x07\r\x9b") & set(err), repr(err)
    assert "[predict] x\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\x0a\\x9b31mFAKE: all good.txt: not an " \
        "image" in err, err
    assert json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])["image"] == name


def test_an_earlier_report_is_kept_until_the_new_one_writes_its_first_line(tmp_path):
    report = tmp_path / "out.jsonl"
    report.write_text('{"image": "earlier"}\n')
    open_report(str(report))  # a command refused after its check (no run folder, no server)
    assert report.read_text() == '{"image": "earlier"}\n'
    new = tmp_path / "new.jsonl"
    open_report(str(new))
    assert not new.exists()  # the check leaves no file behind
    with open_report(str(report)) as out:
        assert write_report([{"image": "b"}], out, "client", "labelled") == 0
    assert report.read_text() == '{"image": "b"}\n'
    with open_report(str(report)) as out:
        assert write_report([], out, "client", "labelled") == 1
    assert report.read_text() == ""  # the report of no input


def test_a_command_stopped_before_its_first_line_keeps_the_earlier_report(tmp_path):
    report = tmp_path / "out.jsonl"
    report.write_text('{"image": "earlier"}\n')

    def server_down():  # as predict_files raises before its first result
        raise ConnectionError("UNAVAILABLE")
        yield

    with pytest.raises(ConnectionError):
        write_report(server_down(), open_report(str(report)), "client", "labelled")
    assert report.read_text() == '{"image": "earlier"}\n'

    def down_after_one():
        yield {"image": "a"}
        raise ConnectionError("UNAVAILABLE")

    with pytest.raises(ConnectionError):
        write_report(down_after_one(), open_report(str(report)), "client", "labelled")
    assert report.read_text() == '{"image": "a"}\n'  # the lines written stand


def test_a_report_into_a_pipe_or_through_a_dangling_link_reaches_its_reader(tmp_path):
    import threading
    import time

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    reader = subprocess.Popen(["cat", str(pipe)], stdout=subprocess.PIPE)

    def results():  # the first line comes after the images are read, as in predict
        time.sleep(0.5)
        yield {"image": "a"}

    # A pipe opened to check it, then again for the first line, would have lost its reader
    # at the first close, and the second open would wait for a reader for ever.
    writer = threading.Thread(target=lambda: write_report(
        results(), open_report(str(pipe)), "predict", "predicted"), daemon=True)
    writer.start()
    writer.join(timeout=30)
    assert not writer.is_alive()
    assert reader.communicate(timeout=30)[0] == b'{"image": "a"}\n'

    link = tmp_path / "link.jsonl"
    link.symlink_to(tmp_path / "target.jsonl")  # its target not made yet
    out = open_report(str(link))
    assert link.is_symlink() and not (tmp_path / "target.jsonl").exists()
    write_report([{"image": "b"}], out, "predict", "predicted")
    assert link.is_symlink() and (tmp_path / "target.jsonl").read_text() == '{"image": "b"}\n'


@pytest.mark.parametrize("tau", [-0.5, 1.5, float("nan")])
def test_a_threshold_outside_0_1_is_refused(workdir, tiny_backbone, tau):
    with pytest.raises(ValueError, match=r"tau is a path probability and must be in \[0, 1\]"):
        Predictor.from_run(str(workdir), tau=tau, backbone=tiny_backbone)


def test_served_inputs_are_checked_naming_the_bad_entry(predictor, images):
    """The checks the signatures run on their inputs, in process: non-finite maps and a
    threshold count or value that is not one probability per image are refused."""
    module = predictor.module
    features = np.zeros([3, *module.feature_shape], np.float32)
    features[2, 0, 1, 0] = np.inf
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"features\[2\] contains NaN or Inf"):
        module.serve_features(tf.constant(features))
    features[2, 0, 1, 0] = 0.0
    assert module.serve_features(tf.constant(features))["num_labels"].shape == (3,)
    jpegs = tf.constant([images[0].read_bytes(), images[2].read_bytes()])
    for threshold, message in (
            ([0.5], "threshold has 1 values for 2 images: give one τ per image"),
            ([0.5, 1.5], r"threshold\[1\] must be a probability in \[0, 1\]; got 1.5"),
            ([float("nan"), 0.5], r"threshold\[0\] must be a probability in \[0, 1\]; got nan")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            module.serve_images_with_threshold(jpegs, tf.constant(threshold, tf.float32))
    served = module.serve_images_with_threshold(jpegs, tf.constant([0.0, 1.0]))
    assert served["num_labels"].numpy().tolist() == [MAX_STEPS, 1]


def test_a_single_path_or_bytes_object_is_refused_naming_the_list_it_takes(predictor, images):
    with pytest.raises(TypeError, match=r"got the single path '.*\.jpg' \(pass \[path\]"):
        predictor.predict_files(str(images[0]))
    with pytest.raises(TypeError, match=r"single path .* \(pass \[path\]"):
        predictor.predict_files(images[0])
    with pytest.raises(TypeError, match=r"got one bytes object \(pass \[data\]"):
        predictor.predict_bytes(images[0].read_bytes())
    with pytest.raises(TypeError, match=r"names must be a list, one per image; got the single "
                                        r"str 'upload' \(pass \[name\] for one image\)"):
        predictor.predict_bytes([images[0].read_bytes()], names="upload")


def test_a_numpy_integer_batch_size_is_taken_as_an_int(predictor, images):
    batched = Predictor(predictor.module, batch_size=np.int64(1))
    assert batched.batch_size == 1 and type(batched.batch_size) is int
    assert len(batched.predict_files(images[:2], attention=False)) == 2
    for bad in (True, 0, 2.0, "2"):
        with pytest.raises(ValueError, match=rf"batch_size must be an integer ≥ 1; got {bad!r}"):
            Predictor(predictor.module, batch_size=bad)


def test_arrays_of_any_size_are_read_as_the_same_image_as_a_file(predictor, images):
    """A decoded image is resized as its file would be: equal results, gray and RGBA
    taken as RGB as in a file."""
    rgb = tf.io.decode_jpeg(images[0].read_bytes(), channels=3).numpy()
    assert rgb.shape[:2] != (predictor.image_size,) * 2  # resized on the way
    from_file = predictor.predict_files([images[0]], attention=False)[0]
    gray = rgb[..., 0]
    rgba = np.concatenate([rgb, np.full_like(rgb[..., :1], 7)], axis=-1)
    got = predictor.predict_arrays([rgb, rgba, gray, gray[..., None]],
                                   names=["rgb", "rgba", "gray", "gray1"], attention=False)
    assert [r["image"] for r in got] == ["rgb", "rgba", "gray", "gray1"]
    for result in got[:2]:
        assert result["label_ids"] == from_file["label_ids"]
        assert result["scores"] == pytest.approx(from_file["scores"], abs=1e-6)
    gray_file = predictor.predict_bytes([tf.io.encode_png(np.repeat(
        gray[..., None], 3, axis=-1)).numpy()], attention=False)[0]
    for result in got[2:]:
        assert result["scores"] == pytest.approx(gray_file["scores"], abs=1e-6)
    batch = predictor.predict_arrays(np.stack([rgb, rgb]), attention=False)
    assert [r["label_ids"] for r in batch] == [from_file["label_ids"]] * 2
    for bad in (rgb.astype(np.float32), rgb[..., :2], np.zeros([0, 4, 3], np.uint8)):
        with pytest.raises(ValueError, match=r"images\[0\] must be uint8 \[H, W\]"):
            predictor.predict_arrays([bad])
    for one in (rgb, gray, tf.constant(rgb)):  # not read row by row as many images
        with pytest.raises(TypeError, match=r"got one array of shape .* \(pass \[image\]"):
            predictor.predict_arrays(one)


def test_the_calibrated_score_mix_can_be_overridden(workdir, tiny_backbone):
    module = Predictor.from_run(str(workdir), score_mix=0.25, backbone=tiny_backbone).module
    assert float(module.score_mix.numpy()) == 0.25
    assert float(module.tau.numpy()) == pytest.approx(TAU)
    for weight in (float("nan"), 3.0, -0.1):
        with pytest.raises(ValueError, match=r"score_mix .* must be in \[0, 1\]"):
            Predictor.from_run(str(workdir), score_mix=weight, backbone=tiny_backbone)


# -- the module's own checks, in process ---------------------------------------------------
@pytest.fixture(scope="module")
def full_path_module(tmp_path_factory, make_fake_run, tiny_backbone):
    """An `InferenceModule` of a fake run at τ = 0, whose paths run to T_max."""
    from ofrnn_tf.inference import InferenceModule

    workdir = make_fake_run(tmp_path_factory.mktemp("run"), tau=0.0)  # τ = 0: full paths
    return InferenceModule.from_run(str(workdir), backbone=tiny_backbone)


def test_label_names_name_every_label_id_label_0_included(full_path_module, monkeypatch):
    module = full_path_module
    h, w, _ = module.feature_shape
    T = module.max_steps
    labels = tf.constant([[0, 2, -1], [4, -1, -1]], tf.int32)[:, :T]

    def decoded(flat, threshold, step_probabilities=False):
        b = tf.shape(flat)[0]
        return {"labels": labels, "num_labels": tf.constant([2, 1]), "log_prob": tf.zeros([b]),
                "scores": tf.zeros([b, len(NAMES)]), "attention": tf.zeros([b, T, h * w])}

    monkeypatch.setattr(module, "_decode", decoded)
    out = module._outputs(tf.zeros([2, *module.feature_shape]), module.tau.read_value())
    names = [[n.decode() for n in row] for row in out["label_names"].numpy()]
    assert names == [[NAMES[0], NAMES[2], ""][:T], [NAMES[4], "", ""][:T]]


def test_inputs_of_another_shape_are_refused_in_process(full_path_module, sample_images):
    module = full_path_module
    h, w, k = module.feature_shape
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="not compatible|Shape"):
        module._serve_features(tf.zeros([2, k, h, w]))  # as many values, another layout
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="not compatible|Shape"):
        module._serve_images(tf.constant([[sample_images[0].read_bytes()]]))


def test_more_thresholds_than_images_are_refused_naming_the_counts(full_path_module,
                                                                  sample_images):
    jpegs = tf.constant([sample_images[0].read_bytes(), sample_images[2].read_bytes()])
    with pytest.raises(tf.errors.InvalidArgumentError, match="threshold has 3 values for 2 images"):
        full_path_module.serve_images_with_threshold(jpegs, tf.constant([0.5, 0.5, 0.5]))


def test_a_label_map_of_another_size_than_the_model_is_refused(tiny_backbone):
    from ofrnn_tf.inference import InferenceModule
    from ofrnn_tf.labels import LabelMap
    from ofrnn_tf.modeling.model import OrderFreeRNN

    model = OrderFreeRNN(num_classes=5, lstm_units=8, attention_units=8, fc_units=8)
    model.build((None, 16, 8))
    with pytest.raises(ValueError, match="label map has 4 classes but the model 5"):
        InferenceModule(model, tiny_backbone, LabelMap(["a", "b", "c", "d"]), tau=0.5,
                        beam_size=2, max_steps=3)


def test_the_module_takes_class_names_as_its_label_map_and_refuses_a_model_of_other_maps(
        tiny_backbone):
    from ofrnn_tf.inference import InferenceModule
    from ofrnn_tf.labels import LabelMap
    from ofrnn_tf.modeling.model import OrderFreeRNN

    def model_over(positions, depth):
        model = OrderFreeRNN(num_classes=3, lstm_units=8, attention_units=8, fc_units=8)
        model.build((None, positions, depth))
        return model

    module = InferenceModule(model_over(16, 8), tiny_backbone, ["a", "b", "c"], tau=0.5,
                             beam_size=2, max_steps=3)
    assert module.label_map == LabelMap(["a", "b", "c"])
    with pytest.raises(TypeError, match="a LabelMap or a list of class names; got the single "
                                        "str 'abc'"):
        InferenceModule(model_over(16, 8), tiny_backbone, "abc", tau=0.5, beam_size=2,
                        max_steps=3)
    maps = tiny_backbone.feature_shape  # (4, 4, 8)
    for positions, depth in ((16, 6), (9, 8)):
        with pytest.raises(ValueError, match=re.escape(
                f"the model is built over (m, k) = ({positions}, {depth}) maps but backbone "
                f"{tiny_backbone.name!r} gives {maps[0]}x{maps[1]}x{maps[2]} maps, "
                f"(m, k) = (16, 8): pass the backbone its features were extracted with")):
            InferenceModule(model_over(positions, depth), tiny_backbone, ["a", "b", "c"],
                            tau=0.5, beam_size=2, max_steps=3)


def test_a_pil_image_is_read_in_its_colours_as_its_file_is(predictor, images, tmp_path):
    """A palette (GIF, PNG) or CMYK PIL image gets the results of its file, not of its raw
    array (palette indices read as gray, inks as RGBA); 16-bit gray as its PNG is read."""
    rgb = Image.open(images[0]).convert("RGB")
    cases = {"palette.png": rgb.quantize(64), "cmyk.png": rgb.convert("CMYK"),
             "gray_alpha.png": rgb.convert("LA"), "gray16.png": Image.fromarray(
                 np.asarray(rgb.convert("L")).astype(np.uint16) * 257 + 100)}
    for name, image in cases.items():
        if image.mode == "CMYK":  # PNG holds no CMYK: its file is the RGB Pillow gives
            image.convert("RGB").save(tmp_path / name)
        else:
            image.save(tmp_path / name)
    from_files = predictor.predict_files([tmp_path / n for n in cases], attention=False)
    got = predictor.predict_arrays(list(cases.values()), names=list(cases), attention=False)
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"
    for name, result, expected in zip(cases, got, from_files):
        assert result["image"] == name and "error" not in result
        assert result["all_scores"] == pytest.approx(expected["all_scores"], abs=1e-6), name
    for mode in ("I", "F"):
        with pytest.raises(ValueError, match=rf"images\[0\] is a PIL image of mode {mode} "
                                             r"\(32-bit values of no set range\): convert"):
            predictor.predict_arrays([rgb.convert(mode)])
    with pytest.raises(TypeError, match=r"got one PIL image of mode RGB \(pass \[image\]"):
        predictor.predict_arrays(rgb)
