"""Serving clients and a local model server over the TensorFlow Serving gRPC protos.

`ofrnn_tf.serving.client` talks to any server that implements TensorFlow Serving's
``PredictionService`` (``tensorflow_model_server`` or `ofrnn_tf.serving.local_server`),
through the protos of `ofrnn_tf.serving.protos`, which import no TensorFlow;
`ofrnn_tf.serving.local_server` serves an export through TF Serving's own loading path
where the ``tensorflow_model_server`` binary is not available, and
`ofrnn_tf.serving.server_process` runs it as a child process without importing
TensorFlow. `ofrnn_tf.serving.stand_in_model` is not a model to serve: a tiny export of
the same contract whose scores are arithmetic, so that the server, the clients and the
load benchmark can be tried without training. The TF Serving configs and the documented
``docker run`` commands are in the repository's ``serving/`` folder.
"""
