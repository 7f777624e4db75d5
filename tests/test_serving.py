"""Tests for the serving code and configs: header parsing, version selection, the TF
Serving configs parsed with their protos, and the local server (run as a child process
against a stand-in SavedModel, loaded through TF Serving's session path) through the
gRPC client."""

from __future__ import annotations

import glob
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ofrnn_tf.features.images import read_image_header as image_size
from ofrnn_tf.serving import client
from ofrnn_tf.serving import local_server, request_checks
from ofrnn_tf.serving.local_server import DEFAULT_MAX_BATCH_SIZE
from ofrnn_tf.serving.server_process import (DEFAULT_MODEL_NAME, find_latest_version,
                                              start_subprocess, stop, wait_until_listening)
from ofrnn_tf.serving.stand_in_model import (FAULT_SENTINEL, StandInModel, solid_png,
                                              write_stand_in_model)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIXEL_LIMIT = 1_000_000
MESSAGE_LIMIT = 4 * 1024 * 1024
OUTPUTS = {"labels", "label_names", "num_labels", "scores", "log_prob", "attention"}


def encode(rgb, size=(8, 8), fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format=fmt, **kw)
    return buf.getvalue()


# --- no server ---------------------------------------------------------------


def test_server_process_module_imports_without_tensorflow():
    """grpc_demo starts the child before it imports anything more."""
    code = ("import sys, ofrnn_tf.serving.server_process as p; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
            "print(p.LISTENING_PREFIX)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("LISTENING")


def child_printing(code: str) -> subprocess.Popen:
    """A stand-in for a `spawn`ed server: a Python child running `code`, its stdin and
    stdout piped."""
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def test_waiting_for_a_server_gives_its_target_once_it_listens_and_says_why_it_never_did():
    """The listening line names the target, also where it comes in one write with a line
    before it (it waited in the pipe reader's buffer until the child wrote again or
    ended); a child that ends first is named by its status, one that stays silent is
    killed at the timeout; the pipes to a child that did not listen are closed."""
    proc = child_printing("print('loading'); print('LISTENING 127.0.0.1:8500', flush=True); "
                          "import time; time.sleep(60)")
    try:
        assert wait_until_listening(proc, timeout=20) == "127.0.0.1:8500"
    finally:
        assert stop(proc, grace=5) in (0, -signal.SIGTERM)
    proc = child_printing("print('refused: no version'); raise SystemExit(3)")
    with pytest.raises(RuntimeError, match=r"exited with status 3 before listening"):
        wait_until_listening(proc, timeout=60)
    assert proc.stdin.closed and proc.stdout.closed
    proc = child_printing("import time; time.sleep(60)")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"did not listen within 1 s"):
        wait_until_listening(proc, timeout=1.0)
    assert proc.poll() is not None and time.monotonic() - started < 30  # killed, not waited for
    assert proc.stdin.closed and proc.stdout.closed


def test_grpc_demo_reads_a_home_path_and_says_a_version_it_cannot_read(tmp_path):
    # `--export_dir=~/…` as the commands read it; a version another user wrote under umask
    # 077 in one line, not a traceback (as root, which reads anything, the check is played).
    version = tmp_path / "exports" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    script = ("import os, runpy, sys\n"
              f"os.access = lambda path, mode: path != {str(version)!r}\n"
              "sys.argv = ['scripts/grpc_demo.py', '--export_dir=~/exports', 'a.jpg']\n"
              "runpy.run_path('scripts/grpc_demo.py', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, HOME=str(tmp_path)))
    assert done.returncode == 1
    assert done.stderr == (f"grpc_demo: '{version}' is the newest version but cannot be read "
                           f"by this user: its owner can open it to every user with chmod -R "
                           f"a+rX {version}\n")


@pytest.mark.slow
def test_a_server_that_cannot_start_says_why_in_one_line(tmp_path):
    """`ofrnn-serve` on a base path with no servable version, or on a port another
    process holds, ends with status 1 and one line naming the path or the address."""
    (tmp_path / "empty").mkdir()
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    try:
        port = held.getsockname()[1]
        for flags, said in (
                ([f"--model_base_path={tmp_path / 'empty'}", "--port=0"],
                 f"ofrnn-serve: no version directories under '{tmp_path / 'empty'}': expected "
                 f"{tmp_path / 'empty'}/<integer version>/saved_model.pb\n"),
                ([f"--model_base_path={tmp_path / 'empty'}", f"--port={port}"],
                 f"ofrnn-serve: cannot bind 127.0.0.1:{port}: Address already in use\n")):
            done = subprocess.run([sys.executable, "-m", "ofrnn_tf.cli.serve", *flags],
                                  cwd=ROOT, capture_output=True, text=True, timeout=120,
                                  env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
            assert done.returncode == 1, done.stderr[-2000:]
            assert done.stderr.endswith(said), done.stderr[-2000:]
            assert done.stdout == ""
    finally:
        held.close()


def test_predict_files_refuses_a_batch_size_below_one_when_called():
    # Before any result is asked for, so a caller learns of it where it made the mistake.
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        client.predict_files("127.0.0.1:1", ["a.jpg"], batch_size=0)


def test_error_text_keeps_the_reason_only():
    from ofrnn_tf.tf_errors import op_error_text

    message = ("Graph execution error:\n\nDetected at node assert_1 defined at (most recent "
               "call last):\n  File \"/x/pytest.py\", line 9, in <module>\n\n"
               "  File \"/x/module.py\", line 215, in _serve_images\n\n"
               "assertion failed: [images[1] could not be decoded] "
               "[[cond_1/then/_11/cond_1/StatefulPartitionedCall]] "
               "[[StatefulPartitionedCall_2/StatefulPartitionedCall]]\n"
               "\t [[{{node assert_1}}]]")
    error = tf.errors.InvalidArgumentError(None, None, message)
    assert op_error_text(error) == "images[1] could not be decoded"


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}),
                                    ("GIF", {}), ("BMP", {})])
def test_image_size_reads_header(fmt, kw):
    data = encode((10, 200, 30), size=(37, 21), fmt=fmt, **kw)
    assert image_size(data) == (fmt, 37, 21)


def test_image_size_huge_declared_size_costs_nothing():
    """Read from the header alone; larger than TensorFlow's decoders read, so refused."""
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 100_000, 100_000)
    with pytest.raises(ValueError, match=r"a PNG of 100000x100000 = 10000000000 pixels, more "):
        image_size(png)
    jpeg = b"\xff\xd8\xff\xc0\x00\x11\x08" + struct.pack(">HH", 60_000, 50_000) + b"\x03" + b"\x00" * 9
    with pytest.raises(ValueError, match=r"a JPEG of 50000x60000 pixels by 3 colour component"):
        image_size(jpeg)
    assert image_size(png[:16] + struct.pack(">II", 16_383, 32_768)) == ("PNG", 16_383, 32_768)


@pytest.mark.parametrize("data,message", [
    (b"hello, this is a text file\n", "not a JPEG/PNG/GIF/BMP image (starts with b'hello, t')"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "no IHDR chunk"),
    (b"\xff\xd8\xff\xd9", "no frame header"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated JPEG"),
    (b"GIF89a\x00\x00\x00\x00", "truncated GIF"),
    (b"GIF89a" + bytes(7) + b"\x2c" + bytes(9), "empty image (0x0)"),
    (b"BM" + b"\x00" * 26 + b"\x18" + b"\x00" * 13, "empty image (0x0)"),  # 24-bit, 0x0
    (b"BM" + b"\x00" * 40, "a BMP of bit depth 0, a layout the model does not read"),
])
def test_image_size_refuses(data, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        image_size(data)


def test_find_latest_version(tmp_path):
    for name in ("1", "10", "9", "tmp-export"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    (tmp_path / "11").write_text("a file, not a version")
    assert find_latest_version(str(tmp_path)) == (10, str(tmp_path / "10"))
    (tmp_path / "12").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no saved_model.pb"):
        find_latest_version(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no version directories"):
        find_latest_version(str(tmp_path / "tmp-export"))
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"saved_model.pb (this is itself a version folder: give its parent, {tmp_path})")):
        find_latest_version(str(tmp_path / "10"))
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        find_latest_version(str(tmp_path / "missing"))
    # TF Serving reads "0013" as version 13 and loads it from that folder; "²" is no
    # version, nor is a number beyond int64.
    for name in ("0013", "²", "9" * 20):
        (tmp_path / name).mkdir()
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    assert find_latest_version(str(tmp_path)) == (13, str(tmp_path / "0013"))


@pytest.mark.parametrize("closed", ["", "variables", "saved_model.pb"])
def test_a_newest_version_this_user_cannot_read_is_said_so(tmp_path, monkeypatch, closed):
    # Another user's export written under umask 077: not "holds no saved_model.pb" nor "not
    # a valid checkpoint", which the loader would say, but what to do about it.
    from ofrnn_tf.serving import server_process

    version = tmp_path / "1"
    (version / "variables").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    unreadable = str(version / closed) if closed else str(version)
    access = os.access
    monkeypatch.setattr(server_process.os, "access", lambda path, mode: (
        path != unreadable and access(path, mode)))
    inside = f" ({unreadable})" if closed else ""
    with pytest.raises(PermissionError, match=re.escape(
            f"'{version}' is the newest version but cannot be read by this user{inside}: its "
            f"owner can open it to every user with chmod -R a+rX {version}")):
        find_latest_version(str(tmp_path))


@pytest.mark.slow
def test_a_newest_version_that_does_not_load_is_named(tiny_export_run, tmp_path):
    """A version folder whose copy is still running or was cut short: one line naming it."""
    from ofrnn_tf.serving.local_server import serve

    shutil.copytree(tiny_export_run.export_dir, tmp_path / "3")
    data = glob.glob(str(tmp_path / "3" / "variables" / "variables.data-*"))[0]
    with open(data, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(RuntimeError, match=r"^version 3 \(.*3\) does not load: "):
        serve(str(tmp_path), warmup=False)


def test_a_version_copy_just_begun_is_named(tmp_path):
    """An empty saved_model.pb, as a copy leaves it at its start."""
    from ofrnn_tf.serving.local_server import serve

    (tmp_path / "4").mkdir()
    (tmp_path / "4" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(RuntimeError, match=r"^version 4 \(.*4\) does not load: ") as refused:
        serve(str(tmp_path), warmup=False)
    assert str(refused.value).endswith(
        "; a copy into the base path still running or cut short? Copy a version in under a "
        "name that is not a number, on the same file system, and rename it to its number "
        "once whole, as ofrnn-export does (the versions below it are not served instead)")
    (tmp_path / "5").mkdir()  # the copy's folder made, nothing in it yet
    with pytest.raises(FileNotFoundError, match="holds no saved_model.pb; a copy into the "
                                                "base path still running or cut short?"):
        serve(str(tmp_path), warmup=False)


def test_the_stand_in_model_writes_no_autograph_sources(tmp_path, monkeypatch):
    # AutoGraph's converted sources are removed at exit only: a server killed in a test
    # left them in the temporary folder.
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    model = StandInModel()
    model.serve_images([solid_png((200, 30, 30))])
    model.predict_features(tf.zeros([1, model.grid, model.grid, 3]))
    assert list(temp.iterdir()) == []


@pytest.mark.parametrize("damage", ["cut short", "not TFRecords"])
def test_a_warm_up_file_that_does_not_read_is_named(tmp_path, damage):
    from ofrnn_tf.export.warmup import WARMUP_FILE
    from ofrnn_tf.serving.local_server import serve

    warmup = os.path.join(write_stand_in_model(str(tmp_path), 5), WARMUP_FILE)
    with open(warmup, "r+b") as f:
        if damage == "cut short":
            f.truncate(os.path.getsize(warmup) // 2)
        else:
            f.write(b"no records here" * 20)
    # A copy still running or cut short leaves such a file: how to copy a version in whole.
    with pytest.raises(RuntimeError, match=r"^version 5 does not warm up: .*"
                                           r"tf_serving_warmup_requests: warm-up record \d+ "
                                           r"does not read: .*; a copy into the base path "
                                           r"still running or cut short\? Copy a version in "
                                           r".*; --nowarmup serves it without its warm-up$"):
        serve(str(tmp_path))


@pytest.mark.parametrize("removed", ["before its session loads", "after its session loaded"])
def test_a_version_pruned_while_it_loads_is_passed_over_for_the_newest(tmp_path, monkeypatch,
                                                                      removed):
    # `ofrnn-export --keep_versions` renames the version a starting server just chose.
    from ofrnn_tf.serving import local_server, servable as servable_module

    for version in (5, 6):
        write_stand_in_model(str(tmp_path), version)
    hook = "load_session" if removed.startswith("before") else "recorded_image_pixel_limit"
    original = getattr(servable_module, hook)

    def pruned_meanwhile(path, *args):
        if os.path.basename(path) == "6":
            shutil.rmtree(path)
        return original(path, *args)

    monkeypatch.setattr(servable_module, hook, pruned_meanwhile)
    servable = local_server.Servable.load(str(tmp_path), "ofrnn", False)
    try:
        assert (servable.version, servable.path) == (5, str(tmp_path / "5"))
    finally:
        servable.session.close()


@pytest.mark.parametrize("removed", ["before its warm-up reads", "during its warm-up"])
def test_a_version_pruned_while_it_warms_up_is_passed_over_for_the_newest(tmp_path,
                                                                        monkeypatch, removed):
    # An export writes version 7 and `--keep_versions=1` prunes 6 once the starting server
    # has loaded 6: the server listens with 7, not with a version gone from disk.
    for version in (5, 6):
        write_stand_in_model(str(tmp_path), version)
    original = local_server.ModelServer.warm_up

    def pruned_meanwhile(service):
        if service.servable.version != 6:
            return original(service)
        shutil.copytree(tmp_path / "5", tmp_path / ".tmp-export")
        os.rename(tmp_path / ".tmp-export", tmp_path / "7")
        if removed.startswith("before"):
            shutil.rmtree(tmp_path / "6")
            return original(service)
        count = original(service)
        shutil.rmtree(tmp_path / "6")
        return count

    monkeypatch.setattr(local_server.ModelServer, "warm_up", pruned_meanwhile)
    server, port = local_server.serve(str(tmp_path), port=0)
    try:
        assert [s["version"] for s in client.get_model_status(f"127.0.0.1:{port}")] == [7]
    finally:
        server.stop(grace=0).wait()


def test_the_warm_up_passes_over_requests_above_max_batch_size(tmp_path):
    # The stand-in's warm-up sends batches of 2 (an export's, 1 and 8): a server that
    # refuses any batch above 1 unread has nothing to warm up for them.
    from ofrnn_tf.serving.local_server import ModelServer, Servable

    write_stand_in_model(str(tmp_path), 5)
    servable = Servable.load(str(tmp_path), "ofrnn", False)
    try:
        assert ModelServer(servable, max_batch_size=1).warm_up() == 0
        assert ModelServer(servable, max_batch_size=2).warm_up() == 2
    finally:
        servable.session.close()


def test_nothing_listens_while_the_model_loads_and_a_failed_load_frees_the_port(
        tmp_path, monkeypatch):
    """As under TF Serving, a client finds no server (UNAVAILABLE at once) rather than
    one that accepts and never answers; a load that fails leaves the port to the next."""
    import socket

    from ofrnn_tf.serving import local_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seen = []

    def load(*args):
        with socket.socket() as probe:
            seen.append(probe.connect_ex(("127.0.0.1", port)))
        raise RuntimeError("version 1 does not load: test")

    monkeypatch.setattr(local_server.Servable, "load", load)
    with pytest.raises(RuntimeError, match="does not load"):
        local_server.serve(str(tmp_path), port=port)
    assert seen and seen[0] != 0  # connection refused while loading
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_a_port_taken_while_the_model_loads_fails_the_start_and_ends_its_loop(monkeypatch):
    """The port is free when tried, and another process takes it while the model loads:
    the start fails naming why, its session is closed and its event loop's thread ends."""
    from ofrnn_tf.serving import local_server

    closed = threading.Event()

    class Session:
        def close(self):
            closed.set()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = set(threading.enumerate())
    with socket.socket() as taker:
        def load(path, name, *_):
            taker.bind(("127.0.0.1", port))
            taker.listen()
            return local_server.Servable(name, 1, path, {"serving_default": images_signature()},
                                         Session())

        monkeypatch.setattr(local_server.Servable, "load", load)
        with pytest.raises(OSError, match=rf"^cannot bind 127\.0\.0\.1:{port}: Address already "
                                          rf"in use$"):
            local_server.serve("/unused", port=port, warmup=False)
    assert closed.is_set()
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=10)
        assert not thread.is_alive(), thread.name


def test_the_port_probe_refuses_what_grpc_would_half_bind_and_leaves_out_what_it_skips(
        monkeypatch):
    import socket

    from ofrnn_tf.serving import local_server

    def unloadable(*args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(local_server.Servable, "load", unloadable)
    # A name that does not resolve, even at port 0: refused before the model loads.
    with pytest.raises(OSError, match=r"^cannot bind no-such-host\.invalid:0: "):
        local_server.serve("/nonexistent", host="no-such-host.invalid", port=0)
    # gRPC binds both loopbacks for localhost: ::1 busy is busy, whatever /etc/hosts says.
    if socket.has_ipv6:
        try:
            busy = socket.socket(socket.AF_INET6)
            busy.bind(("::1", 0))
        except OSError:
            busy = None  # no IPv6 loopback here
        if busy is not None:
            with busy:
                busy.listen()
                port = busy.getsockname()[1]
                assert local_server._bind_problem("localhost", port) == ": Address already in use"
    # An address this machine lacks is left out, as gRPC leaves it out, unless it is the only one.
    lacking = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 0))
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: real(*a, **k) + [lacking])
    assert local_server._bind_problem("127.0.0.1", 0) == ""
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [lacking])
    assert local_server._bind_problem("192.0.2.1", 0) == ": Cannot assign requested address"


def test_model_config_parses():
    with open(os.path.join(ROOT, "serving", "models.config")) as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    # The name the export's warm-up requests and the clients use by default.
    assert model.name == DEFAULT_MODEL_NAME == "ofrnn" and model.model_platform == "tensorflow"
    assert model.model_version_policy.latest.num_versions == 1


def batching_parameters_class():
    """TF Serving's `tensorflow.serving.BatchingParameters` message (session_bundle_config
    .proto; not shipped in tensorflow-serving-api), declared field for field."""
    wrappers = "google/protobuf/wrappers.proto"
    pool = descriptor_pool.DescriptorPool()
    from google.protobuf import wrappers_pb2

    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="batching_parameters.proto", package="tensorflow.serving", syntax="proto3",
        dependency=[wrappers])
    message = file.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
    for number, name, kind, type_name, label in [
            (1, "max_batch_size", F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
            (2, "batch_timeout_micros", F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
            (3, "max_enqueued_batches", F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
            (4, "num_batch_threads", F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
            (5, "thread_pool_name", F.TYPE_MESSAGE, ".google.protobuf.StringValue", F.LABEL_OPTIONAL),
            (6, "allowed_batch_sizes", F.TYPE_INT64, None, F.LABEL_REPEATED),
            (7, "pad_variable_length_inputs", F.TYPE_BOOL, None, F.LABEL_OPTIONAL)]:
        field = message.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def test_batching_config_parses_with_its_proto():
    with open(os.path.join(ROOT, "serving", "batching.config")) as f:
        params = text_format.Parse(f.read(), batching_parameters_class()())  # unknown field: error
    assert params.max_batch_size.value >= 1 and params.num_batch_threads.value >= 1
    allowed = list(params.allowed_batch_sizes)
    # TF Serving requires increasing sizes ending at max_batch_size.
    assert allowed == sorted(set(allowed)) and allowed[-1] == params.max_batch_size.value
    with pytest.raises(text_format.ParseError, match="max_batch_sizes"):
        text_format.Parse("max_batch_sizes { value: 8 }", batching_parameters_class()())


def images_signature():
    """A SignatureDef taking `images` and giving the outputs the client asks for."""
    from tensorflow.core.protobuf import meta_graph_pb2

    signature = meta_graph_pb2.SignatureDef()
    signature.inputs["images"].name = "images:0"
    signature.inputs["images"].dtype = tf.string.as_datatype_enum
    signature.inputs["images"].tensor_shape.dim.add(size=-1)
    for key in client.PREDICT_OUTPUTS:
        signature.outputs[key].name = f"{key}:0"
    return signature


def test_a_request_above_max_batch_size_is_refused_before_any_header_is_read(monkeypatch):
    from ofrnn_tf.serving import local_server

    servable = local_server.Servable("ofrnn", 1, "", {"serving_default": images_signature()},
                                     None)
    read = []
    monkeypatch.setattr(request_checks, "read_image_header", lambda *a: read.append(a))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ofrnn"
    request.inputs["images"].CopyFrom(strings([RED] * 5))
    with pytest.raises(local_server.RequestError,
                       match=r"^a request of 5 items is above this server's --max_batch_size "
                             r"of 4: send several requests$"):
        local_server.ModelServer(servable, max_batch_size=4).predict(request)
    assert read == []
    # A request of exactly the limit goes on to the images' headers.
    request.inputs["images"].CopyFrom(strings([RED] * 4))
    monkeypatch.setattr(request_checks, "read_image_header",
                        lambda item, limit: read.append(item) or image_size(item, limit))
    with pytest.raises(local_server.RequestError, match="images\\[0\\]: .*above the limit"):
        local_server.ModelServer(servable, max_batch_size=4, max_image_pixels=63).predict(
            request)
    assert read == [RED]


def test_a_tiny_request_declaring_a_huge_batch_is_refused_before_its_array_is_filled(
        monkeypatch):
    # One value fills a declared shape (TensorProto's rule): 69 bytes could make the
    # server fill 57 MB, under the message limit, before its batch limit refused it.
    from tensorflow.core.protobuf import meta_graph_pb2

    from ofrnn_tf.serving import local_server

    signature = meta_graph_pb2.SignatureDef()
    signature.inputs["features"].name = "features:0"
    signature.inputs["features"].dtype = tf.float32.as_datatype_enum
    for size in (-1, 4, 4, 3):
        signature.inputs["features"].tensor_shape.dim.add(size=size)
    servable = local_server.Servable("ofrnn", 1, "", {"serving_default": signature}, None)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ofrnn"
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(0.0, tf.float32))
    request.inputs["features"].tensor_shape.Clear()
    for size in (300_000, 4, 4, 3):
        request.inputs["features"].tensor_shape.dim.add(size=size)
    assert request.ByteSize() < 100
    monkeypatch.setattr(local_server.tf, "make_ndarray",
                        lambda proto: pytest.fail("the declared array was filled"))
    with pytest.raises(local_server.RequestError,
                       match=r"^a request of 300000 items is above this server's "
                             r"--max_batch_size of 64: send several requests$"):
        local_server.ModelServer(servable).predict(request)
    # Within the batch limit, the declared array is bounded by the message limit in bytes:
    # 60 × 48 float32 values are 11,520 bytes, 2,880 values.
    request.inputs["features"].tensor_shape.dim[0].size = 60
    with pytest.raises(local_server.RequestError,
                       match=r"^input 'features': shape \[60, 4, 4, 3\] is 11520 bytes, more "
                             r"than a request may carry \(10000\)$"):
        local_server.ModelServer(servable, max_message_bytes=10_000).predict(request)


def test_a_refusal_quoting_megabytes_of_a_request_is_cut_for_the_log_and_the_answer():
    from ofrnn_tf.serving import local_server

    servable = local_server.Servable("ofrnn", 1, "", {"serving_default": images_signature()},
                                     None)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "A" * 8_000_000
    with pytest.raises(local_server.RequestError) as refused:
        local_server.ModelServer(servable).predict(request)
    message = refused.value.message
    assert message.startswith("model 'AAAA") and str(refused.value) == message
    assert message.endswith("... (cut: the message is 8000051 characters)"), message[-80:]
    assert len(message) < 2100
    # Bytes, not characters: gRPC sends the details percent-encoded, 3 bytes a byte.
    request.model_spec.name = "模型" * 4000
    with pytest.raises(local_server.RequestError) as refused:
        local_server.ModelServer(servable).predict(request)
    assert len(refused.value.message.encode()) < 2100, len(refused.value.message.encode())


def test_the_servers_pixel_limit_takes_an_image_of_exactly_that_many_pixels():
    from ofrnn_tf.serving import local_server

    info = images_signature().inputs["images"]
    exact = np.array([encode((1, 2, 3), size=(8, 8))], object)
    request_checks.check_items("images", info, exact, 64)  # 8 x 8 = 64 pixels: taken
    with pytest.raises(local_server.RequestError,
                       match=r"^images\[0\]: PNG of 8x8 = 64 pixels is above the limit "
                             r"of 63 pixels$"):
        request_checks.check_items("images", info, exact, 63)


@pytest.mark.parametrize("flag,message", [
    ("--port=99999", "--port must be in 0..65535 (0: a free one), got 99999"),
    ("--max_image_pixels=0", "--max_image_pixels must be a number of pixels, at least 1; got 0"),
    ("--max_image_pixels=inf", "--max_image_pixels must be a number of pixels, at least 1; "
                               "got inf"),
    ("--max_batch_size=0", "--max_batch_size must be at least 1, got 0"),
    ("--max_workers=0", "--max_workers must be at least 1, got 0"),
    ("--max_message_bytes=0", "--max_message_bytes must be at least 1, got 0"),
])
def test_ofrnn_serve_refuses_a_port_or_pixel_limit_out_of_range(flag, message):
    # gRPC would serve --port=99999 on 34463; a limit of 0 would refuse every image; the
    # sizes would fail only once the model has loaded and warmed up (or blame the export).
    run = subprocess.run([sys.executable, "-m", "ofrnn_tf.cli.serve",
                          "--model_base_path=/nonexistent", flag], capture_output=True,
                         text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=120)
    assert run.returncode == 1 and message in run.stderr, run.stderr


def test_serve_refuses_a_port_out_of_range_before_the_model_loads(monkeypatch):
    from ofrnn_tf.serving import local_server

    def unloadable(*args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(local_server.Servable, "load", unloadable)
    with pytest.raises(ValueError,
                       match=r"^port must be in 0\.\.65535 \(0: a free one\), got 65536"):
        local_server.serve("/nonexistent", port=65536)
    with pytest.raises(ValueError, match=r"^max_image_pixels must be at least 1, got -1"):
        local_server.serve("/nonexistent", max_image_pixels=-1)


def serve_session(monkeypatch, session) -> None:
    """Makes `local_server.serve` load a version of one image signature run by `session`."""
    from ofrnn_tf.serving import local_server

    monkeypatch.setattr(local_server.Servable, "load", lambda path, name, *_: local_server.Servable(
        name, 1, path, {"serving_default": images_signature()}, session))


def session_running_until_closed(limit: float):
    """A stand-in session whose run lasts until the session is closed, then raises as
    TensorFlow's does (an AssertionError after `limit` seconds), with the events that say
    a run began and the session closed."""
    running, closed = threading.Event(), threading.Event()

    class Session:
        def run(self, *args, **kwargs):
            running.set()
            if closed.wait(timeout=limit):
                raise tf.errors.CancelledError(None, None, "Session has been closed.")
            raise AssertionError("the session was not closed")

        def close(self):
            closed.set()

    return Session(), running, closed


def call_without_deadline(port: int) -> tuple[threading.Thread, list]:
    """A started thread that sends one Predict call without a deadline to the server on
    `port`, and the list its error's code goes to."""
    answers = []

    def call():
        try:
            client.predict_images(f"127.0.0.1:{port}", [RED], timeout=None,
                                  wait_for_server=0)  # a server stopping: not waited for
        except grpc.RpcError as error:
            answers.append(error.code())

    caller = threading.Thread(target=call)
    caller.start()
    return caller, answers


def test_a_stopped_server_closes_its_session_so_the_runs_in_flight_end(monkeypatch):
    """gRPC cancels the calls left when the grace is over, not the model runs behind
    them, which would keep the process alive until they end."""
    from ofrnn_tf.serving import local_server

    session, running, closed = session_running_until_closed(15)
    serve_session(monkeypatch, session)
    flushed = threading.Event()  # the refusals not yet counted in the log are said
    monkeypatch.setattr(local_server.RefusalLog, "stop_limiting", lambda self: flushed.set())
    decoded = []  # a cancelled run is no image's fault: none is decoded to find one
    monkeypatch.setattr(local_server, "find_undecodable", lambda *args: decoded.append(args))
    server, port = local_server.serve("/unused", warmup=False)
    caller, answers = call_without_deadline(port)
    assert running.wait(timeout=30)
    server.stop(grace=0.1).wait()
    assert closed.wait(timeout=5) and flushed.is_set()
    caller.join(timeout=10)
    assert len(answers) == 1 and decoded == []


def test_a_model_run_that_raises_systemexit_fails_its_call_and_the_server_goes_on(
        monkeypatch):
    # A SystemExit from a run (a graph's py_function calling sys.exit) reached the event
    # loop, which ended: the server answered nothing more and never stopped.
    from ofrnn_tf.serving import local_server

    class Session:
        def run(self, *args, **kwargs):
            raise SystemExit(3)

        def close(self):
            pass

    serve_session(monkeypatch, Session())
    server, port = local_server.serve("/unused", warmup=False)
    try:
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as failed:
                client.predict_images(f"127.0.0.1:{port}", [RED], timeout=20,
                                      wait_for_server=0)
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            assert "SystemExit: 3" in failed.value.details()
    finally:
        assert server.stop(grace=None).wait(timeout=10)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32])
def test_nan_in_any_floating_input_is_refused_naming_the_item(dtype):
    from tensorflow.core.protobuf import meta_graph_pb2

    from ofrnn_tf.serving import local_server

    info = meta_graph_pb2.TensorInfo(dtype=dtype.as_datatype_enum)
    value = np.array([[1.0, 2.0], [3.0, np.nan]], dtype=dtype.as_numpy_dtype)
    with pytest.raises(local_server.RequestError, match=r"^x\[1\]: contains NaN or Inf$"):
        request_checks.check_items("x", info, value, 10 ** 6)


def test_a_dropped_server_still_lets_its_session_go(monkeypatch):
    # A program embedding serve() that drops the server without stop(): gRPC stops a
    # server it collects, and the session is closed after it.
    import gc

    from ofrnn_tf.serving import local_server

    closed = threading.Event()

    class Session:
        def run(self, *args, **kwargs):
            raise AssertionError("no request was sent")

        def close(self):
            closed.set()

    serve_session(monkeypatch, Session())
    server, port = local_server.serve("/unused", warmup=False)
    del server
    gc.collect()
    assert closed.wait(timeout=10)


def test_a_later_stop_with_a_shorter_grace_stops_the_server_sooner(monkeypatch):
    """As on a grpc.Server: stop(None) after stop(30) cancels the calls at once."""
    from ofrnn_tf.serving import local_server

    session, running, closed = session_running_until_closed(30)
    serve_session(monkeypatch, session)
    server, port = local_server.serve("/unused", warmup=False)
    caller, answers = call_without_deadline(port)
    try:
        assert running.wait(timeout=30)
        first = server.stop(grace=30)
        assert server.stop(grace=None) is first
        assert first.wait(timeout=10) and closed.wait(timeout=10)
    finally:
        closed.set()
        caller.join(timeout=30)
    assert len(answers) == 1


@pytest.mark.slow
def test_a_signal_that_comes_while_the_server_stops_stops_it_too():
    """ofrnn-serve stops its server from SIGTERM's handler, which may run in the middle
    of a stop begun by Ctrl-C or an earlier SIGTERM: the stop went on waiting for
    itself, and the process never exited."""
    script = (
        "import asyncio, os, signal, threading\n"
        "from ofrnn_tf.serving import local_server\n"
        "class Session:\n"
        "    def close(self): pass\n"
        "local_server.Servable.load = lambda *args: local_server.Servable(\n"
        "    'ofrnn', 1, '/unused', {}, Session())\n"
        "server, _ = local_server.serve('/unused', warmup=False)\n"
        "signal.signal(signal.SIGTERM, lambda *_: server.stop(2.0))\n"
        "handing = asyncio.BaseEventLoop.call_soon_threadsafe\n"
        "def signalled(loop, *args):  # SIGTERM comes as stop hands the loop its work\n"
        "    if threading.current_thread() is threading.main_thread():\n"
        "        asyncio.BaseEventLoop.call_soon_threadsafe = handing\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return handing(loop, *args)\n"
        "asyncio.BaseEventLoop.call_soon_threadsafe = signalled\n"
        "print(server.stop(2.0).wait(timeout=30))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                          timeout=60)
    assert (done.returncode, done.stdout) == (0, "True\n"), done.stderr[-2000:]


def _http2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


def _hpack_literal(name: str, value: str) -> bytes:
    """A header as HPACK's literal without indexing, of a new name (both under 127 bytes)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


class StalledUploads:
    """A client that opens `calls` Predict calls on one HTTP/2 connection, sends each its
    headers and the first bytes of a request of 1000 bytes, and no more: a stalled upload.
    It answers the server's SETTINGS and PINGs, so the connection stays open until
    `close`."""

    def __init__(self, port: int, calls: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        headers = b"".join(_hpack_literal(name, value) for name, value in [
            (":method", "POST"), (":scheme", "http"),
            (":path", "/tensorflow.serving.PredictionService/Predict"),
            (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"),
            ("te", "trailers")])
        frames = [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", _http2_frame(4, 0, 0)]
        for stream in range(1, 2 * calls, 2):
            frames.append(_http2_frame(1, 0x4, stream, headers))  # END_HEADERS
            # The message's 5-byte prefix (not compressed, 1000 bytes) and its first 2 bytes.
            frames.append(_http2_frame(0, 0, stream, struct.pack(">BI", 0, 1000) + b"\x0a\x00"))
        self.sock.sendall(b"".join(frames))
        self.reader = threading.Thread(target=self._answer, daemon=True)
        self.reader.start()

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _answer(self) -> None:
        try:
            while True:
                head = self._read(9)
                length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
                payload = self._read(length)
                if kind == 4 and not flags & 1:  # SETTINGS: acknowledged
                    self.sock.sendall(_http2_frame(4, 1, 0))
                elif kind == 6 and not flags & 1:  # PING: answered
                    self.sock.sendall(_http2_frame(6, 1, 0, payload))
        except (OSError, EOFError):
            pass

    def close(self) -> None:
        self.sock.close()
        self.reader.join(timeout=10)


@pytest.mark.parametrize("max_concurrent_rpcs", [None, 2])
def test_calls_whose_requests_never_arrive_whole_do_not_hold_the_others_back(
        monkeypatch, max_concurrent_rpcs):
    """A client that opens more calls than there are workers and stalls halfway through
    sending them holds no worker and no place under max_concurrent_rpcs: another
    client is answered while its connection stays open."""
    class Session:
        def run(self, *args, **kwargs):
            raise AssertionError("no request arrived whole")

        def close(self):
            pass

    serve_session(monkeypatch, Session())
    server, port = local_server.serve("/unused", warmup=False, max_workers=2,
                                      max_concurrent_rpcs=max_concurrent_rpcs)
    stalled = StalledUploads(port, calls=3)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = DEFAULT_MODEL_NAME
            for _ in range(3):  # more than the workers, one after the other
                answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                    request, timeout=20)
                assert answer.model_version_status[0].version == 1
    finally:
        stalled.close()
        server.stop(grace=0).wait()


def test_requests_beyond_max_concurrent_rpcs_are_refused_in_grpcs_words_and_logged(
        monkeypatch):
    """`ofrnn-client` asks again after a wait on this refusal, which it knows by gRPC's
    words."""
    running, release = threading.Event(), threading.Event()

    class Session:  # a run that lasts until it is released
        def run(self, *args, **kwargs):
            running.set()
            release.wait(timeout=30)
            raise tf.errors.UnknownError(None, None, "released")

        def close(self):
            release.set()

    lines = []
    monkeypatch.setattr(local_server.logging, "warning", lambda fmt, *args: lines.append(
        fmt % args))
    serve_session(monkeypatch, Session())
    server, port = local_server.serve("/unused", warmup=False, max_concurrent_rpcs=1)
    answers = []

    def call():
        try:
            client.predict_images(f"127.0.0.1:{port}", [RED], wait_for_server=0)
        except grpc.RpcError as error:
            answers.append(error.code())

    caller = threading.Thread(target=call)
    caller.start()
    try:
        assert running.wait(timeout=30)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = DEFAULT_MODEL_NAME
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus
            with pytest.raises(grpc.RpcError) as refused:
                status(request, timeout=20)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.value.details() == "Concurrent RPC limit exceeded!"
            release.set()
            caller.join(timeout=30)
            assert answers == [grpc.StatusCode.INTERNAL]
            assert status(request, timeout=20).model_version_status[0].version == 1
    finally:
        release.set()
        server.stop(grace=0).wait()
    assert "RESOURCE_EXHAUSTED: Concurrent RPC limit exceeded!" in lines


def test_native_lines_are_shown_one_a_second_with_a_count_of_those_left_out():
    from ofrnn_tf.serving.native_log import LineLimit

    def said(limit, events):
        out = []
        for t, text in events:
            out += limit.line(text.encode() + b"\n", t) if text else limit.tick(t)
        return [line.decode().rstrip("\n") for line in out]

    burst = [(0.0, "a"), (0.1, "b"), (0.2, "c"), (0.9, "d"), (1.0, "e"), (1.5, "f"),
             (1.9, None), (2.0, None), (2.1, None)]
    limit = LineLimit(interval=1.0)
    assert said(limit, burst) == ["a", "(3 more since the last native line)", "e",
                                  "(1 more since the last native line)"]
    assert limit.seconds_to_next_tick(2.1) is None
    assert said(limit, [(3.0, "g"), (4.0, "h"), (5.0, "i")]) == ["g", "h", "i"]
    # At the end, the lines left out are counted after a clean stop...
    assert said(limit, [(5.1, "j"), (5.2, "k")]) == []
    assert [line.decode() for line in limit.end(clean=True)] == [
        "(2 more since the last native line)\n"]
    # ... and written after any other end (a crash's last words), the last few of them.
    limit = LineLimit(interval=1.0, max_held=2)
    said(limit, [(0.0, "a"), (0.1, "b"), (0.2, "c"), (0.3, "fatal")])
    assert [line.decode() for line in limit.end(clean=False)] == [
        "(1 more since the last native line; the last 2 follow)\n", "c\n", "fatal\n"]


@pytest.mark.parametrize("clean", [True, False])
def test_the_native_line_forwarder_passes_on_everything_read_before_the_pipes_end(clean):
    from ofrnn_tf.serving.native_log import CLEAN_END, forward

    source, source_end = os.pipe()
    sink_end, sink = os.pipe()
    os.write(source_end, b"first\nsecond\nthird\n" + (CLEAN_END if clean else b"no newline"))
    os.close(source_end)
    forward(source, sink, clock=lambda: 0.0)  # all at once: one second not yet over
    os.close(sink)
    with os.fdopen(sink_end, "rb") as got, os.fdopen(source):
        written = got.read().decode()
    assert written == ("first\n(2 more since the last native line)\n" if clean
                       else "first\n(the 3 native line(s) held back since the last one "
                            "shown follow)\nsecond\nthird\nno newline\n")


@pytest.mark.parametrize("end", ["os.abort()", "limited.close()"])
def test_native_lines_written_just_before_the_process_ends_reach_its_stderr(end):
    script = ("import os, sys\n"
              "from ofrnn_tf.serving.native_log import limit_native_stderr\n"
              "limited = limit_native_stderr()\n"
              "print('from Python', file=sys.stderr)\n"
              "os.write(2, b'native 1\\n')\n"
              "os.write(2, b'F0101 last words\\n')\n"
              "sys.stderr.flush()\n"
              f"{end}\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=60)
    lines = done.stderr.splitlines()
    assert "from Python" in lines and "native 1" in lines, done.stderr
    if end == "os.abort()":
        assert done.returncode < 0 and "F0101 last words" in lines, done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert "(1 more since the last native line)" in lines, done.stderr


def test_the_forwarder_is_this_package_whatever_folder_the_server_starts_in(tmp_path):
    # `python -m` reads the working folder first: an `ofrnn_tf` there was imported instead.
    (tmp_path / "ofrnn_tf").mkdir()
    (tmp_path / "ofrnn_tf" / "__init__.py").write_text("raise SystemExit('the wrong ofrnn_tf')")
    script = ("import os, sys\n"
              f"sys.path.insert(0, {ROOT!r})\n"
              "from ofrnn_tf.serving.native_log import limit_native_stderr\n"
              "limited = limit_native_stderr()\n"
              "print('limited' if limited else 'not limited', flush=True)\n"
              "limited and limited.close()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.stdout.strip() == "limited", done.stderr


def test_a_forwarder_that_cannot_write_or_stops_reading_costs_lines_not_the_server():
    from ofrnn_tf.serving.native_log import forward

    read_end, write_end = os.pipe()
    sink_read, sink_write = os.pipe()
    os.close(sink_read)  # every write to the sink fails (EPIPE), as on a full disk
    os.write(write_end, b"a\nb\n")
    os.close(write_end)
    forward(read_end, sink_write)  # reads to the end instead of dying on the first line
    os.close(read_end)
    os.close(sink_write)
    script = ("import os, signal, sys, time\n"
              f"sys.path.insert(0, {ROOT!r})\n"
              "from ofrnn_tf.serving.native_log import limit_native_stderr\n"
              "limited = limit_native_stderr()\n"
              "os.kill(limited.child.pid, signal.SIGSTOP)\n"
              "for _ in range(20000):\n"
              "    try:\n"
              "        os.write(2, b'x' * 99 + b'\\n')\n"
              "    except BlockingIOError:\n"
              "        pass\n"
              "print('not blocked', flush=True)\n"
              "os.kill(limited.child.pid, signal.SIGCONT)\n"
              "limited.close()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "not blocked", done.stderr[-2000:]


def test_without_its_forwarding_process_native_lines_go_to_stderr_as_before(monkeypatch):
    from absl import logging as absl_logging

    from ofrnn_tf.serving import native_log

    said = []
    monkeypatch.setattr(absl_logging, "warning", lambda fmt, *args: said.append(fmt % args))
    monkeypatch.setattr(native_log.sys, "executable", "/nonexistent/python")
    stderr, before = sys.stderr, os.fstat(2)
    assert native_log.limit_native_stderr() is None
    assert sys.stderr is stderr and os.path.samestat(os.fstat(2), before)
    assert len(said) == 1 and said[0].startswith(
        "native stderr lines (libjpeg, TensorFlow's C++ log) are not rate-limited: their "
        "forwarding process did not start: [Errno 2]"), said


# --- local server in a child process -------------------------------------------


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    write_stand_in_model(str(base), 1, class_names=("old_r", "old_g", "old_b"))
    write_stand_in_model(str(base), 2)
    (base / "tmp-upload").mkdir()  # not a version: ignored
    return str(base)


@pytest.fixture(scope="module")
def server_log(tmp_path_factory):
    """The file the `server` fixture's stderr goes to."""
    return tmp_path_factory.mktemp("log") / "server.log"


@pytest.fixture(scope="module")
def server(model_base, server_log):
    log = open(server_log, "w+")
    proc, target = start_subprocess(
        model_base, extra_args=[f"--max_image_pixels={PIXEL_LIMIT}",
                                f"--max_message_bytes={MESSAGE_LIMIT}", "--max_workers=8"],
        stderr=log)
    yield target
    assert stop(proc) == 0
    log.close()


@pytest.mark.slow
def test_server_started_from_another_folder_reads_a_relative_model_path(
        model_base, monkeypatch):
    """The child server runs from the package's parent folder; a relative path is the caller's."""
    monkeypatch.chdir(os.path.dirname(model_base))
    proc, target = start_subprocess(os.path.basename(model_base), stderr=subprocess.DEVNULL)
    try:
        with client.make_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
    finally:
        assert stop(proc) == 0


def _servers_of(model_base_path: str) -> list[int]:
    """The processes alive (not zombies) serving `model_base_path` as `spawn` starts them."""
    wanted = f"--model_base_path={model_base_path}".encode()
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:  # ended meanwhile
            continue
        if wanted in args and state not in (b"Z", b"X"):
            pids.append(int(pid))
    return pids


def _wait_for_servers_of(model_base_path: str, present: bool, timeout: float = 120.0) -> None:
    """Waits until a process serves `model_base_path` (`present`) or none does any more;
    fails the test after `timeout` seconds, ending (by pid) the servers left behind."""
    deadline = time.monotonic() + timeout
    while bool(_servers_of(model_base_path)) != present:
        if time.monotonic() > deadline:
            left = _servers_of(model_base_path)
            for pid in left:
                os.kill(pid, 9)
            pytest.fail(f"servers of {model_base_path}: {left or 'none'} after {timeout:.0f} s")
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the server's process in /proc")
def test_server_stops_when_the_process_that_started_it_is_killed(model_base, tmp_path):
    """A parent killed without a chance to stop its server (SIGKILL, or SIGTERM to a test
    run) leaves none listening under PID 1: the server's stdin pipe closes with it."""
    base = str(tmp_path / "base")
    os.symlink(model_base, base)  # a path of this test's own in the server's command line
    script = ("import sys, time\n"
              "from ofrnn_tf.serving.server_process import start_subprocess\n"
              f"start_subprocess({base!r}, stderr=open({str(tmp_path / 'log')!r}, 'w'))\n"
              "print('listening', flush=True)\n"
              "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert parent.stdout.readline() == "listening\n"
        assert _servers_of(base)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    _wait_for_servers_of(base, present=False)


def _stopped_by(model_base: str, send) -> tuple[str, int]:
    """Starts `ofrnn-serve` on `model_base` (Ctrl-C taken as in a terminal), checks a
    request, then calls `send(process)`; returns its stderr and exit status once it stops
    (within 60 s, else the test fails)."""
    from conftest import ctrl_c_as_in_a_terminal

    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    with subprocess.Popen(ctrl_c_as_in_a_terminal([sys.executable, "-m", "ofrnn_tf.cli.serve",
                                                   f"--model_base_path={model_base}",
                                                   "--port=0"]),
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            assert_good_request_works(wait_until_listening(proc))
            send(proc)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    return err, proc.returncode


@pytest.mark.slow
def test_ctrl_c_stops_the_server_after_its_grace_as_sigterm_does(model_base):
    """The server takes Ctrl-C as its way to stop, as SIGTERM: it exits with 0."""
    err, status = _stopped_by(model_base, lambda proc: proc.send_signal(signal.SIGINT))
    assert "stopping (Ctrl-C): requests in flight have 2 s to finish" in err, err
    assert status == 0, err


# tgkill(2), which sends a signal to one thread of a process (Python's pthread_kill
# reaches only the caller's own threads), by machine.
_TGKILL = {"x86_64": 234, "aarch64": 131}.get(os.uname().machine)


def _send_to_a_thread_other_than_the_main(pid: int, signum: int) -> None:
    """Sends `signum` to a thread of process `pid` other than its main one that does not
    block it, as the kernel may hand a signal sent to the process to any such thread."""
    import ctypes

    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        if tid == pid:
            continue
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            blocked = int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)
        if not blocked >> (signum - 1) & 1:
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.syscall(_TGKILL, pid, tid, signum) == 0, os.strerror(ctypes.get_errno())
            return
    raise AssertionError(f"every thread of {pid} but the main one blocks signal {signum}")


@pytest.mark.slow
@pytest.mark.skipif(_TGKILL is None or not os.path.isdir("/proc"),
                    reason="sends a signal to one thread: tgkill through /proc, Linux on "
                           "x86_64 or aarch64")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_a_thread_of_the_server_takes_still_stops_it(model_base, signum):
    """A signal sent to the process may land on any thread that does not block it (gRPC's,
    TensorFlow's); its Python handler runs only in the main thread, once it is back in
    Python: a main thread waiting without a timeout never was, and the server served on."""
    err, status = _stopped_by(
        model_base, lambda proc: _send_to_a_thread_other_than_the_main(proc.pid, signum))
    said = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert f"stopping ({said}): requests in flight have 2 s to finish" in err, err
    assert status == 0, err


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the server's process in /proc")
def test_grpc_demo_stopped_by_sigterm_stops_its_server(model_base, tmp_path):
    # SIGTERM while the demo waits for its server, as a cancelled CI job or `kill` sends it.
    base = str(tmp_path / "base")
    os.symlink(model_base, base)
    image = tmp_path / "red.png"
    image.write_bytes(RED)
    demo = subprocess.Popen([sys.executable, "scripts/grpc_demo.py", f"--export_dir={base}",
                             str(image)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_servers_of(base, present=True)
        demo.send_signal(signal.SIGTERM)
        out, err = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 143, err[-2000:]
    assert err.endswith("\ngrpc_demo: terminated\n"), err[-2000:]
    assert out == ""
    assert not _servers_of(base)  # stopped and waited for, not left to PID 1


@pytest.mark.slow
def test_grpc_demo_takes_folders_as_ofrnn_client_does(model_base, tmp_path):
    # A run's examples/ holds PNGs where its data were PNGs: the folder, not a *.jpg glob.
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "000_red.png").write_bytes(RED)
    (tmp_path / "examples" / "notes.txt").write_text("not an image")
    done = subprocess.run([sys.executable, "scripts/grpc_demo.py", f"--export_dir={model_base}",
                           str(tmp_path / "examples")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    red, notes = map(json.loads, done.stdout.splitlines())
    assert (red["image"], red["labels"]) == (str(tmp_path / "examples" / "000_red.png"), ["red"])
    assert notes["error"].startswith(f"{tmp_path / 'examples' / 'notes.txt'}: skipped by its "
                                     f"extension (.txt)")


def test_grpc_demo_given_no_image_says_so_without_starting_a_server(tmp_path):
    (tmp_path / "exports" / "1").mkdir(parents=True)
    (tmp_path / "exports" / "1" / "saved_model.pb").write_bytes(b"")  # never loaded
    (tmp_path / "examples").mkdir()
    done = subprocess.run([sys.executable, "scripts/grpc_demo.py",
                           f"--export_dir={tmp_path / 'exports'}", str(tmp_path / "examples")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert json.loads(done.stdout) == {
        "image": str(tmp_path / "examples"),
        "error": f"{tmp_path / 'examples'}: folder holds no jpg/jpeg/jpe/jfif/png/bmp/gif file"}
    assert done.stderr == "grpc_demo: no image was labelled\n"


def test_grpc_demo_says_a_usage_error_in_one_line():
    done = subprocess.run([sys.executable, "scripts/grpc_demo.py", "--export_dir=exports"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == ("grpc_demo: give one or more image files or folders\n"
                           "Try --help for the command's flags.\n")


@pytest.fixture(scope="module")
def stub(server):
    with client.make_channel(server) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def raw_predict(stub, inputs, signature="serving_default", model="ofrnn", version=None, output_filter=()):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for key, proto in inputs.items():
        request.inputs[key].CopyFrom(proto)
    request.output_filter.extend(output_filter)
    return stub.Predict(request, timeout=30)


def strings(items):
    return tf.make_tensor_proto(items, dtype=tf.string, shape=[len(items)])


RED, YELLOW, BLUE = encode((250, 10, 10)), encode((250, 250, 10)), encode((10, 10, 250))


def assert_good_request_works(server):
    results = client.predict_images(server, [RED, YELLOW])
    assert [r["label_names"] for r in results] == [["red"], ["red", "green"]]


slow = pytest.mark.slow  # these share one server child process (SavedModel write + TF start)


@slow
def test_predict_images_newest_version(server):
    results = client.predict_images(server, [RED, YELLOW, BLUE])
    assert [r["label_names"] for r in results] == [["red"], ["red", "green"], ["blue"]]
    assert [r["label_ids"] for r in results] == [[0], [0, 1], [2]]
    red = results[0]
    assert red["scores"][0] == pytest.approx(250 / 255, abs=1e-3)
    assert red["log_prob"] == pytest.approx(np.log(250 / 255), abs=1e-3)
    assert client.predict_images(server, [RED], version=2)[0]["label_names"] == ["red"]


@slow
def test_response_carries_all_outputs_and_version(stub):
    response = raw_predict(stub, {"images": strings([RED, BLUE])})
    assert set(response.outputs) == OUTPUTS
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(response.outputs["attention"]).shape == (2, 3, 4, 4)
    assert tf.make_ndarray(response.outputs["label_names"])[1].tolist() == [b"blue", b"", b""]
    filtered = raw_predict(stub, {"images": strings([RED])}, output_filter=["num_labels"])
    assert set(filtered.outputs) == {"num_labels"}
    # As TF Serving answers: each value in its typed field, none packed as bytes (which a
    # client in another language, written for TF Serving, would not read).
    for key, proto in response.outputs.items():
        values = {tf.float32: proto.float_val, tf.int32: proto.int_val,
                  tf.string: proto.string_val}[tf.dtypes.as_dtype(proto.dtype)]
        assert not proto.tensor_content and len(values) == tf.make_ndarray(proto).size, key


@slow
def test_predict_features_signature(stub):
    features = np.zeros([2, 4, 4, 3], np.float32)
    features[0, ..., 2] = 0.9
    features[1, ..., :2] = 0.8
    response = raw_predict(stub, {"features": tf.make_tensor_proto(features)}, signature="predict_features")
    results = client.parse_predict_response(response)
    assert [r["label_names"] for r in results] == [["blue"], ["red", "green"]]


@slow
def test_model_status_and_metadata(server, stub):
    assert client.get_model_status(server) == [
        {"version": 2, "state": "AVAILABLE", "error_code": 0, "error_message": ""}]
    version, defs = client.get_model_metadata(server)
    assert version == 2
    assert set(defs) == {"serving_default", "predict_features"}
    images = defs["serving_default"].inputs["images"]
    assert images.dtype == tf.string.as_datatype_enum
    assert [d.size for d in images.tensor_shape.dim] == [-1]
    assert set(defs["serving_default"].outputs) == OUTPUTS
    assert set(defs["predict_features"].outputs) == OUTPUTS
    assert [d.size for d in defs["predict_features"].inputs["features"].tensor_shape.dim] == [-1, 4, 4, 3]
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "ofrnn"
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelMetadata(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata_field" in err.value.details()


def big_png():
    return encode((250, 10, 10), size=(1200, 1000))  # 1.2 Mpx, a few kB


def bomb_jpeg():
    return b"\xff\xd8\xff\xc0\x00\x11\x08" + struct.pack(">HH", 60_000, 60_000) + b"\x03" + b"\x00" * 9


def growing_gif():
    """An 8x8 first frame, then a 1200x1000 one: within the limit by its first frame only."""
    def blocks_start(gif):  # after the header and the global colour table
        return 13 + (6 << (gif[10] & 7) if gif[10] & 0x80 else 0)
    first, later = encode((250, 10, 10), fmt="GIF"), encode((10, 10, 250), (1200, 1000), "GIF")
    return first[:-1] + later[blocks_start(later):]


def shape_only(dtype, shape):
    proto = tf.make_tensor_proto(np.zeros([0], dtype.as_numpy_dtype if dtype != tf.string else object),
                                 dtype=dtype)
    proto.tensor_shape.Clear()
    for d in shape:
        proto.tensor_shape.dim.add(size=d)
    return proto


def with_values(proto, values):
    proto.float_val.extend(values)
    return proto


def with_content(proto, content: bytes):
    proto.tensor_content = content
    return proto


BAD_REQUESTS = {
    # name: (inputs, signature, model, version, code, message fragments)
    "corrupt bytes": ({"images": strings([RED, RED[:len(RED) // 2], BLUE])}, None, None, None,
                      "INVALID_ARGUMENT", ["images[1]: image cannot be decoded", "PNG"]),
    "random bytes": ({"images": strings([RED, BLUE, bytes(range(7, 40))])}, None, None, None,
                     "INVALID_ARGUMENT", ["images[2]: not a JPEG/PNG/GIF/BMP image"]),
    "empty string": ({"images": strings([RED, b""])}, None, None, None,
                     "INVALID_ARGUMENT", ["images[1]: empty (no image bytes)"]),
    "empty batch": ({"images": strings([])}, None, None, None,
                    "INVALID_ARGUMENT", ["input 'images': empty batch"]),
    "text file": ({"images": strings([b"hello, this is a text file\n"])}, None, None, None,
                  "INVALID_ARGUMENT", ["images[0]: not a JPEG/PNG/GIF/BMP image (starts with b'hello, t')"]),
    "above pixel limit": ({"images": strings([RED, big_png()])}, None, None, None,
                          "INVALID_ARGUMENT", ["images[1]: PNG of 1200x1000 = 1200000 pixels",
                                               f"limit of {PIXEL_LIMIT}"]),
    "GIF growing after its first frame": ({"images": strings([RED, growing_gif()])}, None, None,
                                          None, "INVALID_ARGUMENT", [
        "images[1]: GIF whose frames make a canvas of 1200x1000 = 1200000 pixels",
        f"limit of {PIXEL_LIMIT} pixels"]),
    "decompression bomb header": ({"images": strings([bomb_jpeg()])}, None, None, None,
                                  "INVALID_ARGUMENT", ["images[0]: a JPEG of 60000x60000"]),
    "wrong signature": ({"images": strings([RED])}, "nope", None, None,
                        "NOT_FOUND", ["signature 'nope' not found", "predict_features"]),
    "wrong dtype": ({"images": tf.make_tensor_proto(np.zeros([2], np.float32))}, None, None, None,
                    "INVALID_ARGUMENT", ["input 'images': expected dtype string, got float32"]),
    "wrong shape": ({"images": tf.make_tensor_proto([[RED], [BLUE]], dtype=tf.string)}, None, None, None,
                    "INVALID_ARGUMENT", ["input 'images': expected shape [None], got [2, 1]"]),
    "wrong feature shape": ({"features": tf.make_tensor_proto(np.zeros([1, 5, 4, 3], np.float32))},
                            "predict_features", None, None, "INVALID_ARGUMENT",
                            ["input 'features': expected shape [None, 4, 4, 3], got [1, 5, 4, 3]"]),
    "non-finite features": ({"features": tf.make_tensor_proto(
        np.stack([np.zeros([4, 4, 3]), np.full([4, 4, 3], np.nan)]).astype(np.float32))},
        "predict_features", None, None, "INVALID_ARGUMENT", ["features[1]: contains NaN or Inf"]),
    "shape without data": ({"features": shape_only(tf.float32, [2, 2000, 2000, 3])},
                           "predict_features", None, None, "INVALID_ARGUMENT",
                           ["input 'features': shape [2, 2000, 2000, 3] is 96000000 bytes"]),
    "batch without data": ({"features": shape_only(tf.float32, [100_000, 4, 4, 3])},
                           "predict_features", None, None, "INVALID_ARGUMENT",
                           ["a request of 100000 items is above this server's "
                            "--max_batch_size"]),
    "values beyond the shape": ({"features": with_values(shape_only(tf.float32, [1, 4, 4, 3]),
                                                         [0.5] * 49)},
                                "predict_features", None, None, "INVALID_ARGUMENT",
                                ["input 'features': shape [1, 4, 4, 3] has 48 elements but "
                                 "the tensor holds 49 values"]),
    "content not the shape's size": ({"features": with_content(shape_only(
        tf.float32, [1, 4, 4, 3]), bytes(190))}, "predict_features", None, None,
        "INVALID_ARGUMENT", ["input 'features': shape [1, 4, 4, 3] has 48 elements but the "
                             "tensor's content holds 190 bytes, not 192"]),
    "strings fewer than shape": ({"images": shape_only(tf.string, [2, 10**9])}, None, None,
                                 None, "INVALID_ARGUMENT",
                                 ["has 2000000000 elements but the tensor holds 0"]),
    "batch above the limit": ({"images": strings([RED] * (DEFAULT_MAX_BATCH_SIZE + 1))}, None,
                              None, None, "INVALID_ARGUMENT",
                              [f"a request of {DEFAULT_MAX_BATCH_SIZE + 1} items is above this "
                               f"server's --max_batch_size of {DEFAULT_MAX_BATCH_SIZE}"]),
    "missing input key": ({"image": strings([RED])}, None, None, None,
                          "INVALID_ARGUMENT", ["missing input(s) ['images']", "unexpected input(s) ['image']"]),
    "unknown model": ({"images": strings([RED])}, None, "resnet", None,
                      "NOT_FOUND", ["model 'resnet' is not served"]),
    "unknown version": ({"images": strings([RED])}, None, None, 1,
                        "NOT_FOUND", ["no version 1", "available: [2]"]),
    "model failure": ({"features": tf.make_tensor_proto(np.full([1, 4, 4, 3], FAULT_SENTINEL, np.float32))},
                      "predict_features", None, None, "INVALID_ARGUMENT", ["fault sentinel"]),
}


@slow
@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_is_refused_and_server_keeps_serving(case, server, stub):
    inputs, signature, model, version, code, fragments = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as err:
        raw_predict(stub, inputs, signature=signature or "serving_default",
                    model=model or "ofrnn", version=version)
    assert err.value.code().name == code, err.value.details()
    for fragment in fragments:
        assert fragment in err.value.details()
    assert_good_request_works(server)


def garbled_jpeg() -> bytes:
    """A JPEG of noise with 300 bytes of its data scrambled: the decoder refuses it, and
    libjpeg writes lines of its own to stderr each time it is decoded (twice a request)."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    return data[:300] + rng.integers(0, 256, 300, dtype=np.uint8).tobytes() + data[600:]


@slow
def test_the_native_lines_of_damaged_jpegs_sent_in_a_loop_are_rate_limited(
        server, stub, server_log):
    shown_before = len(server_log.read_text(errors="replace").splitlines())
    requests = 60
    for _ in range(requests):
        with pytest.raises(grpc.RpcError) as err:
            raw_predict(stub, {"images": strings([garbled_jpeg()])})
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert_good_request_works(server)
    # The line counting those left out comes once the second after the last one shown ends.
    for _ in range(100):
        lines = server_log.read_text(errors="replace").splitlines()[shown_before:]
        if any("more since the last native line" in line for line in lines):
            break
        time.sleep(0.2)
    # libjpeg alone wrote two lines a request, each time the image was decoded.
    assert any("Corrupt JPEG data" in line for line in lines), lines
    assert len(lines) < requests, "\n".join(lines)
    assert re.search(r"^\(\d+ more since the last native line\)$", "\n".join(lines), re.M), \
        "\n".join(lines)


@slow
def test_a_second_server_on_a_busy_port_fails_to_bind(model_base, server):
    # gRPC's default port sharing would let both listen and split the requests.
    from ofrnn_tf.serving.local_server import serve

    host, port = server.rsplit(":", 1)
    with pytest.raises(OSError, match=f"cannot bind {re.escape(server)}: Address already in use"):
        serve(model_base, host=host, port=int(port), warmup=False)
    # A name, which may stand for 127.0.0.1 and ::1: gRPC starts on whichever is free.
    with pytest.raises(OSError, match=f"cannot bind localhost:{port}: Address already in use"):
        serve(model_base, host="localhost", port=int(port), warmup=False)
    # Refused before the model loads: a base path with no model fails the same way.
    with pytest.raises(OSError, match="Address already in use"):
        serve("/nonexistent-model-base", host=host, port=int(port))
    assert_good_request_works(server)


@slow
def test_rpcs_not_served_are_refused_by_name(server, stub):
    calls = {"Classify": (stub.Classify, classification_pb2.ClassificationRequest()),
             "Regress": (stub.Regress, regression_pb2.RegressionRequest()),
             "MultiInference": (stub.MultiInference, inference_pb2.MultiInferenceRequest())}
    model_stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(server))
    calls["HandleReloadConfigRequest"] = (model_stub.HandleReloadConfigRequest,
                                          model_management_pb2.ReloadConfigRequest())
    for method, (call, request) in calls.items():
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert err.value.details().startswith(f"{method} is not served here: this server "
                                              f"answers Predict, GetModelMetadata")
    assert_good_request_works(server)


@slow
def test_every_output_filter_runs_the_one_set_of_fetches(model_base):
    """Each set of fetches a session is given sets its graph up anew; the server fetches
    all outputs and answers with those the filter names."""
    from ofrnn_tf.serving.local_server import ModelServer, Servable

    servable = Servable.load(model_base, "ofrnn")
    fetched = []
    run = servable.run
    servable.run = lambda name, inputs, keys, timeout: fetched.append(tuple(keys)) or run(
        name, inputs, keys, timeout)
    service = ModelServer(servable)
    for output_filter in ([], ["num_labels"], ["labels", "scores"]):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "ofrnn"
        request.inputs["images"].CopyFrom(strings([RED]))
        request.output_filter.extend(output_filter)
        response = service.predict(request)
        assert set(response.outputs) == set(output_filter or OUTPUTS)
    assert fetched == [tuple(sorted(OUTPUTS))] * 3


class _Context:
    """The part of a grpc.ServicerContext the server reads of a call."""

    def __init__(self, remaining, active=True):
        self.remaining, self.active = remaining, active

    def time_remaining(self):
        return self.remaining

    def is_active(self):
        return self.active


@slow
def test_a_request_runs_within_its_clients_deadline(model_base):
    from ofrnn_tf.serving.local_server import ModelServer, RequestError, Servable

    service = ModelServer(Servable.load(model_base, "ofrnn"))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ofrnn"
    request.inputs["images"].CopyFrom(strings([RED]))
    for gone in (_Context(-0.1), _Context(5.0, active=False)):
        with pytest.raises(RequestError, match="deadline passed before the model ran") as err:
            service.predict(request, context=gone)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    timeouts = []
    real_run = service.servable.run

    def run(*args):
        timeouts.append(args[3])
        return real_run(*args)

    service.servable.run = run
    # grpc gives a call without a deadline about 2**63 ns to go, not None
    for context in (_Context(2.5), _Context(None), _Context(9.223372036854776e9)):
        assert service.predict(request, context=context).outputs["label_names"]
    assert timeouts[0] in range(2400, 2501) and timeouts[1:] == [None, None]

    def too_slow(*args):
        raise tf.errors.DeadlineExceededError(None, None, "Timed out waiting for notification")

    service.servable.run = too_slow
    with pytest.raises(RequestError, match=r"ran past the client's deadline \(\d+ ms left") as err:
        service.predict(request, context=_Context(1.0))
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


@slow
def test_a_request_without_a_deadline_is_served(server, stub):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ofrnn"
    request.inputs["images"].CopyFrom(strings([RED]))
    assert stub.Predict(request).outputs["label_names"]  # no timeout given
    # The client's inf is no deadline (gRPC's own would overflow and fail the call at once).
    assert client.predict_images(server, [RED], timeout=float("inf"))[0]["label_names"] == [
        "red"]
    for timeout in (1e10, float("nan"), 0):  # refused before a call that would fail at once
        with pytest.raises(ValueError, match=r"timeout must be above 0 and at most 1e\+08 "
                                             r"seconds, or inf for no limit; got "):
            client.predict_images(server, [RED], timeout=timeout)


@slow
def test_message_above_limit_is_refused(server, stub):
    blob = RED + b"\x00" * (MESSAGE_LIMIT + 1024)
    with pytest.raises(grpc.RpcError) as err:
        raw_predict(stub, {"images": strings([blob])})
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_good_request_works(server)


@slow
def test_concurrent_requests_agree(server):
    batches = [[RED], [YELLOW, BLUE], [BLUE, RED, YELLOW], [RED, RED, BLUE, YELLOW]]
    expected = {"red": ["red"], "yellow": ["red", "green"], "blue": ["blue"]}
    names = {RED: "red", YELLOW: "yellow", BLUE: "blue"}
    failures, done = [], []

    def worker(seed):
        with client.make_channel(server) as channel:
            for i in range(10):
                batch = batches[(seed + i) % len(batches)]
                try:
                    results = client.predict_images(server, batch, channel=channel)
                    got = [r["label_names"] for r in results]
                    want = [expected[names[img]] for img in batch]
                    if got != want:
                        failures.append((seed, i, got, want))
                    done.append(1)
                except grpc.RpcError as e:
                    failures.append((seed, i, e.code(), e.details()))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures
    assert len(done) == 40


@slow
def test_client_cli(server, model_base, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "red.png").write_bytes(RED)
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image either")
    (tmp_path / "yellow.png").write_bytes(YELLOW)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "ofrnn_tf.cli.client", f"--server={server}",
               "--model_name=ofrnn", "--batch_size=2"]
    run = subprocess.run(command + [str(folder), str(tmp_path / "yellow.png")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    results = [json.loads(line) for line in run.stdout.strip().splitlines()]
    # Every input accounted for, in order: the folder sorted, then the file.
    assert [r["image"] for r in results] == [str(folder / n) for n in
                                             ("broken.jpg", "notes.txt", "red.png")] + [
                                                 str(tmp_path / "yellow.png")]
    assert "refused by the server" in results[0]["error"]
    assert "skipped by its extension (.txt)" in results[1]["error"]
    assert results[2]["labels"] == ["red"] and results[2]["scores"] == [pytest.approx(0.98, abs=1e-3)]
    assert results[3]["labels"] == ["red", "green"] and results[3]["log_prob"] < 0
    # The version that answered: under TF Serving a run can span two versions.
    served = find_latest_version(model_base)[0]
    assert results[2]["model_version"] == results[3]["model_version"] == served
    assert "2 image(s) labelled, 2 failed or skipped" in run.stderr

    # --files_from=-: the arguments, then the files listed on standard input; --timeout=inf
    # is no deadline (gRPC's own would overflow and fail the call at once).
    # --all_scores: every class's score by class id, whatever τ chose.
    listed = subprocess.run(command + ["--files_from=-", "--timeout=inf", "--all_scores",
                                       str(tmp_path / "yellow.png")],
                            input=f"{folder / 'red.png'}\r\n\n{folder / 'notes.txt'}\n",
                            capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [line["image"] for line in lines] == [
        str(tmp_path / "yellow.png"), str(folder / "red.png"), str(folder / "notes.txt")]
    for line, without in zip(lines, results[3:1:-1]):
        assert len(line["all_scores"]) > len(line["label_ids"])
        assert [line["all_scores"][c] for c in line["label_ids"]] == line["scores"]
        assert {**line, "all_scores": None} == {**without, "all_scores": None}
    assert "all_scores" not in results[2]

    # A refusal that names no image stops the command, naming the server's answer.
    refused = subprocess.run(command + ["--model_name=missing", str(tmp_path / "yellow.png")],
                             capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 1 and not refused.stdout
    assert re.search(r"\[client\] stopped: \S+ answered NOT_FOUND: .*missing", refused.stderr), \
        refused.stderr


def test_refused_requests_are_logged_at_most_once_a_second_with_a_count(monkeypatch):
    lines, now = [], [0.0]
    monkeypatch.setattr(local_server.logging, "warning", lambda fmt, *args: lines.append(
        fmt % args))
    log = local_server.RefusalLog(clock=lambda: now[0])
    invalid, missing, failed = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                grpc.StatusCode.INTERNAL)
    for t, code, text in [(0.0, invalid, "a"), (0.1, invalid, "b"), (0.2, missing, "c"),
                          (0.3, failed, "d"), (0.4, failed, "e"), (0.9, invalid, "f"),
                          (1.0, invalid, "g"), (1.5, invalid, "h"), (5.0, invalid, "i")]:
        now[0] = t
        log.note(local_server.RequestError(code, text))
    # Each client-caused status on its own budget; the model failing is always said.
    assert lines == ["INVALID_ARGUMENT: a", "NOT_FOUND: c", "INTERNAL: d", "INTERNAL: e",
                     "INVALID_ARGUMENT: g (2 more since the last INVALID_ARGUMENT line)",
                     "INVALID_ARGUMENT: i (1 more since the last INVALID_ARGUMENT line)"]
    # What no line has counted yet is said when the server stops, once; the requests
    # its stop cancels then get a line each.
    for t, code in [(5.1, invalid), (5.2, invalid), (5.3, missing), (5.4, missing)]:
        now[0] = t
        log.note(local_server.RequestError(code, "x"))
    del lines[:]
    log.stop_limiting()
    log.stop_limiting()
    for _ in range(2):
        log.note(local_server.RequestError(grpc.StatusCode.CANCELLED, "stopping"))
    assert lines == ["INVALID_ARGUMENT: 2 more since the last INVALID_ARGUMENT line",
                     "NOT_FOUND: 1 more since the last NOT_FOUND line",
                     "CANCELLED: stopping", "CANCELLED: stopping"]


def refusals_of_versions(base: Path, on_disk: tuple[str, ...], asked: tuple[int, ...]
                         ) -> dict[int, str]:
    """What a server of version 5 under `base`, where the versions `on_disk` are, answers
    a request for each version `asked` (all refused with NOT_FOUND)."""
    from types import SimpleNamespace

    from ofrnn_tf.serving.local_server import ModelServer, RequestError

    for version in on_disk:
        (base / version).mkdir()
    service = ModelServer(SimpleNamespace(name="ofrnn", version=5, path=str(base / "5"),
                                          max_image_pixels=None))
    spec = predict_pb2.PredictRequest().model_spec
    spec.name = "ofrnn"
    said = {}
    for version in asked:
        spec.version.value = version
        with pytest.raises(RequestError) as refused:
            service._check_spec(spec)
        assert refused.value.code == grpc.StatusCode.NOT_FOUND
        said[version] = str(refused.value)
    service.workers.shutdown()
    return said


def test_a_version_on_disk_that_is_not_served_is_said_why(tmp_path):
    said = refusals_of_versions(tmp_path, ("3", "5", "8"), (8, 3, 4))
    assert said[8].startswith("model 'ofrnn' has no version 8 (available: [5]); version 8 is in ")
    assert said[8].endswith("exported after this server started, which serves the version that "
                            "was newest then: restart it to serve 8")
    assert said[3].endswith("but this server serves only the newest version, as TF Serving "
                            "does by default")
    assert said[4] == "model 'ofrnn' has no version 4 (available: [5])"


def test_a_version_rolled_back_to_is_said_to_need_a_restart(tmp_path):
    # The served version 5 was removed from disk (a rollback): 3 is the newest there now,
    # which TF Serving would serve; 2 is not served by either.
    said = refusals_of_versions(tmp_path, ("2", "3"), (3, 2))
    assert said[3] == (f"model 'ofrnn' has no version 3 (available: [5]); version 3 is the "
                       f"newest in {tmp_path} since version 5, which this server loaded when "
                       f"it started, was removed from it (TF Serving would serve 3 now): "
                       f"restart it to serve 3")
    assert said[2].endswith("but this server serves only the newest version, as TF Serving "
                            "does by default")
