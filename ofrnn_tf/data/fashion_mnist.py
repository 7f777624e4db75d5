"""Fashion-MNIST, the source of the embedded benchmark's items: its ten class names, where
its four IDX files are found (the Debian package's folder, then keras.datasets' caches),
reading them, and downloading them through keras where none holds them.

Imports no TensorFlow unless it downloads (keras starts it), so that
``scripts/setup_env.sh`` asks `find_fashion_mnist` in well under a second."""

from __future__ import annotations

import gzip
import os
import sys

import numpy as np

from ofrnn_tf.data import DataNotFoundError
from ofrnn_tf.downloads import (
    certificates_remedy, keras_cache_candidates, keras_cache_dir, socket_timeout)


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"


_IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
              "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


# Where keras.datasets.fashion_mnist downloads the four files from, and caches them.
_DOWNLOAD_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"


_KERAS_CACHE_SUBDIR = os.path.join("datasets", "fashion-mnist")


class BenchmarkSourceError(DataNotFoundError):
    """Fashion-MNIST, the benchmark's source, cannot be had: no folder searched holds its
    four files and they could not be downloaded, or a file found does not read. The remedy
    is a package, a copy of the files or the network, not a flag."""


def read_idx(path: str, remedy: str = "reinstall the Debian package dataset-fashion-mnist"
             ) -> np.ndarray:
    """Reads a (gzipped) IDX file of unsigned bytes into a numpy array; a file that does
    not read is named, with `remedy` (how to get it whole again)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # EOFError: a gzip file cut short
        raise OSError(f"cannot read IDX file {path}: {e}; replace the file ({remedy})"
                      ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise ValueError(f"{path}: IDX element type 0x{data[2]:02x}, expected unsigned "
                         f"bytes (0x08)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} ({int(np.prod(shape))} "
                         f"bytes) but the file holds {len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def fashion_mnist_folders(source_dir: str = DEFAULT_SOURCE_DIR) -> list[str]:
    """The folders searched for Fashion-MNIST's four ``*-ubyte.gz`` files, in turn:
    `source_dir` (the Debian package's), then where keras.datasets caches them,
    ``$KERAS_HOME/datasets/fashion-mnist``, ``~/.keras/datasets/fashion-mnist`` and
    ``/tmp/.keras/datasets/fashion-mnist`` (keras's fallback where home is read-only).

    Each is read wherever it is, writable or not: keras itself skips a read-only home's
    copies."""
    return list(dict.fromkeys([source_dir, *keras_cache_candidates(_KERAS_CACHE_SUBDIR)]))


def find_fashion_mnist(source_dir: str = DEFAULT_SOURCE_DIR) -> str | None:
    """The first of `fashion_mnist_folders` that holds the four files (None: none does)."""
    for folder in fashion_mnist_folders(source_dir):
        if all(os.path.exists(os.path.join(folder, n))
               for names in _IDX_FILES.values() for n in names):
            return folder
    return None


def _read_idx_folder(folder: str, remedy: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    data = {}
    for split, names in _IDX_FILES.items():
        img_path, lab_path = (os.path.join(folder, n) for n in names)
        try:
            images, labels = read_idx(img_path, remedy), read_idx(lab_path, remedy)
        except OSError as e:  # says the remedy already
            raise BenchmarkSourceError(str(e)) from None
        except ValueError as e:
            raise BenchmarkSourceError(f"{e}; replace the file ({remedy})") from None
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise BenchmarkSourceError(
                f"{img_path} / {lab_path}: shapes {images.shape} and {labels.shape} do not "
                f"form an image set; replace the files ({remedy})")
        if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
            raise BenchmarkSourceError(f"{lab_path}: label {labels.max()} outside 0..9; "
                                       f"replace the file ({remedy})")
        data[split] = (images, labels)
    return data


def _remedy(folder: str) -> str:
    """How to get a damaged file of `folder` whole again."""
    if folder == DEFAULT_SOURCE_DIR:
        return "reinstall the Debian package dataset-fashion-mnist"
    if folder in keras_cache_candidates(_KERAS_CACHE_SUBDIR):
        return (f"copy it again, or delete it and keras.datasets downloads it into "
                f"{keras_cache_dir(_KERAS_CACHE_SUBDIR)}")
    return "copy it again"


def load_fashion_mnist(source_dir: str = DEFAULT_SOURCE_DIR,
                       allow_download: bool = True
                       ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    """Returns ``({"train": (images, labels), "test": ...}, the folder read)``.

    Images are uint8 [N, 28, 28], labels uint8 [N] in 0..9. Reads the IDX files of the
    first of `fashion_mnist_folders` that holds all four; where none does and
    `allow_download`, keras.datasets downloads them into its cache first (each connection
    bounded by `DOWNLOAD_SOCKET_TIMEOUT_S`). `BenchmarkSourceError` names a file that does
    not read, or the folders searched.
    """
    folder = find_fashion_mnist(source_dir)
    if folder is not None:
        if folder != source_dir:
            print(f"Fashion-MNIST: {source_dir} lacks the IDX files, read {folder}",
                  file=sys.stderr)
        return _read_idx_folder(folder, _remedy(folder)), folder

    searched = ", ".join(fashion_mnist_folders(source_dir))
    advice = "copy the four files to one of these folders"
    if sys.platform.startswith("linux"):  # the Debian package: not on macOS
        advice = f"install the Debian package dataset-fashion-mnist, or {advice}"
    if not allow_download:
        raise BenchmarkSourceError(f"Fashion-MNIST is not available: none of {searched} "
                                   f"holds its four *-ubyte.gz IDX files; {advice}")
    cache = keras_cache_dir(_KERAS_CACHE_SUBDIR)
    try:
        import keras  # deferred: importing keras starts TensorFlow

        with socket_timeout():
            for names in _IDX_FILES.values():
                for name in names:
                    path = keras.utils.get_file(name, origin=_DOWNLOAD_ORIGIN + name,
                                                cache_subdir=_KERAS_CACHE_SUBDIR)
        cache = os.path.dirname(path)  # keras's, should its home differ from ours
    except Exception as e:  # noqa: BLE001 - keras.utils.get_file raises a bare Exception
        raise BenchmarkSourceError(
            f"Fashion-MNIST is not available: none of {searched} holds its four *-ubyte.gz "
            f"IDX files ({advice}), and downloading them into {cache} failed: {e}"
            f"{certificates_remedy(e)}") from None
    print(f"Fashion-MNIST: {source_dir} lacks the IDX files, downloaded them into {cache}",
          file=sys.stderr)
    return _read_idx_folder(cache, _remedy(cache)), cache
