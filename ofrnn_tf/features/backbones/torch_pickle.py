"""Reads a PyTorch ``state_dict`` file (``.pth``) into NumPy arrays, without torch.

A ``.pth`` file is a pickle, and unpickling runs whatever callables the pickle
names. This reader uses a restricted `pickle.Unpickler` whose ``find_class`` admits
only what a tensor state dict needs — ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` and the typed storage classes
(``torch.FloatStorage`` ...) — and maps each of them to a stand-in of this module, made
afresh for each pickle read: a pickle can set attributes on what it is handed (``BUILD``),
which then changes nothing another read is handed.
Any other global (``os.system``, ``builtins.eval`` ...) is refused with
`UnsafePickleError` before it can be called. torch itself is never imported.

Both serialisation formats are read:

- the zip format (torch >= 1.6): ``<root>/data.pkl`` plus one raw little-endian file
  per storage under ``<root>/data/<key>``;
- the legacy format: five concatenated records — magic number, protocol version,
  system info, the state-dict pickle, the list of storage keys — followed by each
  storage as an int64 element count and its raw bytes.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import pickle
import zipfile
from typing import Any, BinaryIO, Callable

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global that a tensor state dict does not need."""


class _StorageType:
    """Stands in for ``torch.<Type>Storage``: only carries the NumPy dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A flat buffer of one dtype, filled once its bytes have been read."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.array: np.ndarray | None = None

    def fill(self, raw: bytes) -> None:
        expected = self.numel * self.dtype.itemsize
        if len(raw) != expected:
            raise ValueError(f"storage {self.key}: {len(raw)} bytes, expected {expected}")
        self.array = np.frombuffer(raw, dtype=self.dtype.newbyteorder("<"))


class _StorageView:
    """A legacy-format view into a root storage (``view_metadata``)."""

    def __init__(self, root: _Storage, offset: int, size: int):
        self.root, self.offset, self.size = root, offset, size
        self.dtype = root.dtype


class _LazyTensor:
    """What ``_rebuild_tensor_v2`` returns: materialised after the storages load."""

    def __init__(self, storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)

    def materialize(self, name: str) -> np.ndarray:
        """The tensor's values, copied out of its storage. Its view (offset, sizes,
        strides) comes from the file, so it is checked to lie inside the storage first:
        `as_strided` would read whatever memory a hostile view points at."""
        storage, offset, limit = self.storage, self.offset, None
        if isinstance(storage, _StorageView):
            offset += storage.offset
            limit = storage.offset + storage.size
            storage = storage.root
        if storage.array is None:
            raise ValueError(f"tensor {name}: storage {storage.key} was never read")
        flat = storage.array
        limit = flat.size if limit is None else min(limit, flat.size)
        self._check_view(name, storage.key, offset, limit)
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, dtype=flat.dtype)
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=self.size, strides=tuple(s * itemsize for s in self.stride))
        return np.array(view, dtype=flat.dtype.newbyteorder("="))

    def _check_view(self, name: str, key: str, offset: int, limit: int) -> None:
        """Refuses a view whose elements are not all within ``[0, limit)`` of storage
        `key`: with non-negative offset, sizes and strides the lowest index is the
        offset and the highest ``offset + sum((size - 1) * stride)``."""
        size, stride = self.size, self.stride
        if len(size) != len(stride) or not all(
                isinstance(v, int) for v in size + stride + (offset,)):
            raise ValueError(f"tensor {name}: malformed view (sizes {size}, strides {stride})")
        if offset < 0 or any(v < 0 for v in size + stride):
            raise ValueError(f"tensor {name}: negative offset, size or stride (offset "
                             f"{offset}, sizes {size}, strides {stride})")
        if any(n == 0 for n in size):
            return
        highest = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if offset >= limit or highest >= limit:
            raise ValueError(f"tensor {name}: view (offset {offset}, sizes {size}, strides "
                             f"{stride}) reaches element {highest}, past the end of storage "
                             f"{key} ({limit} elements)")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> _LazyTensor:
    del requires_grad, backward_hooks, metadata
    return _LazyTensor(storage, storage_offset, size, stride)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """What `find_class` hands out, new objects on each call: never a class or function
    other reads share, whose name, defaults or attributes a pickle could set. The
    callables are functions, not ``functools.partial``: a pickle can give a partial
    another function and arguments (``BUILD`` calls its ``__setstate__``), and such a
    call set in place of a tensor's view check let a view past its storage through."""
    def ordered_dict(*args) -> collections.OrderedDict:
        return collections.OrderedDict(*args)

    def rebuild_tensor_v2(*args) -> _LazyTensor:
        return _rebuild_tensor_v2(*args)

    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): ordered_dict,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
    }
    for name in _STORAGE_DTYPES:
        allowed[("torch", name)] = _StorageType(name)
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only the globals of `_allowed_globals`; storages via persistent ids."""

    def __init__(self, file: BinaryIO, source: str,
                 persistent_load: Callable[[tuple], Any] | None = None):
        super().__init__(file)
        self._source = source
        self._allowed = _allowed_globals()
        self._persistent = persistent_load

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refusing to load global '{module}.{name}': only tensors "
                f"and plain containers are allowed in a state dict") from None

    def persistent_load(self, pid):
        if self._persistent is None:
            raise UnsafePickleError(f"{self._source}: unexpected persistent id {pid!r}")
        return self._persistent(pid)


def _storage_from_pid(pid, source: str) -> tuple[_StorageType, str, int, Any]:
    if not isinstance(pid, tuple) or not pid or _ascii(pid[0]) != "storage":
        raise UnsafePickleError(f"{source}: unsupported persistent id {pid!r}")
    if len(pid) == 6:  # legacy: storage, type, key, location, numel, view_metadata
        _, stype, key, _location, numel, view = pid
    elif len(pid) == 5:  # zip: storage, type, key, location, numel
        _, stype, key, _location, numel = pid
        view = None
    else:
        raise UnsafePickleError(f"{source}: unsupported persistent id {pid!r}")
    if not isinstance(stype, _StorageType):
        raise UnsafePickleError(f"{source}: persistent id names a non-storage type {stype!r}")
    return stype, _ascii(key), int(numel), view


def _ascii(value) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _collect(obj, path: str, source: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a state dict, found {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        name = f"{path}{key}"
        if isinstance(value, _LazyTensor):
            try:
                out[name] = value.materialize(name)
            except ValueError as error:
                raise ValueError(f"{source}: {error}") from None
        elif isinstance(value, dict):
            out.update(_collect(value, f"{name}.", source))
        # Plain metadata (ints, strings, e.g. a "_metadata" entry) is not a weight.
    return out


def _load_legacy(f: BinaryIO, source: str) -> dict[str, np.ndarray]:
    magic = _RestrictedUnpickler(f, source).load()
    if magic != _LEGACY_MAGIC:
        raise ValueError(f"{source}: not a PyTorch file (bad magic number)")
    protocol = _RestrictedUnpickler(f, source).load()
    if protocol != _LEGACY_PROTOCOL:
        raise ValueError(f"{source}: unsupported legacy protocol version {protocol}")
    sys_info = _RestrictedUnpickler(f, source).load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ValueError(f"{source}: big-endian PyTorch files are not supported")

    storages: dict[str, _Storage] = {}

    def persistent(pid):
        stype, key, numel, view = _storage_from_pid(pid, source)
        if key not in storages:
            storages[key] = _Storage(key, stype.dtype, numel)
        if view is not None:
            _view_key, offset, size = view
            return _StorageView(storages[key], int(offset), int(size))
        return storages[key]

    result = _RestrictedUnpickler(f, source, persistent).load()
    keys = _RestrictedUnpickler(f, source).load()
    for key in keys:
        key = _ascii(key)
        if key not in storages:
            raise ValueError(f"{source}: storage {key} listed but never referenced")
        storage = storages[key]
        count = np.frombuffer(_read_exact(f, 8, source), dtype="<i8")[0]
        if count != storage.numel:
            raise ValueError(f"{source}: storage {key} holds {count} elements, "
                             f"expected {storage.numel}")
        storage.fill(_read_exact(f, int(count) * storage.dtype.itemsize, source))
    return _collect(result, "", source)


def _load_zip(path: str) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {pkl}")
        root = pkl[0][: -len("data.pkl")]
        byteorder = root + "byteorder"
        if byteorder in names and z.read(byteorder).strip() != b"little":
            raise ValueError(f"{path}: big-endian PyTorch files are not supported")
        storages: dict[str, _Storage] = {}

        def persistent(pid):
            stype, key, numel, _ = _storage_from_pid(pid, path)
            if key not in storages:
                storage = _Storage(key, stype.dtype, numel)
                entry = z.getinfo(f"{root}data/{key}")
                if entry.file_size > max(numel, 0) * stype.dtype.itemsize * 8:
                    raise ValueError(f"{path}: storage {key} unpacks to {entry.file_size} "
                                     f"bytes, more than its {numel} elements hold")
                raw = z.read(entry)
                # The zip format records the element count of the untyped storage in
                # bytes for torch >= 2; the file size is authoritative.
                storage.numel = len(raw) // stype.dtype.itemsize
                storage.fill(raw)
                storages[key] = storage
            return storages[key]

        with z.open(pkl[0]) as f:
            result = _RestrictedUnpickler(io.BytesIO(f.read()), path, persistent).load()
    return _collect(result, "", path)


def _read_exact(f: BinaryIO, n: int, source: str) -> bytes:
    # A size read from the file is checked against what the file holds before `read`
    # allocates it: a few bytes could otherwise ask for any amount of memory.
    with contextlib.suppress(AttributeError, OSError, io.UnsupportedOperation):
        left = os.fstat(f.fileno()).st_size - f.tell()
        if n > left:
            raise ValueError(f"{source}: truncated file ({left} of {n} bytes)")
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{source}: truncated file ({len(data)} of {n} bytes)")
    return data


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads the tensors of a PyTorch state-dict file as ``{name: np.ndarray}``.

    Nested dicts are flattened with dotted names. Raises `UnsafePickleError`
    (naming the global) when the file references anything but tensors and plain
    containers, and ``ValueError`` for a truncated or malformed file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no PyTorch weights file at {path}")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with open(path, "rb") as f:
            return _load_legacy(f, path)
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError, TypeError, AttributeError, IndexError,
            KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable PyTorch file ({type(e).__name__}: {e})"
                         ) from None
