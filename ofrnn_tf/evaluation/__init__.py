"""Evaluation of a trained model: validation scores, τ calibration and test metrics (the
metrics themselves are `ofrnn_tf.metrics`)."""
