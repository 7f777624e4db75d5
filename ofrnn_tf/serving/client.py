"""gRPC client for a served order-free RNN: encoded images in, label names and scores out.

Built only on the standard ``tensorflow-serving-api`` protos, so it works the same
against ``tensorflow_model_server`` (Docker ``tensorflow/serving``) and against
``ofrnn_tf.serving.local_server`` (``ofrnn-serve``). The command line over it is
``ofrnn-client`` (``ofrnn_tf/cli/client.py``). It imports TensorFlow only to decode an
image a server refused (its import would take nearly all of a one-image call's time); the
protos load without it (`ofrnn_tf.serving.protos`).

Python::

    from ofrnn_tf.serving.client import predict_files, predict_images
    results = predict_images("127.0.0.1:8500", [open("cat.jpg", "rb").read()])
    results[0]["label_names"], results[0]["scores"]
    for result in predict_files("127.0.0.1:8500", ["cat.jpg", "broken.jpg"]):
        print(result)   # {"image": "cat.jpg", "labels": [...], ...}, then {"image", "error"}
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import time
import urllib.parse
from typing import Iterator, Sequence

import grpc
import numpy as np

from ofrnn_tf.features.image_headers import read_image_header
from ofrnn_tf.features.pixel_limit import DEFAULT_MAX_IMAGE_PIXELS
from ofrnn_tf.input_files import read_input_file
from ofrnn_tf.serving.protos import (
    float_tensor, get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
    predict_pb2, prediction_service_pb2_grpc, string_tensor, tensor_array)
from ofrnn_tf.serving.server_process import (
    DEFAULT_MODEL_NAME, DEFAULT_WAIT_FOR_SERVER_S, MAX_TIMEOUT_S, servable_version)
from ofrnn_tf.status import say
from ofrnn_tf.tf_errors import reason_text

DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024 * 1024
# `predict_files` splits a batch whose files add up to more than this into several
# requests: well under the 64 MiB gRPC limit of `ofrnn-serve` (TF Serving's is 2 GiB).
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
# `attention` [N, T_max, H, W] is not needed to name labels; asking only for these
# keeps responses small.
PREDICT_OUTPUTS = ("labels", "label_names", "num_labels", "scores", "log_prob")
# Waits between attempts to reach a server that cannot be reached, the last one repeated,
# within the caller's `wait_for_server` (`DEFAULT_WAIT_FOR_SERVER_S`).
UNREACHABLE_RETRY_SECONDS = (0.5, 1.0, 2.0, 4.0)
# The longest wait of a channel between attempts to connect: gRPC's own grows to 120 s, so a
# server back after a minute would be found up to two minutes late.
MAX_RECONNECT_BACKOFF_MS = 2000
# The variables gRPC takes an HTTP proxy from, the first one set winning.
PROXY_VARIABLES = ("grpc_proxy", "https_proxy", "http_proxy")


def make_channel(target: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.Channel:
    """An insecure channel to ``host:port`` with raised message size limits, which tries to
    connect again at least every `MAX_RECONNECT_BACKOFF_MS` while the server is away. A
    server on this machine is reached directly, whatever proxy the environment names."""
    options = [
        ("grpc.max_send_message_length", int(max_message_bytes)),
        ("grpc.max_receive_message_length", int(max_message_bytes)),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]
    if _loopback(target):
        # gRPC sends every call through a proxy named in `PROXY_VARIABLES` but to the hosts
        # `no_proxy` lists, which seldom holds 127.0.0.1: a host that reaches out through
        # a proxy would send the calls to its own server there, and they would fail.
        options.append(("grpc.enable_http_proxy", 0))
    return grpc.insecure_channel(target, options=options)


def _host(target: str) -> str:
    """The host of ``host:port`` or ``[IPv6 address]:port``, in lower case."""
    return target.rpartition(":")[0].strip("[]").lower()


def _loopback(target: str) -> bool:
    """Whether ``host:port`` names this machine's loopback (localhost, 127.0.0.0/8, ::1)."""
    host = _host(target)
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def proxy_note(target: str) -> str:
    """The proxy gRPC sends a call to `target` through, as a clause for a message that says
    the server could not be reached (empty where none): the first of `PROXY_VARIABLES` that
    is set (set empty: none), unless the target is loopback or ``no_grpc_proxy`` (else
    ``no_proxy``) lists its host, as gRPC decides. Named without its user and password."""
    if _loopback(target):
        return ""
    name = next((name for name in PROXY_VARIABLES if name in os.environ), None)
    if name is None or not os.environ[name] or _no_proxy_for(target):
        return ""
    proxy = urllib.parse.urlsplit(os.environ[name] if "://" in os.environ[name]
                                  else "http://" + os.environ[name])
    shown = f"{proxy.hostname}:{proxy.port}" if proxy.port else (proxy.hostname or "?")
    return (f"; the call went through the proxy {shown} of {name} (a server reached "
            f"directly: list its host in no_grpc_proxy)")


def _no_proxy_for(target: str) -> bool:
    """Whether ``no_grpc_proxy`` (else ``no_proxy``) exempts `target`'s host from the proxy:
    ``*``, the host itself, or a domain it ends with, as gRPC matches them."""
    listed = os.environ.get("no_grpc_proxy", os.environ.get("no_proxy", ""))
    host = _host(target)
    for entry in (entry.strip().lower().lstrip(".") for entry in listed.split(",")):
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return True
    return False


def _model_spec(spec, model_name: str, signature_name: str | None = None, version: int | None = None) -> None:
    spec.name = model_name
    if signature_name is not None:
        spec.signature_name = signature_name
    if version is not None:
        spec.version.value = servable_version(version)


def _call(target: str, channel: grpc.Channel | None, fn):
    if channel is not None:
        return fn(channel)
    with make_channel(target) as own:
        return fn(own)


def parse_predict_response(response: predict_pb2.PredictResponse, all_scores: bool = False
                           ) -> list[dict]:
    """Per image: ``label_ids``, ``label_names``, ``scores`` (of those labels, in
    decoding order), ``log_prob`` (of the decoded label path) and ``model_version``, the
    version that answered (None where the response does not say): TF Serving moves to
    a new version as it appears, and versions may hold other label maps. With
    `all_scores`, ``all_scores`` too: every class's score, by class id (a ``label_ids``
    entry is a place in it; the names are in the export's
    ``assets.extra/label_map.json``), to rank images by a class whatever τ chose."""
    out = {key: tensor_array(response.outputs[key]) for key in PREDICT_OUTPUTS}
    version = (int(response.model_spec.version.value)
               if response.model_spec.HasField("version") else None)
    results = []
    for i in range(out["labels"].shape[0]):
        n = int(out["num_labels"][i])
        ids = [int(c) for c in out["labels"][i, :n]]
        results.append({
            "label_ids": ids,
            "label_names": [s.decode("utf-8") for s in out["label_names"][i, :n]],
            "scores": [float(out["scores"][i, c]) for c in ids],
            "log_prob": float(out["log_prob"][i]),
            "model_version": version,
            **({"all_scores": [float(s) for s in out["scores"][i]]} if all_scores else {}),
        })
    return results


THRESHOLD_SIGNATURE = "predict_with_threshold"
# Waits before sending again alone an image the server refused that passes every check
# here: under TF Serving's --enable_batching the refusal may be a merged request's.
ALONE_RETRY_SECONDS = (0.2, 0.5)
# Waits before a request a busy server turned away (`_busy`) is sent again; past them the
# refusal stands.
BUSY_RETRY_SECONDS = (0.25, 0.5, 1.0, 2.0, 4.0)


def predict_images(target: str, images: Sequence[bytes], *, model_name: str = DEFAULT_MODEL_NAME,
                   signature_name: str | None = None, version: int | None = None,
                   threshold: float | Sequence[float] | None = None, timeout: float = 30.0,
                   channel: grpc.Channel | None = None, all_scores: bool = False,
                   wait_for_server: float = DEFAULT_WAIT_FOR_SERVER_S) -> list[dict]:
    """Classifies encoded JPEG/PNG/GIF/BMP images in one Predict request.

    Args:
        target: ``host:port`` of the gRPC server (ignored when ``channel`` is given).
        images: encoded image bytes, one per image; all go in one batch.
        model_name, signature_name, version: the ``ModelSpec`` (version None: newest;
            signature None: ``serving_default``, or ``predict_with_threshold`` when a
            threshold is given).
        threshold: decode with this τ in [0, 1] instead of the calibrated one: lower
            gives more labels per image (recall), higher fewer (precision). One value
            for every image, or a sequence of one per image (the signature takes
            ``threshold`` float32 [N]).
        timeout: seconds before the call fails with DEADLINE_EXCEEDED (None or inf: no
            limit).
        channel: an open channel to reuse (e.g. from ``make_channel``); by default a
            channel is opened and closed for this call.
        all_scores: add every class's score, by class id (``parse_predict_response``).
        wait_for_server: seconds to go on trying a server that cannot be reached
            (`unreachable`: down, restarting, still loading its model), after a line on
            stderr that says so (0: fail at once; inf: no limit).

    Returns:
        One dict per image, see ``parse_predict_response``.

    Raises:
        grpc.RpcError: the server refused the request, or could not be reached within
            `wait_for_server`; ``.code()`` and ``.details()`` say why (e.g.
            INVALID_ARGUMENT "images[2]: not a JPEG/PNG/GIF/BMP image ...").
    """
    images = _listed(images, "images")
    _check_wait(wait_for_server)
    if not images:
        return []
    request = predict_request(images, model_name=model_name, signature_name=signature_name,
                              version=version, threshold=threshold)

    def run(ch):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        response = _reaching(target, wait_for_server,
                             lambda: stub.Predict(request, timeout=_deadline(timeout)))
        return parse_predict_response(response, all_scores)

    return _call(target, channel, run)


def unreachable(error: grpc.RpcError) -> bool:
    """Whether a call failed because the server could not be reached or went away during
    it (UNAVAILABLE: connection refused, the connection lost, a server stopping), which
    waiting may mend, rather than because a server answered (a busy one's UNAVAILABLE,
    `_busy`, is an answer; so is one in HTTP/1, `not_grpc`)."""
    return (error.code() == grpc.StatusCode.UNAVAILABLE and not _busy(error)
            and not not_grpc(error))


# How gRPC names a peer that answered in HTTP/1 (its parser's words, its channel's).
_HTTP1_ANSWER = ("Failed parsing HTTP/2", "http1.x server")


def not_grpc(error: grpc.RpcError) -> bool:
    """Whether the server answered in HTTP/1 — a REST port (TF Serving's 8501) or a web
    server, not a gRPC server: waiting does not mend that."""
    details = error.details() or ""
    return (error.code() == grpc.StatusCode.UNAVAILABLE
            and any(words in details for words in _HTTP1_ANSWER))


def _check_wait(wait_for_server: float) -> None:
    """ValueError for a `wait_for_server` that is no number of seconds (negative, NaN)."""
    if not wait_for_server >= 0:
        raise ValueError(f"wait_for_server must be a number of seconds, at least 0 (0: fail at "
                         f"once; inf: no limit), got {wait_for_server!r}")


def _reaching(target: str, wait_for_server: float, call):
    """`call()`, made again while the server cannot be reached (`unreachable`), after the
    waits of `UNREACHABLE_RETRY_SECONDS`, up to `wait_for_server` seconds after the first
    failure (the last attempt at its end); a line on stderr says when the waiting starts."""
    started, attempts = None, 0
    while True:
        try:
            return call()
        except grpc.RpcError as error:
            if not (unreachable(error) and wait_for_server > 0):
                raise
            now = time.monotonic()
            if started is None:
                started = now
                say(f"[client] {target} could not be reached "
                    f"({reason_text(error.details() or '')}{proxy_note(target)}): trying "
                    f"again for up to {wait_for_server:g} s (--wait_for_server)")
            left = started + wait_for_server - now
            if left <= 0:
                raise
            time.sleep(min(left, UNREACHABLE_RETRY_SECONDS[
                min(attempts, len(UNREACHABLE_RETRY_SECONDS) - 1)]))
            attempts += 1


def _listed(items, name: str) -> list:
    """`items` as a list; TypeError for one string or bytes object, which would go out as
    one image (or file) per character."""
    if isinstance(items, (str, bytes, bytearray)):
        raise TypeError(f"{name} must be a sequence, got one {type(items).__name__} object "
                        f"(for one, pass [{name[:-1]}])")
    return list(items)


def _deadline(timeout: float | None) -> float | None:
    """gRPC's `timeout` for ours: None and inf are none; ValueError for one gRPC cannot
    hold (`MAX_TIMEOUT_S`: every call would fail at once), NaN or not above 0."""
    if timeout is None or timeout == math.inf:
        return None
    if not 0 < timeout <= MAX_TIMEOUT_S:
        raise ValueError(f"timeout must be above 0 and at most {MAX_TIMEOUT_S:g} seconds, or "
                         f"inf for no limit; got {timeout!r}")
    return timeout


def predict_request(images: Sequence[bytes], *, model_name: str = DEFAULT_MODEL_NAME,
                    signature_name: str | None = None, version: int | None = None,
                    threshold: float | Sequence[float] | None = None
                    ) -> predict_pb2.PredictRequest:
    """The PredictRequest `predict_images` sends (its arguments as there): the export's
    warm-up file holds such requests, so that the first real ones find their graph set up."""
    images = _listed(images, "images")
    if threshold is not None:
        thresholds = ([float(threshold)] * len(images) if np.ndim(threshold) == 0
                      else [float(t) for t in threshold])
        if len(thresholds) != len(images):
            raise ValueError(f"{len(thresholds)} thresholds for {len(images)} images: give one "
                             "value, or one per image")
    if signature_name is None:
        signature_name = "serving_default" if threshold is None else THRESHOLD_SIGNATURE
    request = predict_pb2.PredictRequest()
    _model_spec(request.model_spec, model_name, signature_name, version)
    request.inputs["images"].CopyFrom(string_tensor(images))
    if threshold is not None:
        request.inputs["threshold"].CopyFrom(float_tensor(thresholds))
    request.output_filter.extend(PREDICT_OUTPUTS)
    return request


def get_model_status(target: str, model_name: str = DEFAULT_MODEL_NAME, *,
                     version: int | None = None, timeout: float = 10.0,
                     channel: grpc.Channel | None = None) -> list[dict]:
    """``ModelService.GetModelStatus``: per version, its ``state`` name and error."""
    request = get_model_status_pb2.GetModelStatusRequest()
    _model_spec(request.model_spec, model_name, version=version)

    def run(ch):
        response = model_service_pb2_grpc.ModelServiceStub(ch).GetModelStatus(
            request, timeout=_deadline(timeout))
        return [{
            "version": int(s.version),
            "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
            "error_code": int(s.status.error_code),
            "error_message": s.status.error_message,
        } for s in response.model_version_status]

    return _call(target, channel, run)


def get_model_metadata(target: str, model_name: str = DEFAULT_MODEL_NAME, *,
                       version: int | None = None, timeout: float = 10.0,
                       channel: grpc.Channel | None = None) -> tuple[int, dict]:
    """``GetModelMetadata``: the served version and its signature_def map
    (signature name -> ``tensorflow.SignatureDef`` proto)."""
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    _model_spec(request.model_spec, model_name, version=version)
    request.metadata_field.append("signature_def")

    def run(ch):
        response = prediction_service_pb2_grpc.PredictionServiceStub(ch).GetModelMetadata(
            request, timeout=_deadline(timeout))
        defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(defs)
        return int(response.model_spec.version.value), dict(defs.signature_def)

    return _call(target, channel, run)


# How the export's input checks name a refused image (ofrnn_tf/features/image_guards/);
# TF Serving and the local server pass the message on as INVALID_ARGUMENT.
_REFUSED_IMAGE = re.compile(r"images\[(\d+)\](:?)\s*")


def _without_index(match: re.Match) -> str:
    """A refusal's ``images[i]`` left out: ``images[i]: why`` becomes ``why``, and the
    exported model's ``images[i] is a GIF ...`` becomes ``the image is a GIF ...``."""
    return "" if match.group(2) else "the image "


def predict_files(target: str, paths: Sequence[str], *, batch_size: int = 32,
                  max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                  model_name: str = DEFAULT_MODEL_NAME, signature_name: str | None = None,
                  version: int | None = None, threshold: float | None = None,
                  timeout: float = 30.0, channel: grpc.Channel | None = None,
                  all_scores: bool = False,
                  wait_for_server: float = DEFAULT_WAIT_FOR_SERVER_S) -> Iterator[dict]:
    """Classifies image files through the server, `batch_size` per Predict request.

    Yields one result per path, in order, as each request returns: ``{"image", "labels"
    (names, decoding order), "label_ids", "scores", "log_prob", "model_version"}``, the
    fields of ``ofrnn-predict``'s lines but its step probabilities (not served), and the
    version that answered (and, with `all_scores`, ``all_scores``: every class's score by
    class id, see ``parse_predict_response``); or ``{"image", "error"}`` for a file that
    cannot be read and for an image the server refuses.

    A batch whose files add up to more than `max_request_bytes` goes in several
    requests (a larger file goes alone); one the server refuses as above its batch limit
    goes in requests of that limit, as every later one does. A refused image costs only
    its own result: the server names it (``images[i]: ...``), it is sent again alone,
    and the rest of its batch goes on without it. Sending it alone confirms the refusal where
    TensorFlow Serving's ``--enable_batching`` merged the request with others (the
    index is then a place in the merged batch, and one bad image fails every request
    merged with it): an image that is served alone keeps its result. Merged requests
    can fail the image alone too, so one that passes every check here is sent alone
    twice more (`ALONE_RETRY_SECONDS`) before its refusal is recorded, with a note that
    it may be another request's. A refusal naming a place past the request's end (only a
    merged batch has it) halves the request, down to images alone. A one-image request
    refused without an index (TensorFlow's own decoder message) is the image's when the
    image does not decode here either. A request a busy server turns away (`_busy`) is
    sent again after each wait of `BUSY_RETRY_SECONDS`, and one to a server that cannot be
    reached for up to `wait_for_server` seconds (`predict_images`).

    Raises:
        grpc.RpcError: a refusal that names no image (the model unknown, the threshold out
            of range), or a server not reached within `wait_for_server`; raised once the
            results the server answered before it, up to the first path without one, are
            yielded.
    """
    if batch_size < 1:  # checked here, not when the first result is asked for
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    _check_wait(wait_for_server)
    paths = _listed(paths, "paths")
    most_images: list[int] = []  # the server's batch limit, once it refused a request over it

    def batches(ch):
        for start in range(0, len(paths), batch_size):
            yield from _predict_batch(list(paths[start:start + batch_size]), ch)

    def _predict_batch(batch: list[str], ch) -> Iterator[dict]:
        results: list[dict | None] = [None] * len(batch)
        yielded = 0

        def finished() -> Iterator[dict]:
            """The results in from the first not yet yielded, up to the first missing."""
            nonlocal yielded
            while yielded < len(batch) and results[yielded] is not None:
                yielded += 1
                yield results[yielded - 1]

        pending: list[tuple[int, bytes]] = []  # (place in the batch, encoded image)
        for k, path in enumerate(batch):
            try:
                pending.append((k, read_input_file(path)))
            except OSError as error:
                results[k] = {"image": batch[k], "error": f"{path}: {error.strerror or error}"}
        try:
            for request in _split_by_bytes(pending, max_request_bytes):
                _serve(request, batch, results, ch)
                yield from finished()
        except grpc.RpcError:
            # What the server answered before stands: the requests go out in order.
            yield from finished()
            raise
        yield from finished()

    def _serve(request: list[tuple[int, bytes]], batch: list[str], results: list, ch) -> None:
        if most_images and len(request) > most_images[0]:
            for start in range(0, len(request), most_images[0]):
                _serve(request[start:start + most_images[0]], batch, results, ch)
            return
        retries = busy = 0
        while request:
            try:
                served = predict_images(
                    target, [data for _, data in request], model_name=model_name,
                    signature_name=signature_name, version=version, threshold=threshold,
                    timeout=timeout, channel=ch, all_scores=all_scores,
                    wait_for_server=wait_for_server)
            except grpc.RpcError as error:
                if _busy(error) and busy < len(BUSY_RETRY_SECONDS):
                    time.sleep(BUSY_RETRY_SECONDS[busy])
                    busy += 1
                    continue
                limit = _batch_limit(error)
                if limit is not None and len(request) > 1:
                    # Above the server's batch limit (`--max_batch_size`, or TF Serving's
                    # batching.config): every later request keeps to it.
                    most_images[:] = [max(1, limit if limit < len(request)
                                          else len(request) // 2)]
                    _serve(request, batch, results, ch)
                    return
                if _too_large(error):
                    # Above the server's message limit (which may be below
                    # max_request_bytes): halve the request; one image alone is refused.
                    if len(request) > 1:
                        half = len(request) // 2
                        _serve(request[:half], batch, results, ch)
                        _serve(request[half:], batch, results, ch)
                        return
                    k, data = request[0]
                    results[k] = {"image": batch[k], "error": (
                        f"{batch[k]}: refused by the server: a request of this image alone "
                        f"({len(data)} bytes) is above its message limit: "
                        f"{reason_text(error.details() or '')}")}
                    return
                refused = _refused_index(error)
                if refused is None and len(request) == 1 and _undecodable(error, request[0][1]):
                    refused = 0
                if refused is None:
                    raise
                if refused >= len(request):
                    # A place past this request's end: in a batch the server merged from
                    # several requests, where the image may be ours or another's. Halve
                    # the request; an image alone is retried as any named image is.
                    if len(request) > 1:
                        half = len(request) // 2
                        _serve(request[:half], batch, results, ch)
                        _serve(request[half:], batch, results, ch)
                        return
                    refused = 0
                if len(request) > 1:
                    _serve([request.pop(refused)], batch, results, ch)
                    continue
                k, data = request[0]
                fine_here = _fine_here(data, _pixel_limit(error))
                if fine_here and retries < len(ALONE_RETRY_SECONDS):
                    # Merged by the server's batching with another request's bad image?
                    time.sleep(ALONE_RETRY_SECONDS[retries])
                    retries += 1
                    continue
                # The index is the request's, not the caller's: the path names the file.
                reason = _REFUSED_IMAGE.sub(_without_index, reason_text(error.details() or ""),
                                            count=1)
                doubt = (" (the image decodes here: the refusal may be another request's, "
                         "merged with it by the server's batching, or the served model was "
                         "exported by another version of ofrnn_tf, whose image checks differ: "
                         "export it again)") if fine_here else ""
                results[k] = {"image": batch[k],
                              "error": f"{batch[k]}: refused by the server: {reason}{doubt}"}
                return
            for (k, _), result in zip(request, served):
                results[k] = {"image": batch[k], "labels": result.pop("label_names"),
                              **result}
            return

    def stream():
        if channel is not None:
            yield from batches(channel)
        else:
            with make_channel(target) as own:  # open while the results are read
                yield from batches(own)

    return stream()


def _split_by_bytes(items: list[tuple[int, bytes]], max_bytes: int) -> list[list[tuple[int, bytes]]]:
    """Consecutive runs of `items` holding at most `max_bytes` of image data each (an
    item larger than that alone)."""
    runs: list[list[tuple[int, bytes]]] = []
    size = 0
    for item in items:
        if not runs or size + len(item[1]) > max_bytes:
            runs.append([])
            size = 0
        runs[-1].append(item)
        size += len(item[1])
    return runs


def _refused_index(error: grpc.RpcError) -> int | None:
    """The batch index of the image an INVALID_ARGUMENT refusal names, if it names one;
    it may lie past the request's end (a place in a batch merged from several requests)."""
    if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
        return None
    match = _REFUSED_IMAGE.search(error.details() or "")
    return None if match is None else int(match.group(1))


# How a refusal of a request above the server's batch limit says it: ofrnn-serve's, and
# TF Serving's batch scheduler (under --enable_batching).
_BATCH_LIMIT = re.compile(r"above this server's --max_batch_size of (\d+)"
                          r"|is larger than maximum (?:input )?batch size(?: of)? (\d+)")


def _batch_limit(error: grpc.RpcError) -> int | None:
    """The batch limit a refusal names (None for any other refusal)."""
    if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
        return None
    match = _BATCH_LIMIT.search(error.details() or "")
    return None if match is None else int(match.group(1) or match.group(2))


def _too_large(error: grpc.RpcError) -> bool:
    """Whether a refusal is gRPC's for a message above the server's limit (not another
    RESOURCE_EXHAUSTED, such as a server at its limit of concurrent requests)."""
    return (error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            and "larger than max" in (error.details() or ""))


def _busy(error: grpc.RpcError) -> bool:
    """Whether a refusal is a busy server's, worth sending again after a wait: gRPC's at
    the server's limit of concurrent requests (``ofrnn-serve --max_concurrent_rpcs``), or
    TF Serving's with its batching queue full."""
    details = error.details() or ""
    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "Concurrent RPC limit exceeded" in details
    return error.code() == grpc.StatusCode.UNAVAILABLE and "queue" in details and "full" in details


# How a refusal names the pixel limit it applied (the export's checks, ofrnn-serve's).
_PIXEL_LIMIT = re.compile(r"above the limit of (\d+) pixels")


def _pixel_limit(error: grpc.RpcError) -> int:
    """The pixel limit a refusal names, else the default one."""
    match = _PIXEL_LIMIT.search(error.details() or "")
    return int(match.group(1)) if match else DEFAULT_MAX_IMAGE_PIXELS


def _fine_here(image: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> bool:
    """Whether `image` passes here what the export checks: a readable header, at most
    `max_pixels` as the export counts them (bombs are not decoded), and TensorFlow's decoder."""
    try:
        read_image_header(image, max_pixels)
    except ValueError:
        return False
    return not _tensorflow_refuses(image)


def _undecodable(error: grpc.RpcError, image: bytes) -> bool:
    """Whether an INVALID_ARGUMENT refusal of a request holding only `image` is the
    image's: the export leaves TensorFlow's decoder message, without an index, for one
    image whose file looks complete (docs/serving.md), and TensorFlow here refuses it too."""
    return error.code() == grpc.StatusCode.INVALID_ARGUMENT and _tensorflow_refuses(image)


def _tensorflow_refuses(image: bytes) -> bool:
    """Whether TensorFlow's decoder refuses `image`. TensorFlow is imported here, for the
    few images a server refuses, not with this module: its import takes seconds, and a
    request needs none of it. Where it cannot be imported (no writable temporary folder),
    the decoder is taken to refuse it: the server's refusal then stands as it said it."""
    try:
        from ofrnn_tf.features.images import find_undecodable
    except (ImportError, OSError):
        return True
    return find_undecodable("images", [image]) is not None
