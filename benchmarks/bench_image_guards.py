"""What the served model's header guards cost, against decoding the same images.

The exported model checks every encoded image before it decodes it
(`ofrnn_tf.features.image_guards.decode_images`: formats, headers, the pixel limit, for
a GIF a walk over all its frames; then decoding that names a failing image). This
times, for each set of images, that function (resizing to 224, the main job's side)
against plain `tf.map_fn(decode_and_resize)` (what the model would run without the
guards), each as a `tf.function` on the same string tensor, in alternating calls, and
reports their medians and the guards' share of the first:

- 224x224 photo-like JPEGs (about 10 KB), one and a batch of 32; the same pictures as
  progressive JPEGs (whose scans the guards count), one and 32, and one holding the
  most scans the guards let through (``MAX_JPEG_SCANS``, its last scan repeated);
- the same pictures as single-frame GIFs written by PIL, one and 32, and as 24-bit
  BMPs, one and 32;
- a PIL animation of 40 such frames, each with its own colour table (about 1.6 MB);
- the most steps a GIF can make the frame walk take (a frame a step): ``MAX_GIF_STEPS``
  frames of one pixel (15 KB), one and 32 (a file with one frame more is refused at
  the same cost);
- 31 of the JPEGs and one such GIF: only GIFs are walked;
- as many frames with a local colour table of 256 colours each (800 KB): the walk's
  cost is its steps', not its bytes'.

Prints a markdown table and appends it to benchmarks/RESULTS.md.

    python benchmarks/bench_image_guards.py
"""

from __future__ import annotations

import io
import statistics
import struct
import sys
import time
from pathlib import Path

# Before TensorFlow: ofrnn_tf sets its oneDNN default, read when TensorFlow loads.
import ofrnn_tf  # noqa: F401
import numpy as np
import tensorflow as tf
from absl import flags
from PIL import Image

from ofrnn_tf.features.image_guards import decode_images
from ofrnn_tf.features.images import MAX_GIF_STEPS, MAX_JPEG_SCANS, decode_and_resize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._results import publish  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 15, "alternating timed calls of each function per image set",
                     lower_bound=1)
flags.DEFINE_bool("append", True, "append the results to benchmarks/RESULTS.md")

IMAGE_SIZE = 224


def photo(seed: int) -> Image.Image:
    """A 224x224 picture of smooth colour patches (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (IMAGE_SIZE // 8, IMAGE_SIZE // 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def one_pixel_frames(count: int, colour_tables: bool = False) -> bytes:
    """A GIF of `count` frames of one pixel, each with a local colour table of 256
    colours if `colour_tables`."""
    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + bytes(6)  # 2 colours
    table = bytes(768) if colour_tables else b""
    # Image descriptor, LZW code size 2, one sub-block: clear, pixel 0, end (3-bit codes).
    frame = (b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0x87 if colour_tables else 0) + table
             + b"\x02\x02\x44\x01\x00")
    return header + frame * count + b";"


def with_scans(progressive: bytes, scans: int) -> bytes:
    """`progressive` with its last scan repeated until the file holds `scans`."""
    last, end = progressive.rindex(b"\xff\xda"), progressive.rindex(b"\xff\xd9")
    copies = scans - progressive.count(b"\xff\xda")
    return progressive[:end] + progressive[last:end] * copies + progressive[end:]


def image_sets() -> dict[str, list[bytes]]:
    jpegs = [encode(photo(s), "JPEG") for s in range(32)]
    progressive = [encode(photo(s), "JPEG", progressive=True) for s in range(32)]
    gifs = [encode(photo(s).convert("P", palette=Image.Palette.ADAPTIVE), "GIF")
            for s in range(32)]
    frames = [photo(100 + s).convert("P", palette=Image.Palette.ADAPTIVE) for s in range(40)]
    animation = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0,
                       duration=50, comment=b"an animation")
    bmps = [encode(photo(s), "BMP") for s in range(32)]
    small_frames = one_pixel_frames(MAX_GIF_STEPS)
    most_steps = one_pixel_frames(MAX_GIF_STEPS, colour_tables=True)
    return {"1 JPEG": jpegs[:1], "32 JPEGs": jpegs, "1 progressive JPEG": progressive[:1],
            "32 progressive JPEGs": progressive,
            f"progressive JPEG of {MAX_JPEG_SCANS} scans": [with_scans(progressive[0],
                                                                       MAX_JPEG_SCANS)],
            "1 GIF": gifs[:1], "32 GIFs": gifs,
            "1 BMP": bmps[:1], "32 BMPs": bmps, "animated GIF, 40 frames": [animation],
            f"GIF of {MAX_GIF_STEPS} one-pixel frames": [small_frames],
            f"32 GIFs of {MAX_GIF_STEPS} one-pixel frames": [small_frames] * 32,
            f"31 JPEGs and a GIF of {MAX_GIF_STEPS} one-pixel frames": jpegs[:31] + [small_frames],
            f"GIF of {MAX_GIF_STEPS} one-pixel frames with colour tables": [most_steps],
            f"32 GIFs of {MAX_GIF_STEPS} one-pixel frames with colour tables": [most_steps] * 32}


def call_seconds(fn, images: tf.Tensor) -> float:
    start = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy(), fn(images))
    return time.perf_counter() - start


def main(argv):
    del argv
    limit = tf.Variable(10 ** 12, dtype=tf.int64)  # every image here passes
    spec = [tf.TensorSpec([None], tf.string)]
    check = tf.function(lambda images: decode_images(images, IMAGE_SIZE, limit),
                        input_signature=spec)
    decode = tf.function(lambda images: tf.map_fn(
        lambda data: decode_and_resize(data, IMAGE_SIZE), images,
        fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8)),
        input_signature=spec)
    lines = ["| images | bytes each | served (guards + decode), ms | decode alone, ms | "
             "guards' share |", "|---|---:|---:|---:|---:|"]
    for name, images in image_sets().items():
        tensor = tf.constant(images)
        for fn in (check, decode, check, decode):  # tracing and warm-up, untimed
            fn(tensor)
        times = {"check": [], "decode": []}
        for round_ in range(FLAGS.rounds):
            order = (("check", check), ("decode", decode))
            for key, fn in (order if round_ % 2 == 0 else order[::-1]):
                times[key].append(call_seconds(fn, tensor))
        checked, decoded = (statistics.median(times[k]) * 1e3 for k in ("check", "decode"))
        line = (f"| {name} | {len(images[0]):,} | {checked:.2f} | {decoded:.2f} | "
                f"{(checked - decoded) / checked:.1%} |")
        print(line, file=sys.stderr, flush=True)
        lines.append(line)
    lines.append("")
    lines.append(f"Medians of {FLAGS.rounds} alternating calls of each, after warm-up calls; "
                 "`decode_images` (the served model's, `name_decode_failures=\"auto\"`) and "
                 "`tf.map_fn(decode_and_resize)` as `tf.function`s on the same string tensor; "
                 "the guards' share is (served − decode alone) / served.")
    publish("What the served model's header guards cost", "\n".join(lines), FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
