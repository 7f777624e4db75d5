"""TensorFlow Serving's gRPC protos, and the numpy arrays in their TensorProtos, without
importing TensorFlow.

The ``tensorflow_serving.apis`` modules import TensorFlow's own protos
(``tensorflow.core.framework.tensor_pb2`` and others), and importing any ``tensorflow.*``
module runs the ``tensorflow`` package's ``__init__``: all of TensorFlow, seconds of import
for a client that only sends a request. `_import_protos` loads them without that
``__init__``, and without putting a stand-in for ``tensorflow`` in ``sys.modules``: an
``import tensorflow`` in the same process, later or in another thread meanwhile, runs the
real package, which finds the protos loaded and uses the same classes, so a TensorProto
made here is TensorFlow's.

`string_tensor`, `float_tensor` and `tensor_array` fill and read TensorProtos as
``tf.make_tensor_proto`` and ``tf.make_ndarray`` do, for the dtypes a Predict call of
the export's signatures holds.
"""

from __future__ import annotations

import dis
import importlib.machinery
import importlib.util
import sys
from typing import Iterator, Sequence

import numpy as np


def _imported_protos(code) -> Iterator[str]:
    """The ``tensorflow.*`` and ``tensorflow_serving.*`` modules a module's `code` imports,
    read from its bytecode (a module installed without its source has it too), as pairs
    of opcode and argument: `dis.get_instructions` takes several times as long."""
    module, extended = "", 0
    for op, arg in zip(code.co_code[::2], code.co_code[1::2]):
        arg |= extended
        extended = arg << 8 if op == dis.EXTENDED_ARG else 0
        if op == dis.opmap["IMPORT_NAME"]:
            module = imported = code.co_names[arg]
        elif op == dis.opmap["IMPORT_FROM"]:
            imported = f"{module}.{code.co_names[arg]}"
        else:
            continue
        if imported.startswith(("tensorflow.", "tensorflow_serving.")):
            yield imported


def _import_protos(*names: str) -> None:
    """Imports the proto modules `names`, each after the protos it imports, unless
    TensorFlow is imported already or being imported (or is not installed, where the
    import then fails as it would anyway). A module's own ``from
    tensorflow.core.framework import x_pb2`` would import the ``tensorflow`` package (its
    ``__init__``) where ``x_pb2`` is not loaded yet; `importlib.import_module` loads a
    module's parents but not its top-level package, and the packages right under
    ``tensorflow`` are run from their own ``__init__`` here."""
    if "tensorflow" in sys.modules:
        # Waits for an import of it that another thread has begun, which the protos'
        # imports would otherwise run into half way.
        importlib.import_module("tensorflow")
        return
    top = importlib.util.find_spec("tensorflow")
    if top is None or not top.submodule_search_locations:
        return

    def load(name: str) -> None:
        if name in sys.modules:
            return
        parent = name.rpartition(".")[0]
        if parent == "tensorflow":
            spec = importlib.machinery.PathFinder.find_spec(name, top.submodule_search_locations)
            package = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(package)
            # Put in sys.modules once it has run; a thread importing TensorFlow meanwhile
            # may have put its own there first.
            sys.modules.setdefault(name, package)
            return
        if parent:
            load(parent)
        spec = importlib.util.find_spec(name)
        if spec is None:  # not installed: this module's own import of it says so
            return
        for imported in _imported_protos(spec.loader.get_code(name)):
            load(imported)
        importlib.import_module(name)

    for name in names:
        load(name)


_import_protos("tensorflow.core.framework.tensor_pb2", "tensorflow.core.framework.types_pb2",
               *(f"tensorflow_serving.apis.{name}" for name in (
                   "get_model_metadata_pb2", "get_model_status_pb2", "model_service_pb2_grpc",
                   "predict_pb2", "prediction_service_pb2_grpc")))
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402,F401 - the client's protos, imported here
    get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
    prediction_service_pb2_grpc)

# The field each dtype's values are in, and its numpy type (`tensor_array`).
_TYPED_FIELDS = {
    types_pb2.DT_FLOAT: ("float_val", np.float32),
    types_pb2.DT_INT32: ("int_val", np.int32),
    types_pb2.DT_INT64: ("int64_val", np.int64),
    types_pb2.DT_STRING: ("string_val", object),
}


def string_tensor(values: Sequence[bytes]) -> tensor_pb2.TensorProto:
    """A ``string [N]`` TensorProto of `values` (bytes each)."""
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    proto.tensor_shape.dim.add().size = len(values)
    proto.string_val.extend(values)
    return proto


def float_tensor(values: Sequence[float]) -> tensor_pb2.TensorProto:
    """A ``float32 [N]`` TensorProto of `values`, in ``tensor_content`` (little-endian
    float32, as ``tf.make_tensor_proto`` packs more than one value) or, for one value, in
    ``float_val``."""
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    proto.tensor_shape.dim.add().size = len(values)
    array = np.asarray(values, dtype="<f4")
    if array.size > 1:
        proto.tensor_content = array.tobytes()
    else:
        proto.float_val.extend(array.tolist())
    return proto


def tensor_array(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The numpy array a TensorProto holds, as ``tf.make_ndarray`` reads it: from
    ``tensor_content`` where it is set (TF Serving may pack numbers so), else from the
    dtype's typed field, whose last value fills the shape where it holds fewer
    (``tf.make_tensor_proto`` writes a constant so). ValueError for a dtype a Predict
    call of the export's signatures does not hold."""
    if proto.dtype not in _TYPED_FIELDS:
        raise ValueError(f"a tensor of dtype {types_pb2.DataType.Name(proto.dtype)}, which "
                         f"this client does not read")
    field, dtype = _TYPED_FIELDS[proto.dtype]
    shape = [d.size for d in proto.tensor_shape.dim]
    count = int(np.prod(shape, dtype=np.int64))
    if proto.tensor_content and dtype is not object:
        return np.frombuffer(proto.tensor_content, np.dtype(dtype).newbyteorder("<")
                             ).astype(dtype).reshape(shape)
    values = list(getattr(proto, field))
    if len(values) < count:
        values += [values[-1] if values else (b"" if dtype is object else 0)] * (
            count - len(values))
    return np.array(values, dtype=dtype).reshape(shape)
