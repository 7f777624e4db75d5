"""The checks a Predict request passes before the model runs, each refusal a
`RequestError` with the gRPC status to answer and the input and batch index it names:
dtypes, declared sizes (before an array is filled), shapes, batch sizes, image headers
within the pixel limit, finite floats; and outputs written as TF Serving writes them."""

from __future__ import annotations

from typing import Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from ofrnn_tf.features.images import read_image_header


class RequestError(Exception):
    """A request the server refuses, with the gRPC status code to answer. The message is
    cut to `MAX_MESSAGE_BYTES` of UTF-8: it quotes the request's own strings (a model
    name, input keys), which a client may make megabytes long, and it goes into the log
    and the answer, whose status details gRPC sends percent-encoded within 16 KiB."""

    MAX_MESSAGE_BYTES = 2000

    def __init__(self, code: grpc.StatusCode, message: str):
        encoded = message.encode("utf-8", "backslashreplace")
        if len(encoded) > self.MAX_MESSAGE_BYTES:
            kept = encoded[:self.MAX_MESSAGE_BYTES].decode("utf-8", "ignore")
            message = f"{kept}... (cut: the message is {len(message)} characters)"
        super().__init__(message)
        self.code = code
        self.message = message


def _shape_text(dims: Sequence[int]) -> str:
    return "[" + ", ".join("None" if d < 0 else str(d) for d in dims) + "]"


# The TensorProto field that holds each numeric dtype's values one by one, as TF Serving
# writes outputs (`tensor_content` packs them as bytes).
_TYPED_FIELDS = {tf.float32: "float_val", tf.float64: "double_val", tf.int32: "int_val",
                 tf.int64: "int64_val", tf.bool: "bool_val"}


def typed_tensor_proto(value: np.ndarray):
    """`value` as a TensorProto whose values are in their typed field (``float_val``,
    ``int_val``, ``string_val``), as TF Serving's Predict answers: `tf.make_tensor_proto`
    packs an array of several numbers into ``tensor_content``, which a client written for
    TF Serving in another language does not read."""
    proto = tf.make_tensor_proto(value)
    if proto.tensor_content:
        proto.ClearField("tensor_content")
        getattr(proto, _TYPED_FIELDS[tf.dtypes.as_dtype(value.dtype)]).extend(
            np.asarray(value).ravel().tolist())
    return proto


def _check_declared_size(key: str, proto, dtype: tf.DType, max_bytes: int,
                         max_batch_size: int) -> None:
    # tf.make_ndarray fills a shape that has fewer values than elements by repeating
    # the last value, so a tiny request could ask for an enormous array: bound it, and
    # refuse a batch above the server's limit before it is filled.
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {key!r}: negative dimension in shape {dims}")
    if dims and dims[0] > max_batch_size:
        raise _batch_size_error(dims[0], max_batch_size)
    n = int(np.prod(dims, dtype=object)) if dims else 1
    if dtype == tf.string:
        if n != len(proto.string_val):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r}: shape {_shape_text(dims)} has {n} elements "
                               f"but the tensor holds {len(proto.string_val)} strings")
    elif n * dtype.size > max_bytes:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {key!r}: shape {_shape_text(dims)} is {n * dtype.size} bytes, "
                           f"more than a request may carry ({max_bytes})")
    elif proto.tensor_content and len(proto.tensor_content) != n * dtype.size:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {key!r}: shape {_shape_text(dims)} has {n} elements but "
                           f"the tensor's content holds {len(proto.tensor_content)} bytes, "
                           f"not {n * dtype.size}")
    elif dtype in _TYPED_FIELDS and len(getattr(proto, _TYPED_FIELDS[dtype])) > n:
        # Fewer values fill the shape with the last one; more fit no shape.
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {key!r}: shape {_shape_text(dims)} has {n} elements but "
                           f"the tensor holds {len(getattr(proto, _TYPED_FIELDS[dtype]))} "
                           f"values (give the shape's dimensions)")


def _batch_size_error(size: int, max_batch_size: int) -> RequestError:
    """The refusal of a request of `size` items (the client splits its batches by it)."""
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"a request of {size} items is above this server's --max_batch_size "
                        f"of {max_batch_size}: send several requests")


def check_input(key: str, info: meta_graph_pb2.TensorInfo, proto, max_bytes: int,
                 max_batch_size: int) -> np.ndarray:
    """The input's array once its dtype, declared size (`_check_declared_size`) and shape
    are the signature's; its items are checked by `check_items`. Its batch is checked
    against the server's limit before the array is filled, and so before any image header
    is read: a request of many tiny images, or a tiny one declaring a huge batch, is
    refused at once."""
    want = tf.dtypes.as_dtype(info.dtype)
    try:
        got = tf.dtypes.as_dtype(proto.dtype)
    except TypeError:
        got = None
    if got != want:
        got_name = got.name if got is not None else f"enum {proto.dtype}"
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {key!r}: expected dtype {want.name}, got {got_name}")
    _check_declared_size(key, proto, want, max_bytes, max_batch_size)
    try:
        value = tf.make_ndarray(proto)
    except Exception as e:  # malformed TensorProto (content size does not match the shape)
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key!r}: malformed tensor: {e}")
    want_dims = [d.size for d in info.tensor_shape.dim]
    if not info.tensor_shape.unknown_rank and (
            value.ndim != len(want_dims)
            or any(w >= 0 and w != g for w, g in zip(want_dims, value.shape))):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {key!r}: expected shape {_shape_text(want_dims)}, "
                           f"got {_shape_text(value.shape)}")
    if value.ndim == 0:
        if want.is_floating and not np.isfinite(value):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key!r}: NaN or Inf")
        return value  # a scalar input (e.g. predict_with_threshold's threshold)
    if value.shape[0] == 0:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {key!r}: empty batch (shape {_shape_text(value.shape)})")
    return value


def check_items(key: str, info: meta_graph_pb2.TensorInfo, value: np.ndarray,
                 max_image_pixels: int) -> None:
    """Refuses an input whose items are not images within `max_image_pixels` (strings)
    or hold NaN or Inf (floats, as the signature types them), naming the first such
    item."""
    if value.ndim == 0:
        return
    want = tf.dtypes.as_dtype(info.dtype)
    if want == tf.string:
        for flat, item in enumerate(value.reshape(-1)):
            i = flat if value.ndim == 1 else ", ".join(map(str, np.unravel_index(flat, value.shape)))
            if not item:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"{key}[{i}]: empty (no image bytes)")
            try:
                # A GIF's later frames count too, as the export's guard counts them.
                read_image_header(item, max_image_pixels)
            except ValueError as e:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{key}[{i}]: {e}")
    elif want.is_floating:
        finite = np.isfinite(value.reshape(value.shape[0], -1).astype(np.float32)).all(axis=1)
        if not finite.all():
            i = int(np.argmin(finite))
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{key}[{i}]: contains NaN or Inf")
