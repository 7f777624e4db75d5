"""What decoding one large image costs in memory, as the served model decodes it.

The export's pixel limit (``--max_image_pixels``) is what an operator raises for large
photos; this measures what each source pixel then costs. For each image (a photo-like
JPEG or PNG of the given sizes, made with PIL and written to a temporary folder), a
fresh child process reads it and runs the served decoder
(`ofrnn_tf.features.image_guards.decode_images`, as a `tf.function` resizing to 224, the
main job's side) once on a small image, then once on the image, and reports
how far its resident memory rose above what it held before that call (``VmHWM``, reset
first, against ``VmRSS``): the decoded image and the resize's buffers. Linux only.

Prints a markdown table and appends it to benchmarks/RESULTS.md.

    python benchmarks/bench_decode_memory.py
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks import _stops as stops  # noqa: E402
from benchmarks._results import check_choices, check_int_list, publish  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("sides", ["2000", "6000", "12000"], "Square images of these sides.")
flags.DEFINE_list("formats", ["JPEG", "PNG"], "Image formats.")
flags.DEFINE_bool("append", True, "Append the results to benchmarks/RESULTS.md.")
check_int_list("sides")
check_choices("formats", ["JPEG", "PNG"])

SIZE = 224

# Run in the child on an image file: prints its resident memory (KiB) before the call on
# the image and its peak during it. The peak (VmHWM) is reset first (Linux's clear_refs),
# so that TensorFlow's start, which goes higher than it then stays, does not hide it.
_CHILD = f"""
import sys
import ofrnn_tf
import tensorflow as tf
from ofrnn_tf.features.image_guards import decode_images

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

small, data = (open(path, "rb").read() for path in sys.argv[1:3])
decode = tf.function(lambda images: decode_images(images, {SIZE}, 10 ** 10),
                     input_signature=[tf.TensorSpec([None], tf.string)])
decode(tf.constant([small]))
images = tf.constant([data])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
decode(images)
print(before, status("VmHWM"))
"""


def photo(side: int, fmt: str) -> bytes:
    """A `side` x `side` picture of gradients and a pattern, encoded as `fmt`."""
    ramp = (np.arange(side, dtype=np.uint32) * 255 // side).astype(np.uint8)
    rgb = np.empty((side, side, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = ramp[None, :], ramp[:, None]
    rgb[..., 2] = ramp[None, :] ^ ramp[:, None]
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, fmt)
    return buffer.getvalue()


def measure(side: int, fmt: str, folder: Path) -> tuple[float, int]:
    """``(peak growth in MiB, file bytes)`` of decoding one `fmt` image of `side` x `side`."""
    small, image = folder / f"small.{fmt}", folder / f"image.{fmt}"
    small.write_bytes(photo(64, fmt))
    image.write_bytes(photo(side, fmt))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(small), str(image)], check=True,
                         capture_output=True, text=True).stdout.split()
    before, after = (int(v) for v in out[-2:])
    return (after - before) / 1024, image.stat().st_size


def main(argv) -> None:
    del argv
    lines = ["Peak resident memory added by the served decoder (`decode_images`, resizing to "
             f"{SIZE}) for one image, each in a fresh process after a 64x64 one: its peak "
             "during the call (VmHWM, reset before it) less its resident memory before.", "",
             "| format | pixels | file, KB | peak added, MiB | bytes per source pixel |",
             "|---|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory(prefix="bench_decode_memory_") as folder:
        for fmt in FLAGS.formats:
            for side in map(int, FLAGS.sides):
                added, size = measure(side, fmt, Path(folder))
                pixels = side * side
                lines.append(f"| {fmt} | {side}x{side} = {pixels:,} | {size / 1000:,.0f} | "
                             f"{added:,.0f} | {added * 2 ** 20 / pixels:.1f} |")
                print(lines[-1], file=sys.stderr, flush=True)
    publish("What decoding a large image costs in memory", "\n".join(lines), FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
