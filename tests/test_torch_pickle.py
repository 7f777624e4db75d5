"""The torch-free, restricted reader of PyTorch state-dict files."""

import collections
import contextlib
import io
import os
import pickle
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ofrnn_tf.features.backbones import efficientnet_lite
from ofrnn_tf.features.backbones.torch_pickle import UnsafePickleError, load_state_dict

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# -- writing real-format files without torch: stand-in torch modules --------------

class _FakeStorage:
    def __init__(self, key, values):
        self.key, self.values = key, values


class _FakeTensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return (rebuild, (self.storage, self.offset, self.size, self.stride, False,
                          collections.OrderedDict()))


@pytest.fixture
def fake_torch(monkeypatch):
    """Registers modules named torch / torch._utils so pickle can emit their globals."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    class LongStorage:
        pass

    FloatStorage.__module__ = LongStorage.__module__ = "torch"
    FloatStorage.__qualname__, LongStorage.__qualname__ = "FloatStorage", "LongStorage"
    torch.FloatStorage, torch.LongStorage = FloatStorage, LongStorage

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _storage_type(torch, values):
    return torch.LongStorage if values.dtype == np.int64 else torch.FloatStorage


def _state_dict_objects():
    base = np.arange(24, dtype=np.float32)
    shared = _FakeStorage("0", base)
    counts = _FakeStorage("1", np.array([7], dtype=np.int64))
    sd = collections.OrderedDict()
    sd["a.weight"] = _FakeTensor(shared, 0, (2, 3, 4), (12, 4, 1))
    sd["a.transposed"] = _FakeTensor(shared, 0, (4, 6), (1, 4))  # non-contiguous view
    sd["b.bias"] = _FakeTensor(shared, 20, (4,), (1,))  # storage offset
    sd["bn.num_batches_tracked"] = _FakeTensor(counts, 0, (), ())
    expected = {
        "a.weight": base.reshape(2, 3, 4),
        "a.transposed": base.reshape(6, 4).T,
        "b.bias": base[20:24],
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
    }
    return sd, [shared, counts], expected


def _write_zip(path, torch, sd, storages):
    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _FakeStorage):
                return ("storage", _storage_type(torch, obj.values), obj.key, "cpu",
                        obj.values.size)
            return None

    buf = io.BytesIO()
    Writer(buf, protocol=2).dump(sd)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        for s in storages:
            z.writestr(f"archive/data/{s.key}", s.values.astype(s.values.dtype.newbyteorder("<"))
                       .tobytes())


def _write_legacy(path, torch, sd, storages):
    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _FakeStorage):
                return ("storage", _storage_type(torch, obj.values), obj.key, "cpu",
                        obj.values.size, None)
            return None

    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        Writer(f, protocol=2).dump(sd)
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(np.int64(s.values.size).tobytes())
            f.write(s.values.tobytes())


@pytest.mark.parametrize("writer", [_write_zip, _write_legacy], ids=["zip", "legacy"])
def test_reads_both_formats_with_views_and_offsets(tmp_path, fake_torch, writer):
    sd, storages, expected = _state_dict_objects()
    path = str(tmp_path / "weights.pth")
    writer(path, fake_torch, sd, storages)
    loaded = load_state_dict(path)
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype, key
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)


@pytest.mark.parametrize("offset, size, stride, refused", [
    (0, (2,), (-1,), "negative offset, size or stride"),
    (0, (2,), (-(1 << 40),), "negative offset, size or stride"),
    (-4, (2,), (1,), "negative offset, size or stride"),
    (0, (-1, 2), (2, 1), "negative offset, size or stride"),
    (0, (2,), (1000,), "reaches element 1000, past the end of storage 0 [(]24 elements[)]"),
    (20, (2, 3), (4, 1), "reaches element 26, past the end of storage 0 [(]24 elements[)]"),
    (0, (2, 3), (1,), "malformed view"),
], ids=["negative-stride", "huge-negative-stride", "negative-offset", "negative-size",
        "stride-past-the-end", "offset-past-the-end", "strides-of-another-rank"])
def test_a_view_outside_its_storage_is_refused_naming_the_tensor(tmp_path, fake_torch, offset,
                                                                  size, stride, refused):
    # The view comes from the file: read as given, it would copy memory outside the storage.
    storage = _FakeStorage("0", np.arange(24, dtype=np.float32))
    sd = collections.OrderedDict([("ok", _FakeTensor(storage, 0, (4,), (1,))),
                                  ("bad.view", _FakeTensor(storage, offset, size, stride))])
    path = str(tmp_path / "view.pth")
    _write_zip(path, fake_torch, sd, [storage])
    with pytest.raises(ValueError, match=f"^{path}: tensor bad.view: .*{refused}"):
        load_state_dict(path)


def test_reads_the_shipped_efficientnet_lite0_weights():
    sd = load_state_dict(efficientnet_lite.weights_path())
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert sd["_conv_stem.weight"].dtype == np.float32
    assert np.all(sd["_bn1.running_var"] > 0)
    assert np.isfinite(sd["_conv_head.weight"]).all()


# -- refusing everything else --------------------------------------------------------

def _malicious(module: str, name: str, arg: str) -> bytes:
    """A protocol-0 pickle calling module.name(arg)."""
    return f"c{module}\n{name}\n(S'{arg}'\ntR.".encode()


@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"),
                                         ("posix", "system"), ("subprocess", "call")])
def test_refuses_other_globals_in_a_legacy_file(tmp_path, module, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = f"open({str(marker)!r}, 'w')" if name == "eval" else f"touch {marker}"
    path.write_bytes(_malicious(module, name, payload))
    with pytest.raises(UnsafePickleError, match=f"{module}.{name}"):
        load_state_dict(str(path))
    assert not marker.exists()


def test_refuses_a_global_hidden_inside_a_state_dict(tmp_path):
    marker = tmp_path / "pwned"
    # An OrderedDict whose value is os.system(...): the allowed global comes first.
    evil = (b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00k"
            + f"cos\nsystem\n(S'touch {marker}'\ntR".encode() + b"u.")
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(evil)
    with pytest.raises(UnsafePickleError, match="os.system"):
        load_state_dict(str(path))
    assert not marker.exists()


def _shared_state(module):
    """What a pickle could set on the module's functions and classes, and on the classes
    it is allowed to name."""
    state = {}
    for name, value in [*vars(module).items(), ("OrderedDict", collections.OrderedDict)]:
        if isinstance(value, (types.FunctionType, type)):
            state[name] = (value.__name__, value.__qualname__, getattr(value, "__defaults__", None),
                           dict(vars(value)))
    return state


def test_a_pickle_cannot_change_what_later_reads_are_handed(tmp_path):
    # BUILD sets attributes on whatever the pickle names: here a name, defaults and an
    # entry of each admitted global's __dict__.
    def build(module, name):
        def text(s):
            return b"X" + len(s).to_bytes(4, "little") + s.encode()
        attributes = (b"}" + text("note") + b"K\x01s"
                      + b"}" + text("__name__") + text("renamed") + b"s"
                      + text("__defaults__") + b"K\x01K\x02K\x03\x87s")
        # GLOBAL, then (state, slotstate) BUILD, then POP what was built.
        return f"c{module}\n{name}\n".encode() + attributes + b"\x86b0"
    from ofrnn_tf.features.backbones import torch_pickle
    before = _shared_state(torch_pickle)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(b"\x80\x02" + build("collections", "OrderedDict")
                + build("torch._utils", "_rebuild_tensor_v2") + build("torch", "FloatStorage")
                + b"}.")
        pickle.dump([], f, protocol=2)
    with contextlib.suppress(ValueError):
        load_state_dict(str(path))
    assert _shared_state(torch_pickle) == before
    assert load_state_dict(efficientnet_lite.weights_path())["_fc.weight"].shape == (1000, 1280)


def test_a_pickle_cannot_turn_a_tensors_view_check_into_another_call(tmp_path):
    """What the reader hands the pickle for OrderedDict is BUILT into a call of the tensor
    stand-in, which then takes the place of a tensor's view check: its view of 64 elements
    over a storage of 4 read the memory past the storage (a larger one ended the process)."""
    def text(s):
        return b"X" + len(s).to_bytes(4, "little") + s.encode()
    rebuild = b"ctorch._utils\n_rebuild_tensor_v2\n"
    data = (b"\x80\x02ccollections\nOrderedDict\n"
            # BUILD: (function, args, keywords, dict), kept as memo 0 and popped.
            + b"(" + rebuild + b"(K\x00K\x00)t}Ntbq\x000"
            + b"}" + text("w") + rebuild + b"((" + text("storage") + b"ctorch\nFloatStorage\n"
            + text("0") + text("cpu") + b"K\x04tQK\x00K@\x85K\x01\x85tR"
            + b"}" + text("_check_view") + b"h\x00sbs.")
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/data/0", np.arange(4, dtype="<f4").tobytes())
    with pytest.raises(ValueError, match="not a readable PyTorch file"):
        load_state_dict(str(path))


def test_refuses_other_globals_in_a_zip_file(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", _malicious("os", "system", f"touch {marker}"))
    with pytest.raises(UnsafePickleError, match="os.system"):
        load_state_dict(str(path))
    assert not marker.exists()


def test_truncated_file_is_a_clear_error(tmp_path):
    data = Path(efficientnet_lite.weights_path()).read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_state_dict(str(path))


def test_a_size_beyond_the_file_is_refused_before_it_is_read(tmp_path, fake_torch, monkeypatch):
    """A storage that says it holds 2**33 floats, in a file of a few hundred bytes: the
    reader refuses it from the file's size, before asking for 32 GiB."""
    from ofrnn_tf.features.backbones import torch_pickle

    class Declared:  # 2**33 floats as the file declares them, 16 bytes of them written
        size, dtype = 2**33, np.dtype(np.float32)

        def tobytes(self):
            return bytes(16)

    storage = _FakeStorage("0", Declared())
    path = str(tmp_path / "huge.pth")
    _write_legacy(path, fake_torch, {"w": _FakeTensor(storage, 0, (4,), (1,))}, [storage])
    asked = []

    class Recorded(io.FileIO):
        def read(self, n=-1):
            asked.append(n)
            return super().read(n)

    monkeypatch.setattr(torch_pickle, "open", lambda name, mode: Recorded(name, "r"),
                        raising=False)
    with pytest.raises(ValueError, match=r"truncated file \(\d+ of 34359738368 bytes\)"):
        load_state_dict(path)
    assert asked and max(asked) <= os.path.getsize(path), asked


def test_a_zip_entry_that_unpacks_beyond_its_storage_is_refused(tmp_path, fake_torch):
    # Its size is checked from the archive's directory before it is unpacked (an entry
    # compressed from gigabytes of zeros would be a few megabytes).
    class Declared:  # 4 floats as the pickle declares them, 1 MiB of data in the archive
        size, dtype = 4, np.dtype(np.float32)

        def astype(self, dtype):
            return self

        def tobytes(self):
            return bytes(1 << 20)

    storage = _FakeStorage("0", Declared())
    path = str(tmp_path / "bomb.pth")
    _write_zip(path, fake_torch, {"w": _FakeTensor(storage, 0, (4,), (1,))}, [storage])
    with pytest.raises(ValueError, match=r"storage 0 unpacks to 1048576 bytes, more than its 4 "
                                         r"elements hold"):
        load_state_dict(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_state_dict(os.path.join(tmp_path, "nothing.pth"))
