"""`assets.extra/tf_serving_warmup_requests`: requests TF Serving replays at load time.

Imports TensorFlow only to write them, so that ``ofrnn-export --help`` shows the
default count at once."""

from __future__ import annotations

import os
from typing import Sequence

from ofrnn_tf.serving.server_process import DEFAULT_MODEL_NAME

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
DEFAULT_NUM_WARMUP_IMAGES = 4  # of the run's example images, for the warm-up requests


def write_warmup_requests(saved_model_dir: str, images: Sequence[bytes],
                          model_name: str = DEFAULT_MODEL_NAME,
                          batch_sizes: Sequence[int] = (1,),
                          with_threshold: bool = True) -> str:
    """Writes PredictionLog records of the requests a server will get, per batch size
    (images cycled): a bare ``serving_default`` request (all outputs), and the ones
    ``ofrnn-client`` sends, with its ``output_filter``, to ``serving_default`` and (with
    `with_threshold`) to ``predict_with_threshold``. A session sets its graph up once
    per set of inputs and outputs, so each kind needs its own warm-up."""
    if not images:
        raise ValueError("warm-up requests need at least one sample image")
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from ofrnn_tf.serving.client import predict_request

    path = os.path.join(saved_model_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for batch_size in batch_sizes:
            batch = [images[i % len(images)] for i in range(batch_size)]
            bare = predict_pb2.PredictRequest()
            bare.model_spec.name = model_name
            bare.model_spec.signature_name = "serving_default"
            bare.inputs["images"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
            requests = [bare, predict_request(batch, model_name=model_name)]
            if with_threshold:
                requests.append(predict_request(batch, model_name=model_name, threshold=0.5))
            for request in requests:
                log = prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(log.SerializeToString(deterministic=True))
    return path
