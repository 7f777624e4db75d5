"""The pure-Python reading of an encoded image's header (format, size, GIF frames, BMP
problems), which the clients and the local server use to refuse an image before TensorFlow
decodes it, and the tables of formats and limits that the served graph's own checks
(`ofrnn_tf.features.image_guards`) share with it.

Free of TensorFlow, so that ``ofrnn-client`` checks an image the server refused without
TensorFlow's seconds of import.
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

from ofrnn_tf.features.pixel_limit import PIXEL_LIMIT_WORDS

IMAGE_FORMATS = "JPEG/PNG/GIF/BMP"
# The first bytes of each accepted format.
FORMAT_MAGIC = {"JPEG": (b"\xff\xd8\xff",), "PNG": (b"\x89PNG\r\n\x1a\n",),
                "GIF": (b"GIF87a", b"GIF89a"), "BMP": (b"BM",)}
# Every one of them, for a check of the first bytes alone.
ACCEPTED_MAGIC = tuple(magic for magics in FORMAT_MAGIC.values() for magic in magics)

# Files often sent where an image is expected, known by their first bytes: a hint,
# then checks that must all hold, each an offset and the magic bytes one of which
# is found there. `format_hint` and the served graph's guard
# (`ofrnn_tf.features.image_guards`) both read this table, so they say the same. Hints
# hold no quotes nor backslashes: the graph's Assert shows its text C-escaped (" as \").
MISTAKEN_FORMATS = (
    ("this looks like WebP, which is not accepted", ((0, (b"RIFF",)), (8, (b"WEBP",)))),
    ("this looks like TIFF, which is not accepted", ((0, (b"II*\0", b"MM\0*")),)),
    ("this looks like HEIF/AVIF, which is not accepted",
     ((4, (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypmsf1", b"ftypavif")),)),
    ("this looks like base64 text: send the decoded bytes, or in the REST API the text "
     "as the value of an object whose one key is b64",
     ((0, (b"/9j/", b"iVBORw0KGgo", b"R0lGOD", b"Qk")),)),
    # A JPEG in the URL-safe alphabet, which the REST API's b64 does not decode.
    ("this looks like URL-safe base64 text: send the decoded bytes, or in the REST API "
     "standard base64 (+ and / for - and _) as the value of an object whose one key is b64",
     ((0, (b"_9j_",)),)),
    ("this looks like a data URL: send the decoded bytes", ((0, (b"data:",)),)),
)
# The checks read within the first bytes, zero-padded to this length.
MISTAKEN_FORMAT_BYTES = 16


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers; C4/C8/CC are not
_JPEG_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
# The code of a JPEG marker: a byte neither 00 nor FF after an FF (libjpeg's next_marker
# skips other bytes, fill bytes FF and FF 00 alike). One search finds the next one.
_MARKER_CODE = re.compile(rb"\xff[^\x00\xff]")

# Marker segments walked to find a JPEG frame header. Real files have a few dozen
# at most (APP0, APP1 EXIF and XMP, APP2 ICC chunks, DQT, DHT, COM); the cap bounds
# the work that a file made of fill bytes or empty segments can cause. The served
# graph's guard (`ofrnn_tf.features.image_guards`) walks with the same cap.
MAX_JPEG_SEGMENTS = 1024
# Scans of a progressive JPEG. libjpeg decodes every scan over the whole image, so the
# decoding time grows with scans x pixels, and a scan may take a few bytes: a small file
# of many scans holds a core for seconds to minutes. Encoders write about 10 (libjpeg's
# progressive script: 6 for grey, 10 for colour). The served graph's guard counts them
# as this module does: every SOS marker (FF DA) of the file, which the entropy-coded
# data never holds. Only a walk over every segment and scan could tell the image's own
# from the bytes of data after it (a motion photo's video, the other pictures of an MPO
# file), which such a file then counts too; a count that stopped at the first FF D9
# could be cut short by a segment holding those bytes.
MAX_JPEG_SCANS = 100
JPEG_SCANS_PROBLEM = (f" holding {{}} scan markers (SOS, FF DA), more than the "
                      f"{MAX_JPEG_SCANS} the model decodes (a progressive JPEG: each scan is "
                      f"decoded over the whole image, and encoders write about 10; data after "
                      f"the image, such as the video of a motion photo, counts too): save the "
                      f"image alone again as a JPEG or PNG")
JPEG_SEGMENTS_PROBLEM = f"no frame header (SOFn) in its first {MAX_JPEG_SEGMENTS} marker segments"

# The JPEGs TensorFlow's decoder (libjpeg's 8-bit interface) reads: 8-bit samples coded
# by the sequential or progressive process, Huffman or arithmetic (SOF0-2, SOF9-10).
# Lossless and hierarchical JPEGs, and samples of 12 bits (medical and some scanner
# software write them), fail to decode as if the file were corrupt, libjpeg printing
# "Unsupported JPEG process" or "Unsupported JPEG data precision 12": both are refused
# from the frame header, saying so. The served graph's guard reads the same table.
JPEG_DECODED_PROCESSES = (0xC0, 0xC1, 0xC2, 0xC9, 0xCA)
# The process of each frame marker FF C0 to FF CF (C4, C8 and CC are no frame's).
JPEG_PROCESSES = ("baseline", "extended sequential", "progressive", "lossless", "",
                  "hierarchical sequential", "hierarchical progressive",
                  "hierarchical lossless", "", "arithmetic sequential",
                  "arithmetic progressive", "arithmetic lossless", "",
                  "arithmetic hierarchical sequential", "arithmetic hierarchical progressive",
                  "arithmetic hierarchical lossless")
JPEG_REMEDY = ": save it again as a JPEG of 8-bit samples, or as a PNG"
# " of the lossless process (SOF3)" and " of 12-bit samples" go before it. No apostrophe:
# the served error shows the message as a quoted repr.
JPEG_UNREAD = ", which the JPEG decoder of TensorFlow does not read" + JPEG_REMEDY


# The largest images TensorFlow's decoders read. Its JPEG decoder refuses an image of
# 2^29 bytes or more, a byte a pixel for each colour component of the file (178956970
# pixels of colour, 134217727 of CMYK), and sides above 65500 pixels; its PNG decoder
# refuses 2^29 pixels or more. Both fail as if the file were corrupt ("Image too large",
# "PNG size too large for int"), and feature extraction applies no pixel limit that would
# keep such large scans, panoramas or aerial pictures from them: the header checks
# refuse them, saying so, and the served graph's guard alike.
DECODER_LIMIT = 1 << 29
JPEG_MAX_SIDE = 65500
SCALE_DOWN = ": scale it down (the model reads it at its input size)"
# After "a JPEG of WxH pixels by C colour component(s)".
JPEG_TOO_LARGE = (f" = {{}} bytes, more than the JPEG decoder of TensorFlow reads (below "
                  f"2^29 bytes, and sides of at most {JPEG_MAX_SIDE} pixels){SCALE_DOWN}")
# After "a PNG of WxH = N pixels".
PNG_TOO_LARGE = (f", more than the PNG decoder of TensorFlow reads (below 2^29 pixels)"
                 f"{SCALE_DOWN}")


def decoder_size_problem(image_format: str, width: int, height: int,
                         components: int = 0) -> str | None:
    """Why TensorFlow's decoder does not read an image of ``(image_format, width,
    height)`` for its size (`DECODER_LIMIT`; a JPEG's `components` count), or None; the
    served graph's guard says the same after "images[i] is "."""
    if image_format == "JPEG" and (max(width, height) > JPEG_MAX_SIDE
                                   or components * width * height >= DECODER_LIMIT):
        return (f"a JPEG of {width}x{height} pixels by {components} colour component(s)"
                + JPEG_TOO_LARGE.format(components * width * height))
    if image_format == "PNG" and width * height >= DECODER_LIMIT:
        return f"a PNG of {width}x{height} = {width * height} pixels" + PNG_TOO_LARGE
    return None


def jpeg_frame_problem(marker: int, precision: int) -> str | None:
    """Why TensorFlow's JPEG decoder cannot read a JPEG whose frame header is the marker
    FF `marker` with samples of `precision` bits, after "a JPEG" (`JPEG_DECODED_PROCESSES`),
    or None; the served graph's guard says the same after "images[i] is a JPEG"."""
    if marker not in JPEG_DECODED_PROCESSES:
        return (f" of the {JPEG_PROCESSES[marker - 0xC0]} process (SOF{marker - 0xC0})"
                + JPEG_UNREAD)
    if precision != 8:
        return f" of {precision}-bit samples" + JPEG_UNREAD
    return None


def _jpeg_size(data: bytes) -> tuple[int, int, int]:
    """``(width, height, colour components)`` from the first JPEG frame header (SOFn),
    found as libjpeg does.

    Between marker segments libjpeg's ``next_marker`` skips whatever is not a marker
    (stray bytes, with the warning "Corrupt JPEG data: N extraneous bytes before
    marker", fill bytes FF, and FF 00) and decodes on; so does this walk, as does the
    served graph's (`ofrnn_tf.features.image_guards`): both find the same frame and
    refuse the same files, but for their caps on the work: this walk gives up after
    `MAX_JPEG_SEGMENTS` markers, the graph's after as many of its steps, which also
    count jumps over stray bytes (only a file made to exhaust them tells them apart).
    A JPEG that TensorFlow's decoder does not read (`jpeg_frame_problem`) and a
    progressive JPEG of more than `MAX_JPEG_SCANS` scans are refused.
    """
    i, n = 2, len(data)
    for _ in range(MAX_JPEG_SEGMENTS):
        marker = _MARKER_CODE.search(data, i)
        if marker is None:
            break
        i = marker.end()
        code = data[i - 1]
        if code == 0x01 or 0xD0 <= code <= 0xD7:  # markers without a length field
            continue
        if code in (0xD8, 0xD9, 0xDA):  # SOI, EOI or SOS before any frame header
            raise ValueError("corrupt JPEG: no frame header before the image data")
        if code in _JPEG_SOF:
            if i + 8 > n:  # length, precision, height, width, components
                break
            height, width = struct.unpack(">HH", data[i + 3:i + 7])
            problem = jpeg_frame_problem(code, data[i + 2])
            if problem is not None:
                raise ValueError("a JPEG" + problem)
            if code in _JPEG_PROGRESSIVE_SOF:
                scans = data.count(b"\xff\xda")
                if scans > MAX_JPEG_SCANS:
                    raise ValueError("a JPEG" + JPEG_SCANS_PROBLEM.format(scans))
            return width, height, data[i + 7]
        if i + 2 > n:
            break
        # A length below 2 (libjpeg skips nothing then) leaves the walk inside the
        # segment, where what follows is skipped as no marker.
        (length,) = struct.unpack(">H", data[i:i + 2])
        i += length
    else:
        raise ValueError("a JPEG with a corrupt header: " + JPEG_SEGMENTS_PROBLEM)
    raise ValueError(f"truncated JPEG: header ends after {n} bytes without a frame header")


# Blocks walked to find a GIF's first image descriptor: extension headers (21, a
# label and the first sub-block) and further sub-blocks. Real files have a few (a
# graphics control extension, a NETSCAPE2.0 loop, a comment, an XMP packet read as
# sub-blocks of its bytes); the cap bounds the work a file made of extensions can
# cause. The served graph's guard (`ofrnn_tf.features.image_guards`) walks with the
# same cap, so both refuse the same files.
MAX_GIF_BLOCKS = 1024
_GIF_DESCRIPTOR_BYTES = 10  # 2C, left, top, width, height (2 bytes each), flags

# The walk over all of a GIF's frames (`gif_frames`, and the served graph's) goes in
# steps: an image descriptor, a run of up to GIF_RUN sub-blocks of one size (encoders
# write 255-byte sub-blocks: 64 KB of LZW data), then blocks and sub-blocks within
# GIF_SPAN bytes (the end of a frame's data, extensions, up to the next descriptor).
# So a step covers a frame and up to 64 KB of its data, or at least GIF_SPAN - 258
# bytes of other blocks (258: the largest move in a span, past an extension's header).
# MAX_GIF_STEPS bounds the work (a GIF made of 1x1 frames takes a step a frame); GIFs
# of more than about a thousand frames, or of more than 64 MB, go beyond it.
GIF_RUN = 256
GIF_SPAN = 512
MAX_GIF_STEPS = 1024
# What to do about a GIF refused for its later frames: the model reads the first only.
GIF_REMEDY = ": the model reads only the first frame, so send that frame as a PNG or JPEG"


# TensorFlow's BMP decoder reads every header as a BITMAPINFOHEADER, and pixels of bit
# depth 8, 24 or 32 stored uncompressed, 32-bit ones as blue, green, red, alpha bytes
# whatever the colour masks of a bit-fields BMP say. Other valid BMPs (bit depth 1, 4
# or 16, RLE compression, OS/2 headers) fail to decode as if corrupt, and 32-bit ones
# with other masks decode with their colours swapped: both are refused, saying so. So
# are the odd layouts it happens to decode (a bit depth of 25, compression 6), which
# no encoder writes.
BMP_BIT_DEPTHS = (8, 24, 32)
BMP_BITFIELDS = 3  # the compression of a BMP whose colour masks follow its header
BMP_MASKS_AT = 54  # red, green and blue masks, in BITMAPINFOHEADER and its successors
BMP_BGRA_MASKS = (0x00FF0000, 0x0000FF00, 0x000000FF)
BMP_COMPRESSIONS = ("none", "RLE8", "RLE4", "bit fields", "JPEG", "PNG", "alpha bit fields",
                    "an unknown method")
BMP_FIELDS_BYTES = 34  # file header, then the info header up to its compression field
BMP_TRUNCATED = (f" cut off inside its header ({{}} bytes): its size, bit depth and "
                 f"compression need {BMP_FIELDS_BYTES}")
# No apostrophe: the served error shows the message as a quoted repr.
BMP_REMEDY = (", a layout the model does not read (it reads uncompressed BMPs of bit "
              "depth 8, 24 or 32, those TensorFlow decodes): send it as a PNG or JPEG")
BMP_MASKS_PROBLEM = (" of bit depth 32 whose colour masks are not blue, green, red from its "
                     "low byte up, so TensorFlow would decode it with its colours swapped: "
                     "send it as a PNG or JPEG")
BMP_MASKS_CUT = " of bit depth 32 with colour masks, cut off inside them ({} bytes)"


def bmp_problem(data: bytes) -> str | None:
    """Why TensorFlow's BMP decoder cannot read the BMP `data` (of at least
    `BMP_FIELDS_BYTES` bytes), e.g. "a BMP of bit depth 1, which ...", or None; the
    served graph's guard says the same after "images[i] is "."""
    (info_size,) = struct.unpack_from("<I", data, 14)
    if info_size == 12:
        return "a BMP with an OS/2 header (BITMAPCOREHEADER)" + BMP_REMEDY
    bits, compression = struct.unpack_from("<HI", data, 28)
    if bits not in BMP_BIT_DEPTHS:
        return f"a BMP of bit depth {bits}" + BMP_REMEDY
    if compression == BMP_BITFIELDS and bits == 32:
        if len(data) < BMP_MASKS_AT + 12:
            return "a BMP" + BMP_MASKS_CUT.format(len(data))
        masks = struct.unpack_from("<III", data, BMP_MASKS_AT)
        return None if masks == BMP_BGRA_MASKS else "a BMP" + BMP_MASKS_PROBLEM
    if compression != 0:
        method = BMP_COMPRESSIONS[min(compression, len(BMP_COMPRESSIONS) - 1)]
        return (f"a BMP of bit depth {bits} compressed with {method} (compression "
                f"{compression})" + BMP_REMEDY)
    return None


def colour_table_bytes(flags: int) -> int:
    """The bytes of the GIF colour table that `flags` (of the logical screen or of an
    image descriptor) announce: present when bit 0x80 is set, of 2^(n + 1) RGB entries
    for n = flags & 7."""
    return 6 << (flags & 7) if flags & 0x80 else 0


def gif_colour_table_end(flags: int) -> int:
    """Where a GIF's blocks start: after the 13-byte header and the global colour
    table of the logical screen's `flags` (byte 10)."""
    return 13 + colour_table_bytes(flags)


def _gif_descriptor(data: bytes) -> int:
    """Where a GIF's first image descriptor starts, found as giflib's DGifSlurp reads
    the blocks before it: after the global colour table, extensions of 21, a label, a
    first sub-block (a size byte and that many bytes), then sub-blocks up to an empty
    one, that is, an empty first sub-block does not end the extension. A trailer (3B)
    or any other byte before the descriptor, a file cut off before its end, or more
    than `MAX_GIF_BLOCKS` blocks before it are refused, as the served graph's guard
    does.
    """
    n = len(data)
    i = gif_colour_table_end(data[10] if n > 10 else 0)
    steps = 0

    def give_up():
        raise ValueError(f"corrupt GIF: no image descriptor in its first {MAX_GIF_BLOCKS} "
                         f"blocks")

    while i < n and data[i] == 0x21:  # an extension: 21, its label, a first sub-block
        if steps == MAX_GIF_BLOCKS:
            give_up()
        steps, i = steps + 1, i + 3 + (data[i + 2] if i + 2 < n else 0)
        while True:  # then sub-blocks: a size, that many bytes; 0 ends the extension
            if steps == MAX_GIF_BLOCKS:
                give_up()
            size = data[i] if i < n else 0
            steps, i = steps + 1, i + 1 + size
            if size == 0:
                break
    if i >= n:
        raise ValueError(f"truncated GIF: header ends after {n} bytes without an image "
                         f"descriptor")
    if data[i] == 0x3B:
        raise ValueError(f"corrupt GIF: its trailer (3B) at byte {i} comes before any image")
    if data[i] != 0x2C:
        raise ValueError(f"corrupt GIF: byte {data[i]:02x} at byte {i} is no GIF block (an "
                         f"image descriptor 2C, an extension 21 or the trailer 3B)")
    if i + _GIF_DESCRIPTOR_BYTES > n:
        raise ValueError(f"truncated GIF: header ends after {n} bytes inside its image "
                         f"descriptor")
    return i


def _gif_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of a GIF's first image descriptor (`_gif_descriptor`), the
    size TensorFlow decodes a still GIF at, whatever its logical screen descriptor
    (bytes 6 to 9) says. Later frames are measured by `gif_frames`."""
    i = _gif_descriptor(data)
    width, height = struct.unpack("<HH", data[i + 5:i + 9])
    return width, height


class GifFrames(NamedTuple):
    """What the frames of a GIF make giflib and TensorFlow allocate (`gif_frames`)."""

    frames: int  # image descriptors read
    pixels: int  # their pixels together: giflib holds every frame, a byte a pixel
    width: int  # TensorFlow's canvas: the widest frame's width ...
    height: int  # ... by the tallest frame's height

    @property
    def canvas(self) -> int:
        return self.width * self.height


def _gif_chain_run(data: bytes, i: int) -> int:
    """Past the run of sub-blocks from `i` that all have the size of the first (at most
    `GIF_RUN` of them): what the served graph's walk checks with one strided read."""
    size = data[i]
    stride, n = size + 1, len(data)
    run = 1
    while run < GIF_RUN and i + run * stride < n and data[i + run * stride] == size:
        run += 1
    return i + run * stride


def _gif_span(data: bytes, i: int, sub: bool) -> tuple[int, bool, bool]:
    """Follows blocks and sub-blocks from `i` while each next one starts less than
    `GIF_SPAN` bytes after `i`: ``(where it stopped, whether at a sub-block, whether
    the walk goes on)``. It stops at an image descriptor (the walk goes on there), at
    a move beyond the span (going on from where it was), and at the end of the data,
    the trailer or any other byte where a block should start (the walk ends)."""
    n, base = len(data), i
    while i < n:
        byte = data[i]
        if sub:  # a sub-block, or the empty one that ends its chain
            after, after_sub = (i + 1, False) if byte == 0 else (i + 1 + byte, True)
        elif byte == 0x21:  # 21, a label and a first sub-block; then a chain of sub-blocks
            after, after_sub = i + 3 + (data[i + 2] if i + 2 < n else 0), True
        else:
            return i, sub, byte == 0x2C
        if after - base >= GIF_SPAN:
            return i, sub, True
        i, sub = after, after_sub
    return i, sub, False


def gif_frames(data: bytes) -> GifFrames:
    """The frames of a GIF, walked from its first image descriptor to its trailer or
    its end as giflib's DGifSlurp reads them.

    Each image descriptor (2C, left, top, width, height, flags) is followed by its local
    colour table, the LZW code size byte, and sub-blocks of LZW data up to an empty one;
    extensions as in `_gif_descriptor`. giflib allocates width x height bytes for a
    frame once it has read these headers, before its data, and keeps every frame; a
    frame cut off before its code size byte is not allocated and not counted. The walk
    stops at the trailer, at a byte that starts no block (giflib stops there too, and
    TensorFlow decodes the frames read) and at the end of the data (a GIF without a
    trailer decodes). It goes in steps, the served graph's (`ofrnn_tf.features.
    image_guards`): an image descriptor, a run of sub-blocks of one size
    (`_gif_chain_run`), then blocks and sub-blocks within `GIF_SPAN` bytes
    (`_gif_span`); a GIF not walked to its end in `MAX_GIF_STEPS` steps is refused
    (ValueError), as that walk refuses it.
    """
    n = len(data)
    i, sub = _gif_descriptor(data), False
    frames = pixels = width = height = 0
    for _ in range(MAX_GIF_STEPS):
        if not sub and i < n and data[i] == 0x2C:
            flags = data[i + 9] if i + 9 < n else 0
            code_size_end = i + _GIF_DESCRIPTOR_BYTES + colour_table_bytes(flags) + 1
            if code_size_end > n:
                break
            frame_width, frame_height = struct.unpack("<HH", data[i + 5:i + 9])
            frames, pixels = frames + 1, pixels + frame_width * frame_height
            width, height = max(width, frame_width), max(height, frame_height)
            i, sub = code_size_end, True
        if sub and i < n and data[i] > 0:
            i = _gif_chain_run(data, i)
        i, sub, going_on = _gif_span(data, i, sub)
        if not going_on:
            break
    else:
        raise ValueError(f"GIF with more frames or blocks than the check reads "
                         f"({MAX_GIF_STEPS} steps of its walk over the frames){GIF_REMEDY}")
    return GifFrames(frames, pixels, width, height)


def pixel_limit_error(image_format: str, width: int, height: int, data: bytes,
                      max_image_pixels: int) -> str | None:
    """Why an image whose header reads ``(image_format, width, height)`` is above
    `max_image_pixels` (the served graph's rule), or None: its width x height; for a
    GIF also the canvas TensorFlow decodes its frames onto (the widest frame's width
    by the tallest frame's height) and the pixels of all its frames together, which
    giflib holds (`gif_frames`)."""
    if width * height > max_image_pixels:
        return (f"{image_format} of {width}x{height} = {width * height} pixels "
                f"is {PIXEL_LIMIT_WORDS} {max_image_pixels} pixels")
    if image_format != "GIF":
        return None
    frames = gif_frames(data)
    if frames.canvas > max_image_pixels:
        return (f"GIF whose frames make a canvas of {frames.width}x{frames.height} = "
                f"{frames.canvas} pixels (the width of its widest frame by the height of its "
                f"tallest) is {PIXEL_LIMIT_WORDS} {max_image_pixels} pixels{GIF_REMEDY}")
    if frames.pixels > max_image_pixels:
        return (f"GIF whose {frames.frames} frames hold {frames.pixels} pixels in all "
                f"is {PIXEL_LIMIT_WORDS} {max_image_pixels} pixels{GIF_REMEDY}")
    return None


def format_hint(data: bytes) -> str:
    """A hint for bytes that start as a file often mistaken for an image does
    (`MISTAKEN_FORMATS`), e.g. ``" (this looks like WebP, which is not accepted)"``,
    or ""."""
    head = bytes(data[:MISTAKEN_FORMAT_BYTES]).ljust(MISTAKEN_FORMAT_BYTES, b"\0")
    for hint, checks in MISTAKEN_FORMATS:
        if all(any(head[offset:offset + len(magic)] == magic for magic in magics)
               for offset, magics in checks):
            return f" ({hint})"
    return ""


def read_image_header(data: bytes, max_image_pixels: int | None = None
                      ) -> tuple[str, int, int]:
    """Returns ``(format, width, height)`` from an encoded image's header.

    Only the headers are parsed (PNG IHDR, GIF image descriptors, BMP info header,
    JPEG SOF segment), so a small file that declares a huge image costs nothing.
    A GIF's size is that of its first frame, which TensorFlow decodes whatever its
    logical screen says (`_gif_size`).
    Raises ValueError with the reason when the bytes are not a JPEG/PNG/GIF/BMP
    image or the header is truncated or corrupt, for a BMP that TensorFlow's decoder
    does not read (`bmp_problem`), a JPEG or PNG larger than it reads (`DECODER_LIMIT`,
    whatever `max_image_pixels`), for a GIF whose frames are more than
    the served graph walks (`gif_frames`), and, when `max_image_pixels` is given, when
    the image is above it as the served graph counts (`pixel_limit_error`: for a GIF,
    every frame counts).
    """
    if not data:
        raise ValueError("empty (no image bytes)")
    components = 0  # a JPEG's, which its decoder's limit counts
    if data.startswith(FORMAT_MAGIC["JPEG"]):
        fmt, (width, height, components) = "JPEG", _jpeg_size(data)
    elif data.startswith(FORMAT_MAGIC["PNG"]):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("truncated or corrupt PNG: no IHDR chunk")
        fmt, (width, height) = "PNG", struct.unpack(">II", data[16:24])
    elif data.startswith(FORMAT_MAGIC["GIF"]):
        fmt, (width, height) = "GIF", _gif_size(data)
    elif data.startswith(FORMAT_MAGIC["BMP"]):
        if len(data) < BMP_FIELDS_BYTES:
            raise ValueError("a BMP" + BMP_TRUNCATED.format(len(data)))
        problem = bmp_problem(data)
        if problem is not None:
            raise ValueError(problem)
        # BITMAPINFOHEADER and its successors; TF reads any other size so too
        width, height = struct.unpack("<ii", data[18:26])
        # As the served graph reads them: a top-down height has FF in its top byte.
        if width < 0 and height != 0:
            raise ValueError("a BMP with a corrupt header: its width is negative")
        if height < -(1 << 24) and width != 0:
            raise ValueError("a BMP with a corrupt header: its width or height is 2^31 or more")
        height = abs(height)  # negative height: rows stored top-down
        fmt = "BMP"
    else:
        raise ValueError(f"not a {IMAGE_FORMATS} image (starts with {data[:8]!r})"
                         f"{format_hint(data)}")
    if width <= 0 or height <= 0:
        raise ValueError(f"{fmt} header gives an empty image ({width}x{height})")
    # Before the pixel limit, whose remedy (raising it) cannot help such an image.
    too_large = decoder_size_problem(fmt, width, height, components)
    if too_large is not None:
        raise ValueError(too_large)
    if max_image_pixels is not None:
        error = pixel_limit_error(fmt, width, height, data, max_image_pixels)
        if error is not None:
            raise ValueError(error)
    elif fmt == "GIF":
        gif_frames(data)  # the served model refuses a GIF it cannot walk, at any limit
    return fmt, width, height
