"""gRPC client for a served order-free RNN: encoded images in, label names and scores out.

Built only on the standard ``tensorflow-serving-api`` protos, so it works the same
against ``tensorflow_model_server`` (Docker ``tensorflow/serving``) and against
``ofrnn_tf.serving.local_server`` (``ofrnn-serve``).

Usage::

    ofrnn-client --server=127.0.0.1:8500 --model_name=ofrnn cat.jpg dog.png
    ofrnn-client --server=127.0.0.1:8500 --threshold=0.05 cat.jpg   # more labels

Python::

    from ofrnn_tf.serving.client import predict_images
    results = predict_images("127.0.0.1:8500", [open("cat.jpg", "rb").read()])
    results[0]["label_names"], results[0]["scores"]
"""

from __future__ import annotations

import sys
from typing import Sequence

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from ofrnn_tf.serving.server_process import DEFAULT_MODEL_NAME, DEFAULT_PORT

DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024 * 1024
# `attention` [N, T_max, H, W] is not needed to name labels; asking only for these
# keeps responses small.
PREDICT_OUTPUTS = ("labels", "label_names", "num_labels", "scores", "log_prob")


def make_channel(target: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.Channel:
    """An insecure channel to ``host:port`` with raised message size limits."""
    return grpc.insecure_channel(target, options=[
        ("grpc.max_send_message_length", int(max_message_bytes)),
        ("grpc.max_receive_message_length", int(max_message_bytes)),
    ])


def _model_spec(spec, model_name: str, signature_name: str | None = None, version: int | None = None) -> None:
    spec.name = model_name
    if signature_name is not None:
        spec.signature_name = signature_name
    if version is not None:
        spec.version.value = int(version)


def _call(target: str, channel: grpc.Channel | None, fn):
    if channel is not None:
        return fn(channel)
    with make_channel(target) as own:
        return fn(own)


def parse_predict_response(response: predict_pb2.PredictResponse) -> list[dict]:
    """Per image: ``label_ids``, ``label_names``, ``scores`` (of those labels, in
    decoding order) and ``log_prob`` (of the decoded label path)."""
    out = {key: tf.make_ndarray(response.outputs[key]) for key in PREDICT_OUTPUTS}
    results = []
    for i in range(out["labels"].shape[0]):
        n = int(out["num_labels"][i])
        ids = [int(c) for c in out["labels"][i, :n]]
        results.append({
            "label_ids": ids,
            "label_names": [s.decode("utf-8") for s in out["label_names"][i, :n]],
            "scores": [float(out["scores"][i, c]) for c in ids],
            "log_prob": float(out["log_prob"][i]),
        })
    return results


THRESHOLD_SIGNATURE = "predict_with_threshold"


def predict_images(target: str, images: Sequence[bytes], *, model_name: str = DEFAULT_MODEL_NAME,
                   signature_name: str | None = None, version: int | None = None,
                   threshold: float | None = None, timeout: float = 30.0,
                   channel: grpc.Channel | None = None) -> list[dict]:
    """Classifies encoded JPEG/PNG/GIF/BMP images in one Predict request.

    Args:
        target: ``host:port`` of the gRPC server (ignored when ``channel`` is given).
        images: encoded image bytes, one per image; all go in one batch.
        model_name, signature_name, version: the ``ModelSpec`` (version None: newest;
            signature None: ``serving_default``, or ``predict_with_threshold`` when a
            threshold is given).
        threshold: decode with this τ in [0, 1] instead of the calibrated one: lower
            gives more labels per image (recall), higher fewer (precision).
        timeout: seconds before the call fails with DEADLINE_EXCEEDED.
        channel: an open channel to reuse (e.g. from ``make_channel``); by default a
            channel is opened and closed for this call.

    Returns:
        One dict per image, see ``parse_predict_response``.

    Raises:
        grpc.RpcError: the server refused the request; ``.code()`` and ``.details()``
            say why (e.g. INVALID_ARGUMENT "images[2]: not a JPEG/PNG/GIF/BMP image ...").
    """
    images = list(images)
    if not images:
        return []
    if signature_name is None:
        signature_name = "serving_default" if threshold is None else THRESHOLD_SIGNATURE
    request = predict_pb2.PredictRequest()
    _model_spec(request.model_spec, model_name, signature_name, version)
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string, shape=[len(images)]))
    if threshold is not None:
        request.inputs["threshold"].CopyFrom(tf.make_tensor_proto(float(threshold), tf.float32))
    request.output_filter.extend(PREDICT_OUTPUTS)

    def run(ch):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        return parse_predict_response(stub.Predict(request, timeout=timeout))

    return _call(target, channel, run)


def get_model_status(target: str, model_name: str = DEFAULT_MODEL_NAME, *,
                     version: int | None = None, timeout: float = 10.0,
                     channel: grpc.Channel | None = None) -> list[dict]:
    """``ModelService.GetModelStatus``: per version, its ``state`` name and error."""
    request = get_model_status_pb2.GetModelStatusRequest()
    _model_spec(request.model_spec, model_name, version=version)

    def run(ch):
        response = model_service_pb2_grpc.ModelServiceStub(ch).GetModelStatus(request, timeout=timeout)
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
            request, timeout=timeout)
        defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(defs)
        return int(response.model_spec.version.value), dict(defs.signature_def)

    return _call(target, channel, run)


def format_result(source: str, result: dict) -> str:
    labels = ", ".join(f"{name} {score:.3f}" for name, score in zip(result["label_names"], result["scores"]))
    return f"{source}\t{labels}\tlog_prob={result['log_prob']:.3f}"


def main(argv: Sequence[str]) -> None:
    from absl import app, flags

    FLAGS = flags.FLAGS
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more image files")
    images = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                images.append(f.read())
        except OSError as e:
            raise app.UsageError(f"cannot read image {path!r}: {e.strerror}")
    try:
        results = predict_images(FLAGS.server, images, model_name=FLAGS.model_name,
                                 signature_name=FLAGS.signature_name, version=FLAGS.version,
                                 threshold=FLAGS.threshold, timeout=FLAGS.timeout)
    except grpc.RpcError as e:
        print(f"error from {FLAGS.server}: {e.code().name}: {e.details()}", file=sys.stderr)
        sys.exit(1)
    for path, result in zip(paths, results):
        print(format_result(path, result))


def run() -> None:
    """The ``ofrnn-client`` console script (flags are defined only when run as a program)."""
    from absl import app, flags

    flags.DEFINE_string("server", f"127.0.0.1:{DEFAULT_PORT}", "gRPC host:port of the model server")
    flags.DEFINE_string("model_name", DEFAULT_MODEL_NAME, "model name in the server's config")
    flags.DEFINE_string("signature_name", None, "signature taking `images` (default: "
                        "serving_default, or predict_with_threshold with --threshold)")
    flags.DEFINE_float("threshold", None, "decode with this τ in [0, 1] instead of the "
                       "calibrated one: lower for more labels (recall), higher for fewer")
    flags.DEFINE_integer("version", None, "model version (default: the newest)")
    flags.DEFINE_float("timeout", 30.0, "seconds per request")
    app.run(main)


if __name__ == "__main__":
    run()
