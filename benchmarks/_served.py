"""A server child process for the benchmarks that read its memory, and what they send it."""

from __future__ import annotations

import io
import tempfile

import numpy as np
from PIL import Image

from ofrnn_tf.serving.server_process import DEFAULT_MODEL_NAME, start_subprocess


def jpeg_224() -> bytes:
    """A 224x224 JPEG of a gradient with noise (about 20 KB), the same every time."""
    y, x = np.mgrid[0:224, 0:224]
    noise = np.random.default_rng(0).integers(0, 40, (224, 224, 3))
    rgb = np.stack([x, y, (x + y) % 256], axis=-1) + noise
    buffer = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def rss_mib(pid: int) -> float:
    """The resident memory of process `pid` in MiB (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def start_server(export_dir: str, script: str):
    """`(process, target)` of a fresh ``ofrnn-serve`` child serving `export_dir`, listening;
    SystemExit naming `script` and the server's reason when it does not start."""
    # The server's log (a line per refusal) is kept out of the output, but for a start
    # that fails: its reason is there.
    with tempfile.TemporaryFile("w+") as log:
        try:
            return start_subprocess(export_dir, DEFAULT_MODEL_NAME, stderr=log)
        except RuntimeError as error:
            log.seek(0)
            said = [line for line in log.read().splitlines() if line.startswith("ofrnn-serve")]
            raise SystemExit(f"{script}: {error}: "
                             f"{said[-1] if said else 'its log says nothing'}") from None
