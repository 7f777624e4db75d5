"""A small model server over the TensorFlow Serving gRPC protos.

For development and tests where the ``tensorflow_model_server`` binary is not
available (it ships only in Docker images and Google's apt repository). It serves
the newest integer version under ``--model_base_path`` and implements the parts of
the TF Serving API the client uses, with the same protos, field names and status
codes, so a client written against it works unchanged against TF Serving:

- ``PredictionService.Predict``: one model call per request (the whole batch),
  ``output_filter`` honoured; the response carries ``model_spec`` with the version.
- ``PredictionService.GetModelMetadata``: the ``signature_def`` map of the
  SavedModel, packed into ``Any`` as a ``SignatureDefMap``, as TF Serving does.
- ``ModelService.GetModelStatus``: the served version, ``AVAILABLE``.

Requests are validated before the model runs, so errors name the input and the
offending batch index: unknown model, version or signature (NOT_FOUND); missing,
extra or ill-typed inputs, wrong shapes, empty batches, empty strings, bytes that
are not a JPEG/PNG/GIF/BMP image, images whose header says width*height is above
``--max_image_pixels`` (read from the headers, nothing is decompressed; for a GIF
every frame counts, as in the export's guard), non-finite
floats (INVALID_ARGUMENT). The image-size limit is the export's own (the
``max_image_pixels`` variable of the SavedModel) unless ``--max_image_pixels``
lowers it. Corrupt image data behind a sound header shows when the model's decoder
fails; the images are then decoded one by one to name the index
(INVALID_ARGUMENT). Any other failure inside the model is INTERNAL; either way the
server keeps serving. Each signature runs in the version's session, as TF Serving's
SavedModelBundle runs it, called from many threads at once (TensorFlow's runtime is
thread-safe), as TF Serving runs concurrent requests.

Requests are received on an asyncio event loop (``grpc.aio``) in a thread of its own, and
each runs in one of ``max_workers`` threads once it has arrived whole: a client slow to
send its requests, or that never finishes, holds no thread (and no place under
``max_concurrent_rpcs``), and the others are answered meanwhile.

If the version holds ``assets.extra/tf_serving_warmup_requests``, its Predict
requests are replayed before the port opens, as TF Serving does: until then a client
finds nothing listening (UNAVAILABLE). The port is tried before the model loads, so a
busy one fails at once.

A version is loaded by `ofrnn_tf.serving.servable`, a request checked by
`ofrnn_tf.serving.request_checks`, and the ``grpc.aio`` server run by
`ofrnn_tf.serving.loop_server`; this module answers the calls.

The command over it is ``ofrnn-serve`` (`ofrnn_tf.cli.serve`)::

    ofrnn-serve --model_base_path=exports/ofrnn --port=8500
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import math
import os
import re
import socket
import threading
import time
import weakref
from concurrent import futures
from typing import Callable, Mapping

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from ofrnn_tf.export.warmup import WARMUP_FILE
from ofrnn_tf.features.pixel_limit import DEFAULT_MAX_IMAGE_PIXELS
from ofrnn_tf.features.images import find_undecodable
from ofrnn_tf.serving.server_process import (
    DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MODEL_NAME, PARTIAL_COPY_HINT,
    version_folders)
from ofrnn_tf.serving.loop_server import LoopServer, run_loop
from ofrnn_tf.serving.request_checks import (
    RequestError, check_input, check_items, typed_tensor_proto)
from ofrnn_tf.serving.servable import LOAD_ATTEMPTS, Servable, all_removed
from ofrnn_tf.tf_errors import op_error_text

DEFAULT_SIGNATURE = "serving_default"
_NO_DEADLINE_SECONDS = 10 ** 9  # more time than this left: the client set no deadline
SHUTDOWN_GRACE_SECONDS = 2.0  # on SIGTERM or Ctrl-C, before requests in flight are cancelled
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit as well


class WarmUpUnread(RuntimeError):
    """A version's warm-up file does not read (cut short, or not TFRecords): what a copy
    into the base path still running or cut short leaves, as a missing variables file."""


class RefusalLog:
    """Logs refused requests at WARNING. A status a client's request causes (a bad input,
    an unknown model, a deadline) gets at most one line every `interval` seconds, which
    counts the refusals of that status it did not show: a client that sends bad requests
    in a loop (hundreds a second) must not fill the server's log. Any other status (the
    model failed) is logged every time."""

    RATE_LIMITED = frozenset({
        grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})

    def __init__(self, interval: float = 1.0, clock=time.monotonic):
        self.interval, self.clock = float(interval), clock
        self._lock = threading.Lock()
        self._last: dict[grpc.StatusCode, float] = {}
        self._unshown: dict[grpc.StatusCode, int] = {}
        self._limiting = True

    def note(self, error: RequestError) -> None:
        code, unshown = error.code, 0
        if code in self.RATE_LIMITED and self._limiting:
            with self._lock:
                now = self.clock()
                if now - self._last.get(code, -math.inf) < self.interval:
                    self._unshown[code] = self._unshown.get(code, 0) + 1
                    return
                self._last[code] = now
                unshown = self._unshown.pop(code, 0)
        logging.warning("%s: %s%s", code.name, error.message,
                        f" ({unshown} more since the last {code.name} line)" if unshown else "")

    def stop_limiting(self) -> None:
        """The server stops: logs, per status, the refusals no line has counted yet, and
        every refusal from now on (the requests its stop cancels, a few at most)."""
        with self._lock:
            unshown, self._unshown = self._unshown, {}
            self._limiting = False
        for code, n in unshown.items():
            logging.warning("%s: %d more since the last %s line", code.name, n, code.name)


class _CallState:
    """What `ModelServer.predict` reads of a call from the worker that runs it: the time
    left before its deadline, and whether the call is still open (`active`, cleared when
    the call's coroutine is cancelled)."""

    def __init__(self, context: grpc.aio.ServicerContext):
        self._context, self.active = context, True

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def is_active(self) -> bool:
        return self.active


class ModelServer(prediction_service_pb2_grpc.PredictionServiceServicer,
                  model_service_pb2_grpc.ModelServiceServicer):
    """PredictionService and ModelService for one servable.

    Args:
        servable: the loaded model version.
        max_image_pixels: largest width*height accepted for an encoded image, checked
            here before the model runs. None: the export's own limit (or
            DEFAULT_MAX_IMAGE_PIXELS if it records none); a value can only lower the
            export's, which its graph enforces anyway.
        max_message_bytes: largest request; no input tensor may declare more bytes.
        max_batch_size: most images (or feature maps) in one request: decoding takes
            about 9 MB an image whatever its file size, so a request of a few hundred
            kilobytes could otherwise hold enough tiny images to exhaust memory.
        max_workers: threads that answer requests (TensorFlow's calls block them). The
            gRPC methods are coroutines: a request reaches a thread only once it has
            arrived whole, so a client slow to send one, or that never finishes, holds
            none.
        max_concurrent_rpcs: requests answered or waiting for a thread at once; further
            requests get RESOURCE_EXHAUSTED, as gRPC's own limit words it (None: no
            limit). A request counts from when it has arrived whole, not from when its
            call opened.
    """

    def __init__(self, servable: Servable, max_image_pixels: int | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_workers: int = 16,
                 max_concurrent_rpcs: int | None = None):
        self.servable = servable
        limits = [int(n) for n in (max_image_pixels, servable.max_image_pixels) if n is not None]
        self.max_image_pixels = min(limits, default=DEFAULT_MAX_IMAGE_PIXELS)
        # A limit asked above the export's cannot raise it: said where the limit is logged.
        self.pixel_limit_note = (
            "" if max_image_pixels is None or int(max_image_pixels) <= self.max_image_pixels
            else f", the export's own: --max_image_pixels={int(max_image_pixels)} can only "
                 f"lower it; export with a higher one to raise it")
        self.max_message_bytes = int(max_message_bytes)
        if int(max_batch_size) < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.max_batch_size = int(max_batch_size)
        self.refusals = RefusalLog()
        self.workers = futures.ThreadPoolExecutor(max_workers=max_workers,
                                                  thread_name_prefix="serve")
        self._places = (None if max_concurrent_rpcs is None
                        else threading.BoundedSemaphore(max_concurrent_rpcs))

    # -- helpers ---------------------------------------------------------------

    def _check_spec(self, spec) -> None:
        s = self.servable
        if spec.name != s.name:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"model {spec.name!r} is not served (this server serves {s.name!r})")
        if spec.HasField("version") and spec.version.value != s.version:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"model {s.name!r} has no version {spec.version.value} "
                               f"(available: [{s.version}]){self._exported_since(spec)}")
        if spec.version_label:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"model {s.name!r} has no version label {spec.version_label!r}")

    def _exported_since(self, spec) -> str:
        """Why a version on disk is not served: exported after this server loaded the
        newest one, or the newest left once the served version was removed (a rollback),
        as TF Serving would serve it: unlike TF Serving, this server does not watch its
        base path. An older version is not served, as under TF Serving."""
        base = os.path.dirname(self.servable.path)
        try:
            on_disk = {version for version, _ in version_folders(base)}
        except OSError:
            return ""
        asked = spec.version.value
        if asked not in on_disk:
            return ""
        if asked > self.servable.version:
            return (f"; version {asked} is in {base}, exported after this server started, "
                    f"which serves the version that was newest then: restart it to serve "
                    f"{asked}")
        if asked == max(on_disk):
            return (f"; version {asked} is the newest in {base} since version "
                    f"{self.servable.version}, which this server loaded when it started, was "
                    f"removed from it (TF Serving would serve {asked} now): restart it to "
                    f"serve {asked}")
        return (f"; version {asked} is in {base}, but this server serves only the newest "
                f"version, as TF Serving does by default")

    def predict(self, request: predict_pb2.PredictRequest, check_spec: bool = True,
                context: _CallState | None = None) -> predict_pb2.PredictResponse:
        """Validates and runs one PredictRequest; raises RequestError.

        With the call's `context`, the run gets the time left before the client's
        deadline, as TF Serving's session runs do: a request its client gave up on stops
        holding the CPU that the requests after it are waiting for."""
        s = self.servable
        if check_spec:
            self._check_spec(request.model_spec)
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        if name not in s.signature_defs:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"signature {name!r} not found in model {s.name!r} "
                               f"(available: {sorted(s.signatures)})")
        sig = s.signature_defs[name]
        missing = sorted(set(sig.inputs) - set(request.inputs))
        extra = sorted(set(request.inputs) - set(sig.inputs))
        if missing or extra:
            parts = ([f"missing input(s) {missing}"] if missing else []) + (
                [f"unexpected input(s) {extra}"] if extra else [])
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"signature {name!r}: {'; '.join(parts)}; it takes {sorted(sig.inputs)}")
        unknown = sorted(set(request.output_filter) - set(sig.outputs))
        if unknown:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output_filter names unknown output(s) {unknown}; "
                               f"signature {name!r} has {sorted(sig.outputs)}")
        inputs = {k: check_input(k, sig.inputs[k], request.inputs[k], self.max_message_bytes,
                                  self.max_batch_size)
                  for k in sorted(sig.inputs)}
        sizes = {k: v.shape[0] for k, v in inputs.items() if v.ndim}
        if len(set(sizes.values())) > 1:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"inputs differ in batch size: {sizes}")
        for k, value in inputs.items():
            check_items(k, sig.inputs[k], value, self.max_image_pixels)

        keys = list(request.output_filter or sig.outputs)
        # Every run fetches all outputs: a session sets its graph up for each set of
        # fetches it is given (some 2 s and 8 MB each), and the subsets of six outputs
        # are 63 per signature.
        fetched = sorted(sig.outputs)
        timeout_ms = None
        if context is not None:
            remaining = context.time_remaining()
            if not context.is_active() or (remaining is not None and remaining <= 0):
                raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   "the client's deadline passed before the model ran")
            # A call without a deadline has None left (grpc.aio), or about 2**63 ns (grpc).
            if remaining is not None and remaining < _NO_DEADLINE_SECONDS:
                timeout_ms = max(1, int(remaining * 1000))
        try:
            outputs = s.run(name, inputs, fetched, timeout_ms)
        except tf.errors.DeadlineExceededError:
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"the model ran past the client's deadline "
                               f"({timeout_ms} ms left when it started)") from None
        except tf.errors.CancelledError:  # the session closed under it: the server stops
            raise RequestError(grpc.StatusCode.CANCELLED,
                               "the server is stopping: the model run was cancelled") from None
        except tf.errors.OpError as e:
            raise self._model_error(e, inputs) from None

        response = predict_pb2.PredictResponse()
        response.model_spec.name = s.name
        response.model_spec.version.value = s.version
        response.model_spec.signature_name = name
        for key in keys:
            response.outputs[key].CopyFrom(typed_tensor_proto(outputs[key]))
        return response

    def _model_error(self, error: tf.errors.OpError, inputs: Mapping[str, np.ndarray]) -> RequestError:
        """The status for a failed model run. The model's own guards name the input at
        fault (as under TF Serving, whose status codes pass through); where its message
        names none, the images are decoded one by one here to name it."""
        text = op_error_text(error)
        invalid = isinstance(error, tf.errors.InvalidArgumentError)
        if invalid and re.search(r"\w\[\d+\]", text):
            return RequestError(grpc.StatusCode.INVALID_ARGUMENT, text)
        for key, value in inputs.items():
            if value.dtype == object and value.ndim == 1:
                culprit = find_undecodable(key, value)
                if culprit:
                    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, culprit)
        if invalid:
            return RequestError(grpc.StatusCode.INVALID_ARGUMENT, text)
        s = self.servable
        return RequestError(grpc.StatusCode.INTERNAL, f"model {s.name!r} version {s.version} "
                                                      f"failed: {type(error).__name__}: {text}")

    def _outcome(self, fn, *args):
        """`fn(*args)`, or the RequestError to answer instead (logged); run in a worker."""
        try:
            return fn(*args)
        except RequestError as e:
            error = e
        # The server must outlive any single request. BaseException: a SystemExit from a
        # run (a py_function calling sys.exit) would reach the event loop and end it
        # (signals, KeyboardInterrupt among them, come to the main thread, not here).
        except BaseException as e:
            logging.exception("request failed")
            error = RequestError(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
        self.refusals.note(error)
        return error

    async def _answer(self, context: grpc.aio.ServicerContext, fn, *args):
        """Answers a call whose request has arrived whole with `fn(*args)`, run in one of
        the workers, or aborts it with its RequestError. A call its client leaves while
        it waits for a worker is dropped from the queue."""
        if self._places is not None and not self._places.acquire(blocking=False):
            answer = RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  "Concurrent RPC limit exceeded!")
            self.refusals.note(answer)
        else:
            job = self.workers.submit(self._outcome, fn, *args)
            if self._places is not None:  # its place is given back once it ends
                job.add_done_callback(lambda _: self._places.release())
            answer = await asyncio.wrap_future(job)
        if isinstance(answer, RequestError):
            await context.abort(answer.code, answer.message)
        return answer

    # -- PredictionService -----------------------------------------------------

    async def Predict(self, request, context):
        call = _CallState(context)
        try:
            return await self._answer(context, self.predict, request, True, call)
        except asyncio.CancelledError:  # the client left, or its deadline passed
            call.active = False
            raise

    async def GetModelMetadata(self, request, context):
        return await self._answer(context, self._metadata, request)

    def _metadata(self, request):
        self._check_spec(request.model_spec)
        if not request.metadata_field:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "GetModelMetadataRequest must specify at least one metadata_field")
        unsupported = [f for f in request.metadata_field if f != "signature_def"]
        if unsupported:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"metadata field(s) {unsupported} not supported (supported: ['signature_def'])")
        s = self.servable
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = s.name
        response.model_spec.version.value = s.version
        defs = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in s.signature_defs.items():
            defs.signature_def[key].CopyFrom(sig)
        response.metadata["signature_def"].Pack(defs)
        return response

    async def Classify(self, request, context):
        return await self._answer(context, self._unimplemented, "Classify")

    async def Regress(self, request, context):
        return await self._answer(context, self._unimplemented, "Regress")

    async def MultiInference(self, request, context):
        return await self._answer(context, self._unimplemented, "MultiInference")

    @staticmethod
    def _unimplemented(method: str):
        raise RequestError(grpc.StatusCode.UNIMPLEMENTED,
                           f"{method} is not served here: this server answers Predict, "
                           f"GetModelMetadata and GetModelStatus")

    # -- ModelService ----------------------------------------------------------

    async def GetModelStatus(self, request, context):
        return await self._answer(context, self._status, request)

    async def HandleReloadConfigRequest(self, request, context):
        return await self._answer(context, self._unimplemented, "HandleReloadConfigRequest")

    def _status(self, request):
        self._check_spec(request.model_spec)
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = self.servable.version
        status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response

    # -- warm-up ---------------------------------------------------------------

    def warm_up(self) -> int:
        """Replays the version's warm-up Predict requests; returns how many ran. A request
        above ``--max_batch_size`` is passed over: this server refuses any such request
        unread, so there is nothing to warm up for it (the export writes batches of 8)."""
        path = os.path.join(self.servable.path, WARMUP_FILE)
        if not os.path.isfile(path):
            return 0
        count, records = 0, iter(tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS))
        for i in itertools.count():
            try:
                record = next(records, None)
                if record is None:
                    break
                log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            except (tf.errors.OpError, DecodeError) as e:  # a file cut short or not TFRecords
                text = op_error_text(e) if isinstance(e, tf.errors.OpError) else str(e)
                raise WarmUpUnread(f"{path}: warm-up record {i} does not read: {text}") from None
            if not log.HasField("predict_log"):
                continue  # classify/regress/multi_inference logs: not served here
            request = log.predict_log.request
            if max((t.tensor_shape.dim[0].size for t in request.inputs.values()
                    if t.tensor_shape.dim), default=0) > self.max_batch_size:
                continue
            try:
                self.predict(request, check_spec=False)
            except RequestError as e:
                raise RuntimeError(f"{path}: warm-up record {i} failed: {e.code.name}: {e.message}") from None
            count += 1
        return count


def grpc_address(host: str, port: int) -> str:
    """``host:port`` as gRPC takes it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


# gRPC binds both loopback addresses for "localhost", whatever the hosts file says.
_LOOPBACKS = ((socket.AF_INET, ("127.0.0.1", 0)), (socket.AF_INET6, ("::1", 0, 0, 0)))


def _bind_problem(host: str, port: int) -> str:
    """Why ``host:port`` cannot be served, as plain sockets find it (": Address already
    in use"), or "". gRPC's own error does not say why, and for a name with several
    addresses it starts on those it can bind: a port in use (or not ours to use) on any
    of them is refused, an address this machine lacks (IPv6 off) is left out, as gRPC
    leaves it out, unless every address is."""
    name = host.strip("[]")
    try:
        found = [(family, address) for family, _, _, _, address
                 in socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM)]
    except OSError as e:  # a name that does not resolve
        return f": {e.strerror or e}"
    if name == "localhost":
        found += [(family, (address[0], port, *address[2:])) for family, address in _LOOPBACKS]
    addresses, lacking = list(dict.fromkeys(found)), []
    for family, address in addresses:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                # As gRPC binds: a port whose last connections are closing is free.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return f": {e.strerror}"
            lacking.append(e)
    if lacking and len(lacking) == len(addresses):
        return f": {lacking[0].strerror or lacking[0]}"
    return ""


def serve(model_base_path: str, model_name: str = DEFAULT_MODEL_NAME, host: str = "127.0.0.1",
          port: int = 0, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
          max_image_pixels: int | None = None, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
          max_workers: int = 16, max_concurrent_rpcs: int | None = None,
          warmup: bool = True, xla_compilation_enabled: bool = False
          ) -> tuple[LoopServer, int]:
    """Loads the newest version under ``model_base_path`` and starts serving it.

    Args:
        model_base_path: directory holding integer-named SavedModel version directories.
        model_name: the name clients put in ``model_spec.name``.
        host: interface to bind; loopback unless told otherwise.
        port: TCP port; 0 picks a free one.
        max_message_bytes: largest request or response message, in bytes.
        max_image_pixels: largest width*height of an encoded input image (None: the
            export's own limit; a value can only lower it).
        max_batch_size: most items a request may hold (see `ModelServer`).
        max_workers: threads answering requests that have arrived whole (see
            `ModelServer`).
        max_concurrent_rpcs: further requests get RESOURCE_EXHAUSTED (None: no limit).
        warmup: replay ``assets.extra/tf_serving_warmup_requests`` before serving.
        xla_compilation_enabled: serve a version with functions compiled with XLA (TF
            Serving's ``--xla_cpu_compilation_enabled``); refused otherwise, as TF Serving
            would fail their first request.

    Returns:
        The started server (a `LoopServer`: ``stop`` and ``wait_for_termination`` as on
        a ``grpc.Server``) and the bound port.
    """
    if not 0 <= int(port) <= 65535:  # gRPC would take it modulo 65536
        raise ValueError(f"port must be in 0..65535 (0: a free one), got {port}")
    if max_image_pixels is not None and int(max_image_pixels) < 1:
        raise ValueError(f"max_image_pixels must be at least 1, got {max_image_pixels}")
    address = grpc_address(host, port)
    problem = _bind_problem(host, port)
    if problem:  # refused before the model loads
        raise OSError(f"cannot bind {address}{problem}")
    service = _ready_service(model_base_path, model_name, xla_compilation_enabled, warmup,
                             max_image_pixels, max_message_bytes, max_batch_size,
                             max_workers, max_concurrent_rpcs)
    servable = service.servable
    try:
        server, bound = _start(service, host, port, max_message_bytes)
    except BaseException:
        service.workers.shutdown(wait=False)
        servable.session.close()
        raise
    threading.Thread(target=_close_when_stopped,
                     args=(weakref.ref(server), servable.session,
                           service.refusals.stop_limiting),
                     name="close-session").start()
    logging.info("serving %r version %d from %s on %s (images up to %d pixels%s)", model_name,
                 servable.version, servable.path, grpc_address(host, bound),
                 service.max_image_pixels, service.pixel_limit_note)
    return server, bound


def _close_when_stopped(server_ref: weakref.ref, session: tf.compat.v1.Session,
                        on_stop: Callable[[], None]) -> None:
    """Calls `on_stop` and closes `session` once the server `server_ref` refers to has
    stopped, or has been dropped (a `LoopServer` stops when collected). gRPC cancels the
    calls still in flight when its grace is over, but not the model runs behind them,
    which would go on to their end and keep the process alive; closing the session
    cancels them.

    Run in a thread the process waits for at its end: TensorFlow torn down under a close
    still going aborts the process. A server that is never stopped leaves it at the
    program's end. The thread holds the server only while it waits on it, so a program
    that drops the server still lets it go."""
    while True:
        server = server_ref()
        if server is None or not server.wait_for_termination(timeout=0.5):  # stopped
            break
        del server
        if not threading.main_thread().is_alive():
            return
    on_stop()
    session.close()


def _ready_service(model_base_path: str, model_name: str, xla_compilation_enabled: bool,
                   warmup: bool, max_image_pixels: int | None, max_message_bytes: int,
                   max_batch_size: int, max_workers: int, max_concurrent_rpcs: int | None
                   ) -> ModelServer:
    """The service of the newest version, loaded (`Servable.load`) and warmed up.

    A version removed before its warm-up ends (an export's ``--keep_versions`` pruning
    the base path as this server starts: the warm-up takes far longer than the load) is
    passed over for the newest one again, as `Servable.load` passes over one removed
    while its session loads: the server listens only with a version still on disk, not
    with one that a newer version replaced before any client could reach it."""
    for _ in range(LOAD_ATTEMPTS):
        servable = Servable.load(model_base_path, model_name, xla_compilation_enabled)
        try:
            service = ModelServer(servable, max_image_pixels, max_message_bytes, max_batch_size,
                                  max_workers, max_concurrent_rpcs)
            if not warmup:
                return service  # `Servable.load` found it on disk once its session loaded
            _warm_up(service)
        except RuntimeError:
            servable.session.close()
            if os.path.isdir(servable.path):
                raise
        except BaseException:
            servable.session.close()
            raise
        else:
            if os.path.isdir(servable.path):
                return service
            servable.session.close()
        logging.info("version %d was removed from %s while it warmed up: loading the newest "
                     "version again", servable.version, model_base_path)
    raise all_removed(model_base_path)


def _warm_up(service: ModelServer) -> None:
    """`ModelServer.warm_up`, timed in a log line; RuntimeError naming the version and
    the remedy where a request fails."""
    start = time.perf_counter()
    try:
        n = service.warm_up()
    except WarmUpUnread as e:  # the version's own bytes, not requests it refuses
        raise RuntimeError(f"version {service.servable.version} does not warm up: {e}"
                           f"{PARTIAL_COPY_HINT}; --nowarmup serves it without its "
                           f"warm-up") from None
    except RuntimeError as e:
        raise RuntimeError(f"version {service.servable.version} does not warm up: {e} "
                           f"(--nowarmup serves it without its warm-up; an export made again "
                           f"writes requests this version serves)") from None
    logging.info("warm-up: %d request(s) in %.2f s", n, time.perf_counter() - start)


def _start(service: ModelServer, host: str, port: int, max_message_bytes: int) -> tuple[
        LoopServer, int]:
    """`serve` once the version has loaded and warmed up: the bound, started server."""
    address = grpc_address(host, port)

    async def started() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", int(max_message_bytes)),
                     ("grpc.max_send_message_length", int(max_message_bytes)),
                     # gRPC shares ports by default: a second server on a busy port would
                     # take half its requests instead of failing to bind.
                     ("grpc.so_reuseport", 0)])
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if bound:
            prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
            model_service_pb2_grpc.add_ModelServiceServicer_to_server(service, server)
            await server.start()
        return server, bound

    loop = asyncio.new_event_loop()
    threading.Thread(target=run_loop, args=(loop,), name="serve-loop", daemon=True).start()
    try:
        server, bound = asyncio.run_coroutine_threadsafe(started(), loop).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        raise
    if not bound:  # taken while the model loaded (nothing listens: nothing to stop)
        loop.call_soon_threadsafe(loop.stop)
        raise OSError(f"cannot bind {address}{_bind_problem(host, port)}")
    return LoopServer(server, loop, service.workers), bound
