"""SavedModel export for TensorFlow Serving (docs/serving.md)."""

from ofrnn_tf.export.saved_model import export_run, save_inference_module

__all__ = ["export_run", "save_inference_module"]
