"""`assets.extra/tf_serving_warmup_requests`: requests TF Serving replays at load time."""

from __future__ import annotations

import os
from typing import Sequence

import tensorflow as tf

from ofrnn_tf.serving.server_process import DEFAULT_MODEL_NAME

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def write_warmup_requests(saved_model_dir: str, images: Sequence[bytes],
                          model_name: str = DEFAULT_MODEL_NAME,
                          signature_name: str = "serving_default",
                          batch_sizes: Sequence[int] = (1,)) -> str:
    """Writes one PredictRequest per batch size (images cycled) as PredictionLog records."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    if not images:
        raise ValueError("warm-up requests need at least one sample image")
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for batch_size in batch_sizes:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature_name
            batch = [images[i % len(images)] for i in range(batch_size)]
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path
