"""Valid BMP files of the layouts Pillow does not write, built byte by byte, for the
image-format tests: TensorFlow's BMP decoder reads some of them and not others."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

BGRA_MASKS = (0x00FF0000, 0x0000FF00, 0x000000FF)  # red, green, blue: what TF reads
RGBA_MASKS = (0x000000FF, 0x0000FF00, 0x00FF0000)


def pillow_bmp(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "BMP")
    return buffer.getvalue()


def _file(info: bytes, after_info: bytes, pixels: bytes) -> bytes:
    offset = 14 + len(info) + len(after_info)
    return (b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info
            + after_info + pixels)


def _info(width: int, height: int, bits: int, compression: int, size: int,
          colours: int = 0) -> bytes:
    """A BITMAPINFOHEADER."""
    return struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, compression, size,
                       2835, 2835, colours, 0)


def bit_fields_bmp(image: Image.Image, masks=BGRA_MASKS) -> bytes:
    """A 32-bit BMP with colour masks (compression 3) whose pixels are stored as the
    masks say, bottom row first."""
    rgb = np.asarray(image.convert("RGB"), np.uint32)
    shifts = [int(mask).bit_length() - 8 for mask in masks]
    words = sum(rgb[..., k] << shift for k, shift in enumerate(shifts)) | np.uint32(0xFF000000)
    pixels = words[::-1].astype("<u4").tobytes()
    return _file(_info(image.width, image.height, 32, 3, len(pixels)),
                 struct.pack("<III", *masks), pixels)


def rle8_bmp(image: Image.Image) -> bytes:
    """An 8-bit BMP whose palette indices are run-length encoded (compression 1)."""
    palette_image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    indices = np.asarray(palette_image)
    rgb = (palette_image.getpalette() + [0] * 768)[:768]
    table = b"".join(bytes([rgb[3 * i + 2], rgb[3 * i + 1], rgb[3 * i], 0]) for i in range(256))
    rows = []
    for row in indices[::-1]:
        runs, x = b"", 0
        while x < len(row):
            n = 1
            while x + n < len(row) and n < 255 and row[x + n] == row[x]:
                n += 1
            runs += bytes([n, row[x]])
            x += n
        rows.append(runs + b"\x00\x00")  # end of line
    pixels = b"".join(rows) + b"\x00\x01"  # end of bitmap
    return _file(_info(image.width, image.height, 8, 1, len(pixels), 256), table, pixels)


def os2_bmp(image: Image.Image) -> bytes:
    """A 24-bit BMP with an OS/2 BITMAPCOREHEADER (12 bytes, 16-bit width and height)."""
    rgb = np.asarray(image.convert("RGB"), np.uint8)
    stride = (image.width * 3 + 3) // 4 * 4
    pixels = b"".join(row[:, ::-1].tobytes().ljust(stride, b"\0") for row in rgb[::-1])
    return _file(struct.pack("<IHHHH", 12, image.width, image.height, 1, 24), b"", pixels)


def with_bit_depth(bmp: bytes, bits: int) -> bytes:
    """The BMP with another bit depth in its header (its pixels left as they are)."""
    return bmp[:28] + struct.pack("<H", bits) + bmp[30:]
