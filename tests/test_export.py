"""The SavedModel export of a real (tiny) run: signatures, the settings its graph reads,
warm-up requests, TensorFlow Serving's session loader against in-process decoding, no
XLA unless asked, versions, runs that cannot be exported."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import config_pb2, saved_model_pb2

import ofrnn_tf
from conftest import FAKE_SCORE_MIX, ROOT, run_checked, to_png
from ofrnn_tf.decoding.beam_search import make_decoder, mix_scores
from ofrnn_tf.export.saved_model import (
    export_run, next_version, remove_old_versions, save_inference_module)
from ofrnn_tf.export.warmup import WARMUP_FILE
from ofrnn_tf.inference import InferenceModule, UncalibratedBeamSizeError
from ofrnn_tf.run_dir import RunDir
from ofrnn_tf.serving.client import PREDICT_OUTPUTS
from ofrnn_tf.serving.servable import Servable, load_session, xla_compiled_functions
from ofrnn_tf.serving.server_process import find_latest_version
from ofrnn_tf.tf_errors import op_error_text

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


@pytest.fixture(scope="module")
def facts(tiny_export_run):
    return RunDir(str(tiny_export_run.workdir)).load()[1]


def test_saved_model_cli_lists_the_signatures(tiny_export_run, facts):
    cli = Path(sys.executable).with_name("saved_model_cli")
    done = run_checked([str(cli), "show", "--all", "--dir", str(tiny_export_run.export_dir)])
    blocks = signature_blocks(done.stdout)
    assert {"serving_default", "predict_with_threshold", "predict_features"} <= set(blocks)
    t_max, num_classes = facts.max_steps, facts.num_classes
    height, width, depth = facts.feature_shape
    assert tensor_info(blocks["serving_default"], "inputs", "images") == ("DT_STRING", "(-1)")
    assert tensor_info(blocks["predict_with_threshold"], "inputs", "threshold") == ("DT_FLOAT", "(-1)")
    assert tensor_info(blocks["predict_features"], "inputs", "features") == (
        "DT_FLOAT", f"(-1, {height}, {width}, {depth})")
    expected = {
        "labels": ("DT_INT32", f"(-1, {t_max})"),
        "label_names": ("DT_STRING", f"(-1, {t_max})"),
        "num_labels": ("DT_INT32", "(-1)"),
        "scores": ("DT_FLOAT", f"(-1, {num_classes})"),
        "log_prob": ("DT_FLOAT", "(-1)"),
        "attention": ("DT_FLOAT", f"(-1, {t_max}, {height}, {width})"),
    }
    for name in ("serving_default", "predict_with_threshold", "predict_features"):
        block = blocks[name]
        assert "Method name is: tensorflow/serving/predict" in block
        listed = set(re.findall(r"outputs\['([^']+)'\]", block))
        assert listed == set(OUTPUTS), (name, listed)
        for key, want in expected.items():
            assert tensor_info(block, "outputs", key) == want, (name, key)


@pytest.fixture(scope="module")
def loaded(tiny_export_run):
    return tf.saved_model.load(str(tiny_export_run.export_dir))


def test_loaded_export_holds_the_serving_functions_and_nothing_else(tiny_export_run, loaded):
    """What a loaded export can be called with: the signatures, their functions and
    `decoding_settings`; the module's in-process functions are not written into it."""
    # The contract of docs/serving.md: these names, no more.
    assert set(loaded.signatures) == {"serving_default", "predict_with_threshold",
                                      "predict_features"}
    images = tf.constant(tiny_export_run.jpeg_bytes(2))
    by_function = loaded.serve_images(images)
    by_signature = loaded.signatures["serving_default"](images=images)
    np.testing.assert_array_equal(by_function["labels"].numpy(), by_signature["labels"].numpy())
    for name in ("serve_images_with_threshold", "serve_features", "decoding_settings"):
        assert callable(getattr(loaded, name)), name
    for name in ("predict_pixels", "image_features", "in_process"):
        assert not hasattr(loaded, name), name


def test_export_records_the_run_settings(tiny_export_run, loaded, facts):
    run_dir = RunDir(str(tiny_export_run.workdir))
    config, _ = run_dir.load()
    calibration = run_dir.calibration(config.decoding.beam_size)
    settings = {k: v.numpy() for k, v in loaded.decoding_settings().items()}
    assert float(settings["tau"]) == pytest.approx(calibration["tau"], rel=1e-6)
    assert int(settings["beam_size"]) == calibration["beam_size"] == config.decoding.beam_size
    assert int(settings["max_steps"]) == facts.max_steps
    assert int(settings["min_labels"]) == calibration["min_labels"]
    assert float(settings["score_mix"]) == pytest.approx(calibration["score_mix"], rel=1e-6)
    assert [n.decode() for n in settings["label_names"]] == list(facts.label_names)
    with open(run_dir.label_map_file) as f:
        run_map = json.load(f)
    with open(tiny_export_run.export_dir / "assets.extra" / "label_map.json") as f:
        assert json.load(f) == run_map
    with open(tiny_export_run.export_dir / "assets.extra" / "software.json") as f:
        software = json.load(f)
    assert software["ofrnn_tf"] == ofrnn_tf.__version__
    assert software["tensorflow"] == tf.__version__ and set(software) == {
        "ofrnn_tf", "tensorflow", "keras", "python"}


def test_the_graph_reads_the_recorded_threshold(tiny_export_run, loaded, facts):
    images = tf.constant(tiny_export_run.jpeg_bytes(NUM_IMAGES))
    serve = loaded.signatures["serving_default"]
    saved = float(loaded.tau.numpy())
    try:
        loaded.tau.assign(1.0)  # no path reaches probability 1: min_labels only
        assert (serve(images=images)["num_labels"].numpy() == 1).all()
        loaded.tau.assign(0.0)  # every path runs to T_max
        assert (serve(images=images)["num_labels"].numpy() == facts.max_steps).all()
    finally:
        loaded.tau.assign(saved)


def warmup_records(export_dir: Path) -> list:
    from tensorflow_serving.apis import prediction_log_pb2

    return [prediction_log_pb2.PredictionLog.FromString(r.numpy()).predict_log.request
            for r in tf.data.TFRecordDataset(str(export_dir / WARMUP_FILE))]


def test_warmup_requests_parse_and_run(tiny_export_run, loaded, tiny_module):
    requests = warmup_records(tiny_export_run.export_dir)
    # Per batch size: per image signature a bare request, then the client's (its output
    # filter); a bare request of the images' maps.
    kinds = [(r.model_spec.signature_name, len(tf.make_ndarray(next(iter(r.inputs.values())))),
              tuple(r.output_filter)) for r in requests]
    assert kinds == [(signature, n, outputs) for n in (1, 8) for signature, outputs in (
        ("serving_default", ()), ("serving_default", PREDICT_OUTPUTS),
        ("predict_with_threshold", ()), ("predict_with_threshold", PREDICT_OUTPUTS),
        ("predict_features", ()))]
    example = Path(RunDir(str(tiny_export_run.workdir)).example_images()[0]).read_bytes()
    # The graph's own decoding: the warm-up's maps come from the export's Python one.
    example_maps = tiny_module.in_process.image_features(
        tf.constant([example]))["features"].numpy()[0]
    for request in requests:
        assert request.model_spec.name == "ofrnn"
        feeds = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        if "images" in feeds:
            assert feeds["images"][0].numpy() == example  # the first example
        else:
            np.testing.assert_array_equal(feeds["features"][0], example_maps)
        out = loaded.signatures[request.model_spec.signature_name](**feeds)
        batch = len(next(iter(feeds.values())))
        assert set(out) == set(OUTPUTS) and out["num_labels"].shape == (batch,)


def test_warmup_covers_every_request_without_an_output_filter(tiny_export_run):
    """A REST request cannot filter outputs, nor need a gRPC client set one: each
    signature, all outputs fetched, is a set of fetches of its own that a session sets
    up on its first run, so each must be warmed at every warmed batch size."""
    requests = warmup_records(tiny_export_run.export_dir)
    sizes = {len(tf.make_ndarray(next(iter(r.inputs.values())))) for r in requests}
    bare = {(r.model_spec.signature_name, len(tf.make_ndarray(next(iter(r.inputs.values())))))
            for r in requests if not r.output_filter}
    saved = saved_model_pb2.SavedModel.FromString(
        (tiny_export_run.export_dir / "saved_model.pb").read_bytes())
    served = set(saved.meta_graphs[0].signature_def) - {"__saved_model_init_op"}
    assert served == {"serving_default", "predict_with_threshold", "predict_features"}
    assert bare == {(signature, n) for signature in served for n in sizes}


def session_outputs(export_dir: Path, signature: str, feeds: dict) -> dict:
    """Runs one signature the way TensorFlow Serving does (session over the SignatureDef)."""
    with served(export_dir) as run:
        return run(signature, feeds)


@contextlib.contextmanager
def served(export_dir: Path):
    """`run(signature, feeds)` over one session of the export, as TF Serving holds it."""
    session, signature_defs = load_session(str(export_dir))

    def run(signature: str, feeds: dict) -> dict:
        sig = signature_defs[signature]
        return session.run({k: v.name for k, v in sig.outputs.items()},
                           {sig.inputs[k].name: v for k, v in feeds.items()})

    try:
        yield run
    finally:
        session.close()


def assert_same_decoding(got: dict, want: dict, what: str):
    want = {k: np.asarray(v) for k, v in want.items()}
    np.testing.assert_array_equal(got["labels"], want["labels"], err_msg=what)
    np.testing.assert_array_equal(got["num_labels"], want["num_labels"], err_msg=what)
    np.testing.assert_array_equal(got["label_names"], want["label_names"], err_msg=what)
    for key in ("scores", "log_prob", "attention"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, rtol=0, err_msg=f"{what} {key}")


def test_session_loader_matches_in_process_decoding(tiny_export_run, tiny_module, tmp_path):
    """TF Serving's loading path, on an export without assets.extra (nothing but the
    SavedModel), gives what the run's InferenceModule gives in this process."""
    jpegs = tiny_export_run.jpeg_bytes(NUM_IMAGES)
    pngs = [to_png(b) for b in jpegs]
    bare = tmp_path / "bare_export"
    shutil.copytree(tiny_export_run.export_dir, bare, ignore=shutil.ignore_patterns("assets.extra"))
    features = tiny_module.backbone(tf.stack(
        [tf.io.decode_jpeg(b, channels=3) for b in jpegs])).numpy()
    cases = {
        "jpeg": ("serving_default", {"images": np.array(jpegs, object)},
                 tiny_module.serve_images(tf.constant(jpegs))),
        "png": ("serving_default", {"images": np.array(pngs, object)},
                tiny_module.serve_images(tf.constant(pngs))),
        "threshold": ("predict_with_threshold",
                      {"images": np.array(jpegs, object),
                       "threshold": np.full(len(jpegs), 0.02, np.float32)},
                      tiny_module.serve_images_with_threshold(
                          tf.constant(jpegs), tf.fill([len(jpegs)], 0.02))),
        "features": ("predict_features", {"features": features},
                     tiny_module.serve_features(tf.constant(features))),
    }
    with served(bare) as run:
        for what, (signature, feeds, want) in cases.items():
            assert_same_decoding(run(signature, feeds), want, what)


def test_session_loader_runs_the_label_context(make_fake_run, tiny_backbone, tmp_path):
    """A model with a fitted label context: TF Serving's loading path decodes from the
    corrected logits, as the in-process module does."""
    module = InferenceModule.from_run(str(make_fake_run(tmp_path / "run", label_context_units=8)),
                                      backbone=tiny_backbone)
    features = np.random.default_rng(0).normal(size=(4, 4, 4, 8)).astype("float32")
    maps = tf.reshape(features, [4, 16, 8])
    assert not np.allclose(module.model(maps), module.model.map_logits(maps), atol=1e-3)
    export_dir = Path(save_inference_module(module, str(tmp_path / "export")))
    got = session_outputs(export_dir, "predict_features", {"features": features})
    assert_same_decoding(got, module.serve_features(tf.constant(features)), "label context")


def test_session_loader_serves_m_map_alone_with_a_label_per_class(make_fake_run, tiny_backbone,
                                                                  tmp_path):
    """An export of the `baseline` variant under TF Serving's loading path: `labels` and
    `label_names` are [N, C] (the documented width for M_map alone, which has no step
    limit), `attention` is zeros [N, T_max, H, W], and the labels are the classes at or
    above the run's τ in decreasing score."""
    module = InferenceModule.from_run(str(make_fake_run(tmp_path / "run", variant="baseline",
                                                        tau=0.5)), backbone=tiny_backbone)
    export_dir = Path(save_inference_module(module, str(tmp_path / "export")))
    features = np.random.default_rng(1).normal(size=(6, 4, 4, 8)).astype("float32")
    got = session_outputs(export_dir, "predict_features", {"features": features})
    num_classes, max_steps = module.model.num_classes, module.max_steps
    assert got["labels"].shape == got["label_names"].shape == (6, num_classes)
    assert got["attention"].shape == (6, max_steps, 4, 4) and not got["attention"].any()
    assert got["num_labels"].max() > 1 and got["num_labels"].min() < num_classes  # τ chose
    for labels, names, count, scores in zip(got["labels"], got["label_names"],
                                            got["num_labels"], got["scores"]):
        chosen = [c for c in np.argsort(-scores, kind="stable") if scores[c] >= 0.5] or [
            int(np.argmax(scores))]
        assert list(labels[:count]) == chosen and (labels[count:] == -1).all()
        assert [n.decode() for n in names[:count]] == [module.label_map.names[c] for c in chosen]


def test_served_scores_mix_the_decoders_and_m_maps_with_the_calibrated_weight(
        make_fake_run, tiny_backbone, tmp_path):
    """The signatures' `scores` are the ranking scores evaluation measured: `mix_scores` of
    the decoder's path scores and M_map's v_prob with the run's calibrated score_mix (0.3
    here: ignoring it gives other scores), computed from the run's checkpoint, not by an
    `InferenceModule`."""
    workdir = make_fake_run(tmp_path / "run")
    module = InferenceModule.from_run(str(workdir), backbone=tiny_backbone)
    export_dir = Path(save_inference_module(module, str(tmp_path / "export")))
    features = np.random.default_rng(0).normal(size=(5, 4, 4, 8)).astype("float32")
    got = session_outputs(export_dir, "predict_features", {"features": features})

    run_dir = RunDir(str(workdir))
    model, config, facts = run_dir.load_model()
    calibration = run_dir.calibration(config.decoding.beam_size)
    assert calibration["score_mix"] == FAKE_SCORE_MIX
    decode = make_decoder(model, beam_size=calibration["beam_size"], max_steps=facts.max_steps,
                          threshold=calibration["tau"], min_labels=calibration["min_labels"],
                          all_steps=True)
    want = {k: v.numpy() for k, v in decode(tf.reshape(features, [5, 16, 8])).items()}
    assert not np.allclose(want["v_prob"], want["path_scores"], atol=1e-3)
    np.testing.assert_array_equal(got["labels"], want["labels"])
    np.testing.assert_allclose(got["scores"], mix_scores(want["v_prob"], want["path_scores"],
                                                         np.float32(calibration["score_mix"])),
                               atol=1e-5, rtol=0)


def test_default_export_holds_no_xla_function_and_jit_compile_adds_them(tiny_export_run,
                                                                         tiny_module, tmp_path):
    assert xla_compiled_functions(str(tiny_export_run.export_dir)) == []
    xla = Path(export_run(str(tiny_export_run.workdir), str(tmp_path / "xla"), jit_compile=True))
    assert xla_compiled_functions(str(xla))
    as_text = tmp_path / "as_text"  # the SavedModel in its text form reads the same
    shutil.copytree(xla, as_text)
    proto = saved_model_pb2.SavedModel.FromString((as_text / "saved_model.pb").read_bytes())
    (as_text / "saved_model.pbtxt").write_text(text_format.MessageToString(proto))
    (as_text / "saved_model.pb").unlink()
    assert xla_compiled_functions(str(as_text)) == xla_compiled_functions(str(xla))
    # The local server refuses it, as TF Serving without its XLA flag would fail it, and
    # serves it with the flag.
    with pytest.raises(RuntimeError, match=r"compiles \d+ function\(s\) with XLA .* Start "
                                           r"this server with --xla_cpu_compilation_enabled"):
        Servable.load(str(xla.parent), "ofrnn")
    servable = Servable.load(str(xla.parent), "ofrnn", xla_compilation_enabled=True)
    try:
        features = np.zeros((2, *tiny_module.feature_shape), np.float32)
        got = servable.run("predict_features", {"features": features}, ["num_labels"])
        assert got["num_labels"].shape == (2,)
    finally:
        servable.session.close()


def test_second_export_gets_next_version_and_existing_version_is_refused(tiny_export_run, tmp_path):
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
    # What it does, then how to serve it, on stderr (stdout is the version folder alone).
    assert f"[export] {tiny_export_run.workdir} into {base}: building the model" in stderr
    assert re.search(r"\[export\] the version labels an image by beam search of width K=\d+: "
                     r".* at least τ=[0-9.e-]+ \(chosen on validation\)", stderr), stderr[-1000:]
    assert re.search(rf"\[export\] written in \d+s; serve it with: ofrnn-serve "
                     rf"--model_base_path={re.escape(str(base))}\n", stderr), stderr[-1000:]
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]  # no temporary folder left
    assert find_latest_version(str(base)) == (2, str(base / "2"))
    # The path an export printed, given back as --export_dir: refused, not nested.
    into_version = run_checked([sys.executable, "export.py",
                                f"--workdir={tiny_export_run.workdir}",
                                f"--export_dir={base / '2'}"], expect_failure=True)
    assert (f"--export_dir={base / '2'} is itself a version folder (it holds a SavedModel): "
            f"give its parent, {base}, under which each export is a new numbered version"
            ) in into_version.stderr, into_version.stderr[-2000:]
    assert "[export]" not in into_version.stderr and not (base / "2" / "1").exists()
    with pytest.raises(ValueError, match=rf"^{re.escape(str(base / '2'))} is itself a version "
                                         rf"folder \(it holds a SavedModel\): give its parent"):
        export_run(str(tiny_export_run.workdir), str(base / "2"))  # as the library is called
    assert not (base / "2" / "1").exists()


def test_old_versions_are_removed_but_the_highest_and_the_one_written(tmp_path):
    base = tmp_path / "export"
    # 2**64 is no version for TF Serving (not an int64): neither kept as one nor removed.
    for name in ("1", "2", "0010", "9", ".tmp-host-1-0123abcd", "notes", str(2 ** 64)):
        (base / name).mkdir(parents=True)
        (base / name / "saved_model.pb").write_bytes(b"")
    elsewhere = tmp_path / "kept_elsewhere"
    elsewhere.mkdir()
    (base / "3").symlink_to(elsewhere)  # a version linked in: only the link goes
    # Version 1 was just written (--version=1): it stays, whatever its number.
    removed = remove_old_versions(str(base), 2, written=str(base / "1"))
    assert removed == [str(base / "3"), str(base / "2")]
    assert sorted(os.listdir(base)) == [".tmp-host-1-0123abcd", "0010", "1", str(2 ** 64), "9",
                                        "notes"]
    assert elsewhere.is_dir()
    assert remove_old_versions(str(base), 2) == [str(base / "1")]
    with pytest.raises(ValueError, match="keep must be at least 1, got 0"):
        remove_old_versions(str(base), 0)
    # Nor does it number the next export beyond what a server reads.
    assert next_version(str(base)) == 11


@pytest.mark.parametrize("stopped_at", ["rename", "folder inside", "removal"])
def test_a_version_this_user_cannot_remove_is_named_not_raised(tmp_path, monkeypatch,
                                                               stopped_at):
    # A base path several users export into: another user's version cannot be renamed
    # (sticky base), or its folders let no entry be removed (group-writable base). It is
    # left whole and named; a removal stopped part way names the folder it left.
    from ofrnn_tf import processes
    from ofrnn_tf.export import saved_model

    base = tmp_path / "export"
    for name in ("1", "2", "3"):
        (base / name / "variables").mkdir(parents=True)
        (base / name / "variables" / "variables.index").write_bytes(b"")
    monkeypatch.setattr(processes.os, "geteuid", lambda: os.getuid() + 1)  # not the owner
    owner = pwd.getpwuid(os.getuid()).pw_name
    rename, access = os.rename, os.access
    if stopped_at == "rename":
        def rename_refused(source, target):
            if os.path.basename(source) == "1":
                raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), source, target)
            return rename(source, target)

        monkeypatch.setattr(saved_model.os, "rename", rename_refused)
        blocked = str(base / "1")
    elif stopped_at == "folder inside":
        blocked = str(base / "1" / "variables")
        monkeypatch.setattr(processes.os, "access", lambda path, mode: (
            path != blocked and access(path, mode)))
    else:
        def rmtree_stopped(path, onerror):
            blocked = os.path.join(path, "variables", "variables.index")
            onerror(os.unlink, blocked, (PermissionError, PermissionError(
                errno.EACCES, os.strerror(errno.EACCES), blocked), None))

        monkeypatch.setattr(processes.shutil, "rmtree", rmtree_stopped)
    left = []
    removed = remove_old_versions(str(base), 1, on_left=lambda *said: left.append(said))
    if stopped_at == "removal":
        assert removed == [str(base / "2"), str(base / "1")]
        assert sorted(os.path.basename(path) for path, _ in left) == sorted(
            p.name for p in base.iterdir() if p.name.startswith(".tmp-"))
        doomed = left[0][0]
        assert left[0][1] == (
            f"(version 2, removed part way) belongs to {owner} and cannot be removed by this "
            f"user (Permission denied: {doomed}/variables/variables.index)")
        return
    assert removed == [str(base / "2")]
    reason = ("Operation not permitted" if stopped_at == "rename" else
              f"Permission denied: {blocked}")
    assert left == [(str(base / "1"), f"belongs to {owner} and cannot be removed by this user "
                                      f"({reason})")]
    assert sorted(os.listdir(base)) == ["1", "3"]
    assert os.listdir(base / "1" / "variables") == ["variables.index"]  # left whole


def test_a_version_another_export_prunes_first_is_passed_over(tmp_path, monkeypatch):
    # Two `--keep_versions` exports of one base path list the same old versions; the
    # second to reach one finds it gone, which is what it was asked for.
    from ofrnn_tf.export import saved_model

    base = tmp_path / "export"
    for name in ("1", "2", "3", "4"):
        (base / name).mkdir(parents=True)
    rename = os.rename

    def other_export_first(source, target):
        if os.path.basename(source) == "2":
            shutil.rmtree(source)  # the other export's prune, in between
        return rename(source, target)

    monkeypatch.setattr(saved_model.os, "rename", other_export_first)
    assert remove_old_versions(str(base), 1) == [str(base / "3"), str(base / "1")]
    assert sorted(os.listdir(base)) == ["4"]
    (base / str(2 ** 63 - 1)).mkdir()
    with pytest.raises(FileExistsError, match=r"9223372036854775807 exists, the highest version "
                                              r"TF Serving reads: none is left above it"):
        next_version(str(base))


def test_export_without_calibration_fails_clearly(tiny_export_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_export_run.workdir, workdir,
                    ignore=shutil.ignore_patterns("calibration.json", "tensorboard"))
    with pytest.raises(UncalibratedBeamSizeError, match="has no τ for beam width K=3"):
        export_run(str(workdir), str(tmp_path / "export"))
    with pytest.raises(UncalibratedBeamSizeError, match="K=5"):
        export_run(str(tiny_export_run.workdir), str(tmp_path / "export"), beam_size=5)
    assert not (tmp_path / "export").exists()


def huge_png() -> bytes:
    """A 20000x20000 1-bit PNG: about 48 KB that decodes to 1.2 GB of RGB."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_session_loader_refuses_bad_images_naming_them_and_keeps_serving(tiny_export_run,
                                                                        tmp_path):
    """As TF Serving runs the main job's export: a good request gives predict.py's labels,
    every bad kind is an InvalidArgument naming the image, then a good request works."""
    from ofrnn_tf.inference import Predictor

    good = tiny_export_run.jpeg_bytes(3)
    truncated = good[1][:len(good[1]) // 2]
    sof = good[0].index(b"\xff\xc0")
    giant_header = good[0][:sof + 5] + (40000).to_bytes(2, "big") * 2 + good[0][sof + 9:]
    bad = {
        "garbage": (b"certainly not an image", r"images\[1\].*JPEG, PNG, GIF or BMP"),
        "empty string": (b"", r"images\[1\] is empty"),
        "truncated JPEG": (truncated, r"images\[1\]"),
        "huge PNG": (huge_png(), r"images\[1\] is a PNG of 20000x20000 = 400000000 pixels, "
                                 r"above the limit of 40000000"),
        "huge JPEG header": (giant_header, r"images\[1\] is a JPEG of 40000x40000"),
        "WebP": (b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 16, r"images\[1\].*WebP"),
    }
    session, signature_defs = load_session(str(tiny_export_run.export_dir))
    sig = signature_defs["serving_default"]
    fetches = {k: v.name for k, v in sig.outputs.items()}

    def run(images):
        return session.run(fetches, {sig.inputs["images"].name: np.array(images, object)})

    try:
        paths = []
        for i, data in enumerate(good):
            paths.append(tmp_path / f"{i}.jpg")
            paths[-1].write_bytes(data)
        predicted = Predictor.from_run(str(tiny_export_run.workdir)).predict_files(paths)
        served = run(good)
        assert [[n.decode() for n in row[:k]] for row, k in
                zip(served["label_names"], served["num_labels"])] == [
            p["labels"] for p in predicted]
        for what, (data, message) in bad.items():
            with pytest.raises(tf.errors.InvalidArgumentError, match=message):
                run([good[0], data, good[2]])
            assert run(good[:1])["num_labels"].shape == (1,), f"not serving after {what}"
        with pytest.raises(tf.errors.InvalidArgumentError, match="empty"):
            run([])
        np.testing.assert_array_equal(run(good)["labels"], served["labels"])
    finally:
        session.close()


def test_threshold_signature_under_the_session_loader_takes_one_value_per_image(tiny_export_run,
                                                                               tiny_module):
    """TF Serving's batching merges requests along dimension 0 of every input, so the
    threshold is one τ per image; a wrong count or a bad value is refused naming it."""
    jpegs = tiny_export_run.jpeg_bytes(4)
    images = np.array(jpegs, object)
    mixed = np.array([0.0, 1.0, 0.0, 1.0], np.float32)
    bad = {"count": (np.float32([0.5]), "threshold has 1 values for 4 images"),
           "range": (np.float32([0.5, 0.5, 1.5, 0.5]), r"threshold\[2\] must be a probability "
                                                       r"in \[0, 1\]; got 1.5"),
           "NaN": (np.float32([0.5, np.nan, 0.5, 0.5]), r"threshold\[1\] must be")}
    with served(tiny_export_run.export_dir) as run:
        got = run("predict_with_threshold", {"images": images, "threshold": mixed})
        for what, (threshold, message) in bad.items():
            with pytest.raises(tf.errors.InvalidArgumentError, match=message):
                run("predict_with_threshold", {"images": images, "threshold": threshold})
    for tau in (0.0, 1.0):  # each image as if its τ were everyone's
        alone = tiny_module.serve_images_with_threshold(tf.constant(jpegs), tf.fill([4], tau))
        for i in np.flatnonzero(mixed == tau):
            assert got["num_labels"][i] == alone["num_labels"][i]
            np.testing.assert_array_equal(got["labels"][i], alone["labels"][i])


def test_export_refuses_warmup_images_and_settings_that_would_not_serve(tiny_export_run,
                                                                       tiny_module, tmp_path):
    """Nothing is written for an export whose warm-up replay would fail at load time or
    whose version TF Serving would never load."""
    from ofrnn_tf.export.saved_model import WarmupImageError

    good = tiny_export_run.jpeg_bytes(1)[0]
    base = tmp_path / "export"
    with pytest.raises(WarmupImageError,
                       match="warm-up image 1: .*not a JPEG/PNG/GIF/BMP image") as e:
        save_inference_module(tiny_module, str(base), warmup_images=[good, b"meeting notes"])
    assert e.value.index == 1
    for version in (-3, 2 ** 63):  # TF Serving reads a version folder as an int64
        with pytest.raises(ValueError, match=rf"version must be an integer from 0 to "
                                             rf"9223372036854775807 \(TF Serving loads only "
                                             rf"those folders\), got {version}"):
            save_inference_module(tiny_module, str(base), version=version)
    assert not base.exists()
    with pytest.raises(ValueError, match="max_image_pixels must be at least 1"):
        InferenceModule.from_run(str(tiny_export_run.workdir), max_image_pixels=0)


def test_export_command_names_the_warmup_file_it_refuses(tiny_export_run, tmp_path):
    warm = tmp_path / "warm"
    warm.mkdir()
    (warm / "a.jpg").write_bytes(tiny_export_run.jpeg_bytes(1)[0])
    (warm / "notes.txt").write_text("meeting notes")
    cases = {"a file that is no image": [f"--warmup_images={warm}/*"],
             "a glob that matches nothing": [f"--warmup_images={warm}/*.png"],
             "a negative version": ["--version=-3"],
             "a count that leaves every file out": [f"--warmup_images={warm}/*.jpg",
                                                    "--num_warmup_images=0"],
             "an image above the pixel limit": [f"--warmup_images={warm}/*.jpg",
                                                "--max_image_pixels=10"]}
    messages = {"a file that is no image": f"{warm / 'notes.txt'}: ",
                "a glob that matches nothing": "matches no file",
                "a negative version": "--version must be an integer from 0 to ",
                "a count that leaves every file out": "--num_warmup_images=0 leaves out every "
                                                      "--warmup_images file",
                "an image above the pixel limit": "pixels is above the limit of 10 pixels "
                                                  "(raise it with --max_image_pixels)"}
    for what, flags in cases.items():
        done = subprocess.run(
            [sys.executable, "export.py", f"--workdir={tiny_export_run.workdir}",
             f"--export_dir={tmp_path / 'export'}", *flags],
            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        assert done.returncode != 0, what
        assert messages[what] in done.stderr, (what, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, what
    assert not (tmp_path / "export").exists()


def test_warmup_images_are_a_folder_a_file_or_a_glob(tmp_path):
    from absl import app

    from ofrnn_tf.cli.export import _given_warmup_images

    folder = tmp_path / "photos [2024]"  # '[' opens a glob's character class
    folder.mkdir()
    for name in ("b.JPG", "a.png", "notes.txt", ".hidden.jpg"):
        (folder / name).write_bytes(b"x")
    (folder / "sub.jpg").mkdir()
    assert _given_warmup_images(str(folder), 8) == [str(folder / "a.png"),
                                                     str(folder / "b.JPG")]
    assert _given_warmup_images(str(folder), 1) == [str(folder / "a.png")]
    assert _given_warmup_images(str(folder / "b.JPG"), 8) == [str(folder / "b.JPG")]
    (tmp_path / "c.jpg").write_bytes(b"x")
    assert _given_warmup_images(str(tmp_path / "*.jpg"), 8) == [str(tmp_path / "c.jpg")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(app.UsageError, match=r"empty: the folder holds no jpg/jpeg/"):
        _given_warmup_images(str(tmp_path / "empty"), 8)


def test_the_serve_command_an_export_suggests_serves_it_as_written(tmp_path):
    from ofrnn_tf.cli.export import newer_version_note, serve_command

    for version in ("3", "9"):
        (tmp_path / version).mkdir()
    assert newer_version_note(str(tmp_path), str(tmp_path / "9")) == ""
    assert newer_version_note(str(tmp_path), str(tmp_path / "3")) == (
        f" (which serves {tmp_path / '9'}, the newest version there, not this one: TF Serving "
        f"also serves the newest)")

    base = tmp_path / "my exports"
    assert serve_command(str(base), "ofrnn", False) == (
        f"ofrnn-serve '--model_base_path={base}'")
    assert serve_command(str(base), "tags", True) == (
        f"ofrnn-serve '--model_base_path={base}' --model_name=tags "
        f"--xla_cpu_compilation_enabled")


def test_an_export_other_users_cannot_read_says_so_and_how_to_open_it(tmp_path):
    # Written under umask 077: TF Serving, which usually runs as a user of its own, could
    # not load it, and nothing else would say so before it is served.
    from ofrnn_tf.cli.export import closed_to_others_note

    base = tmp_path / "exports"
    version = base / "1"
    (version / "variables").mkdir(parents=True)
    (version / "variables" / "variables.index").write_bytes(b"")
    os.chmod(version / "variables" / "variables.index", 0o644)
    for folder in (tmp_path, base, version, version / "variables"):
        os.chmod(folder, 0o755)
    assert closed_to_others_note(str(version)) == ""
    os.chmod(version / "variables" / "variables.index", 0o600)
    assert closed_to_others_note(str(version)) == (
        f"; other users cannot read it ({version / 'variables' / 'variables.index'}, as this "
        f"umask left it): TF Serving running as another user cannot load it until it is "
        f"opened with: chmod -R a+rX {version}")
    os.chmod(base, 0o700)
    assert closed_to_others_note(str(version)).endswith(
        f"({base}, as this umask left it): TF Serving running as another user cannot load "
        f"it until it is opened with: chmod a+rx {base} && chmod -R a+rX {version}")


def played_export(tmp_path, exported: str, *stand_ins: str, args=(), **run):
    """`ofrnn-export` run in a child with the run folder's check and the export itself
    played: `exported` is what `saved_model.export_run` becomes (Python source; `stop`
    raises KeyboardInterrupt), `stand_ins` more such lines, `args` its flags after
    ``--workdir``, `run` what `subprocess.run` takes besides."""
    script = "\n".join([
        "import errno, os, sys",
        "from ofrnn_tf.cli import export as command",
        "from ofrnn_tf.export import saved_model",
        "from ofrnn_tf.run_dir import RunDir",
        "def stop(*args, **kwargs):",
        "    raise KeyboardInterrupt",
        "command.trained_run = lambda workdir, beam_size: RunDir(workdir)",
        f"saved_model.export_run = {exported}",
        *stand_ins,
        "sys.argv[0] = 'ofrnn-export'",
        "command.run()", ""])
    return subprocess.run([sys.executable, "-c", script, f"--workdir={tmp_path}", *args],
                          cwd=ROOT, text=True, timeout=120, **run)


@pytest.mark.parametrize("stopped_in", ["export", "removal"])
def test_an_interrupted_export_says_whether_it_published_its_version(tmp_path, stopped_in):
    # The export itself is played (the run folder and the SavedModel are not the point):
    # a Ctrl-C before the version folder is renamed into place publishes none; one in
    # --keep_versions' removal of older versions comes after it is published whole.
    version = str(tmp_path / "exports" / "7")
    written = "stop" if stopped_in == "export" else f"lambda *args, **kwargs: {version!r}"
    done = played_export(tmp_path, written, "saved_model.remove_old_versions = stop",
                         args=[f"--export_dir={tmp_path / 'exports'}", "--keep_versions=1"],
                         capture_output=True)
    assert done.returncode == 130, done.stderr[-2000:]
    said = done.stderr.rstrip().splitlines()[-1]
    if stopped_in == "export":
        assert said == "ofrnn-export: interrupted; no version was published; rerun the same command"
    else:
        assert said == (f"ofrnn-export: interrupted; version {version} was published whole: the "
                        f"removal of older versions (--keep_versions) may have stopped part "
                        f"way; the next export with --keep_versions finishes it")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="writes to /dev/full")
def test_an_export_whose_stdout_is_full_says_its_version_was_published(tmp_path):
    # The export itself is played, as above. Its path on stdout comes once the version is
    # published: a rerun would only write an identical one.
    version = str(tmp_path / "exports" / "7")
    with open("/dev/full", "w") as full:
        done = played_export(tmp_path, f"lambda *args, **kwargs: {version!r}",
                             args=[f"--export_dir={tmp_path / 'exports'}"], stdout=full,
                             stderr=subprocess.PIPE)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.rstrip().splitlines()[-1] == (
        f"ofrnn-export: No space left on device writing the standard output; version "
        f"{version} was published whole, so a rerun would only publish another, identical "
        f"version")


def test_an_export_that_cannot_remove_an_old_version_names_it_and_succeeds(tmp_path):
    # The export itself is played, as above: what follows it is the point. The version
    # written is on stdout before the removal of older ones, which cannot undo it.
    base = tmp_path / "exports"
    (base / "1").mkdir(parents=True)
    (base / "7").mkdir()
    done = played_export(
        tmp_path, f"lambda *args, **kwargs: {str(base / '7')!r}",
        "saved_model.removal_blocked = lambda path: PermissionError(",
        "    errno.EACCES, os.strerror(errno.EACCES), path + '/variables')",
        args=[f"--export_dir={base}", "--keep_versions=1"], capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == f"{base / '7'}\n"
    assert (f"ofrnn-export: {base / '1'} cannot be removed (Permission denied: "
            f"{base / '1' / 'variables'}): left as it is (--keep_versions=1)\n") in done.stderr
    assert sorted(os.listdir(base)) == ["1", "7"]


def test_an_export_with_keep_versions_names_the_versions_it_removed(tmp_path):
    # The export itself is played, as above: --keep_versions=1 keeps the version written
    # and removes the older ones, said in one line after the version's path.
    base = tmp_path / "exports"
    for version in ("1", "2", "7"):
        (base / version / "variables").mkdir(parents=True)
    done = played_export(tmp_path, f"lambda *args, **kwargs: {str(base / '7')!r}",
                         args=[f"--export_dir={base}", "--keep_versions=1"],
                         capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == f"{base / '7'}\n"
    assert (f"ofrnn-export: removed 2 older version(s) (--keep_versions=1): {base / '2'}, "
            f"{base / '1'}\n") in done.stderr, done.stderr[-2000:]  # highest first
    assert os.listdir(base) == ["7"]


def test_an_export_into_a_version_that_exists_is_refused_naming_the_flag(tmp_path):
    # The run folder's check is played; the export is the real one, which refuses the
    # version before it reads the run or builds the model.
    base = tmp_path / "exports"
    (base / "0003").mkdir(parents=True)
    done = played_export(tmp_path, "saved_model.export_run",
                         args=[f"--export_dir={base}", "--version=3"], capture_output=True)
    assert done.returncode == 1, done.stderr[-2000:]
    assert (f"ofrnn-export: {base / '0003'} exists; pick another version (--version)\n"
            in done.stderr), done.stderr[-2000:]
    assert done.stdout == "" and os.listdir(base) == ["0003"]


def test_the_gray_warm_up_image_is_the_backbones_side_or_the_pixel_limits():
    """The warm-up image of a run with no usable example images: one the export would
    take, never larger than the model reads."""
    import types

    from ofrnn_tf.export import saved_model

    for limit, side in ((40_000_000, 224), (100, 10), (50_175, 223)):
        module = types.SimpleNamespace(image_size=224, max_image_pixels=tf.constant(limit))
        image = tf.io.decode_jpeg(saved_model._gray_jpeg(module)).numpy()
        assert image.shape == (side, side, 3), limit
        assert np.all(np.abs(image.astype(int) - 128) <= 1)


def test_a_taken_version_is_refused_before_tensorflow_loads(tmp_path):
    """The refusal comes in the time a flag's takes, not after TensorFlow's import."""
    base = tmp_path / "exports"
    (base / "3").mkdir(parents=True)
    command = ("import atexit, sys; atexit.register(lambda: sys.stderr.write("
               "'\\nTENSORFLOW IMPORTED' if 'tensorflow' in sys.modules else '')); "
               "from ofrnn_tf.cli.export import run; sys.argv[0] = 'ofrnn-export'; run()")
    done = subprocess.run([sys.executable, "-c", command, f"--workdir={tmp_path}",
                           f"--export_dir={base}", "--version=3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"ofrnn-export: {base / '3'} exists; pick another version (--version)" in done.stderr
    assert "TENSORFLOW IMPORTED" not in done.stderr, done.stderr[-2000:]


def test_export_leaves_out_run_examples_it_refuses_and_blames_no_flag(tiny_export_run,
                                                                      tmp_path):
    """A run's example images are its first test images: one the export refuses (cut
    off, WebP) is left out of the warm-up requests with a note, not an error."""
    from tensorflow_serving.apis import prediction_log_pb2

    workdir = tmp_path / "run"
    shutil.copytree(tiny_export_run.workdir, workdir)
    examples = Path(RunDir(str(workdir)).examples_dir)
    shutil.rmtree(examples)
    examples.mkdir()
    good = tiny_export_run.jpeg_bytes(2)
    (examples / "000_cut.jpg").write_bytes(good[0][:len(good[0]) // 2])
    (examples / "001_photo.webp").write_bytes(b"RIFF\x24\0\0\0WEBPVP8 " + bytes(24))
    (examples / "002_a.jpg").write_bytes(good[0])
    (examples / "003_b.jpg").write_bytes(good[1])
    (workdir / "examples.json").write_text(json.dumps([  # as the run lists its copies
        {"file": f"examples/{name}", "image_id": name, "labels": []}
        for name in sorted(os.listdir(examples))]))
    done = run_checked([sys.executable, "export.py", f"--workdir={workdir}",
                        f"--export_dir={tmp_path / 'export'}", "--num_warmup_images=2"])
    assert done.stdout.strip().splitlines()[-1] == str(tmp_path / "export" / "1")
    notes = [line for line in done.stderr.splitlines() if "left out of the warm-up" in line]
    assert len(notes) == 2, done.stderr[-2000:]
    assert str(examples / "000_cut.jpg") in notes[0] and "truncated or corrupt" in notes[0]
    assert str(examples / "001_photo.webp") in notes[1] and "looks like WebP" in notes[1]
    assert "--warmup_images" not in done.stderr
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in
               tf.data.TFRecordDataset(str(tmp_path / "export" / "1" / WARMUP_FILE))]
    sent = {bytes(image) for r in records if "images" in r.predict_log.request.inputs
            for image in tf.make_ndarray(r.predict_log.request.inputs["images"])}
    assert sent == set(good)


# Finite values near float32's limit overflowed inside the model: NaN scores, no labels.
@pytest.mark.parametrize("value", [np.nan, -np.inf, 3.4e38, -65505.0])
def test_features_signature_refuses_maps_the_cache_cannot_hold_naming_the_image(
        tiny_export_run, tiny_module, loaded, value):
    shape = [3, *tiny_module.feature_shape]
    features = np.zeros(shape, np.float32)
    features[2, 0, 1, 0] = value
    # The whole text, as clients get it (docs/serving.md, serving/README.md quote it).
    said = "features[2] contains NaN or Inf, or a value beyond ±65504, the range of the float16 " \
           "feature cache"
    signature = loaded.signatures["predict_features"]
    with served(tiny_export_run.export_dir) as run:
        with pytest.raises(tf.errors.InvalidArgumentError) as by_session:
            run("predict_features", {"features": features})
        with pytest.raises(tf.errors.InvalidArgumentError) as by_signature:
            signature(features=tf.constant(features))
        for refusal in (by_session.value, by_signature.value):
            assert f"[{said}]" in refusal.message and op_error_text(refusal) == said
        features[2, 0, 1, 0] = -65504.0  # float16's largest: what the cache holds
        assert run("predict_features", {"features": features})["num_labels"].shape == (3,)
        assert signature(features=tf.constant(features))["num_labels"].shape == (3,)


def test_signatures_refuse_inputs_of_another_shape_as_tf_serving_feeds_them(tiny_export_run,
                                                                            tiny_module):
    """TF Serving runs the graph on a request's tensors whatever their shape (no check
    against the signature): fed through the C++ session API, as it does."""
    session, signature_defs = load_session(str(tiny_export_run.export_dir))
    height, width, depth = tiny_module.feature_shape

    def call(signature: str, **feeds):
        sig = signature_defs[signature]
        names = sorted(feeds)
        run = session._make_callable_from_options(config_pb2.CallableOptions(
            feed=[sig.inputs[k].name for k in names], fetch=[sig.outputs["num_labels"].name]))
        return run(*[feeds[k] for k in names])

    nhwc = np.zeros([2, height, width, depth], np.float32)
    image = tiny_export_run.jpeg_bytes(1)[0]
    try:
        assert call("predict_features", features=nhwc)[0].shape == (2,)
        expected = f"[?,{height},{width},{depth}]"
        refused = {
            ("predict_features", "features", f"[2,{depth},{height},{width}]", expected):
                {"features": np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))},
            ("predict_features", "features", f"[{height},{width},{depth}]", expected):
                {"features": nhwc[0]},
            ("serving_default", "images", "[1,1]", "[?]"):
                {"images": np.array([[image]], object)},
            ("predict_with_threshold", "threshold", "[]", "[?]"):
                {"images": np.array([image], object), "threshold": np.float32(0.5)},
        }
        for (signature, name, shape, want), feeds in refused.items():
            with pytest.raises(tf.errors.InvalidArgumentError,
                               match=rf"Shape of tensor \S*{name}\S* {re.escape(shape)} is not "
                                     rf"compatible with expected shape {re.escape(want)}"):
                call(signature, **feeds)
        assert call("predict_features", features=nhwc)[0].shape == (2,)  # still serving
    finally:
        session.close()


def test_an_export_never_publishes_a_folder_another_export_writes(tiny_module, tmp_path,
                                                                   monkeypatch):
    from ofrnn_tf.export import saved_model
    from ofrnn_tf.processes import owner_tag

    base = tmp_path / "export"
    host = owner_tag().rpartition("-")[0]
    live = base / f".tmp-{owner_tag()}-0123abcd"  # another export of a live process
    dead = base / f".tmp-{host}-999999999-89abcdef"  # no such pid: a dead export's leftover
    (live / "variables").mkdir(parents=True)
    dead.mkdir()
    write = saved_model.write_warmup_requests

    def another_export_finishes_first(folder, *args, **kwargs):
        if not (base / "1").exists():  # version 1 appears while this export writes
            (base / "1").mkdir()
            (base / "1" / "theirs").write_text("x")
        return write(folder, *args, **kwargs)

    monkeypatch.setattr(saved_model, "write_warmup_requests", another_export_finishes_first)
    assert save_inference_module(tiny_module, str(base)) == str(base / "2")
    assert os.listdir(base / "1") == ["theirs"]  # left as the other export wrote it
    with pytest.raises(FileExistsError, match=re.escape(f"{base / '2'} exists")):
        save_inference_module(tiny_module, str(base), version=2)
    assert live.exists() and not dead.exists()
    assert sorted(p.name for p in base.iterdir() if p.name != live.name) == ["1", "2"]


def test_train_and_export_print_no_tensorflow_notes(tiny_export_run):
    # Run as a user's shell runs them (TF_CPP_MIN_LOG_LEVEL unset): no INFO notes on each
    # saved function, no C++ warnings of the warm-up's set-up, no record printed twice.
    for log in (tiny_export_run.train_log, tiny_export_run.export_log):
        for note in ("INFO:tensorflow", "signature_serialization", "builder_impl",
                     "Not handling type", "tf_record_dataset_op", "retracing"):
            assert note not in log, (note, log[-3000:])


def test_export_run_from_python_warms_up_on_the_runs_examples(tiny_export_run, tmp_path,
                                                             monkeypatch):
    from tensorflow_serving.apis import prediction_log_pb2

    from ofrnn_tf.export import saved_model

    base = str(tmp_path / "export")
    path = saved_model.export_run(str(tiny_export_run.workdir), base, version=3)
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in
               tf.data.TFRecordDataset(os.path.join(path, WARMUP_FILE))]
    sent = [bytes(image) for image in tf.make_ndarray(records[0].predict_log.request.inputs[
        "images"])]
    examples = RunDir(str(tiny_export_run.workdir)).example_images()
    assert sent == [Path(examples[0]).read_bytes()]
    # A version taken is refused before the model is built (seconds to a minute).
    monkeypatch.setattr(saved_model.InferenceModule, "from_run", _not_to_be_called)
    with pytest.raises(FileExistsError, match=r"export/3 exists; pick another version$"):
        saved_model.export_run(str(tiny_export_run.workdir), base, version=3)
    os.rename(path, os.path.join(base, "0003"))  # TF Serving reads it as version 3 too
    with pytest.raises(FileExistsError, match=r"export/0003 exists; pick another version$"):
        saved_model.export_run(str(tiny_export_run.workdir), base, version=3)
    assert sorted(os.listdir(base)) == ["0003"]
    (tmp_path / "full" / str(2 ** 63 - 1)).mkdir(parents=True)
    with pytest.raises(FileExistsError, match=r"none is left above it"):
        saved_model.export_run(str(tiny_export_run.workdir), str(tmp_path / "full"))


def _not_to_be_called(*args, **kwargs):
    raise AssertionError("the model was built")


def test_an_example_copy_linked_to_a_file_outside_the_run_is_not_exported(tiny_export_run,
                                                                         tmp_path):
    # A run folder from elsewhere whose first example copy links to a photo of the user's:
    # the export, which is shipped, must not carry it; a link inside the run is read.
    from tensorflow_serving.apis import prediction_log_pb2

    from ofrnn_tf.export import saved_model

    workdir = tmp_path / "run"
    shutil.copytree(tiny_export_run.workdir, workdir, ignore=shutil.ignore_patterns(".lock"))
    examples = RunDir(str(workdir)).example_images()
    private = tmp_path / "private.jpg"
    private.write_bytes(tiny_export_run.jpeg_bytes(1)[0] + b"private")
    os.remove(examples[0])
    os.symlink(private, examples[0])
    os.remove(examples[1])
    os.symlink(examples[2], examples[1])  # a link within the run folder
    refused = []
    path = saved_model.export_run(str(workdir), str(tmp_path / "export"),
                                  on_refused=lambda *said: refused.append(said))
    assert refused == [(examples[0], "a link to a file outside the run folder, which the "
                                     "export does not read")]
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in
               tf.data.TFRecordDataset(os.path.join(path, WARMUP_FILE))]
    sent = {bytes(image) for record in records
            if "images" in record.predict_log.request.inputs
            for image in tf.make_ndarray(record.predict_log.request.inputs["images"])}
    assert Path(examples[1]).read_bytes() in sent
    assert not any(b"private" in image for image in sent)
    # Examples are looked at only until enough are usable: none, for none.
    del refused[:]
    saved_model.export_run(str(workdir), str(tmp_path / "export"), num_warmup_images=0,
                           on_refused=lambda *said: refused.append(said))
    assert refused == []


def test_warmup_images_are_checked_without_tracing_the_signature(tiny_export_run):
    """`tf.saved_model.save` traces every signature in its own context: a check that
    called `serve_images` would trace the whole model once more for nothing."""
    from ofrnn_tf.export.saved_model import WarmupImageError, check_warmup_images

    module = InferenceModule.from_run(str(tiny_export_run.workdir))
    check_warmup_images(module, tiny_export_run.jpeg_bytes(2))
    with pytest.raises(WarmupImageError, match="warm-up image 1: .*not a JPEG/PNG/GIF/BMP image"):
        check_warmup_images(module, [tiny_export_run.jpeg_bytes(1)[0], b"meeting notes"])
    assert module.serve_images.experimental_get_tracing_count() == 0


def test_export_traces_the_image_checks_only_inside_its_signatures(tiny_export_run,
                                                                   monkeypatch, tmp_path):
    """Each trace of the image checks costs seconds: the export traces them for its two
    image signatures, and checks its warm-up images and computes their maps without."""
    from ofrnn_tf.inference import module as module_code

    traced = []

    def counted(*args, **kwargs):
        traced.append(tf.inside_function())
        return decode_images(*args, **kwargs)

    decode_images = module_code.decode_images
    monkeypatch.setattr(module_code, "decode_images", counted)
    module = InferenceModule.from_run(str(tiny_export_run.workdir))
    # The maps of the images the requests hold, at most 8: all of them at once would hold a
    # backbone's activations for each.
    mapped = []
    maps_of = InferenceModule.maps_of
    monkeypatch.setattr(InferenceModule, "maps_of", lambda self, pixels: mapped.append(
        len(pixels)) or maps_of(self, pixels))
    save_inference_module(module, str(tmp_path / "export"),
                          warmup_images=tiny_export_run.jpeg_bytes(2) * 6)
    assert traced == [True, True]  # serving_default, predict_with_threshold
    assert mapped == [8]
