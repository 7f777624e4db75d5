"""Tiny training → export → gRPC server → client: the served label names are the ones
in-process decoding gives, bad requests are refused naming the image and the server
keeps serving; also against a real `tensorflow_model_server` where one is installed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from conftest import label_names, run_checked, to_png
from ofrnn_tf.features.images import read_image_header
from ofrnn_tf.serving import client
from ofrnn_tf.serving.server_process import start_subprocess, stop

pytestmark = pytest.mark.slow  # shares the session's tiny train.py + export.py run

NUM_IMAGES = 5


@pytest.fixture(scope="module")
def server(tiny_export_run, tmp_path_factory):
    """The address of `ofrnn-serve` serving the tiny run's export, in a child process."""
    log = open(tmp_path_factory.mktemp("server_log") / "server.log", "w+")
    proc, target = start_subprocess(str(tiny_export_run.export_base), stderr=log)
    yield target
    assert stop(proc) == 0
    log.close()


def expected_names(module, images: list[bytes], threshold=None) -> list[list[str]]:
    import tensorflow as tf

    if threshold is None:
        return label_names(module.serve_images(tf.constant(images)))
    thresholds = tf.constant(np.broadcast_to(np.float32(threshold), [len(images)]))
    return label_names(module.serve_images_with_threshold(tf.constant(images), thresholds))


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_served_labels_match_in_process(fmt, server, tiny_export_run, tiny_module):
    images = tiny_export_run.jpeg_bytes(NUM_IMAGES)
    if fmt == "png":
        images = [to_png(b) for b in images]
    results = client.predict_images(server, images)
    assert [r["label_names"] for r in results] == expected_names(tiny_module, images)
    assert client.get_model_status(server)[0]["state"] == "AVAILABLE"


def test_threshold_trades_precision_for_recall(server, tiny_export_run, tiny_module):
    images = tiny_export_run.jpeg_bytes(NUM_IMAGES)
    counts = {}
    for threshold in (0.0, 1.0):
        results = client.predict_images(server, images, threshold=threshold)
        assert [r["label_names"] for r in results] == expected_names(tiny_module, images, threshold)
        counts[threshold] = [len(r["label_ids"]) for r in results]
    assert counts[1.0] == [1] * NUM_IMAGES and max(counts[0.0]) > 1
    # One τ per image: each image decodes as it would with its τ for all.
    mixed = [0.0, 1.0] * (NUM_IMAGES // 2) + [0.0] * (NUM_IMAGES % 2)
    results = client.predict_images(server, images, threshold=mixed)
    assert [len(r["label_ids"]) for r in results] == [
        counts[t][i] for i, t in enumerate(mixed)]
    assert [r["label_names"] for r in results] == expected_names(tiny_module, images, mixed)
    with pytest.raises(grpc.RpcError) as err:
        client.predict_images(server, images[:2], threshold=[0.5, 1.5])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "threshold[1] must be a probability in [0, 1]; got 1.5" in err.value.details()
    with pytest.raises(ValueError, match="2 thresholds for 1 images"):
        client.predict_images(server, images[:1], threshold=[0.5, 0.5])


def corrupt_scan(jpeg: bytes) -> bytes:
    """The same JPEG headers (size readable) with garbage in place of the image data."""
    start = jpeg.index(b"\xff\xda")  # start of scan: headers end here
    body = bytes((i * 37 + 11) % 256 for i in range(len(jpeg) - start - 22))
    return jpeg[:start + 20] + body + b"\xff\xd9"


def test_corrupt_jpeg_is_refused_then_good_request_succeeds(server, tiny_export_run, tiny_module):
    good = tiny_export_run.jpeg_bytes(2)
    bad = corrupt_scan(good[0])
    assert read_image_header(bad) == read_image_header(good[0])  # only the decoder can tell
    with pytest.raises(grpc.RpcError) as err:
        client.predict_images(server, [good[0], good[1], bad])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images[2]" in err.value.details()
    results = client.predict_images(server, good)
    assert [r["label_names"] for r in results] == expected_names(tiny_module, good)


def test_files_client_loses_only_the_images_the_server_refuses(server, tiny_export_run, tiny_module,
                                                               tmp_path):
    good = tiny_export_run.jpeg_bytes(3)
    paths = [tmp_path / f"{i}.jpg" for i in range(5)]
    for path, data in zip(paths, [good[0], corrupt_scan(good[0]), good[1], b"", good[2]]):
        path.write_bytes(data)
    missing = tmp_path / "missing.jpg"
    names = [str(p) for p in paths[:3]] + [str(missing)] + [str(p) for p in paths[3:]]
    # Batches of 3: the corrupt JPEG (only the decoder in the graph can tell) is refused
    # within the first, the empty file within the second; the rest of each is sent again.
    results = list(client.predict_files(server, names, batch_size=3))
    assert [r["image"] for r in results] == names
    labelled = [r for r in results if "error" not in r]
    assert [r["labels"] for r in labelled] == expected_names(tiny_module, good)
    assert [r["image"] for r in labelled] == [names[0], names[2], names[5]]
    errors = {r["image"]: r["error"] for r in results if "error" in r}
    assert errors[names[1]].startswith(f"{names[1]}: refused by the server: ")
    assert "images[" not in errors[names[1]]  # the request's index would mislead
    assert errors[names[3]] == f"{missing}: No such file or directory"
    assert errors[names[4]].startswith(f"{names[4]}: refused by the server: ")
    with pytest.raises(grpc.RpcError):  # a refusal that names no image is not an image's fault
        list(client.predict_files(server, names[:1], threshold=1.5))


def test_grpc_demo_script(tiny_export_run, tiny_module):
    paths = tiny_export_run.test_images[:2]
    done = run_checked([sys.executable, "scripts/grpc_demo.py",
                        f"--export_dir={tiny_export_run.export_base}", *map(str, paths)])
    lines = done.stdout.strip().splitlines()
    assert len(lines) == len(paths), done.stdout
    names = expected_names(tiny_module, tiny_export_run.jpeg_bytes(len(paths)))
    for line, path, want in zip(lines, paths, names):
        result = json.loads(line)
        assert result["image"] == str(path)
        assert result["labels"] == want
        assert len(result["scores"]) == len(want) and result["log_prob"] <= 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("tensorflow_model_server") is None,
                    reason="no tensorflow_model_server on PATH (it ships in the tensorflow/serving "
                           "Docker image and Google's apt repository, neither reachable here)")
def test_stock_tensorflow_model_server_serves_the_export(tiny_export_run, tiny_module, tmp_path):
    port = _free_port()
    log = open(tmp_path / "tfs.log", "w+")
    proc = subprocess.Popen(
        ["tensorflow_model_server", f"--port={port}", "--model_name=ofrnn",
         f"--model_base_path={os.path.abspath(tiny_export_run.export_base)}"],
        stdout=log, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get_model_status(target, timeout=2)[0]["state"] == "AVAILABLE":
                    break
            except grpc.RpcError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read()
            time.sleep(1)
        images = tiny_export_run.jpeg_bytes(NUM_IMAGES)
        results = client.predict_images(target, images)
        assert [r["label_names"] for r in results] == expected_names(tiny_module, images)
        with pytest.raises(grpc.RpcError) as err:
            client.predict_images(target, [images[0], b"not an image"])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "images[1]" in err.value.details()
        assert len(client.predict_images(target, images[:1])) == 1
    finally:
        stop(proc)
        log.close()


def test_local_server_checks_images_against_the_exports_own_limit(tiny_export_run, tmp_path):
    """The local server's pre-check uses the limit the export's graph enforces; its flag
    can only lower it."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from ofrnn_tf.export.saved_model import export_run
    from ofrnn_tf.serving.local_server import ModelServer, RequestError, Servable

    export_run(str(tiny_export_run.workdir), str(tmp_path / "export"), max_image_pixels=5000)
    servable = Servable.load(str(tmp_path / "export"), "ofrnn")
    assert servable.max_image_pixels == 5000
    assert ModelServer(servable).max_image_pixels == 5000
    assert ModelServer(servable, 10**9).max_image_pixels == 5000
    assert ModelServer(servable, 1000).max_image_pixels == 1000
    # ofrnn-serve's start-up line says when its flag asked for more than the export allows.
    assert ModelServer(servable, 10**9).pixel_limit_note == (
        ", the export's own: --max_image_pixels=1000000000 can only lower it; export with a "
        "higher one to raise it")
    assert ModelServer(servable, 1000).pixel_limit_note == ""
    assert ModelServer(servable).pixel_limit_note == ""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ofrnn"
    big = tf.io.encode_png(tf.zeros([100, 100, 3], tf.uint8)).numpy()  # 10,000 pixels
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([big], dtype=tf.string))
    with pytest.raises(RequestError, match=r"images\[0\]: PNG of 100x100 = 10000 pixels is "
                                           r"above the limit of 5000 pixels"):
        ModelServer(servable).predict(request)
    small = tf.io.encode_png(tf.zeros([50, 50, 3], tf.uint8)).numpy()
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([small], dtype=tf.string))
    served = ModelServer(servable).predict(request)
    assert np.asarray(tf.make_ndarray(served.outputs["num_labels"])).shape == (1,)
    servable.session.close()
