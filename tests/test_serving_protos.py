"""The client's TensorProtos without TensorFlow: the requests it fills are those
`tf.make_tensor_proto` makes, and the responses it reads give what `tf.make_ndarray` gives,
whether a server answers in typed fields (ofrnn-serve) or packs `tensor_content`."""

from __future__ import annotations

import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf

from ofrnn_tf.serving.request_checks import typed_tensor_proto
from ofrnn_tf.serving.protos import float_tensor, string_tensor, tensor_array


@pytest.fixture
def rng(request) -> np.random.Generator:
    """The test's own generator, seeded by its name: its inputs are the same whichever
    tests ran before it."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def test_no_generator_is_shared_between_tests():
    """A file-level generator the tests shared would make their inputs depend on order."""
    assert not [name for name, value in globals().items()
                if isinstance(value, np.random.Generator)]


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_the_request_tensors_are_those_tensorflow_makes(n, rng):
    images = [rng.bytes(int(k)) for k in rng.integers(0, 40, n)]
    thresholds = rng.random(n).tolist()
    assert string_tensor(images) == tf.make_tensor_proto(images, dtype=tf.string, shape=[n])
    made = tf.make_tensor_proto(thresholds, tf.float32, shape=[n])
    assert float_tensor(thresholds) == made
    assert float_tensor(thresholds).SerializeToString() == made.SerializeToString()


def outputs(rng: np.random.Generator, n: int, steps: int = 4,
            classes: int = 10) -> dict[str, np.ndarray]:
    """Random arrays of the served outputs' dtypes and shapes, and an int64 one."""
    names = np.array([[rng.choice([b"", b"Bag", "Kleid".encode()]) for _ in range(steps)]
                      for _ in range(n)], dtype=object).reshape(n, steps)
    return {"labels": rng.integers(-1, classes, (n, steps)).astype(np.int32),
            "label_names": names,
            "num_labels": rng.integers(0, steps + 1, n).astype(np.int32),
            "scores": rng.random((n, classes), dtype=np.float32),
            "log_prob": -rng.random(n, dtype=np.float32) * 5,
            "ids64": rng.integers(-2 ** 40, 2 ** 40, (n, 2))}


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("packing", ["tensorflow", "typed_fields"])
def test_the_response_tensors_read_as_tensorflow_reads_them(n, packing, rng):
    for key, value in outputs(rng, n).items():
        # tf.make_tensor_proto packs several numbers in tensor_content; ofrnn-serve does not.
        proto = (tf.make_tensor_proto(value) if packing == "tensorflow"
                 else typed_tensor_proto(value))
        if packing == "tensorflow" and value.dtype != object and value.size > 1:
            assert proto.tensor_content
        expected, read = tf.make_ndarray(proto), tensor_array(proto)
        assert read.dtype == expected.dtype and read.shape == expected.shape, key
        np.testing.assert_array_equal(read, expected, err_msg=key)


def test_a_tensor_of_fewer_values_than_its_shape_is_filled_with_the_last():
    for proto in (tf.make_tensor_proto(0.25, tf.float32, shape=[2, 3]),
                  tf.make_tensor_proto(7, tf.int32, shape=[4]),
                  tf.make_tensor_proto([b"a"], tf.string, shape=[3]),
                  tf.make_tensor_proto([], tf.float32, shape=[0, 2])):
        np.testing.assert_array_equal(tensor_array(proto), tf.make_ndarray(proto))
        assert tensor_array(proto).shape == tf.make_ndarray(proto).shape


def test_a_dtype_the_client_does_not_read_is_said():
    with pytest.raises(ValueError, match="DT_HALF, which this client does not read"):
        tensor_array(tf.make_tensor_proto(np.zeros(2, np.float16)))


def tensorflow_and_the_protos(script: str) -> str:
    """What a Python child prints that runs `script`, then makes a TensorProto with
    TensorFlow (the protos' class) and computes with it."""
    script += """
import tensorflow as tf
from ofrnn_tf.serving import protos
assert type(tf.make_tensor_proto([1.0])) is protos.tensor_pb2.TensorProto
print(float(tf.constant(2.0) * 3.0))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.slow
def test_tensorflow_imported_in_another_thread_while_the_protos_load_is_the_whole_package():
    """The protos load without TensorFlow's __init__ and without a stand-in package in
    sys.modules, which a thread importing TensorFlow meanwhile would have been handed."""
    assert tensorflow_and_the_protos("""
import sys, threading, time
loading = threading.Thread(target=__import__, args=("ofrnn_tf.serving.protos",))
loading.start()
while not any(name.startswith("tensorflow.") for name in list(sys.modules)):
    time.sleep(0.001)
import tensorflow
loading.join()
""") == "6.0\n"


@pytest.mark.slow
def test_the_protos_wait_for_an_import_of_tensorflow_another_thread_has_begun():
    """Loaded alongside, the protos and TensorFlow's own imports ran into each other:
    Python's import deadlock error, or a proto of TensorFlow's left half made."""
    assert tensorflow_and_the_protos("""
import importlib.machinery, sys, threading, time

class PauseTensorFlowsImport(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "tensorflow.python" and threading.current_thread() is importing:
            spec = super().find_spec(name, path, target)
            spec.loader = Paused(spec.name, spec.origin)
            return spec

class Paused(importlib.machinery.SourceFileLoader):
    # At the start of TensorFlow's import, until the protos' have begun (5 s at most).
    def exec_module(self, module):
        begun.set()
        deadline = time.monotonic() + 5
        while "tensorflow.core" not in sys.modules and time.monotonic() < deadline:
            time.sleep(0.01)
        super().exec_module(module)

begun = threading.Event()
importing = threading.Thread(target=__import__, args=("tensorflow",))
sys.meta_path.insert(0, PauseTensorFlowsImport)
importing.start()
begun.wait()
import ofrnn_tf.serving.protos
importing.join()
""") == "6.0\n"


@pytest.mark.slow
def test_the_protos_load_without_tensorflow_where_they_are_installed_without_source(tmp_path):
    """Read from the sources, a module of only bytecode imported nothing first, and its
    own imports ran TensorFlow's __init__ half way through loading the protos (a
    partially initialized module's error)."""
    assert tensorflow_and_the_protos(f"""
import importlib.machinery, importlib.util, py_compile, sys

class Sourceless(importlib.machinery.PathFinder):
    # Each proto module as its bytecode only, compiled into a folder of its own.
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        spec = super().find_spec(name, path, target)
        if spec is None or not name.endswith("_pb2") or spec.submodule_search_locations:
            return spec
        compiled = py_compile.compile(spec.origin, {str(tmp_path)!r} + "/" + name + ".pyc")
        return importlib.util.spec_from_loader(
            name, importlib.machinery.SourcelessFileLoader(name, compiled))

sys.meta_path.insert(0, Sourceless)
import ofrnn_tf.serving.protos
assert "tensorflow" not in sys.modules
loader = sys.modules["tensorflow.core.framework.tensor_pb2"].__loader__
assert loader.get_source("tensorflow.core.framework.tensor_pb2") is None, loader
sys.meta_path.remove(Sourceless)
""") == "6.0\n"


@pytest.mark.slow
def test_the_protos_without_tensorflow_serving_installed_say_so():
    script = """
import importlib.machinery, sys

class Hidden(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] != "tensorflow_serving":
            return super().find_spec(name, path, target)

sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = Hidden
import ofrnn_tf.serving.protos
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert run.stderr.splitlines()[-1] == (
        "ModuleNotFoundError: No module named 'tensorflow_serving'"), run.stderr
