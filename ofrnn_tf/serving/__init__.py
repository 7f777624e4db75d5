"""Serving: TensorFlow Serving configs, a gRPC client and a local model server.

``serving.client`` talks to any server that implements the TensorFlow Serving
``PredictionService`` (real ``tensorflow_model_server`` or ``serving.local_server``);
``serving.local_server`` serves a SavedModel export over the same protos where the
``tensorflow_model_server`` binary is not available.
"""
