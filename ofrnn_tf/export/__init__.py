"""SavedModel export for TensorFlow Serving (docs/serving.md)."""
