"""`assets.extra/tf_serving_warmup_requests`: requests TF Serving replays at load time.

Imports TensorFlow only to write them, so that ``ofrnn-export --help`` shows the
default count at once."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from ofrnn_tf.serving.server_process import DEFAULT_MODEL_NAME

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
DEFAULT_NUM_WARMUP_IMAGES = 4  # of the run's example images, for the warm-up requests
# The batch sizes an export's warm-up requests hold.
WARMUP_BATCH_SIZES = (1, 8)


def write_warmup_requests(saved_model_dir: str, images: Sequence[bytes],
                          model_name: str = DEFAULT_MODEL_NAME,
                          batch_sizes: Sequence[int] = (1,),
                          with_threshold: bool = True,
                          features: Optional[np.ndarray] = None) -> str:
    """Writes PredictionLog records of the requests a server will get, per batch size
    (images cycled): to ``serving_default`` and (with `with_threshold`) to
    ``predict_with_threshold``, a bare request (all outputs: what a REST request, which
    cannot filter them, or a gRPC client without an ``output_filter`` fetches) and the
    one ``ofrnn-client`` sends, with its ``output_filter``; given `features` (float32
    maps of the first `images`, one per image, as many as the largest batch holds), a
    bare ``predict_features`` request of them. A
    session sets its graph up once per set of inputs and outputs, so each kind needs its
    own warm-up."""
    if not images:
        raise ValueError("warm-up requests need at least one sample image")
    needed = min(len(images), max(batch_sizes))  # the images the requests hold
    if features is not None and len(features) < needed:
        raise ValueError(f"{len(features)} feature maps for the {needed} warm-up images the "
                         f"requests hold: give the maps of each")
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from ofrnn_tf.serving.client import predict_request

    path = os.path.join(saved_model_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for batch_size in batch_sizes:
            cycled = [i % len(images) for i in range(batch_size)]
            batch = [images[i] for i in cycled]
            filtered = predict_request(batch, model_name=model_name)
            requests = [_bare(filtered), filtered]
            if with_threshold:
                threshold = predict_request(batch, model_name=model_name, threshold=0.5)
                requests += [_bare(threshold), threshold]
            if features is not None:
                requests.append(_features_request(np.asarray(features, np.float32)[cycled],
                                                  model_name))
            for request in requests:
                log = prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(log.SerializeToString(deterministic=True))
    return path


def _bare(request):
    """A copy of `request` without its ``output_filter``: it fetches every output."""
    bare = type(request)()
    bare.CopyFrom(request)
    bare.ClearField("output_filter")
    return bare


def _features_request(features: np.ndarray, model_name: str):
    """A bare ``predict_features`` request of `features`."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "predict_features"
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(features, dtype=tf.float32))
    return request
