"""The SavedModel export of a real (tiny) run: signatures, baked-in constants, warm-up
requests, fresh-process reload against in-process decoding, versions, bad workdirs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, run_checked, to_png

pytestmark = pytest.mark.slow  # all share one tiny train.py + export.py run (~1 min)

OUTPUTS = ("labels", "label_names", "num_labels", "scores", "log_prob", "attention")
NUM_IMAGES = 6


def signature_blocks(cli_output: str) -> dict[str, str]:
    """`saved_model_cli show --all` text split into one block per signature_def."""
    parts = re.split(r"^signature_def\['([^']+)'\]:\s*$", cli_output, flags=re.M)
    return {parts[i]: parts[i + 1].split("\nDefined Functions")[0]
            for i in range(1, len(parts) - 1, 2)}


def tensor_info(block: str, kind: str, key: str) -> tuple[str, str]:
    m = re.search(rf"{kind}\['{re.escape(key)}'\] tensor_info:\s*dtype: (\w+)\s*shape: (\([^)]*\))",
                  block)
    assert m, f"{kind}['{key}'] not listed in:\n{block}"
    return m[1], m[2]


def test_saved_model_cli_lists_both_signatures(tiny_export_run):
    cli = Path(sys.executable).with_name("saved_model_cli")
    done = run_checked([str(cli), "show", "--all", "--dir", str(tiny_export_run.export_dir)])
    blocks = signature_blocks(done.stdout)
    assert {"serving_default", "predict_features"} <= set(blocks), sorted(blocks)
    t_max = tiny_export_run.run_config["max_steps"]
    num_classes = len(tiny_export_run.run_config["label_names"])
    assert tensor_info(blocks["serving_default"], "inputs", "images") == ("DT_STRING", "(-1)")
    dtype, shape = tensor_info(blocks["predict_features"], "inputs", "features")
    assert dtype == "DT_FLOAT" and re.fullmatch(r"\(-1, \d+, \d+, \d+\)", shape), shape
    height, width = (int(d) for d in shape[1:-1].split(", ")[1:3])
    expected = {
        "labels": ("DT_INT32", f"(-1, {t_max})"),
        "label_names": ("DT_STRING", f"(-1, {t_max})"),
        "num_labels": ("DT_INT32", "(-1)"),
        "scores": ("DT_FLOAT", f"(-1, {num_classes})"),
        "log_prob": ("DT_FLOAT", "(-1)"),
        "attention": ("DT_FLOAT", f"(-1, {t_max}, {height}, {width})"),
    }
    for name in ("serving_default", "predict_features"):
        block = blocks[name]
        assert "Method name is: tensorflow/serving/predict" in block
        listed = set(re.findall(r"outputs\['([^']+)'\]", block))
        assert listed == set(OUTPUTS), (name, listed)
        for key, want in expected.items():
            assert tensor_info(block, "outputs", key) == want, (name, key)


@pytest.fixture(scope="module")
def loaded(tiny_export_run):
    return tf.saved_model.load(str(tiny_export_run.export_dir))


def test_export_holds_decoding_constants(tiny_export_run, loaded):
    calibration, config = tiny_export_run.calibration, tiny_export_run.run_config
    assert float(loaded.tau.numpy()) == pytest.approx(calibration["tau"], rel=1e-6)
    assert int(loaded.beam_size.numpy()) == calibration["beam_size"] == config["beam_size"]
    assert int(loaded.max_steps.numpy()) == config["max_steps"] == calibration["max_steps"]
    assert int(loaded.min_labels.numpy()) == calibration["min_labels"]
    names = [n.decode() for n in loaded.label_names.numpy()]
    assert names == config["label_names"]
    with open(tiny_export_run.workdir / "label_map.json") as f:
        workdir_map = json.load(f)
    with open(tiny_export_run.export_dir / "assets.extra" / "label_map.json") as f:
        export_map = json.load(f)
    assert export_map == workdir_map


def test_warmup_requests_parse_and_run(tiny_export_run, loaded):
    from tensorflow_serving.apis import prediction_log_pb2

    from ofrnn_tf.export.warmup import WARMUP_FILE

    path = tiny_export_run.export_dir / WARMUP_FILE
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
               for r in tf.data.TFRecordDataset(str(path))]
    assert records, f"{path} holds no records"
    first_canvas = tiny_export_run.test_images[0].read_bytes()
    for log in records:
        request = log.predict_log.request
        assert request.model_spec.name == "ofrnn"
        assert request.model_spec.signature_name == "serving_default"
        assert set(request.inputs) == {"images"}
        images = tf.make_ndarray(request.inputs["images"])
        assert images[0] == first_canvas  # export.py took the sorted glob's first images
        out = loaded.signatures[request.model_spec.signature_name](images=tf.constant(images))
        assert set(out) == set(OUTPUTS)
        assert out["num_labels"].shape == (len(images),)
        assert int(tf.reduce_min(out["num_labels"])) >= 1


FRESH_PROCESS = """
import sys
import numpy as np
import tensorflow as tf

export_dir, inputs_path, out_path = sys.argv[1:]
inputs = np.load(inputs_path, allow_pickle=True)
model = tf.saved_model.load(export_dir)
results = {}
for kind in ("jpeg", "png"):
    out = model.signatures["serving_default"](images=tf.constant(list(inputs[kind])))
    results.update({f"{kind}/{k}": v.numpy() for k, v in out.items()})
out = model.signatures["predict_features"](features=tf.constant(inputs["features"]))
results.update({f"features/{k}": v.numpy() for k, v in out.items()})
np.savez(out_path, **{k: v.astype(bytes) if v.dtype == object else v for k, v in results.items()})
"""


def assert_same_decoding(got: dict, want: dict, label_names: list[str], what: str):
    np.testing.assert_array_equal(got["labels"], want["labels"], err_msg=what)
    np.testing.assert_array_equal(got["num_labels"], want["num_labels"], err_msg=what)
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5, rtol=0, err_msg=what)
    np.testing.assert_allclose(got["log_prob"], want["log_prob"], atol=1e-5, rtol=0, err_msg=what)
    expected_names = [[label_names[c] if c >= 0 else "" for c in row] for row in want["labels"]]
    assert [[s.decode() for s in row] for row in got["label_names"]] == expected_names, what


def test_fresh_process_reload_matches_in_process_decoding(tiny_export_run, in_process_decoder,
                                                          tmp_path):
    jpegs = tiny_export_run.jpeg_bytes(NUM_IMAGES)
    pngs = [to_png(b) for b in jpegs]
    features = in_process_decoder.features(jpegs)
    # Without assets.extra: label names, τ, K and T_max must come from the SavedModel alone.
    bare = tmp_path / "bare_export"
    shutil.copytree(tiny_export_run.export_dir, bare, ignore=shutil.ignore_patterns("assets.extra"))
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, jpeg=np.array(jpegs, dtype=object), png=np.array(pngs, dtype=object),
             features=features)
    outputs = tmp_path / "outputs.npz"
    run_checked([sys.executable, "-c", FRESH_PROCESS, str(bare), str(inputs), str(outputs)])
    fresh = np.load(outputs)

    names = in_process_decoder.label_names
    want_features = in_process_decoder.decode_features(features)
    decoded = {"jpeg": in_process_decoder.decode_images(jpegs),
               "png": in_process_decoder.decode_images(pngs), "features": want_features}
    for kind, want in decoded.items():
        got = {k: fresh[f"{kind}/{k}"] for k in OUTPUTS}
        assert_same_decoding(got, want, names, kind)
        height, width = features.shape[1:3]
        assert got["attention"].shape == (NUM_IMAGES, tiny_export_run.run_config["max_steps"],
                                          height, width)
    assert (want_features["num_labels"] >= 1).all()


def test_second_export_gets_next_version_and_existing_version_is_refused(tiny_export_run, tmp_path):
    from ofrnn_tf.export.saved_model import export_run
    from serving.local_server import find_latest_version

    base = tmp_path / "export"
    shutil.copytree(tiny_export_run.export_base, base)
    second = subprocess.Popen(
        [sys.executable, "export.py", f"--workdir={tiny_export_run.workdir}", f"--export_dir={base}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        with pytest.raises(FileExistsError, match=re.escape(f"{base / '1'} exists")):
            export_run(str(tiny_export_run.workdir), str(base), version=1)
    finally:
        try:
            stdout, stderr = second.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            second.kill()
            raise
    assert second.returncode == 0, stderr[-3000:]
    assert stdout.strip().splitlines()[-1] == str(base / "2")
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]  # no temporary folder left
    assert find_latest_version(str(base)) == (2, str(base / "2"))


def test_export_without_calibration_fails_clearly(tiny_export_run, tmp_path):
    from ofrnn_tf.export.saved_model import export_run

    workdir = tmp_path / "run"
    shutil.copytree(tiny_export_run.workdir, workdir,
                    ignore=shutil.ignore_patterns("calibration.json", "tensorboard"))
    with pytest.raises(FileNotFoundError, match="calibration.json is missing: run train.py"):
        export_run(str(workdir), str(tmp_path / "export"))
    assert not (tmp_path / "export").exists()
