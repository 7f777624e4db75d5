"""A model version loaded the way TensorFlow Serving loads it: a session over the
SavedModel's serving graph (``SavedModelBundle``), its signatures run by tensor name, the
newest version found again where one is removed while it loads, and what the export
records for the server (its image-size limit, functions compiled with XLA)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow.python.util import deprecation

from ofrnn_tf.serving.server_process import PARTIAL_COPY_HINT, find_latest_version
from ofrnn_tf.tf_errors import op_error_text


# Versions tried when the newest is removed while it loads (`Servable.load`).
LOAD_ATTEMPTS = 3


@dataclass
class Servable:
    """One loaded model version, run the way TensorFlow Serving runs it.

    TF Serving loads a SavedModel with the C++ ``LoadSavedModel``: a session over the
    graph, fed and fetched through the tensor names of each SignatureDef. This is the
    same loader from Python (`tf.compat.v1.saved_model.loader.load`), so a model that
    serves here restores its variables and runs its signatures as TF Serving would.
    """

    name: str
    version: int
    path: str
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]
    session: Any = field(repr=False)
    max_image_pixels: int | None = None  # the export's limit, if it records one

    @classmethod
    def load(cls, model_base_path: str, name: str, xla_compilation_enabled: bool = False
             ) -> "Servable":
        """The newest version; RuntimeError naming its folder if it does not load (a
        copy still running or cut short, say), or if it holds functions compiled with XLA
        and `xla_compilation_enabled` is off, as TensorFlow Serving would fail them.

        A version removed while it loads (an export's ``--keep_versions`` pruning the
        base path as this server starts) is passed over for the newest one again."""
        for attempt in range(1, LOAD_ATTEMPTS + 1):
            try:
                version, path = find_latest_version(model_base_path)
            except FileNotFoundError:  # the newest listed was renamed away before it was read
                if attempt == LOAD_ATTEMPTS:
                    raise
                continue
            try:
                servable = cls._load_version(name, version, path, xla_compilation_enabled)
            except RuntimeError:
                if os.path.isdir(path) or attempt == LOAD_ATTEMPTS:
                    raise
                continue
            if os.path.isdir(path):
                return servable
            servable.session.close()  # removed during the load: its limit may be unread
        raise all_removed(model_base_path)

    @classmethod
    def _load_version(cls, name: str, version: int, path: str,
                      xla_compilation_enabled: bool) -> "Servable":
        compiled = xla_compiled_functions(path)
        if compiled and not xla_compilation_enabled:
            raise RuntimeError(
                f"version {version} ({path}) compiles {len(compiled)} function(s) with XLA "
                f"(an ofrnn-export --jit_compile export), which TensorFlow Serving runs only "
                f"when started with --xla_cpu_compilation_enabled (on GPUs "
                f"--xla_gpu_compilation_enabled); without it their first request fails. "
                f"Start this server with --xla_cpu_compilation_enabled too, or export without "
                f"--jit_compile")
        try:
            session, signature_defs = load_session(path)
            limit = recorded_image_pixel_limit(path)
        # RuntimeError: TF's loader finds no 'serve' graph in an empty saved_model.pb.
        except (tf.errors.OpError, ValueError, OSError, RuntimeError, DecodeError) as e:
            text = op_error_text(e) if isinstance(e, tf.errors.OpError) else str(e)
            raise RuntimeError(f"version {version} ({path}) does not load: {text}"
                               f"{PARTIAL_COPY_HINT}") from None
        return cls(name, version, path, signature_defs, session, limit)

    @property
    def signatures(self) -> list[str]:
        return sorted(self.signature_defs)

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray],
            output_keys: Sequence[str], timeout_ms: int | None = None) -> dict[str, np.ndarray]:
        """Runs one signature: inputs and outputs by their SignatureDef keys; a run
        longer than `timeout_ms` is cancelled (`tf.errors.DeadlineExceededError`)."""
        signature = self.signature_defs[signature_name]
        feed = {signature.inputs[key].name: value for key, value in inputs.items()}
        fetches = {key: signature.outputs[key].name for key in output_keys}
        options = None if timeout_ms is None else tf.compat.v1.RunOptions(timeout_in_ms=timeout_ms)
        return self.session.run(fetches, feed_dict=feed, options=options)


def all_removed(model_base_path: str) -> RuntimeError:
    """The error of a start whose every try found its version removed meanwhile."""
    return RuntimeError(f"every version of {model_base_path} read was removed while it "
                        f"loaded ({LOAD_ATTEMPTS} tries): start the server once the "
                        f"exports into it are done")


# The checkpoint key of `InferenceModule.max_image_pixels` (ofrnn_tf/inference/module.py).
_PIXEL_LIMIT_KEY = "max_image_pixels/.ATTRIBUTES/VARIABLE_VALUE"


def recorded_image_pixel_limit(saved_model_dir: str) -> int | None:
    """The image-size limit the export's graph enforces, or None if it records none."""
    try:
        reader = tf.train.load_checkpoint(os.path.join(saved_model_dir, "variables", "variables"))
    except (tf.errors.OpError, ValueError):
        return None  # no variables at all
    return int(reader.get_tensor(_PIXEL_LIMIT_KEY)) if reader.has_tensor(_PIXEL_LIMIT_KEY) else None


def xla_compiled_functions(saved_model_dir: str) -> list[str]:
    """The functions of a SavedModel marked to be compiled with XLA (``jit_compile=True``,
    the node attribute ``_XlaMustCompile``); none when its ``saved_model.pb`` (or
    ``.pbtxt``) does not read (the loader then names the problem)."""
    model = saved_model_pb2.SavedModel()
    binary = os.path.join(saved_model_dir, "saved_model.pb")
    try:
        if os.path.exists(binary):
            with open(binary, "rb") as f:
                model.ParseFromString(f.read())
        else:
            with open(os.path.join(saved_model_dir, "saved_model.pbtxt")) as f:
                text_format.Parse(f.read(), model)
    except (OSError, DecodeError, text_format.ParseError, UnicodeDecodeError):
        return []
    marked = []
    for graph in model.meta_graphs:
        for function in graph.graph_def.library.function:
            attrs = [function.attr] + [node.attr for node in function.node_def]
            if any("_XlaMustCompile" in a and a["_XlaMustCompile"].b for a in attrs):
                marked.append(function.signature.name)
    return marked


def load_session(saved_model_dir: str, tags: Sequence[str] = ("serve",)
                 ) -> tuple[tf.compat.v1.Session, dict[str, meta_graph_pb2.SignatureDef]]:
    """A session holding the SavedModel's serving graph with its variables restored, and
    its SignatureDefs: TensorFlow Serving's loading path (``SavedModelBundle``)."""
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    # The TF1 loader is TF Serving's path on purpose; its deprecation notice is not news.
    with graph.as_default(), deprecation.silence():
        meta_graph = tf.compat.v1.saved_model.loader.load(session, list(tags), saved_model_dir)
    # `__saved_model_init_op` runs at load time; it is not a signature to call.
    return session, {name: sig for name, sig in meta_graph.signature_def.items()
                     if not name.startswith("__")}
