"""`predict_files` against a scripted PredictionService: requests split by size, a named
image confirmed alone before it is recorded as refused (TF Serving's batching merges
requests, so an index can point at another request's image), a one-image refusal
without an index, and a server that goes away; and how `ofrnn-client` checks its
`--server`, words its stop and goes on from a stopped run's lines."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from absl import app

from conftest import ROOT

from ofrnn_tf import input_files
from ofrnn_tf.cli import client as command
from ofrnn_tf.cli.image_inputs import open_report, resumed_lines, where_it_stopped
from ofrnn_tf.features.image_headers import GIF_REMEDY
from ofrnn_tf.serving import client


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


class ScriptedService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Answers every image with its first byte as the label id, except where `refuse`
    (images, count in the request) → (status, message) says otherwise; as model `version`
    where it is set."""

    def __init__(self, refuse):
        self.refuse = refuse
        self.requests: list[list[bytes]] = []
        self.version: int | None = None

    def Predict(self, request, context):
        images = list(tf.make_ndarray(request.inputs["images"]))
        self.requests.append(images)
        answer = self.refuse(images)
        if answer is not None:
            context.abort(*answer)
        n = len(images)
        response = predict_pb2.PredictResponse()
        ids = np.array([[len(image) % 3, -1] for image in images], np.int32)
        outputs = {"labels": ids, "label_names": np.array([["x", ""]] * n, object),
                   "num_labels": np.ones(n, np.int32), "scores": np.full((n, 3), 0.9, np.float32),
                   "log_prob": np.zeros(n, np.float32)}
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        if self.version is not None:
            response.model_spec.version.value = self.version
        return response


@pytest.fixture
def serve():
    """`start(refuse) -> (target, service)`: a gRPC server in this process answering as a
    `ScriptedService` that refuses what `refuse` names; stopped, and its threads ended,
    before the next test starts (gRPC leaves the thread pool it was given running)."""
    servers = []

    def start(refuse=lambda images: None):
        service = ScriptedService(refuse)
        pool = futures.ThreadPoolExecutor(max_workers=2)
        server = grpc.server(pool)
        servers.append((server, pool))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        return f"127.0.0.1:{port}", service

    yield start
    for server, pool in servers:
        server.stop(0).wait()
        pool.shutdown(wait=True)


def files(tmp_path, contents: list[bytes]) -> list[str]:
    paths = []
    for i, data in enumerate(contents):
        path = tmp_path / f"{i}.img"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


def test_a_batch_over_the_byte_limit_goes_in_several_requests(serve, tmp_path):
    target, service = serve()
    images = [png(v) for v in (10, 20, 30, 40, 50)]
    size = len(images[0])
    results = list(client.predict_files(target, files(tmp_path, images), batch_size=5,
                                        max_request_bytes=2 * size + 10))
    assert all("error" not in r for r in results)
    assert [len(r) for r in service.requests] == [2, 2, 1]
    assert client._split_by_bytes([(0, b"x" * 50), (1, b"y")], 10) == [[(0, b"x" * 50)], [(1, b"y")]]
    # At most max_bytes: a run of exactly that many goes in one request.
    assert client._split_by_bytes([(0, b"x" * 5), (1, b"y" * 5), (2, b"z")], 10) == [
        [(0, b"x" * 5), (1, b"y" * 5)], [(2, b"z")]]


def test_a_labels_score_is_read_by_its_class_id_not_its_place_in_the_path():
    """`scores` holds a score per class; a label's is at its id (a path [2, 0] gets the
    scores of classes 2 and 0), whatever its place in the decoding order."""
    response = predict_pb2.PredictResponse()
    response.model_spec.version.value = 4
    outputs = {"labels": np.array([[2, 0, -1], [1, -1, -1]], np.int32),
               "label_names": np.array([[b"c", b"a", b""], [b"b", b"", b""]], object),
               "num_labels": np.array([2, 1], np.int32),
               "scores": np.array([[0.6, 0.1, 0.9], [0.2, 0.7, 0.3]], np.float32),
               "log_prob": np.array([-0.6, -0.4], np.float32),
               "attention": np.zeros((2, 3, 2, 2), np.float32)}
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
    first, second = client.parse_predict_response(response, all_scores=True)
    assert first["label_ids"] == [2, 0] and first["label_names"] == ["c", "a"]
    np.testing.assert_allclose(first["scores"], [0.9, 0.6])
    np.testing.assert_allclose(second["scores"], [0.7])
    np.testing.assert_allclose(first["all_scores"], [0.6, 0.1, 0.9])
    assert first["model_version"] == 4 and first["log_prob"] == pytest.approx(-0.6)


def test_a_named_image_that_is_served_alone_keeps_its_result(serve, tmp_path):
    """As under TF Serving's batching, a request merged with another client's bad image
    fails naming an index of the merged batch; served alone, each image succeeds."""
    target, service = serve(lambda images: (
        (grpc.StatusCode.INVALID_ARGUMENT, "assertion failed: [images[1] could not be decoded]")
        if len(images) > 1 else None))
    paths = files(tmp_path, [png(v) for v in (10, 20, 30)])
    results = list(client.predict_files(target, paths, batch_size=3))
    assert [r["image"] for r in results] == paths
    assert all("error" not in r for r in results), results
    assert [len(r) for r in service.requests] == [3, 1, 2, 1, 1]


@pytest.mark.parametrize("wrapped", [False, True], ids=["our_server", "tf_serving"])
def test_a_named_image_refused_alone_costs_its_own_line(serve, tmp_path, wrapped):
    bad = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40

    def refuse(images):
        if bad in images:
            reason = f"images[{images.index(bad)}]: corrupt"
            if wrapped:  # TF Serving answers with the failed Assert's whole text
                reason = f"assertion failed: [{reason}]\n\t [[{{{{node assert_1}}}}]]"
            return grpc.StatusCode.INVALID_ARGUMENT, reason
        return None

    target, service = serve(refuse)
    paths = files(tmp_path, [png(10), bad, png(30)])
    results = list(client.predict_files(target, paths, batch_size=3))
    assert [("error" in r) for r in results] == [False, True, False]
    assert results[1]["error"] == f"{paths[1]}: refused by the server: corrupt"
    assert [len(r) for r in service.requests] == [3, 1, 2]


def test_an_image_alone_refused_without_an_index(serve, tmp_path):
    """TensorFlow's own decoder message names no image: it is the image's when the image
    does not decode here either, and otherwise it stops the client."""
    target, _ = serve(lambda images: (grpc.StatusCode.INVALID_ARGUMENT, "Invalid PNG data, size 48"))
    good = png(10)
    damaged = good[:40] + bytes(b ^ 0xFF for b in good[40:-12]) + good[-12:]  # IEND kept
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_image(damaged)
    results = list(client.predict_files(target, files(tmp_path, [damaged]), batch_size=1))
    assert results[0]["error"].endswith("refused by the server: Invalid PNG data, size 48")
    with pytest.raises(grpc.RpcError) as error:
        list(client.predict_files(target, files(tmp_path, [good]), batch_size=1))
    assert error.value.details() == "Invalid PNG data, size 48"


def test_a_refusal_of_no_image_stops_the_client(serve, tmp_path):
    target, service = serve(lambda images: (grpc.StatusCode.INVALID_ARGUMENT,
                                            "threshold[0] must be a probability in [0, 1]; got 2"))
    with pytest.raises(grpc.RpcError):
        list(client.predict_files(target, files(tmp_path, [png(10), png(20)]), threshold=2.0))
    assert len(service.requests) == 1


def test_a_sound_image_refused_alone_is_sent_again_before_it_is_recorded(serve, tmp_path,
                                                                         monkeypatch):
    """Under TF Serving's batching a one-image request can be merged with another
    client's bad image too: an image that passes every check here is sent alone again."""
    monkeypatch.setattr(client, "ALONE_RETRY_SECONDS", (0.0, 0.0))
    failures = {"left": 2}

    def merged_twice(images):
        if failures["left"]:
            failures["left"] -= 1
            return grpc.StatusCode.INVALID_ARGUMENT, "images[0]: not a JPEG, PNG, GIF or BMP"
        return None

    target, service = serve(merged_twice)
    (result,) = client.predict_files(target, files(tmp_path, [png(10)]), batch_size=1)
    assert "error" not in result and len(service.requests) == 3

    target, service = serve(lambda images: (grpc.StatusCode.INVALID_ARGUMENT,
                                            "images[0]: not a JPEG, PNG, GIF or BMP"))
    (result,) = client.predict_files(target, files(tmp_path, [png(10)]), batch_size=1)
    assert result["error"].endswith("refused by the server: not a JPEG, PNG, GIF or BMP (the "
                                    "image decodes here: the refusal may be another request's, "
                                    "merged with it by the server's batching, or the served "
                                    "model was exported by another version of ofrnn_tf, whose "
                                    "image checks differ: export it again)")
    assert len(service.requests) == 3


def test_a_request_above_the_servers_message_limit_is_halved_and_costs_one_line(serve, tmp_path):
    # The server's limit (here 3 images' worth) may be below the client's max_request_bytes;
    # an image above it alone is refused, and the images around it keep their results.
    big = png(200) + b"\0" * 5000
    limit = 3 * len(png(10)) + 100

    def refuse(images):
        if sum(len(image) for image in images) > limit:
            return grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max"
        return None

    target, service = serve(refuse)
    paths = files(tmp_path, [png(10), png(20), big, png(30), png(40), png(50)])
    results = list(client.predict_files(target, paths, batch_size=6))
    assert [("error" in r) for r in results] == [False, False, True, False, False, False]
    assert results[2]["error"] == (f"{paths[2]}: refused by the server: a request of this image "
                                   f"alone ({len(big)} bytes) is above its message limit: "
                                   f"Received message larger than max")
    assert [len(r) for r in service.requests] == [6, 3, 1, 2, 1, 1, 3]


@pytest.mark.parametrize("said", [
    "a request of {n} items is above this server's --max_batch_size of 4: send several requests",
    "Task size {n} is larger than maximum input batch size 4"])  # TF Serving's batching
def test_a_batch_above_the_servers_batch_limit_goes_in_requests_of_that_limit(serve, tmp_path,
                                                                             said):
    target, service = serve(lambda images: (
        (grpc.StatusCode.INVALID_ARGUMENT, said.format(n=len(images))) if len(images) > 4
        else None))
    paths = files(tmp_path, [png(v) for v in range(10, 110, 10)])
    results = list(client.predict_files(target, paths, batch_size=6))
    assert [r["image"] for r in results] == paths and not any("error" in r for r in results)
    # Refused once; every later request keeps to the limit.
    assert [len(r) for r in service.requests] == [6, 4, 2, 4]


def test_an_image_above_the_servers_own_pixel_limit_is_not_sent_again(serve, tmp_path):
    # The limit the refusal names, not the default one, decides whether it decodes here.
    target, service = serve(lambda images: (
        grpc.StatusCode.INVALID_ARGUMENT,
        "images[0]: PNG of 8x8 = 64 pixels is above the limit of 50 pixels"))
    results = list(client.predict_files(target, files(tmp_path, [png(10)]), batch_size=1))
    assert results[0]["error"].endswith("above the limit of 50 pixels")  # no note of doubt
    assert len(service.requests) == 1


def test_an_image_above_the_pixel_limit_is_told_what_to_do_in_the_commands_line():
    """The client's user cannot raise the server's limit: scale the image down (a GIF's
    refusal says already to send its first frame)."""
    over = {"image": "a.jpg", "error": "a.jpg: refused by the server: JPEG of 12000x12000 = "
                                       "144000000 pixels is above the limit of 40000000 pixels"}
    gif = {"image": "b.gif", "error": "b.gif: refused by the server: the image is a GIF whose "
                                      "5 frames hold 320 pixels in all, above the limit of 50 "
                                      f"pixels{GIF_REMEDY}"}
    other = {"image": "c.jpg", "error": "c.jpg: refused by the server: corrupt"}
    gif_error, other_error = gif["error"], other["error"]
    lines = list(command.with_remedies([over, gif, other, {"image": "d.jpg", "labels": []}]))
    assert lines[0]["error"].endswith(
        "above the limit of 40000000 pixels (scale the image down: the model reads it at its "
        "input size; or raise the server's limit: ofrnn-serve's --max_image_pixels where it "
        "was started with one, else an export of a higher --max_image_pixels)")
    assert [lines[1]["error"], lines[2]["error"]] == [gif_error, other_error]
    assert "error" not in lines[3]


def test_a_refusal_in_the_exported_models_words_reads_as_a_sentence(serve, tmp_path):
    # The export says "images[i] is a ...", without the colon of ofrnn-serve's own checks.
    target, _ = serve(lambda images: (
        grpc.StatusCode.INVALID_ARGUMENT,
        "images[0] is a GIF whose 5 frames hold 320 pixels in all, above the limit of 50 "
        "pixels"))
    (path,) = files(tmp_path, [png(10)])
    (result,) = client.predict_files(target, [path], batch_size=1)
    assert result["error"] == (f"{path}: refused by the server: the image is a GIF whose 5 "
                               f"frames hold 320 pixels in all, above the limit of 50 pixels")


@pytest.mark.parametrize("code, details", [
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!"),  # ofrnn-serve's
    (grpc.StatusCode.UNAVAILABLE,  # TF Serving's with --enable_batching
     "The batch scheduling queue to which this task was submitted is full"),
], ids=["concurrent_limit", "batching_queue_full"])
def test_a_busy_server_is_asked_again_and_one_busy_for_long_stops_the_command(
        serve, tmp_path, monkeypatch, code, details):
    # Such a refusal says nothing of the images: the request goes again after a wait.
    monkeypatch.setattr(client, "BUSY_RETRY_SECONDS", (0.0, 0.0, 0.0))
    busy = {"left": 2}

    def busy_twice(images):
        if busy["left"]:
            busy["left"] -= 1
            return code, details
        return None

    target, service = serve(busy_twice)
    results = list(client.predict_files(target, files(tmp_path, [png(10), png(20)]),
                                        batch_size=2))
    assert [len(r) for r in service.requests] == [2, 2, 2]
    assert all("error" not in result for result in results)
    target, service = serve(lambda images: (code, details))
    with pytest.raises(grpc.RpcError) as error:
        list(client.predict_files(target, files(tmp_path, [png(10), png(20)]), batch_size=2))
    assert error.value.code() == code
    assert [len(r) for r in service.requests] == [2, 2, 2, 2]  # three waits, then it stands


def test_one_string_or_bytes_object_is_refused_for_a_sequence_and_a_numpy_tau_is_one_tau():
    with pytest.raises(TypeError, match=r"paths must be a sequence, got one str object "
                                        r"\(for one, pass \[path\]\)"):
        client.predict_files("127.0.0.1:1", "photo.jpg")
    with pytest.raises(TypeError, match=r"images must be a sequence, got one bytes object"):
        client.predict_request(png(10))
    for tau in (np.float32(0.25), np.array(0.25), 0.25):
        request = client.predict_request([png(10), png(20)], threshold=tau)
        assert tf.make_ndarray(request.inputs["threshold"]).tolist() == [0.25, 0.25]


def test_a_place_past_the_requests_end_halves_it_instead_of_stopping(serve, tmp_path,
                                                                     monkeypatch):
    """Only a batch merged from several requests has such a place: the bad image may be
    another client's, so the request is halved and its images keep their results."""
    monkeypatch.setattr(client, "ALONE_RETRY_SECONDS", (0.0, 0.0))
    merged = iter([37, 1, 3])  # the 4-image request, then its half [0, 1], then image 1 alone

    def refuse(images):
        k = next(merged, None)
        if k is None:
            return None
        return (grpc.StatusCode.INVALID_ARGUMENT,
                f"assertion failed: [images[{k}] is empty (0 bytes)]\n\t [[{{{{node assert}}}}]]")

    target, service = serve(refuse)
    paths = files(tmp_path, [png(v) for v in (10, 20, 30, 40)])
    results = list(client.predict_files(target, paths, batch_size=4))
    assert [r["image"] for r in results] == paths
    assert all("error" not in r for r in results), results
    # [0..3] refused; [0, 1] refused naming 1; 1 alone refused (place 3), then served; 0
    # without it; then [2, 3].
    assert [len(r) for r in service.requests] == [4, 2, 1, 1, 1, 2]


def test_an_image_alone_refused_at_a_place_past_its_request_gets_its_own_line(serve, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setattr(client, "ALONE_RETRY_SECONDS", (0.0, 0.0))
    bad = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    target, service = serve(lambda images: (
        (grpc.StatusCode.INVALID_ARGUMENT, "images[5]: not a JPEG, PNG, GIF or BMP")
        if bad in images else None))
    paths = files(tmp_path, [png(10), bad])
    results = list(client.predict_files(target, paths, batch_size=2))
    assert "error" not in results[0]
    assert results[1]["error"] == f"{paths[1]}: refused by the server: not a JPEG, PNG, GIF or BMP"
    assert [len(r) for r in service.requests] == [2, 1, 1]  # no retries: it fails here too


@pytest.mark.slow
def test_the_client_commands_stop_message_is_one_line_without_node_names(serve, tmp_path):
    import os
    import subprocess
    import sys

    target, _ = serve(lambda images: (grpc.StatusCode.INVALID_ARGUMENT,
                                      "assertion failed: [threshold[0] must be a probability in "
                                      "[0, 1]; got 2]\n\t [[{{node assert_2}}]]"))
    run = subprocess.run([sys.executable, "-m", "ofrnn_tf.cli.client", f"--server={target}",
                          *files(tmp_path, [png(10)])], capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=120)
    assert run.returncode == 1
    stopped = [line for line in run.stderr.splitlines() if "[client] stopped" in line]
    assert stopped == [f"[client] stopped: {target} answered INVALID_ARGUMENT: threshold[0] must "
                       f"be a probability in [0, 1]; got 2; no input has its line yet"], run.stderr


@pytest.mark.slow
def test_a_client_command_stopped_by_a_server_gone_goes_on_with_resume(serve, tmp_path):
    """A rollout: version 2 answers from the second image on, the server is then away,
    and version 3 answers the run --resume goes on with. Each change of the answering
    version is said (the report's lines index two label maps), that of --resume against
    the lines it kept too."""
    import json
    import os
    import subprocess
    import sys

    versions = [1, 2, None, 3, 3]  # by request; None: the server is away

    def rolled_out(images):
        service.version = versions[len(service.requests) - 1]
        return UNREACHABLE if service.version is None else None

    target, service = serve(rolled_out)
    paths = files(tmp_path, [png(10), png(20), png(30), png(40)])
    output = tmp_path / "out.jsonl"
    command_line = [sys.executable, "-m", "ofrnn_tf.cli.client", f"--server={target}",
                    "--batch_size=1", "--wait_for_server=0", f"--output={output}", *paths]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run(command_line, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 1
    assert run.stderr.splitlines()[-1] == (
        f"[client] stopped: {target} could not be reached (UNAVAILABLE: Socket closed); 2 of 4 "
        f"input(s) have their line in {output}; the first without one is {paths[2]}: run the "
        f"same command with --resume to go on"), run.stderr
    changed = ("[client] version {} of the model answers from {} on, version {} before it: "
               "each line's label_ids and all_scores are in the label map of its "
               "model_version")
    assert changed.format(2, paths[1], 1) in run.stderr.splitlines(), run.stderr
    run = subprocess.run(command_line + ["--resume"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert changed.format(3, paths[2], 2) in run.stderr.splitlines(), run.stderr
    assert [json.loads(line)["image"] for line in output.read_text().splitlines()] == paths
    assert len(service.requests) == 5  # two answered, one refused; then the two left


def test_a_change_of_the_answering_version_is_said_once_for_each_change(capsys, tmp_path):
    results = [{"image": "a.jpg", "model_version": 1}, {"image": "b.jpg", "error": "refused"},
               {"image": "c.jpg", "model_version": 1}, {"image": "d.jpg", "model_version": 2},
               {"image": "e.jpg", "model_version": 2}, {"image": "f.jpg", "model_version": 1}]
    assert list(command.versions_noted(iter(results))) == results
    assert capsys.readouterr().err.splitlines() == [
        "[client] version 2 of the model answers from d.jpg on, version 1 before it: each "
        "line's label_ids and all_scores are in the label map of its model_version",
        "[client] version 1 of the model answers from f.jpg on, version 2 before it: each "
        "line's label_ids and all_scores are in the label map of its model_version"]
    list(command.versions_noted(iter(results[3:5]), previous=2))
    assert capsys.readouterr().err == ""
    output = tmp_path / "out.jsonl"
    kept = '{"image": "a.jpg", "model_version": 3}\n{"image": "b.jpg", "error": "refused"}\n'
    output.write_text(kept + '{"image": "c.jpg", "model_version": 4}\n')
    assert command.kept_version(str(output), len(kept)) == 3
    assert command.kept_version(str(output), len(kept.splitlines(True)[0]) - 1) == 3
    output.write_text('{"image": "b.jpg", "error": "refused"}\n')
    assert command.kept_version(str(output), output.stat().st_size) is None


def test_the_kept_version_is_read_from_the_end_of_the_report_not_all_of_it(tmp_path,
                                                                          monkeypatch):
    # A report of 10^5 lines of --all_scores is gigabytes, which were read whole.
    read = []

    class Counted(io.BufferedReader):
        def read(self, size=-1):
            data = super().read(size)
            read.append(len(data))
            return data

    monkeypatch.setattr(command, "open", lambda path, mode: Counted(io.FileIO(path)),
                        raising=False)
    output = tmp_path / "out.jsonl"
    refused = "".join(f'{{"image": "{i}.jpg", "error": "refused"}}\n' for i in range(20000))
    output.write_text('{"image": "a.jpg", "model_version": 5}\n' + refused
                      + '{"image": "z.jpg", "model_version": 7}\n')
    assert command.kept_version(str(output), output.stat().st_size) == 7
    assert sum(read) < output.stat().st_size / 4, sum(read)
    # Back over many blocks to the first line, the only one that answered.
    assert command.kept_version(str(output), output.stat().st_size - 40) == 5


def test_a_line_of_many_blocks_is_read_back_whole_without_copying_it_at_each_block():
    # Each block was joined to the part of the line read before it: a line of n blocks
    # was copied n times over (a 32 MiB line took 8 s).
    joined = []

    class Block(bytes):
        def __add__(self, other):
            joined.append(len(self) + len(other))
            return bytes(self) + other

    class Blocks(io.BytesIO):
        def read(self, size=-1):
            return Block(super().read(size))

    line = b"x" * 1000
    report = b"a\n" + line + b"\nb\n"
    assert list(command._lines_back_from(Blocks(report), len(report), block=10)) == [
        b"", b"b", line, b"a"]
    assert sum(joined) <= 2 * len(report), sum(joined)


@pytest.mark.slow
@pytest.mark.parametrize("signum, said, code", [
    (signal.SIGINT, "interrupted", 130), (signal.SIGTERM, "terminated", 143)],
    ids=["ctrl_c", "sigterm"])
def test_a_client_command_stopped_by_a_signal_says_where_resume_goes_on(serve, tmp_path,
                                                                        signum, said, code):
    """Ctrl-C or SIGTERM in the middle of a run names, as a server gone does, how many
    inputs have their line and that --resume goes on (it said only "interrupted")."""
    import json
    import os
    import re
    import subprocess
    import sys

    from conftest import ctrl_c_as_in_a_terminal

    child = {}

    def stop_at_the_second(images):
        if len(service.requests) == 2:
            os.kill(child["pid"], signum)
        return None

    target, service = serve(stop_at_the_second)
    paths = files(tmp_path, [png(10), png(20), png(30), png(40)])
    output = tmp_path / "out.jsonl"
    command_line = [sys.executable, "-m", "ofrnn_tf.cli.client", f"--server={target}",
                    "--batch_size=1", f"--output={output}", *paths]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    with subprocess.Popen(ctrl_c_as_in_a_terminal(command_line), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=env) as proc:
        child["pid"] = proc.pid
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    kept = output.read_text().splitlines()
    assert len(kept) in (1, 2), kept  # the second answer may be written before it stops
    last = err.splitlines()[-1]
    assert re.sub(r"^\S+: ", "", last) == (
        f"{said}; {len(kept)} of 4 input(s) have their line in {output}; the first without "
        f"one is {paths[len(kept)]}: run the same command with --resume to go on"), err
    run = subprocess.run(command_line + ["--resume"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert output.read_text().splitlines()[:len(kept)] == kept
    assert [json.loads(line)["image"] for line in output.read_text().splitlines()] == paths


@pytest.mark.slow
def test_the_client_command_labels_an_image_without_importing_tensorflow(serve, tmp_path):
    """A request needs no TensorFlow, whose import would take nearly all of a one-image
    call's time."""
    import json
    import subprocess
    import sys

    target, _ = serve()
    [path] = files(tmp_path, [png(10)])
    output = tmp_path / "out.jsonl"
    script = ("import atexit, sys\n"
              "atexit.register(lambda: print('tensorflow.python' in sys.modules))\n"
              f"sys.argv = ['ofrnn-client', '--server={target}', '--output={output}', {path!r}]\n"
              "from ofrnn_tf.cli.client import run\n"
              "run()\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "False\n", run.stdout
    line = json.loads(output.read_text())
    assert (line["image"], line["labels"]) == (path, ["x"])


@pytest.mark.slow
def test_tensorflow_imported_after_the_client_works_with_the_clients_protos(serve, tmp_path):
    """The client loads its protos without TensorFlow's package; TensorFlow imported later in
    the process (here by the check of an image the server refused) is the whole package, and
    takes the protos made before as its own."""
    import subprocess
    import sys

    good = png(10)
    damaged = good[:40] + bytes(b ^ 0xFF for b in good[40:-12]) + good[-12:]
    target, _ = serve(lambda images: (grpc.StatusCode.INVALID_ARGUMENT, "Invalid PNG data")
                      if damaged in images else None)
    paths = files(tmp_path, [good, damaged])
    script = f"""
import sys
from ofrnn_tf.serving import client
[answered] = client.predict_files({target!r}, [{paths[0]!r}])
assert answered["labels"] == ["x"], answered
request = client.predict_request([b"a", b"b"], threshold=[0.25, 0.5])
assert "tensorflow" not in sys.modules
[refused] = client.predict_files({target!r}, [{paths[1]!r}])
assert refused["error"].endswith("refused by the server: Invalid PNG data"), refused
assert "tensorflow.python" in sys.modules  # the refused image was decoded here

import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from ofrnn_tf.serving.protos import predict_pb2, tensor_array
from ofrnn_tf.serving.stand_in_model import solid_png, write_stand_in_model

made = tf.make_tensor_proto([b"c"], tf.string, shape=[1])
assert type(made) is type(request.inputs["images"]) is tensor_pb2.TensorProto
assert tf.make_ndarray(request.inputs["threshold"]).tolist() == [0.25, 0.5]
request.inputs["images"].CopyFrom(made)
assert tensor_array(request.inputs["images"]).tolist() == [b"c"]
assert float(tf.constant(2.0) * 3.0) == 6.0
model = tf.saved_model.load(write_stand_in_model({str(tmp_path / "export")!r}))
served = model.signatures["serving_default"](images=tf.constant([solid_png((250, 10, 10))]))
response = predict_pb2.PredictResponse()
response.outputs["label_names"].CopyFrom(tf.make_tensor_proto(served["label_names"]))
print(tensor_array(response.outputs["label_names"]).tolist())
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "[[b'red', b'', b'']]", run.stdout


@pytest.mark.timeout(20)
def test_a_pipe_is_read_and_one_nothing_writes_to_gets_an_error_line(serve, tmp_path,
                                                                     monkeypatch):
    # open() of a named pipe waits for a writer: the client would hang there.
    import os
    import threading

    monkeypatch.setattr(input_files, "PIPE_WAIT_SECONDS", 0.3)
    target, service = serve()
    paths = files(tmp_path, [png(10), png(20)])
    silent = str(tmp_path / "silent.png")
    os.mkfifo(silent)
    results = list(client.predict_files(target, [paths[0], silent, paths[1]], batch_size=3))
    assert "error" not in results[0] and "error" not in results[2]
    assert results[1] == {"image": silent,
                          "error": f"{silent}: a pipe nothing was written to within 0.3 s"}
    assert [len(r) for r in service.requests] == [2]

    fed = str(tmp_path / "fed.png")  # as `<(cat image.png)` or /dev/stdin give one
    os.mkfifo(fed)
    image = Path(paths[1]).read_bytes()

    def write():
        with open(fed, "wb") as f:  # waits for the client to open it
            f.write(image)

    writer = threading.Thread(target=write)
    writer.start()
    (result,) = client.predict_files(target, [fed], batch_size=1)
    writer.join()
    assert "error" not in result and service.requests[-1] == [image]
    (device,) = client.predict_files(target, ["/dev/null"], batch_size=1)
    assert device["error"] == "/dev/null: not a regular file or a pipe"


def test_a_version_tf_serving_cannot_read_is_refused_before_the_call():
    request = predict_pb2.PredictRequest()
    client._model_spec(request.model_spec, "ofrnn", version=2 ** 63 - 1)
    assert request.model_spec.version.value == 2 ** 63 - 1
    for version in (-1, 2 ** 63):
        with pytest.raises(ValueError, match=rf"version must be an integer from 0 to "
                                             rf"9223372036854775807 \(TF Serving loads only "
                                             rf"those folders\), got {version}"):
            client._model_spec(request.model_spec, "ofrnn", version=version)


class FakeClock:
    """The client's `time`: a sleep moves `now` on at once, so that no test waits."""

    def __init__(self):
        self.now, self.slept = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class FakeError(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, "Socket closed")  # as a server stopping leaves it


def test_a_server_away_is_tried_again_for_wait_for_server_seconds(serve, tmp_path, monkeypatch,
                                                                  capsys):
    clock = FakeClock()
    monkeypatch.setattr(client, "time", clock)
    away = {"left": 2}

    def restarting(images):
        if away["left"]:
            away["left"] -= 1
            return UNREACHABLE
        return None

    target, service = serve(restarting)
    (result,) = client.predict_files(target, files(tmp_path, [png(10)]), batch_size=1)
    assert "error" not in result and len(service.requests) == 3
    assert clock.slept == [0.5, 1.0]
    (line,) = capsys.readouterr().err.splitlines()  # one line as the waiting starts
    assert line == (f"[client] {target} could not be reached (Socket closed): trying again "
                    f"for up to 60 s (--wait_for_server)")

    # Away for good: tried until wait_for_server has passed, the last time at its end.
    target, service = serve(lambda images: UNREACHABLE)
    with pytest.raises(grpc.RpcError) as error:
        client.predict_images(target, [png(10)], wait_for_server=10)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert clock.slept[2:] == [0.5, 1.0, 2.0, 4.0, 2.5] and len(service.requests) == 6
    with pytest.raises(grpc.RpcError):  # 0: at once
        client.predict_images(target, [png(10)], wait_for_server=0)
    assert len(clock.slept) == 7 and len(service.requests) == 7
    with pytest.raises(ValueError, match=r"wait_for_server must be a number of seconds, at "
                                         r"least 0 \(0: fail at once; inf: no limit\), got -1"):
        client.predict_files(target, [], wait_for_server=-1)
    # A busy server's UNAVAILABLE is an answer, asked again on its own terms.
    assert client.unreachable(FakeError(*UNREACHABLE))
    assert not client.unreachable(FakeError(grpc.StatusCode.UNAVAILABLE, "queue is full"))


def test_what_the_server_answered_before_it_went_away_is_yielded(serve, tmp_path):
    answered = {"left": 2}

    def goes_away(images):
        if answered["left"]:
            answered["left"] -= 1
            return None
        return UNREACHABLE

    target, _ = serve(goes_away)
    paths = files(tmp_path, [png(10), png(20), png(30), png(40)])
    paths.insert(2, str(tmp_path / "missing.png"))
    got = []
    with pytest.raises(grpc.RpcError):  # one batch, one image a request
        for result in client.predict_files(target, paths, batch_size=5, max_request_bytes=1,
                                           wait_for_server=0):
            got.append(result)
    assert [result["image"] for result in got] == paths[:3]
    assert [("error" in result) for result in got] == [False, False, True]


@pytest.mark.parametrize("server, said", [
    ("127.0.0.1", "--server=127.0.0.1 has no port: give host:port, e.g. 127.0.0.1:8500 (the "
                  "gRPC port of ofrnn-serve and TF Serving by default)"),
    ("[::1]:", "--server=[::1]: has no port: give host:port, e.g. [::1]:8500"),
    ("127.0.0.1:74137", "--server=127.0.0.1:74137: the port must be in 1..65535, got 74137"),
    ("host:0", "--server=host:0: the port must be in 1..65535, got 0"),
    ("8571", "--server=8571 has no host: give host:port, e.g. 127.0.0.1:8571 for a server "
             "on this machine"),
    ("http://host:8500", "--server=http://host:8500 is not host:port: give the model server's "
                         "host and gRPC port, e.g. 127.0.0.1:8500 (an IPv6 address in "
                         "brackets: [::1]:8500; no scheme, no path)"),
    ("::1:8500", "--server=::1:8500 is not host:port"),
    (" ", "--server is empty"),
])
def test_the_client_command_refuses_a_server_that_is_not_host_and_port(server, said):
    with pytest.raises(app.UsageError) as error:
        command.check_server(server)
    assert str(error.value).startswith(said)
    for fine in ("127.0.0.1:8500", "localhost:1", "[::1]:65535", "models.example.org:8500"):
        command.check_server(fine)


def test_the_client_commands_stop_says_what_happened_and_where_to_go_on():
    def reason(code, details):
        return command.stop_reason(FakeError(code, details), "h:1", timeout=1.0,
                                   wait_for_server=60.0)

    assert reason(*UNREACHABLE) == ("h:1 could not be reached within --wait_for_server=60 s "
                                    "(UNAVAILABLE: Socket closed)")
    assert command.stop_reason(FakeError(*UNREACHABLE), "h:1", 1.0, 0.0) == (
        "h:1 could not be reached (UNAVAILABLE: Socket closed)")
    assert reason(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") == (
        "h:1 did not answer a request within --timeout=1 s (DEADLINE_EXCEEDED): raise "
        "--timeout (inf: no limit), or lower --batch_size or --max_request_bytes")
    assert reason(grpc.StatusCode.UNAVAILABLE, "the batching queue is full") == (
        "h:1 answered UNAVAILABLE: the batching queue is full")
    entries = ["a.jpg", {"image": "notes.txt", "error": "skipped"}, "b.jpg"]
    assert where_it_stopped(entries, 1, "out.jsonl") == (
        "1 of 3 input(s) have their line in out.jsonl; the first without one is notes.txt: run "
        "the same command with --resume to go on")
    assert where_it_stopped(entries, 2, None) == (
        "2 of 3 input(s) have their line; the first without one is b.jpg: give it and the "
        "inputs after it to go on")


def test_a_port_that_answers_in_http1_is_named_at_once_not_waited_for(tmp_path):
    """A REST port (TF Serving's 8501) or a web server answers gRPC's HTTP/2 in HTTP/1:
    no wait for a server that will never come, and the line says what the port is."""
    import http.server

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    target = f"127.0.0.1:{web.server_address[1]}"
    image = tmp_path / "a.png"
    image.write_bytes(b"not read")
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as error:
            list(client.predict_files(target, [str(image)], wait_for_server=60.0))
        assert time.monotonic() - started < 30
    finally:
        web.shutdown()
        web.server_close()
    assert client.not_grpc(error.value) and not client.unreachable(error.value)
    said = command.stop_reason(error.value, target, timeout=30.0, wait_for_server=60.0)
    assert said.startswith(f"{target} is not a gRPC server: it answered in HTTP/1, as a REST "
                           "port does (TF Serving's REST API listens on 8501 by default, its "
                           "gRPC on 8500, as ofrnn-serve does) (UNAVAILABLE: "), said


def test_a_threshold_for_a_signature_that_takes_none_is_refused_before_any_call(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"not read")
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from ofrnn_tf.cli.client import run; "
         "sys.argv[0] = 'ofrnn-client'; run()", "--signature_name=serving_default",
         "--threshold=0.3", "--server=127.0.0.1:1", "--wait_for_server=0", str(image)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert ("ofrnn-client: --signature_name=serving_default decodes with the export's "
            "calibrated τ and takes no threshold: leave out --signature_name (--threshold "
            "sends predict_with_threshold) or --threshold") in done.stderr, done.stderr


def test_a_stop_before_the_first_line_says_to_run_the_command_again_not_to_resume():
    """With no line written, --output still holds an earlier report (kept, as documented):
    --resume would go on from that one, or find nothing to do in it: the line says that
    no input has its line and the report is as it was, not to --resume."""
    entries = ["a.jpg", "b.jpg"]
    assert where_it_stopped(entries, 0, "out.jsonl") == (
        "no input has its line yet, and out.jsonl is as it was")
    assert where_it_stopped(entries, 0, None) == "no input has its line yet"


def test_resume_keeps_a_stopped_runs_lines_and_writes_after_them(tmp_path):
    output = tmp_path / "out.jsonl"
    kept = '{"image": "a.jpg", "labels": []}\n{"image": "notes.txt", "error": "skipped"}\n'
    output.write_text(kept + '{"image": "b.j')  # the last line cut short: the run was killed
    entries = ["a.jpg", {"image": "notes.txt", "error": "skipped"}, "b.jpg", "c.jpg"]
    assert resumed_lines(str(output), entries, "ofrnn-client") == (2, len(kept), 1, 0)
    assert resumed_lines(str(tmp_path / "none.jsonl"), entries, "ofrnn-client") == (0, 0, 0, 0)
    with open_report(str(output), keep=len(kept)) as report:
        report.write('{"image": "b.jpg"}\n')
    assert output.read_text() == kept + '{"image": "b.jpg"}\n'
    with pytest.raises(app.UsageError, match=r"--resume: .*out.jsonl, line 2, is for notes.txt, "
                                             r"which is not among the inputs given \(gone "
                                             r"from its folder since, or left out\): give "
                                             r"the inputs of the run that wrote it, in the same "
                                             r"order, with the files its folders held"):
        resumed_lines(str(output), ["a.jpg", "d.jpg", "b.jpg", "c.jpg"], "ofrnn-client")
    with pytest.raises(app.UsageError, match=r"line 2, is for notes.txt, where input 2 is "
                                             r"a2.jpg \(added to its folder since, or the "
                                             r"inputs are in another order\)"):
        resumed_lines(str(output), ["a.jpg", "a2.jpg", *entries[1:]], "ofrnn-client")
    with pytest.raises(app.UsageError, match=r"holds 3 lines, more than the 2 inputs given"):
        resumed_lines(str(output), entries[:2], "ofrnn-client")
    with pytest.raises(app.UsageError, match=r"--resume goes on from the lines of --output"):
        resumed_lines(None, entries, "ofrnn-client")


def test_resume_reads_the_report_by_blocks_and_lines_not_whole(tmp_path, monkeypatch):
    # A report of 10^5 lines of --all_scores is gigabytes: read whole, it was held twice.
    from ofrnn_tf.cli import image_inputs

    class Partial(io.BufferedReader):
        def read(self, size=-1):
            assert size is not None and size >= 0, "the whole report read at once"
            return super().read(size)

    monkeypatch.setattr(image_inputs, "open", lambda path, mode: Partial(io.FileIO(path)),
                        raising=False)
    output = tmp_path / "out.jsonl"
    kept = "".join(f'{{"image": "{i}.jpg", "labels": []}}\n' for i in range(5))
    output.write_text(kept + '{"image": "5.j')
    entries = [f"{i}.jpg" for i in range(7)]
    assert resumed_lines(str(output), entries, "ofrnn-client") == (5, len(kept), 0, 0)
    with pytest.raises(app.UsageError, match=r"holds 5 lines, more than the 4 inputs given"):
        resumed_lines(str(output), entries[:4], "ofrnn-client")


def test_resume_refuses_another_commands_report_or_one_of_other_flags(tmp_path):
    """ofrnn-predict's lines (step_probabilities, no model_version) and lines of a run
    with --all_scores, or without it, were kept as the client's own, and the report went on
    in other fields: a mixed report, without a word."""
    from ofrnn_tf.cli import predict

    output = tmp_path / "out.jsonl"
    client_line = {"image": "a.jpg", "labels": ["Bag"], "label_ids": [8], "scores": [0.9],
                   "log_prob": -0.1, "model_version": 1}
    predict_line = {"image": "a.jpg", "labels": ["Bag"], "label_ids": [8], "scores": [0.9],
                    "step_probabilities": [0.9], "log_prob": -0.1}
    error_line = '{"image": "notes.txt", "error": "notes.txt: skipped"}\n'
    entries = ["a.jpg", {"image": "notes.txt", "error": "notes.txt: skipped"}, "b.jpg"]

    def resumed(line: dict, fields):
        output.write_text(json.dumps(line) + "\n" + error_line)
        return resumed_lines(str(output), entries, "ofrnn-client", fields)

    assert resumed(client_line, command.line_fields(False)).count == 2
    assert resumed(predict_line, predict.line_fields(False)).count == 2
    assert resumed({**predict_line, "attention_png": "p/000_a.png"},
                   predict.line_fields(False)).pictures == 1
    with pytest.raises(app.UsageError, match=(
            r"--resume: .*out.jsonl, line 1, is not a line this ofrnn-client writes \(it has "
            r"step_probabilities and has no model_version\): give the command and flags of "
            r"the run that wrote it, or another --output")):
        resumed(predict_line, command.line_fields(False))
    with pytest.raises(app.UsageError, match=r"line 1, .*\(it has no all_scores; --all_scores "
                                             r"writes all_scores\)"):
        resumed(client_line, command.line_fields(True))
    with pytest.raises(app.UsageError, match=r"line 1, .*\(it has all_scores; --all_scores "
                                             r"writes all_scores\)"):
        resumed({**predict_line, "all_scores": {"Bag": 0.9}}, predict.line_fields(False))


def test_resume_of_a_finished_report_asks_no_server_and_keeps_the_report(tmp_path):
    """Every input has its line already: the command says so and exits with 0, with no
    server to ask (none listens on the port given) and the report as it was."""
    import os
    import subprocess

    image = tmp_path / "a.jpg"
    image.write_bytes(b"x")
    output = tmp_path / "out.jsonl"
    line = json.dumps({"image": str(image), "labels": [], "label_ids": [], "scores": [],
                       "log_prob": 0.0, "model_version": 1}) + "\n"
    output.write_text(line)
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from ofrnn_tf.cli.client import run; "
         "sys.argv[0] = 'ofrnn-client'; run()", "--server=127.0.0.1:1", "--wait_for_server=0",
         f"--output={output}", "--resume", str(image)],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == (f"[client] every input already has its line in {output}: nothing "
                           f"to do\n")
    assert output.read_text() == line


def test_resume_does_not_count_its_own_report_in_an_input_folder(tmp_path):
    """The report written into a folder given as input is not there when the first run
    lists the folder: a rerun, or --resume, leaves it out as well (it listed it, in name
    order, among the inputs, and refused the report's own lines)."""
    from ofrnn_tf.cli.image_inputs import expand_inputs

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "m.jpg", "z.jpg", "notes.txt"):
        (photos / name).write_bytes(b"x")
    report = photos / "labels.jsonl"  # sorts between a.jpg and m.jpg
    first = expand_inputs([str(photos)], str(report))
    report.write_text("".join(f'{{"image": "{photos / n}", "labels": []}}\n'
                              for n in ("a.jpg", "m.jpg")))
    assert expand_inputs([str(photos)], str(report)) == first
    assert str(report) in str(expand_inputs([str(photos)]))  # another command's file is listed
    assert resumed_lines(str(report), first, "ofrnn-client") == (
        2, len(report.read_bytes()), 0, 0)


def test_a_server_on_this_machine_is_reached_past_a_proxy_the_environment_names(
        serve, tmp_path, monkeypatch):
    """gRPC sends calls through the proxy of `https_proxy` unless `no_proxy` lists the host,
    which seldom holds 127.0.0.1: a host reaching out through a proxy could not call its
    own server. A remote server's unreachable line names the proxy its calls went through."""
    target, _ = serve()
    for name in ("no_proxy", "no_grpc_proxy", "NO_PROXY", "grpc_proxy", "https_proxy",
                 "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:1")  # nothing listens on port 1
    [path] = files(tmp_path, [png(10)])
    [result] = client.predict_files(target, [path], wait_for_server=0)
    assert result["labels"] == ["x"], result
    localhost = "localhost:" + target.rpartition(":")[2]
    assert [client._loopback(t) for t in (target, localhost, "[::1]:8500", "10.0.0.1:8500",
                                          "serving.example:8500")] == [True] * 3 + [False] * 2
    assert client.proxy_note(target) == ""
    note = client.proxy_note("serving.example:8500")
    assert "proxy 127.0.0.1:1 of https_proxy" in note and "no_grpc_proxy" in note
    # As gRPC chooses: a host no_proxy lists goes direct, an empty grpc_proxy is no proxy,
    # and the proxy is named without its password.
    monkeypatch.setenv("no_proxy", "localhost,.example")
    assert client.proxy_note("serving.example:8500") == ""
    assert client.proxy_note("serving.example.org:8500") != ""
    monkeypatch.setenv("grpc_proxy", "")
    assert client.proxy_note("serving.example.org:8500") == ""
    monkeypatch.setenv("grpc_proxy", "http://alice:s3cret@proxy.example.org:3128")
    note = client.proxy_note("serving.example.org:8500")
    assert "proxy.example.org:3128 of grpc_proxy" in note and "s3cret" not in note


def test_an_image_a_server_refused_is_checked_here_only_where_tensorflow_can_be_imported(
        monkeypatch):
    """The client imports TensorFlow only to decode an image a server refused; where its
    import fails (no writable temporary folder), the server's refusal stands."""
    assert not client._tensorflow_refuses(png(10))
    monkeypatch.setitem(sys.modules, "ofrnn_tf.features.images", None)  # its import fails
    assert client._tensorflow_refuses(png(10))
