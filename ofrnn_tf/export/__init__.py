"""SavedModel export for TensorFlow Serving (docs/serving.md).

`export_run` and `save_inference_module` are imported on first use, with TensorFlow, so
that the package's TensorFlow-free parts (the warm-up defaults) load at once."""

import importlib as _importlib

__all__ = ["export_run", "save_inference_module"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(_importlib.import_module("ofrnn_tf.export.saved_model"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
