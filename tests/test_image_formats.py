"""What image files each path accepts: ofrnn-predict's header check and the served graph's
guard give the same hints for files mistaken for images, and the run's example images
(the export's warm-up) are only test images the served model accepts."""

from __future__ import annotations

import io
import os
import re
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ofrnn_tf.data import run_data
from ofrnn_tf.data.example import Example
from ofrnn_tf.features.image_guards import DEFAULT_MAX_IMAGE_PIXELS, check_encoded_images
from ofrnn_tf.features.images import decode_checked, gif_frames, read_image_header

from bmp_files import bit_fields_bmp, os2_bmp, pillow_bmp, rle8_bmp, with_bit_depth
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.run_dir import RunDir
from ofrnn_tf.tf_errors import reason_text
from ofrnn_tf.visualization import example_images


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def picture(seed: int = 0, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


NOT_ACCEPTED = ", which is not accepted)"
MISTAKEN = {
    "webp": (encode(picture(), "WEBP"), " (this looks like WebP" + NOT_ACCEPTED),
    "tiff": (encode(picture(), "TIFF"), " (this looks like TIFF" + NOT_ACCEPTED),
    "big-endian tiff": (b"MM\0*\0\0\0\x08" + bytes(32), " (this looks like TIFF" + NOT_ACCEPTED),
    "heif": (b"\0\0\0\x18ftypheic" + bytes(32), " (this looks like HEIF/AVIF" + NOT_ACCEPTED),
    "avif": (b"\0\0\0\x1cftypavif" + bytes(32), " (this looks like HEIF/AVIF" + NOT_ACCEPTED),
    "base64 text": (b"iVBORw0KGgoAAAANSUhEUgAA", " (this looks like base64 text: send the "
                                                 "decoded bytes, or in the REST API the text "
                                                 "as the value of an object whose one key is "
                                                 "b64)"),
    "url-safe base64 text": (b"_9j_4AAQSkZJRgABAQ", " (this looks like URL-safe base64 text: "
                                                    "send the decoded bytes, or in the REST "
                                                    "API standard base64 (+ and / for - and "
                                                    "_) as the value of an object whose one "
                                                    "key is b64)"),
    "data url": (b"data:image/png;base64,iVBO", " (this looks like a data URL: send the "
                                                "decoded bytes)"),
    "riff that is not webp": (b"RIFF\0\0\0\0WAVEfmt " + bytes(16), ""),
    "plain text": (b"meeting notes, not a picture", ""),
}


@tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
def served_guard(images):
    """The guard in a graph, as a server runs it: there the Assert's text comes C-escaped
    (eagerly it comes as a Python bytes repr, quotes as they are)."""
    return check_encoded_images(images, DEFAULT_MAX_IMAGE_PIXELS)


def graph_hint(data: bytes) -> str:
    """What the served graph's guard adds after the bytes it shows ("" for none), as a
    client of a server reads it (`reason_text`, what `ofrnn-serve` answers)."""
    with pytest.raises(tf.errors.InvalidArgumentError) as refused:
        served_guard(tf.constant([data]))
    message = reason_text(refused.value.message)
    match = re.search(r"starts with (?:[0-9a-f]{2} ?)+(.*)$", message)
    assert match, message
    return match.group(1)


def test_the_header_reader_imports_no_tensorflow():
    """A client checks the headers of the images a server refused without TensorFlow's
    seconds of import; `ofrnn_tf.features.images` gives the same functions."""
    import subprocess
    import sys

    code = ("import sys; from ofrnn_tf.features.image_headers import read_image_header; "
            "print(read_image_header(bytes.fromhex('89504e470d0a1a0a0000000d494844520000000200"
            "000003')), 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "('PNG', 2, 3) False\n"
    from ofrnn_tf.features import image_headers
    assert read_image_header is image_headers.read_image_header


@pytest.mark.parametrize("name", MISTAKEN)
def test_predict_and_the_served_graph_give_the_same_hint(name):
    data, hint = MISTAKEN[name]
    assert graph_hint(data) == hint.strip()
    with pytest.raises(ValueError) as refused:
        read_image_header(data)
    message = str(refused.value)
    assert message.startswith("not a JPEG/PNG/GIF/BMP image (starts with ")
    assert message.endswith(")" + hint) if hint else message.endswith(")")


# -- headers: ofrnn-predict's check, the served graph's guard and TensorFlow's decoders ----
def python_header(data: bytes):
    """``(format, width, height)`` from `read_image_header`, or None when it refuses."""
    try:
        return read_image_header(data)
    except ValueError:
        return None


def graph_header(data: bytes):
    """``(format, width, height)`` the served graph's guard reads, or None when it refuses
    the header: with a limit of 0 pixels, a sound header is refused for its size."""
    with pytest.raises(tf.errors.InvalidArgumentError) as refused:
        check_encoded_images(tf.constant([data]), 0)
    found = re.search(r"is an? (\w+) of (\d+)x(\d+) = \d+ pixels, above the limit of 0 ",
                      refused.value.message)
    return (found.group(1), int(found.group(2)), int(found.group(3))) if found else None


def decoded_size(data: bytes):
    """``(width, height)`` of what TensorFlow decodes, or None when it refuses."""
    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.OpError:
        return None
    return int(image.shape[1]), int(image.shape[0])


JPEG = encode(picture(3, (64, 48)), "JPEG")
_SOF = JPEG.index(b"\xff\xc0")
_DQT = JPEG.index(b"\xff\xdb")
_SOF_SEGMENT = JPEG[_SOF:_SOF + 2 + int.from_bytes(JPEG[_SOF + 2:_SOF + 4], "big")]


def stray(data: bytes, at: int, extra: bytes) -> bytes:
    return data[:at] + extra + data[at:]


def noise(count: int, seed: int = 0, high: int = 255) -> bytes:
    """Random bytes, without FF unless ``high`` is 256."""
    return np.random.default_rng(seed).integers(0, high, count, np.uint8).tobytes()


def stray_run(seed: int) -> bytes:
    """Bytes libjpeg skips between two markers: no FF, but FF 00, runs of fill bytes
    before 00, and a run of fill bytes at the end."""
    rng = np.random.default_rng(seed)
    parts = [noise(int(rng.integers(1, 300)), seed) for _ in range(3)]
    return (parts[0] + b"\xff\x00" + parts[1] + b"\xff" * int(rng.integers(1, 5)) + b"\x00"
            + parts[2] + b"\xff" * int(rng.integers(0, 4)))


def _bmp_with_dib_size(size: int) -> bytes:
    bmp = encode(picture(4), "BMP")
    return bmp[:14] + size.to_bytes(4, "little") + bmp[18:]


def _gif(screen=None, blocks: bytes = b"", seed: int = 6, size=(40, 30), **options) -> bytes:
    """A GIF (256 colours: its blocks start at 781), with ``blocks`` before its first
    extension or image and another logical screen size if given."""
    gif = encode(picture(seed, size).convert("P", palette=Image.Palette.ADAPTIVE), "GIF",
                 **options)
    if screen is not None:
        gif = gif[:6] + struct.pack("<HH", *screen) + gif[10:]
    return gif[:781] + blocks + gif[781:]


def _comment(text: bytes, chunk: int = 255) -> bytes:
    return (b"\x21\xfe" + b"".join(bytes([len(text[k:k + chunk])]) + text[k:k + chunk]
                                   for k in range(0, len(text), chunk)) + b"\x00")


_GIF_EXTENSIONS = dict(comment=b"a comment", loop=0, duration=100)  # NETSCAPE2.0, comment, GCE
_FAKE_FRAME = b"\xff\xc0" + _SOF_SEGMENT[2:5] + (20).to_bytes(2, "big") + (30).to_bytes(
    2, "big") + _SOF_SEGMENT[9:]
# (bytes, whether TensorFlow decodes them)
HEADERS = {
    "jpeg": (JPEG, True),
    "progressive jpeg": (encode(picture(5, (50, 70)), "JPEG", progressive=True), True),
    **{f"{n} stray byte(s) before {name}": (stray(JPEG, at, noise(n, n)), True)
       for n in (1, 4, 300) for name, at in (("DQT", _DQT), ("SOF", _SOF))},
    **{f"{n} zeros and fill bytes before DQT": (stray(JPEG, _DQT, bytes(n) + b"\xff\xff"), True)
       for n in (253, 254, 255, 256, 509, 510)},
    **{f"stray bytes with FF 00 and fill bytes ({seed})": (
        stray(JPEG, (_DQT, _SOF)[seed % 2], stray_run(seed)), True) for seed in range(6)},
    "a fake FF C0 behind FF 00 in stray bytes": (
        stray(JPEG, _SOF, b"\x01\xff\x00" + _FAKE_FRAME[1:] + b"\x02"), True),
    # libjpeg reads the first: then refuses the file for its second frame header.
    "a frame header in stray bytes, before the real one": (
        stray(JPEG, _DQT, b"\x01\x02" + _FAKE_FRAME + b"\x03"), False),
    "the frame header moved among stray bytes": (
        stray(JPEG.replace(_SOF_SEGMENT, b""), _DQT, b"\x12\x34" + _SOF_SEGMENT + b"\x56"),
        True),
    "stray bytes after a segment shorter than its length field": (
        stray(JPEG, _DQT, b"\xff\xfe\x00\x00"), True),
    **{f"garbage to the end after SOI ({seed})": (b"\xff\xd8\xff" + noise(3000, seed, 256),
                                                  False) for seed in range(4)},
    "garbage without FF to the end after APP0": (JPEG[:20] + noise(3000), False),
    "cut off inside stray bytes": (stray(JPEG[:_DQT], _DQT, bytes(5)), False),
    "cut off after a fill byte": (JPEG[:_DQT] + b"\x00\xff", False),
    "cut off inside the frame header": (JPEG[:_SOF + 9], False),
    # TensorFlow decodes a GIF's first frame at its own size, whatever the screen says.
    "gif": (_gif(), True),
    "gif whose screen is smaller than its frame": (_gif((10, 10)), True),
    "gif whose screen is larger than its frame": (_gif((300, 200)), True),
    "gif whose screen is narrower and taller than its frame": (_gif((10, 200)), True),
    "gif with a loop, a comment and a graphics control extension": (
        _gif(**_GIF_EXTENSIONS), True),
    "gif with a 2-colour table": (encode(Image.new("P", (30, 20), 1), "GIF"), True),
    "gif without a global colour table": (
        (lambda g: g[:10] + b"\x00" + g[11:13] + g[19:])(encode(Image.new("P", (30, 20), 1),
                                                               "GIF")), False),
    **{f"gif with a {n}-byte comment in {chunk}-byte sub-blocks": (
        _gif(blocks=_comment(b"c" * n, chunk), **_GIF_EXTENSIONS), True)
       for n, chunk in ((10, 1), (40, 1), (300, 255), (3000, 255), (1000, 1))},
    "gif cut off inside its colour table": (_gif()[:500], False),
    "gif cut off inside an extension": (_gif(**_GIF_EXTENSIONS)[:800], False),
    "gif cut off inside a long comment": (_gif(blocks=_comment(b"c" * 3000))[:2000], False),
    "gif cut off inside its image descriptor": (_gif()[:786], False),
    "gif with its trailer before any image": (_gif()[:781] + b";", False),
    # giflib reads an extension's first sub-block, then sub-blocks up to an empty one:
    # an empty first sub-block does not end it.
    "gif with an extension whose first sub-block is empty": (
        _gif(blocks=b"\x21\xfe\x00\x00"), True),
    "gif with an extension of one empty sub-block": (_gif(blocks=b"\x21\xfe\x00"), False),
    "gif with a 1x1 image descriptor that giflib reads as a sub-block": (
        _gif(blocks=b"\x21\xfe\x00" + b"\x2c" + bytes(4) + b"\x01\x00\x01\x00\x00"
             + bytes(35) + b"\x00"), True),
    "gif with a stray byte before its image": (_gif(blocks=b"\x00"), False),
    "bmp with a DIB header size of 0": (_bmp_with_dib_size(0), True),
    "bmp with a DIB header size of 20": (_bmp_with_dib_size(20), True),
    "bmp with a DIB header size of 200": (_bmp_with_dib_size(200), True),
    # TensorFlow reads BMPs of bit depth 8, 24 and 32, uncompressed, and 32-bit ones with
    # colour masks when they are its own byte order; it fails on the other valid layouts.
    "32-bit bmp": (pillow_bmp(picture(7).convert("RGBA")), True),
    "32-bit bmp with blue, green, red colour masks": (bit_fields_bmp(picture(7)), True),
    "1-bit bmp": (pillow_bmp(Image.new("1", (30, 20), 1)), False),
    "4-bit bmp": (with_bit_depth(pillow_bmp(picture(7)), 4), False),
    "16-bit bmp": (with_bit_depth(pillow_bmp(picture(7)), 16), False),
    "run-length encoded 8-bit bmp": (rle8_bmp(picture(7)), False),
    "bmp with an OS/2 header": (os2_bmp(picture(7)), False),
}


@pytest.mark.parametrize("name", HEADERS)
def test_predict_and_the_served_graph_read_headers_as_tensorflow_decodes(name):
    """The same frame, or the same refusal, from both header checks; and when TensorFlow
    decodes the file, that frame is the size it decodes."""
    data, decodes = HEADERS[name]
    header = python_header(data)
    assert graph_header(data) == header
    size = decoded_size(data)
    assert (size is not None) == decodes, size
    if decodes:
        assert header is not None and header[1:] == size


def test_predict_and_the_served_graph_cap_the_gif_walk_alike():
    """Blocks before a GIF's image (an extension's header, 21, label and first
    sub-block, and each further sub-block: a step each) are walked up to
    MAX_GIF_BLOCKS; both checks stop at the same step."""
    from ofrnn_tf.features.images import MAX_GIF_BLOCKS
    comment = b"\x21\xfe\x01c\x00"  # a one-byte comment: 2 steps
    long_comment = b"\x21\xfe" + b"\x01c" * (MAX_GIF_BLOCKS - 1) + b"\x00"
    for within in (_gif(blocks=comment * (MAX_GIF_BLOCKS // 2)), _gif(blocks=long_comment)):
        assert python_header(within) == graph_header(within) == ("GIF", 40, 30)
        assert decoded_size(within) == (40, 30)
    for beyond in (_gif(blocks=comment * (MAX_GIF_BLOCKS // 2 + 1)),
                   _gif(blocks=long_comment[:-1] + b"\x01c\x00")):
        assert graph_header(beyond) is None
        with pytest.raises(ValueError, match=f"no image descriptor in its first "
                                             f"{MAX_GIF_BLOCKS} blocks"):
            read_image_header(beyond)


# -- every frame of a GIF: the canvas TensorFlow allocates, the frames giflib holds -------
_TINY_FRAME = (b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)  # 1x1, no local colour table
               + b"\x02\x02\x44\x01\x00")  # LZW code size 2: clear, pixel 0, end


def _with_frames(gif: bytes, frames: bytes, trailer: bool = True) -> bytes:
    return gif[:-1] + frames + (b";" if trailer else b"")


def _plain_lzw(pixels: bytes) -> bytes:
    """LZW data of code size 7 for pixels below 128 that a clear code every 120 pixels
    keeps at 8-bit codes: a byte a pixel."""
    return b"".join(b"\x80" + pixels[k:k + 120] for k in range(0, len(pixels), 120)) + b"\x81"


def _sub_blocks(data: bytes, rng) -> bytes:
    """``data`` in sub-blocks of random sizes (often 255, as encoders write), then 0."""
    blocks, k = [], 0
    while k < len(data):
        size = 255 if rng.random() < 0.5 else int(rng.integers(1, 256))
        blocks.append(bytes([len(data[k:k + size])]) + data[k:k + size])
        k += size
    return b"".join(blocks) + b"\x00"


def _random_gif(seed: int) -> bytes:
    """A GIF of 1 to 4 frames of random sizes and offsets, some with a local colour table
    and extensions before them (graphics control, comments in random sub-blocks), with or
    without its trailer; then, for most seeds, cut off or with bytes flipped."""
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(int(rng.integers(1, 5))):
        if rng.random() < 0.5:
            blocks.append(b"\x21\xf9\x04\x00\x0a\x00\x00\x00")
        if rng.random() < 0.3:
            blocks.append(b"\x21\xfe" + _sub_blocks(noise(int(rng.integers(0, 600)), seed), rng))
        width, height = (int(v) for v in rng.integers(1, 48, 2))
        local = rng.random() < 0.3
        blocks.append(b"\x2c" + struct.pack("<HHHHB", *(int(v) for v in rng.integers(0, 20, 2)),
                                            width, height, 0x86 if local else 0)
                      + (bytes(range(128)) * 3 if local else b"") + b"\x07"
                      + _sub_blocks(_plain_lzw(bytes(rng.integers(0, 128, width * height,
                                                                  np.uint8))), rng))
    data = bytearray(b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0xF6, 0, 0) + bytes(384)
                     + b"".join(blocks) + (b";" if rng.random() < 0.7 else b""))
    damage = rng.random()
    if damage < 0.3:
        data = data[:int(rng.integers(400, len(data) + 1))]
    elif damage < 0.7:
        for at in rng.integers(397, len(data), int(rng.integers(1, 4))):
            data[at] = int(rng.integers(0, 256))
    return bytes(data)


_check_with_limit = tf.function(check_encoded_images, input_signature=[
    tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int64)])


def graph_accepts(data: bytes, limit: int) -> bool:
    try:
        _check_with_limit(tf.constant([data]), tf.constant(limit, tf.int64))
    except tf.errors.InvalidArgumentError:
        return False
    return True


def python_accepts(data: bytes, limit: int) -> bool:
    try:
        read_image_header(data, limit)
    except ValueError:
        return False
    return True


def test_predict_and_the_served_graph_count_every_gif_frame_alike():
    """Both checks refuse a GIF whose canvas (widest frame by tallest frame), or whose
    frames together, are above the limit; and both accept at the limit."""
    first = _gif()  # 40x30: 1200 pixels
    wide, tall = (_with_frames(_gif(), frame)[781:-1] for frame in (
        b"\x2c" + struct.pack("<HHHHB", 0, 0, 300, 2, 0) + b"\x02\x02\x44\x01\x00",
        b"\x2c" + struct.pack("<HHHHB", 0, 0, 2, 200, 0) + b"\x02\x02\x44\x01\x00"))
    cases = {  # GIF: pixels of its canvas, of its frames together
        "a 300x2 and a 2x200 frame": (_with_frames(first, wide + tall), 300 * 200),
        "the same without a trailer": (_with_frames(first, wide + tall, False), 300 * 200),
        "five 1x1 frames": (_with_frames(first, _TINY_FRAME * 5), 1205),
        "a second frame of 40x30": (_with_frames(first, first[781:-1]), 2400),
    }
    for name, (data, pixels) in cases.items():
        assert graph_accepts(data, pixels) and python_accepts(data, pixels), name
        assert not graph_accepts(data, pixels - 1), name
        assert not python_accepts(data, pixels - 1), name
        assert decoded_size(data) is not None, name


def test_predict_and_the_served_graph_cap_the_walk_over_gif_frames_alike():
    """A step of the walk over a GIF's frames takes at least a frame: a GIF of
    MAX_GIF_STEPS frames is walked, one more is refused by both checks."""
    from ofrnn_tf.features.images import MAX_GIF_STEPS
    within = _with_frames(_gif(), _TINY_FRAME * (MAX_GIF_STEPS - 1))
    beyond = _with_frames(_gif(), _TINY_FRAME * MAX_GIF_STEPS)
    limit = DEFAULT_MAX_IMAGE_PIXELS
    assert graph_accepts(within, limit) and python_accepts(within, limit)
    assert decoded_size(within) == (40, 30)
    assert not graph_accepts(beyond, limit)
    too_long = (f"GIF with more frames or blocks than the check reads ({MAX_GIF_STEPS} "
                f"steps of its walk over the frames): the model reads only the first frame, "
                f"so send that frame as a PNG or JPEG")
    with pytest.raises(ValueError, match=re.escape(too_long)):
        read_image_header(beyond, limit)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            f"images[0] is a {too_long}")):
        _check_with_limit(tf.constant([beyond]), tf.constant(limit, tf.int64))
    # Refused at any limit: ofrnn-predict's check without a limit refuses it too.
    with pytest.raises(ValueError, match=re.escape(too_long)):
        read_image_header(beyond)
    assert read_image_header(within)[0] == "GIF"


@pytest.mark.parametrize("block", range(4))
def test_predict_and_the_served_graph_agree_on_random_gifs(block):
    """On generated GIFs, whole, cut off or with bytes flipped, both checks accept or
    refuse alike, under limits around their sizes; and what they accept TensorFlow
    decodes within the limit, or refuses."""
    for seed in range(100 * block, 100 * (block + 1)):
        data = _random_gif(seed)
        limit = int(np.random.default_rng(seed).integers(1, 6000))
        accepted = python_accepts(data, limit)
        assert graph_accepts(data, limit) == accepted, seed
        size = decoded_size(data) if accepted else None
        assert size is None or size[0] * size[1] <= limit, (seed, size)


def _many_frames(seed: int) -> bytes:
    """A GIF of up to 300 frames of random sizes, with or without local colour tables of
    random sizes and comments between them, data of one sub-block each (not decodable:
    the walk reads headers only), with or without its trailer, sometimes cut off."""
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(int(rng.integers(1, 300))):
        if rng.random() < 0.2:
            blocks.append(b"\x21\xfe" + _sub_blocks(noise(int(rng.integers(0, 300)), seed), rng))
        bits = int(rng.integers(0, 8))
        local = rng.random() < 0.4
        blocks.append(b"\x2c" + struct.pack("<HHHHB", 0, 0, *(int(v) for v in rng.integers(
            0, 400, 2)), 0x80 | bits if local else 0) + bytes(6 << bits if local else 0)
            + b"\x02\x02\x44\x01\x00")
    data = (b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + bytes(6) + b"".join(blocks)
            + (b";" if rng.random() < 0.7 else b""))
    return data[:int(rng.integers(20, len(data) + 1))] if rng.random() < 0.2 else data


def test_the_served_graph_counts_every_frame_as_predict_does():
    """The graph's walk over a GIF's frames finds the Python walk's frame count, pixels,
    widest width and tallest height, on GIFs of many frames of random sizes."""
    from ofrnn_tf.features import image_guards
    from ofrnn_tf.features.image_headers import _gif_descriptor
    gifs = [g for g in map(_many_frames, range(40)) if _safe_descriptor(g) is not None]
    starts = [_gif_descriptor(g) for g in gifs]
    stats, unchecked = image_guards._gif_frames(tf.constant(gifs), tf.constant(starts, tf.int32),
                                                tf.ones([len(gifs)], tf.bool))
    for i, data in enumerate(gifs):
        assert not unchecked[i]
        assert tuple(stats[i].numpy()) == tuple(gif_frames(data)), i


def _safe_descriptor(data: bytes):
    from ofrnn_tf.features.image_headers import _gif_descriptor
    try:
        return _gif_descriptor(data)
    except ValueError:
        return None


# -- the run's example images ---------------------------------------------------------------
def _test_split(folder) -> tuple[list[Example], dict[str, str]]:
    """A test split that starts with images the served model refuses (and what each
    refusal names), then seven good PNGs."""
    os.makedirs(folder, exist_ok=True)
    jpeg = encode(picture(1, (120, 90)), "JPEG")
    refused = {"truncated.jpg": (jpeg[:len(jpeg) // 2], "truncated or corrupt"),
               "photo.webp": (encode(picture(2), "WEBP"), "looks like WebP"),
               "huge.png": (encode(Image.new("1", (7000, 6000)), "PNG"),
                            "PNG of 7000x6000 = 42000000 pixels is above the limit of 40000000"),
               "notes.png": (b"meeting notes", "not a JPEG/PNG/GIF/BMP image")}
    examples = []
    for name, (data, _) in refused.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        examples.append(Example(name, os.path.join(folder, name), (0,)))
    for i in range(7):
        path = os.path.join(folder, f"good{i}.png")
        picture(10 + i).save(path)
        examples.append(Example(f"good{i}", path, (i % 2,)))
    return examples, {os.path.join(folder, n): why for n, (_, why) in refused.items()}


def test_example_images_are_the_first_test_images_the_served_model_accepts(
        tmp_path, save_examples_unpictured, capsys):
    examples, refused = _test_split(str(tmp_path / "data"))
    data = run_data.Data({"test": examples}, LabelMap(["a", "b"]))
    run_dir = RunDir(str(tmp_path / "run"))
    copies, drawn = save_examples_unpictured(run_dir, data)
    assert [os.path.basename(c) for c in copies] == [f"{i:03d}_good{i}.png" for i in range(6)]
    assert run_dir.example_images() == copies and set(drawn) == set(copies)
    err = capsys.readouterr().err
    for path, why in refused.items():
        line = next((l for l in err.splitlines() if path in l), "")
        assert "left out" in line and why in line, (path, err)


def test_only_the_first_test_images_left_out_of_the_examples_are_named(
        tmp_path, save_examples_unpictured, monkeypatch, capsys):
    examples, refused = _test_split(str(tmp_path / "data"))
    monkeypatch.setattr(example_images, "_NAMED_LEFT_OUT", 1)
    data = run_data.Data({"test": examples}, LabelMap(["a", "b"]))
    save_examples_unpictured(RunDir(str(tmp_path / "run")), data)
    err = capsys.readouterr().err
    assert sum(path in err for path in refused) == 1
    assert f"{len(refused) - 1} more test image(s) left out" in err


def test_a_bmp_whose_decode_error_quotes_its_bytes_reads_as_data_that_do_not_decode():
    # An 8-bit BMP with a huge info-header size: reading its colour table fails with an
    # error text that quotes image bytes no UTF-8 decoder takes.
    data = bytes.fromhex("424dff00000000000000360000002800000c0200000002000000010c0800"
                         "0000000000000000000000000000000000000000930000007f7f7f7f7f7f7f7f")
    with pytest.raises(ValueError, match=r"^its BMP header \(2x2\) is sound but the data "
                                         r"behind it is truncated or corrupt"):
        decode_checked(data, 32)
