"""Tiny training → export → local gRPC server → client: the served label names are the
ones in-process decoding gives, and a bad request does not break the real export."""

from __future__ import annotations

import sys

import grpc
import numpy as np
import pytest
from conftest import run_checked, to_png

from serving import client
from serving.local_server import start_subprocess

pytestmark = pytest.mark.slow  # shares the session's tiny train.py + export.py run

NUM_IMAGES = 5


@pytest.fixture(scope="module")
def server(tiny_export_run, tmp_path_factory):
    log = open(tmp_path_factory.mktemp("server_log") / "server.log", "w+")
    proc, target = start_subprocess(str(tiny_export_run.export_base), stderr=log)
    yield target
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    log.close()


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_served_labels_match_in_process(fmt, server, tiny_export_run, in_process_decoder):
    images = tiny_export_run.jpeg_bytes(NUM_IMAGES)
    if fmt == "png":
        images = [to_png(b) for b in images]
    results = client.predict_images(server, images)
    want = in_process_decoder.decode_images(images)
    assert [r["label_names"] for r in results] == in_process_decoder.names(want)
    assert [r["label_ids"] for r in results] == [list(row[:n]) for row, n in
                                                 zip(want["labels"], want["num_labels"])]
    np.testing.assert_allclose([r["log_prob"] for r in results], want["log_prob"], atol=1e-5)
    assert client.get_model_status(server)[0]["state"] == "AVAILABLE"


def corrupt_scan(jpeg: bytes) -> bytes:
    """The same JPEG headers (size readable) with garbage in place of the image data."""
    start = jpeg.index(b"\xff\xda")  # start of scan: headers end here
    body = bytes((i * 37 + 11) % 256 for i in range(len(jpeg) - start - 22))
    return jpeg[:start + 20] + body + b"\xff\xd9"


def test_corrupt_jpeg_is_refused_then_good_request_succeeds(server, tiny_export_run,
                                                           in_process_decoder):
    from serving.local_server import image_size

    good = tiny_export_run.jpeg_bytes(2)
    bad = corrupt_scan(good[0])
    assert image_size(bad) == image_size(good[0])  # only the decoder can tell
    with pytest.raises(grpc.RpcError) as err:
        client.predict_images(server, [good[0], good[1], bad])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images[2]: image cannot be decoded" in err.value.details()
    results = client.predict_images(server, good)
    assert [r["label_names"] for r in results] == in_process_decoder.names(
        in_process_decoder.decode_images(good))


def test_grpc_demo_script(tiny_export_run, in_process_decoder):
    paths = tiny_export_run.test_images[:2]
    done = run_checked([sys.executable, "scripts/grpc_demo.py",
                        f"--export_dir={tiny_export_run.export_base}", *map(str, paths)])
    lines = done.stdout.strip().splitlines()
    assert len(lines) == len(paths), done.stdout
    names = in_process_decoder.names(in_process_decoder.decode_images(
        tiny_export_run.jpeg_bytes(len(paths))))
    for line, path, want in zip(lines, paths, names):
        source, labels, log_prob = line.split("\t")
        assert source == str(path)
        assert [item.rsplit(" ", 1)[0] for item in labels.split(", ")] == want
        assert log_prob.startswith("log_prob=")
