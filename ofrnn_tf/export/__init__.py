"""SavedModel export for TensorFlow Serving (DESIGN §5)."""
