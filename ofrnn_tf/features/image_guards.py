"""In-graph guards for the encoded images a served model receives.

TensorFlow Serving hands the ``images`` strings of a request to the SavedModel as
they are: it checks neither that they are images nor how large they are. So every
guard has to be part of the exported graph, and has to run before
``tf.io.decode_image``, which trusts the header: a 48 KB 1-bit PNG that declares
20000x20000 pixels is decoded in full, 1.2 GB of RGB, before any resize.

`decode_images`, what the served signatures run, first reads headers only (a few bytes
per image, never the pixel data; `check_encoded_images` is that check alone, for a
graph of one's own) and refuses with ``InvalidArgumentError``, naming ``images[i]``:

- an empty batch, an empty string;
- bytes that are not JPEG (FF D8 FF), PNG (89 50 4E 47 0D 0A 1A 0A), GIF
  (GIF87a/GIF89a) or BMP ("BM"); the message shows the first bytes in hex and
  recognises frequent mistakes (WebP, TIFF, HEIF/AVIF, base64 text, data URLs);
- a header that is cut off or corrupt, or declares no pixels;
- width x height above ``max_image_pixels``, an int64 tensor (typically a variable
  of the SavedModel). The dimensions come from the JPEG frame header (the first
  SOFn, found by following the marker segments as libjpeg does: APPn/EXIF blocks
  of any size, fill bytes and RSTn markers before it are fine, and so are bytes
  between segments that are no marker, which libjpeg skips with the warning
  "Corrupt JPEG data: N extraneous bytes before marker"), the PNG IHDR chunk, the
  GIF's first image descriptor, or the BMP header (read as a BITMAPINFOHEADER
  whatever its size field says, as TF does; a negative height means top-down). A GIF's logical screen descriptor
  (bytes 6 to 9) is not read: TF ignores it and decodes the first frame at the size
  of its image descriptor, found after the global colour table and any extension
  blocks as giflib reads them (a first sub-block, then sub-blocks up to an empty
  one: an empty first sub-block does not end an extension). A file cut off before
  the descriptor, a trailer or any other byte before it, or more than
  ``MAX_GIF_BLOCKS`` extension headers and sub-blocks before it are refused;
- a BMP that TensorFlow's BMP decoder does not read (`ofrnn_tf.features.images.bmp_problem`):
  bit depth 1, 4 or 16, RLE or other compression, an OS/2 header (BITMAPCOREHEADER:
  TF decodes none of these, failing as if the file were corrupt), and 32-bit bit
  fields whose colour masks are not blue, green, red from the low byte up (TF reads
  them so, swapping the colours of the others);
- for a GIF, also the canvas of its frames above ``max_image_pixels``, or all its
  frames together. giflib's DGifSlurp reads every frame, allocating width x height
  bytes for each once it has read its descriptor, local colour table and code size
  byte, and keeps them all; TF's canvas, even when it keeps only the first frame
  (``expand_animations=False``), is the widest frame's width by the tallest frame's
  height (measured on TF 2.21: a 10x10 frame then a 100x100 one decode to 100x100; a
  20x20 frame at offset 90,90 after a 10x10 one to 20x20, offsets are not added; 50
  frames of 2000x2000, 234 KB, add some 190 MB to the decoder's peak memory). So the
  guard walks every frame (`_gif_frames`): after each image descriptor, its local
  colour table, code size byte and LZW data sub-blocks up to an empty one, then
  extensions, up to the trailer, a byte that starts no block, or the end of the file
  (giflib stops there too and TF decodes the frames read, so a GIF without a trailer,
  or cut off inside a later frame, decodes). A frame whose data giflib finds corrupt
  ends its reading; the walk goes on, so it may count frames giflib never reads, never
  fewer. A GIF not walked to its end in ``MAX_GIF_STEPS`` steps is refused.

These are the sizes the decoders allocate, with one exception: TF reads every BMP
header as a BITMAPINFOHEADER but refuses a BMP whose bytes do not hold its rows
(bounded otherwise).

`decode_images` runs these checks, then decodes every image with
`ofrnn_tf.features.images.decode_and_resize`, the function of feature extraction,
so that served pixels are training pixels. A header can be sound and the data
behind it not: a JPEG cut off inside its scan, garbled bytes after a PNG IHDR.
``decode_image`` then fails with "Invalid JPEG data or crop window" or "Invalid PNG
data", and inside ``tf.map_fn`` nothing says which image it was. The one graph
construct that survives an op error is a ``tf.data`` pipeline with
``ignore_errors``: decode ``(index, bytes)`` pairs that way, and the first index
missing from the survivors is the image to name. That pipeline is not free: it
instantiates its map function at every call and decodes one image after the other
where ``tf.map_fn`` overlaps them. So by default (``name_decode_failures="auto"``)
a request of several images always decodes through ``tf.data`` (a few per cent of
their decoding time, and of a batch's latency far less), and a request of one image
takes plain ``tf.map_fn`` when the file looks complete, ``tf.data`` otherwise.
Complete means:

- JPEG: ends with the EOI marker FF D9, and its frame is SOF0, SOF1 or SOF2 with
  8-bit samples and 1 or 3 components (what libjpeg decodes everywhere);
- PNG: ends with the IEND chunk;
- GIF: ends with the trailer byte 0x3B;
- BMP: never (it has no end marker).

These checks would refuse valid files: JPEGs with bytes after EOI (phones' motion
photos append a video, some tools pad), PNGs with bytes after IEND, GIFs without a
trailer (TF decodes all three), BMPs whose file-size field is 0 or wrong. Here
they refuse nothing: such a file is only decoded on the slower path. A cut-off
upload, the usual way good headers end up in front of bad data, always takes it,
so it is named. What "auto" leaves to TensorFlow's message, without an index, is
damage in a single-image request that keeps the end of the file intact (garbled
bytes in a JPEG scan or a PNG IDAT chunk: libjpeg's "Unsupported marker type",
libpng's CRC errors), where the request holds no other image it could be about.
``name_decode_failures="always"`` takes ``tf.data`` for single images too;
``"never"`` always uses plain ``tf.map_fn``.

Cost, against plain ``tf.map_fn(decode_and_resize)`` inside a ``tf.function``, on
224x224 JPEGs of about 19 KB: ranges of medians (wall and CPU time, two runs) of
interleaved calls, on a 2-core AMD EPYC that other jobs kept at a load of 4 to 7
(a ``tf.function`` doing nothing took 0.5 to 0.8 ms; a graph node about 3 us):

============  ===================  ===================
mode          batch 1 (~1.9 ms)    batch 32 (~24 ms)
============  ===================  ===================
``"never"``   +0.26 to 0.56 ms     +0.6 to 1.6 ms
``"auto"``    +0.22 to 0.58 ms     +0.6 to 1.1 ms
``"always"``  +1.1 to 1.8 ms       +2.4 to 4.2 ms
============  ===================  ===================

The header checks run about 95 graph nodes and "auto" about 20 more, whatever
the batch size. A JPEG whose frame header lies beyond its first 256 bytes (behind
an EXIF block, say), or beyond a few stray bytes between its segments, adds a short
loop: with a 20 KB EXIF block, "auto" costs +0.5 to 0.9 ms in all at batch 1 under
that load. The loop takes a segment per step, or jumps over up to 31 bytes that
are no marker; its steps are capped (``max_jpeg_segments``), so that a file made
to exhaust them (empty segments, garbage) costs at most about 1000 steps: 30 ms at
batch 1 and 50 ms at batch 32 on that machine when idle. GIFs walk to their first
image descriptor in a window read after their colour table (16 lookups in a table
of next blocks), out of line, so that batches without GIFs pay one cond (about
5 us); for 32 GIFs of 224x224 pixels written by PIL the check costs about 0.12 ms
more than when it read their screen size, 0.6 ms in all when idle. A GIF with
more blocks, or blocks beyond that window (a long comment, an XMP packet) walks
again in a loop, a block or sub-block per step, ``MAX_GIF_BLOCKS`` at most.
The walk over every GIF frame (`_gif_frames`, in the same out-of-line function, so
batches without GIFs pay only a maximum more) costs, in medians of interleaved calls
of `check_encoded_images` against its cost when it read the first frame only (one
run, a load of about 2.4): 32 JPEGs 0.41 ms and 1 JPEG 0.33 ms, both unchanged; 32
single-frame PIL GIFs of 224x224 pixels (42 KB each) 0.63 -> 2.2 ms, one of them
0.45 -> 0.66 ms (a step each: the run of 255-byte sub-blocks, then the end of the
data); a PIL animation of 40 frames of 224x224 (1.6 MB) 0.50 -> 5.4 ms (a step per
frame and per 64 KB); a GIF of ``MAX_GIF_STEPS`` 1x1 frames (17 KB), the most steps
a GIF can take, 0.96 -> 127 ms (one more frame and it is refused). A request walks
its GIFs once: `decode_images` hands the header pass's verdict to the branch that
decodes or refuses, and a refusal reads again only the image it names. Served
(`decode_images`), a batch of 32 such GIFs costs about 1.7 s, which bounds what a
request of such files can cost (`benchmarks/bench_image_guards.py`).
To stay this cheap the code keeps to few, vectorised ops: one read of the first
256 bytes, a table of next-segment positions over them for the JPEG walk, one
matrix product for every header field, a table of bounds per layout; and it
keeps rare branches (error messages, the long walk) in functions that are not
inlined, since the ops of an untaken ``tf.cond`` branch cost time too. The
``tf.data`` decode is the exception: run inside such a function, every request it
refused left memory behind in the session, without bound under a client that sends
such requests in a loop (6.9 KiB a refusal in ``ofrnn-serve``,
`benchmarks/bench_refusal_memory.py`); inlined, about 0.01 KiB through the session
loader and 1.3 in the server, at no cost that the serving benchmark measures.

All of this is plain graph code (no ``py_function``, no XLA): it works in a
``tf.function``, in a SavedModel loaded with ``tf.saved_model.load``, and in the
C++ session loader TensorFlow Serving uses.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ofrnn_tf.features.images import (
    BMP_BGRA_MASKS, BMP_BIT_DEPTHS, BMP_BITFIELDS, BMP_COMPRESSIONS, BMP_FIELDS_BYTES,
    BMP_MASKS_AT, BMP_MASKS_CUT, BMP_MASKS_PROBLEM, BMP_REMEDY, BMP_TRUNCATED, FORMAT_MAGIC,
    GIF_REMEDY, GIF_RUN, GIF_SPAN, MAX_GIF_BLOCKS, MAX_GIF_STEPS, MISTAKEN_FORMAT_BYTES,
    MISTAKEN_FORMATS, decode_and_resize, out_of_line)

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP")

# Decoding plus the antialiased resize (which works in float32) needs about
# 15 bytes per source pixel: 40 million pixels is about 600 MB for one image.
# That admits 24 MP camera and 12 MP phone pictures with room to spare.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000

# Marker segments walked to find a JPEG frame header. Real files have a few dozen
# at most (APP0, APP1 EXIF and XMP, APP2 ICC chunks, DQT, DHT, COM); the cap bounds
# the work that a file made of fill bytes or empty segments can cause.
DEFAULT_MAX_JPEG_SEGMENTS = 1024

NAME_DECODE_FAILURES = ("auto", "always", "never")

_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min
_MAX_SIDE = 2 ** 31 - 1  # PNG's limit; it also keeps width * height inside int64
_ANY = None  # a wildcard byte in a pattern

# ---------------------------------------------------------------------------
# Layouts: where width and height are stored. The formats, plus BMP variants.
_UNKNOWN, _JPEG, _PNG, _GIF, _BMP, _BMP_TOP_DOWN, _BMP_CORE = range(7)
_LAYOUT_FORMATS = ("unknown", "JPEG", "PNG", "GIF", "BMP", "BMP", "BMP")
_N_LAYOUTS = len(_LAYOUT_FORMATS)

# Magic bytes and the layout each implies. When several match, the highest layout
# wins: a BMP is refined by the top byte of its height (FF: negative, rows stored
# top-down) and, above that, by its header size (12: BITMAPCOREHEADER, where byte 25
# is no longer the height's).
_BM = tuple(FORMAT_MAGIC["BMP"][0])
_SIGNATURES = tuple(
    (layout, magic) for name, layout in (("JPEG", _JPEG), ("PNG", _PNG), ("GIF", _GIF),
                                         ("BMP", _BMP))
    for magic in FORMAT_MAGIC[name]) + (
    (_BMP_TOP_DOWN, _BM + (_ANY,) * 23 + (0xFF,)),
    (_BMP_CORE, _BM + (_ANY,) * 12 + (12, 0, 0, 0)),
)
_SIGNATURE_BYTES = 26
_SIGNATURE_VALUES = np.zeros((len(_SIGNATURES), _SIGNATURE_BYTES), np.int32)
_SIGNATURE_WILDCARDS = np.ones((len(_SIGNATURES), _SIGNATURE_BYTES), bool)
for _row, (_, _pattern) in enumerate(_SIGNATURES):
    for _k, _byte in enumerate(_pattern):
        if _byte is not _ANY:
            _SIGNATURE_VALUES[_row, _k], _SIGNATURE_WILDCARDS[_row, _k] = _byte, False
_SIGNATURE_LAYOUTS = np.array([layout for layout, _ in _SIGNATURES], np.int32)

# ---------------------------------------------------------------------------
# JPEG marker walk. The word (big-endian) at a position gives the bytes to skip:
# a segment skips 2 + its length, the next word (_SEGMENT is larger than any
# length, so the step is min(_STEP[word], length + 2)); RSTn and TEM, markers
# without a length, skip 2; and 0 stops. Between markers the walk reads as
# libjpeg's next_marker does, which skips what is not a marker (with a warning,
# "Corrupt JPEG data: N extraneous bytes before marker") and decodes on: a byte
# that is not FF skips 1, a fill byte (FF FF) 1, and FF 00 2. The walk stops at a
# frame header SOFn, and at SOI, EOI or SOS, which libjpeg refuses before a frame
# header too. Past the end of the file it stops as well (the steps of the zeros
# read there do not count; see `_walk_on`).
_SOF_MARKERS = tuple(m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC))
_SEGMENT = 1 << 20
_STEP = np.ones(65536, np.int32)
_STEP[0xFF00:] = _SEGMENT
_STEP[0xFF00] = 2
_STEP[0xFFFF] = 1
_STEP[[0xFF01, *range(0xFFD0, 0xFFD8)]] = 2
_STEP[[0xFFD8, 0xFFD9, 0xFFDA, *(0xFF00 + m for m in _SOF_MARKERS)]] = 0
_JPEG_MARKER_NAMES = tuple({0xD8: " (SOI)", 0xD9: " (EOI)", 0xDA: " (SOS)"}.get(b, "")
                           for b in range(256))

# The walk first follows the segments inside the first _WINDOW bytes: a table of
# the next segment's position for every offset, then _WINDOW_STEPS lookups in it.
# The usual libjpeg layout (APP0, DQT, DQT, SOFn at byte 158) needs nothing more;
# a file with longer segments (EXIF, ICC profiles), or bytes between its segments,
# goes on in a tf.while_loop that reads _JUMP bytes per step wherever they are: a
# segment per step, or a jump over what is not a marker to the next one among them.
_WINDOW = 256
_WINDOW_STEPS = 6
_JUMP = 32
# For `_walk_on`, with the word at every offset k of the bytes read: _MARKER_KEY + k
# is k where a marker starts (FF, then neither FF nor 00), at least _JUMP - 1
# elsewhere; _MARKER_STEP is _STEP for a marker, 0 for the other words.
_IS_MARKER = np.zeros(65536, bool)
_IS_MARKER[0xFF01:0xFFFF] = True
_MARKER_KEY = np.where(_IS_MARKER, 0, _JUMP - 1).astype(np.int32)
_MARKER_STEP = np.where(_IS_MARKER, _STEP, 0).astype(np.int32)
_OFFSETS = np.arange(_JUMP - 1, dtype=np.int32)
_FRAME_BYTES = 10  # FF Cn, length (2), precision, height (2), width (2), components
_GAVE_UP = 256  # a first frame "byte" no byte has: too many segments

# ---------------------------------------------------------------------------
# GIF walk to the first image descriptor (2C, left, top, width, height, flags: 10
# bytes, as many as a JPEG frame header, so it takes the JPEG's `pos` and `frame`).
# Its blocks start after the global colour table. An extension is read as giflib's
# DGifSlurp reads it: 21, a label and a first sub-block (a size byte and that many
# bytes), then sub-blocks up to an empty one; an empty first sub-block does not end
# it. A step follows an extension header (21, label, first sub-block) or a further
# sub-block; at a block start any byte but 21 stops the walk (2C is the descriptor,
# the others are refused). First a window of _GIF_WINDOW bytes read where the
# blocks start, a table of the next state of every state in it (a position, at a
# block start or at a sub-block), and _GIF_WINDOW_STEPS lookups in it: PIL writes a
# NETSCAPE2.0 loop (3 steps), a comment (2 for a short one) and a graphics control
# extension (2). GIFs whose walk goes on (more blocks, or blocks beyond the window:
# long comments, XMP packets) walk again from the start in a tf.while_loop, a step
# per iteration, MAX_GIF_BLOCKS steps at most (the cap ofrnn-predict's
# `read_image_header` has too).
_GIF_WINDOW = 256
_GIF_WINDOW_STEPS = 16
_GIF_EXTENSION, _GIF_DESCRIPTOR, _GIF_TRAILER = 0x21, 0x2C, 0x3B

# GIF walk over every frame (`_gif_frames`; `ofrnn_tf.features.images.gif_frames` is
# its twin and says what it reads), a step per iteration of a tf.while_loop: an image
# descriptor; a run of up to GIF_RUN sub-blocks of one size, checked with one strided
# read (a substr of a byte at each place a sub-block of that size would start); then
# the blocks and sub-blocks within GIF_SPAN bytes, by pointer doubling over a table of
# next states (_GIF_SPAN_ROUNDS squarings of the table follow a path of up to GIF_SPAN
# moves, each at least a byte forward). Its statistics: frames, their pixels together,
# the widest frame's width, the tallest frame's height.
_GIF_SPAN_ROUNDS = int(np.ceil(np.log2(GIF_SPAN)))
_GIF_STAT_FRAMES, _GIF_STAT_PIXELS, _GIF_STAT_WIDTH, _GIF_STAT_HEIGHT = range(4)
_GIF_UNCHECKED = _INT64_MAX  # the pixels of a GIF whose walk ran out of steps

# ---------------------------------------------------------------------------
# Header fields. One matrix product turns the bytes read (the first 32 of the
# file, the 10 of the JPEG frame header or GIF image descriptor) plus the length
# and the frame position into all of these fields, for every layout at once; the
# layout then picks.
_HEAD_BYTES = 32
_IN_LENGTH = _HEAD_BYTES + _FRAME_BYTES
_IN_POS = _IN_LENGTH + 1
_INPUTS = _IN_POS + 1
_F_WIDTH = 0  # the width of each layout, then the height of each
_F_HEIGHT = _N_LAYOUTS
_F_FRAME_KIND = 2 * _N_LAYOUTS  # JPEG: SOFn, sample precision, components
_F_MARKER = _F_FRAME_KIND + 1  # JPEG, GIF: the word where the walk stopped
_F_AVAILABLE = _F_MARKER + 1  # JPEG, GIF: bytes from the frame header/image descriptor on
_F_CHUNK = _F_MARKER + 2  # PNG: type of the first chunk
_F_LENGTH = _F_MARKER + 3  # the other formats: bytes from the file start on
_N_FIELDS = _F_MARKER + 4
_FIELD_GROUPS = (_N_LAYOUTS, _N_LAYOUTS, 1, _N_FIELDS - _F_MARKER)  # widths, heights, ...


def _weights(offset: int, size: int, big_endian: bool, scale: int = 1) -> np.ndarray:
    """The column of weights that reads an unsigned integer from the inputs."""
    column = np.zeros(_INPUTS, np.int64)
    for k in range(size):
        column[offset + k] = scale * 256 ** (size - 1 - k if big_endian else k)
    return column


_FIELD_WEIGHTS = np.zeros((_INPUTS, _N_FIELDS), np.int64)
_FIELD_BIAS = np.zeros(_N_FIELDS, np.int64)
for _layout, (_width, _height) in {
        _JPEG: ((_HEAD_BYTES + 7, 2, True), (_HEAD_BYTES + 5, 2, True)),  # SOFn: Y, then X
        _PNG: ((16, 4, True), (20, 4, True)),  # IHDR
        _GIF: ((_HEAD_BYTES + 5, 2, False), (_HEAD_BYTES + 7, 2, False)),  # image descriptor
        _BMP: ((18, 4, False), (22, 4, False)),  # BITMAPINFOHEADER and successors
        _BMP_CORE: ((18, 2, False), (20, 2, False)),  # BITMAPCOREHEADER
        _BMP_TOP_DOWN: ((18, 4, False), (22, 4, False, -1)),  # |height| = 2^32 - it
}.items():
    _FIELD_WEIGHTS[:, _F_WIDTH + _layout] = _weights(*_width)
    _FIELD_WEIGHTS[:, _F_HEIGHT + _layout] = _weights(*_height)
_FIELD_BIAS[_F_HEIGHT + _BMP_TOP_DOWN] = 2 ** 32
_FIELD_WEIGHTS[:, _F_FRAME_KIND] = (_weights(_HEAD_BYTES + 1, 1, True, 65536)
                                    + _weights(_HEAD_BYTES + 4, 1, True, 256)
                                    + _weights(_HEAD_BYTES + 9, 1, True))
_FIELD_WEIGHTS[:, _F_MARKER] = _weights(_HEAD_BYTES, 2, True)  # GIF: 2C, then a byte
_FIELD_WEIGHTS[_IN_LENGTH, _F_AVAILABLE] = 1
_FIELD_WEIGHTS[_IN_POS, _F_AVAILABLE] = -1
_FIELD_WEIGHTS[:, _F_CHUNK] = _weights(12, 4, True)
_FIELD_WEIGHTS[_IN_LENGTH, _F_LENGTH] = 1

# A header is valid when each of its fields lies within the bounds of its layout.
_LOWER = np.full((_N_LAYOUTS, _N_FIELDS), _INT64_MIN, np.int64)
_UPPER = np.full((_N_LAYOUTS, _N_FIELDS), _INT64_MAX, np.int64)
_LOWER[_UNKNOWN, _F_LENGTH], _UPPER[_UNKNOWN, _F_LENGTH] = 1, 0  # never valid
# Bytes needed: the JPEG frame header and the GIF image descriptor (from where the
# walk stopped); the PNG signature and IHDR chunk; the BMP fields read.
_WALKED = (_JPEG, _GIF)
_NEEDED = {_JPEG: _FRAME_BYTES, _PNG: 33, _GIF: _FRAME_BYTES, _BMP: BMP_FIELDS_BYTES,
           _BMP_CORE: BMP_FIELDS_BYTES, _BMP_TOP_DOWN: BMP_FIELDS_BYTES}
_NEEDED_BYTES = np.zeros(_N_LAYOUTS, np.int64)
for _layout, _needed in _NEEDED.items():
    _LOWER[_layout, [_F_WIDTH + _layout, _F_HEIGHT + _layout]] = 1
    _UPPER[_layout, [_F_WIDTH + _layout, _F_HEIGHT + _layout]] = _MAX_SIDE
    _LOWER[_layout, _F_AVAILABLE if _layout in _WALKED else _F_LENGTH] = _needed
    _NEEDED_BYTES[_layout] = _needed
# The walk stops on a SOFn or on an error, and no error stop is an FF Cn word.
_LOWER[_JPEG, _F_MARKER], _UPPER[_JPEG, _F_MARKER] = 0xFFC0, 0xFFCF
# The GIF walk stops at a block start: the descriptor is the one accepted.
_LOWER[_GIF, _F_MARKER] = _GIF_DESCRIPTOR * 256
_UPPER[_GIF, _F_MARKER] = _GIF_DESCRIPTOR * 256 + 255
_LOWER[_PNG, _F_CHUNK] = _UPPER[_PNG, _F_CHUNK] = int.from_bytes(b"IHDR", "big")
# A BMP's DIB header size is not checked: TF reads every BMP header as a
# BITMAPINFOHEADER, whatever its size field says (0, 20, 200, ...), and so does the
# guard, but for 12: a BITMAPCOREHEADER, which TF misreads and the guard refuses.

# BMPs TensorFlow's decoder does not read (`ofrnn_tf.features.images.bmp_problem`):
# why, by kind; the info header's bit depth (bytes 28-29), compression (30-33) and,
# for bit fields, its colour masks.
_BMP_READ, _BMP_OS2, _BMP_DEPTH, _BMP_COMPRESSED, _BMP_MASKS_CUT, _BMP_MASKS = range(6)
_BMP_BGRA_BYTES = np.frombuffer(b"".join(m.to_bytes(4, "little") for m in BMP_BGRA_MASKS),
                                np.uint8).astype(np.int32)

# ---------------------------------------------------------------------------
# Complete files (see the module docstring): how they end, as a pattern on their
# last bytes (never matched for the other layouts: 256 is no byte), and the JPEG
# frames libjpeg decodes everywhere: Huffman baseline, extended or progressive,
# 8-bit samples, 1 or 3 components.
_TAIL_BYTES = 12
_ENDINGS = {_JPEG: b"\xff\xd9", _PNG: b"\x00\x00\x00\x00IEND\xaeB`\x82", _GIF: b";"}
_ENDING_VALUES = np.full((_N_LAYOUTS, _TAIL_BYTES), 256, np.int32)
_ENDING_WILDCARDS = np.zeros((_N_LAYOUTS, _TAIL_BYTES), bool)
for _layout, _ending in _ENDINGS.items():
    _ENDING_WILDCARDS[_layout] = True
    _ENDING_VALUES[_layout, _TAIL_BYTES - len(_ending):] = list(_ending)
    _ENDING_WILDCARDS[_layout, _TAIL_BYTES - len(_ending):] = False
_PLAIN_JPEG_FRAMES = np.array([m * 65536 + 8 * 256 + c for m in (0xC0, 0xC1, 0xC2)
                               for c in (1, 3)], np.int64)

_HEX = tuple(f"{b:02x}" for b in range(256))
del _row, _pattern, _k, _byte, _layout, _width, _height, _needed, _ending


class _Headers:
    """What the header pass found, one entry per image."""

    def __init__(self, **tensors):
        self.__dict__.update(tensors)


def _read(images: tf.Tensor, pos: tf.Tensor, count: int, dtype=tf.uint8,
          length: tf.Tensor | None = None) -> tf.Tensor:
    """``images[i][pos[i]:pos[i] + count]`` as big-endian ``dtype``, zero-padded past the end.

    ``pos[i]`` must not exceed the length of ``images[i]``; ``length``, if given,
    reads fewer bytes (the rest is padding).
    """
    length = tf.fill(tf.shape(pos), count) if length is None else length
    chunk = tf.strings.substr(images, pos, length)
    return tf.io.decode_raw(chunk, dtype, little_endian=False, fixed_length=count)


@out_of_line
def _walk_on(images, pos, is_jpeg, max_steps):
    """Follows JPEG marker segments from ``pos``, reading _JUMP bytes per step.

    A step follows one segment, or jumps over bytes that are no marker (stray bytes,
    fill bytes, FF 00) to the next marker among the _JUMP bytes read, or to the last
    of them. Returns where each image stopped and the frame header bytes there; for
    an image still walking after ``max_steps`` steps the first byte is _GAVE_UP.
    The other formats stop at once, at their end.
    """
    length = tf.strings.length(images)
    # The window walk may have gone past the end of a short file: that is the end.
    pos = tf.where(is_jpeg, tf.minimum(pos, length), length)
    jump = tf.fill(tf.shape(pos), _JUMP)
    marker_key, marker_step = tf.constant(_MARKER_KEY), tf.constant(_MARKER_STEP)

    def body(pos, step):
        del step
        chunk = tf.cast(_read(images, pos, _JUMP, length=jump), tf.int32)
        words = chunk[:, :-1] * 256 + chunk[:, 1:]
        # The offset of the first marker, or _JUMP - 1; then the segment there, if at 0.
        next_marker = tf.reduce_min(tf.gather(marker_key, words) + _OFFSETS, axis=1)
        step = next_marker + tf.minimum(tf.gather(marker_step, words[:, 0]), words[:, 2] + 2)
        # Past the end the read gives zeros, no marker: a walk that reaches the end (a
        # cut-off file, or one with no marker after some segment) stops there.
        moved = tf.minimum(pos + step, length)
        return moved, moved - pos

    pos, step = tf.while_loop(lambda pos, step: tf.reduce_any(step > 0), body,
                              (pos, tf.ones_like(pos)), maximum_iterations=max_steps)
    frame = tf.cast(_read(images, pos, _FRAME_BYTES), tf.int32)
    gave_up = tf.one_hot(tf.zeros_like(pos), _FRAME_BYTES, on_value=_GAVE_UP, off_value=0)
    return pos, tf.where((step > 0)[:, None], gave_up, frame)


def _colour_table_bytes(flags):
    """The bytes of the GIF colour tables whose flags (int32) are `flags`, as
    `ofrnn_tf.features.images.colour_table_bytes` counts them."""
    return tf.where(tf.bitwise.bitwise_and(flags, 0x80) > 0,
                    tf.bitwise.left_shift(6, tf.bitwise.bitwise_and(flags, 7)), 0)


@out_of_line
def _gif_descriptors(images, flags, pos, frame, is_gif):
    """``pos`` and ``frame`` with, for each GIF, the position of its first image
    descriptor and its 10 bytes, or of the block that stopped the walk (zeros past the
    end of the file; the first is _GAVE_UP after MAX_GIF_BLOCKS steps). See the GIF
    constants."""
    length = tf.strings.length(images)
    # The blocks start after the header (13 bytes) and the global colour table.
    start = 13 + _colour_table_bytes(flags)
    start = tf.where(is_gif, start, length)  # the others read nothing: zeros, a stop
    read = tf.cast(_read(images, tf.minimum(start, length), _GIF_WINDOW + 2), tf.int32)
    window, first_size = read[:, :_GIF_WINDOW], read[:, 2:]
    # States: p, at a block start, and _GIF_WINDOW + p, at a sub-block. The next state
    # of each, or the state itself at a stop (a block start but 21) and where the next
    # lies outside the window. Zeros past the end of the file read as empty sub-blocks,
    # then a stop: the walk ends there.
    offsets = tf.range(_GIF_WINDOW)
    header_end = offsets + 3 + first_size  # an extension's second sub-block
    block_next = tf.where(tf.logical_and(tf.equal(window, _GIF_EXTENSION),
                                         header_end < _GIF_WINDOW),
                          header_end + _GIF_WINDOW, offsets)
    sub_target = offsets + 1 + window
    sub_next = tf.where(tf.equal(window, 0),
                        tf.where(offsets + 1 < _GIF_WINDOW, offsets + 1, offsets + _GIF_WINDOW),
                        tf.where(sub_target < _GIF_WINDOW, sub_target + _GIF_WINDOW,
                                 offsets + _GIF_WINDOW))
    # Flat, with every row's states after the previous rows': one small gather a step
    # (a gather with batch_dims=1 costs a dozen ops).
    row = tf.range(tf.shape(images)[0]) * _GIF_WINDOW
    first = 2 * row
    following = tf.reshape(tf.concat([block_next, sub_next], axis=1) + first[:, None], [-1])
    state = first
    for _ in range(_GIF_WINDOW_STEPS):
        state = tf.gather(following, state)
    state -= first
    sub = state >= _GIF_WINDOW
    offset = state - tf.where(sub, _GIF_WINDOW, 0)
    others_pos, others_frame = pos, frame
    pos = start + offset
    moving = tf.logical_and(is_gif, tf.logical_or(sub, tf.equal(
        tf.gather(tf.reshape(window, [-1]), row + offset), _GIF_EXTENSION)))

    def walk_on():  # those still moving, again from the start: the loop counts the steps
        walked_pos, walked_sub = _gif_walk_on(images, start, moving)
        return tf.where(moving, walked_pos, pos), tf.where(moving, walked_sub, sub)

    pos, sub = tf.cond(tf.reduce_any(moving), walk_on, lambda: (pos, sub))
    frame = tf.cast(_read(images, tf.minimum(pos, length), _FRAME_BYTES), tf.int32)
    # A walk that ended still moving ran out of steps.
    gave_up = tf.logical_and(is_gif, tf.logical_or(sub, tf.equal(frame[:, 0], _GIF_EXTENSION)))
    gave_up_frame = tf.one_hot(tf.zeros_like(pos), _FRAME_BYTES, on_value=_GAVE_UP, off_value=0)
    return (tf.where(is_gif, pos, others_pos),
            tf.where(is_gif[:, None], tf.where(gave_up[:, None], gave_up_frame, frame),
                     others_frame))


@out_of_line
def _gif_walk_on(images, start, is_gif):
    """Follows GIF blocks from ``start``, a step per iteration, until each GIF stops
    or has taken MAX_GIF_BLOCKS steps. Returns where each stopped and whether at a
    sub-block."""
    length = tf.strings.length(images)
    pos, sub, steps = start, tf.zeros_like(is_gif), tf.zeros_like(start)

    def body(pos, sub, steps, moved):
        del moved
        read = tf.cast(_read(images, tf.minimum(pos, length), 3), tf.int32)
        byte = read[:, 0]
        go = tf.logical_and(tf.logical_and(is_gif, steps < MAX_GIF_BLOCKS),
                            tf.logical_or(sub, tf.equal(byte, _GIF_EXTENSION)))
        # An extension goes past its header to its second sub-block; a sub-block to
        # the next, or, when empty, to the next block start.
        pos = tf.where(go, pos + tf.where(sub, 1 + byte, 3 + read[:, 2]), pos)
        sub = tf.where(go, tf.logical_or(tf.logical_not(sub), tf.not_equal(byte, 0)), sub)
        return pos, sub, steps + tf.cast(go, tf.int32), tf.reduce_any(go)

    pos, sub, _, _ = tf.while_loop(lambda pos, sub, steps, moved: moved, body,
                                   (pos, sub, steps, tf.constant(True)),
                                   maximum_iterations=MAX_GIF_BLOCKS + 1)
    return pos, sub


def _gif_frame_headers(images, length, pos, sub, done, stats):
    """A step's first part: each GIF at an image descriptor counts its frame, if the
    data hold its local colour table and code size byte (else its walk ends), and goes
    on to the frame's first sub-block."""
    head = tf.cast(_read(images, tf.minimum(pos, length), _FRAME_BYTES), tf.int32)
    at_frame = tf.logical_and(tf.logical_not(tf.logical_or(done, sub)),
                              tf.equal(head[:, 0], _GIF_DESCRIPTOR))
    data_start = pos + _FRAME_BYTES + _colour_table_bytes(head[:, 9]) + 1
    counted = tf.logical_and(at_frame, data_start <= length)
    size = tf.cast(head[:, 5:9:2] + 256 * head[:, 6:10:2], tf.int64)  # width, height
    frame = tf.concat([tf.ones_like(size[:, :1]), size[:, :1] * size[:, 1:]], axis=1)
    stats = tf.where(counted[:, None], tf.concat([stats[:, :2] + frame,
                                                  tf.maximum(stats[:, 2:], size)], axis=1),
                     stats)
    return (tf.where(counted, data_start, pos), tf.logical_or(sub, counted),
            tf.logical_or(done, tf.logical_and(at_frame, tf.logical_not(counted))), stats)


def _gif_chain_runs(images, length, pos, sub, done):
    """A step's second part: each GIF at a sub-block of size s > 0 goes past the run of
    sub-blocks of size s that follows (GIF_RUN at most), read at a stride of s + 1."""
    size = tf.cast(_read(images, tf.minimum(pos, length), 1)[:, 0], tf.int32)
    stride = size + 1
    k = tf.range(GIF_RUN)
    # The first byte of each of the next GIF_RUN sub-blocks of that size, if they are.
    at = tf.minimum(pos[:, None] + k * stride[:, None], length[:, None])
    sizes = tf.io.decode_raw(tf.strings.substr(images[:, None], at, tf.ones_like(at)),
                             tf.uint8, fixed_length=1)
    sizes = tf.cast(sizes[:, :, 0], tf.int32)
    # Zeros past the end of the file never match (size > 0).
    count = tf.reduce_min(tf.where(tf.equal(sizes, size[:, None]), GIF_RUN, k), axis=1)
    going = tf.logical_and(tf.logical_and(sub, tf.logical_not(done)), size > 0)
    return tf.where(going, pos + count * stride, pos)


def _gif_spans(images, length, pos, sub, done):
    """A step's last part: each GIF follows blocks and sub-blocks while the next starts
    less than GIF_SPAN bytes after where the part began. States: p, a block start at
    offset p, and GIF_SPAN + p, a sub-block. A state's next state is the state itself
    where the walk stops: at an image descriptor (it goes on there next step), at a
    move beyond the span (it goes on from that state), and where it ends (the end of
    the data, the trailer, any other byte at a block start)."""
    span = tf.cast(_read(images, tf.minimum(pos, length), GIF_SPAN + _FRAME_BYTES), tf.int32)
    byte = span[:, :GIF_SPAN]
    offsets = tf.range(GIF_SPAN)
    inside = offsets < (length - pos)[:, None]
    extension_end = offsets + 3 + span[:, 2:GIF_SPAN + 2]  # its first sub-block read
    extension = tf.equal(byte, _GIF_EXTENSION)
    block_beyond = tf.logical_and(extension, extension_end >= GIF_SPAN)
    block_next = tf.where(tf.logical_and(extension, tf.logical_not(block_beyond)),
                          extension_end + GIF_SPAN, offsets)
    sub_end = offsets + 1 + byte
    sub_beyond = tf.logical_and(inside, sub_end >= GIF_SPAN)
    sub_next = tf.where(tf.logical_or(tf.logical_not(inside), sub_beyond), offsets + GIF_SPAN,
                        tf.where(tf.equal(byte, 0), offsets + 1, sub_end + GIF_SPAN))
    goes_on = tf.concat([tf.logical_or(block_beyond, tf.equal(byte, _GIF_DESCRIPTOR)),
                         sub_beyond], axis=1)
    # Flat, every row's states after the previous rows'; squared _GIF_SPAN_ROUNDS times.
    row = tf.range(tf.shape(pos)[0]) * (2 * GIF_SPAN)
    following = tf.reshape(tf.concat([block_next, sub_next], axis=1) + row[:, None], [-1])
    for _ in range(_GIF_SPAN_ROUNDS):
        following = tf.gather(following, following)
    start = row + tf.where(sub, GIF_SPAN, 0)
    stop = tf.gather(following, start)
    state = stop - row
    goes_on = tf.gather(tf.reshape(goes_on, [-1]), stop)
    stopped_sub = state >= GIF_SPAN
    moved = pos + state - tf.where(stopped_sub, GIF_SPAN, 0)
    return (tf.where(done, pos, moved), tf.where(done, sub, stopped_sub),
            tf.logical_or(done, tf.logical_not(goes_on)))


@out_of_line
def _gif_frames(images, start, is_gif):
    """For each GIF whose first image descriptor is at ``start``: the statistics of its
    frames (int64 [N, 4]: see the GIF constants), and whether its walk ran out of
    MAX_GIF_STEPS steps (bool [N]). Images that are not GIFs (``is_gif`` false) take no
    step and get zeros."""
    length = tf.strings.length(images)
    stats = tf.zeros(tf.stack([tf.size(start), 4]), tf.int64)

    def body(pos, sub, done, stats):
        pos, sub, done, stats = _gif_frame_headers(images, length, pos, sub, done, stats)
        pos = _gif_chain_runs(images, length, pos, sub, done)
        pos, sub, done = _gif_spans(images, length, pos, sub, done)
        for value, shape in ((pos, start.shape), (sub, start.shape), (done, start.shape),
                             (stats, start.shape.concatenate([4]))):
            value.set_shape(shape)
        return pos, sub, done, stats

    _, _, done, stats = tf.while_loop(
        lambda pos, sub, done, stats: tf.logical_not(tf.reduce_all(done)), body,
        (start, tf.zeros_like(is_gif), tf.logical_not(is_gif), stats),
        maximum_iterations=MAX_GIF_STEPS)
    return stats, tf.logical_not(done)


def _gif_pixels(stats, unchecked):
    """int64 [N]: the larger of a GIF's canvas (widest width by tallest height) and its
    frames' pixels together; _GIF_UNCHECKED where the walk ran out of steps."""
    canvas = stats[:, _GIF_STAT_WIDTH] * stats[:, _GIF_STAT_HEIGHT]
    return tf.where(unchecked, tf.constant(_GIF_UNCHECKED, tf.int64),
                    tf.maximum(canvas, stats[:, _GIF_STAT_PIXELS]))


@out_of_line
def _gif_blocks(images, flags, pos, frame, is_gif):
    """`_gif_descriptors`, then the pixels of every GIF's frames (`_gif_pixels`) for
    those whose first image descriptor was found (zeros for the others). Only those
    rows are walked: each step of the walk works on every row it is given, so a batch
    of JPEGs with one long GIF among them would otherwise pay its steps on every row."""
    pos, frame = _gif_descriptors(images, flags, pos, frame, is_gif)
    rows = tf.where(tf.logical_and(is_gif, tf.equal(frame[:, 0], _GIF_DESCRIPTOR)))
    gifs = tf.gather_nd(images, rows)
    pixels = _gif_pixels(*_gif_frames(gifs, tf.gather_nd(pos, rows),
                                      tf.ones_like(gifs, tf.bool)))
    return pos, frame, tf.scatter_nd(rows, pixels, tf.shape(images, out_type=tf.int64))


def _window_and_layout(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The first `_WINDOW` bytes of every image (int32, zero-padded) and its layout."""
    window = tf.cast(tf.io.decode_raw(tf.strings.substr(images, 0, _WINDOW), tf.uint8,
                                      fixed_length=_WINDOW), tf.int32)
    matches = tf.reduce_all(tf.logical_or(
        tf.equal(window[:, None, :_SIGNATURE_BYTES], _SIGNATURE_VALUES), _SIGNATURE_WILDCARDS),
        axis=2)
    return window, tf.reduce_max(tf.cast(matches, tf.int32) * _SIGNATURE_LAYOUTS, axis=1)


def has_accepted_bmp_layout(image: tf.Tensor) -> tf.Tensor:
    """Whether the scalar encoded `image` is no BMP of a layout the served model refuses
    (`ofrnn_tf.features.images.bmp_problem`); true of the other formats. Feature
    extraction skips such BMPs with it, in a few graph ops."""
    window, layout = _window_and_layout(image[None])
    problem, _, _ = _bmp_problems(window, layout, tf.strings.length(image[None]))
    return tf.equal(problem[0], _BMP_READ)


def _read_headers(images: tf.Tensor, max_jpeg_segments: int) -> _Headers:
    """The header pass: layout, fields and validity of every image (see the constants)."""
    length = tf.strings.length(images)
    window, layout = _window_and_layout(images)
    is_jpeg = tf.equal(layout, _JPEG)

    # JPEG walk inside the window. For every offset p: the step there and the next
    # position, or p itself when that is outside the window (the frame header read
    # there has to fit too). So a position that stays put is a stop where the step
    # is 0, and elsewhere a step that leaves the window. The zeros read past the end
    # of a short file step 1 each (as stray bytes would): a walk there ends with a
    # step > 0 and goes on to `_walk_on`, which stops it at the end. (Slices, not
    # tf.roll: its kernel hands the work to other threads, 100 us and more on a busy CPU.)
    words = window[:, :-1] * 256 + window[:, 1:]
    step = tf.minimum(tf.gather(_STEP, words[:, :-2]), words[:, 2:] + 2)
    offsets = tf.range(_WINDOW - 3)
    target = offsets + step
    following = tf.where(target <= _WINDOW - _FRAME_BYTES, target, offsets)
    # After SOI. The other formats walk too (their bytes step 1 mostly), for nothing:
    # their checks read from the file start (_F_LENGTH), not from pos.
    pos = tf.where(is_jpeg, 2, 0)
    for _ in range(_WINDOW_STEPS):
        pos = tf.gather(following, pos, batch_dims=1)
    frame = tf.gather(window, tf.expand_dims(pos, 1) + tf.range(_FRAME_BYTES), batch_dims=1)
    moving = tf.logical_and(is_jpeg, tf.gather(step, pos, batch_dims=1) > 0)
    pos, frame = tf.cond(
        tf.reduce_any(moving),
        lambda: _walk_on(images, pos, is_jpeg, max(max_jpeg_segments - _WINDOW_STEPS, 1)),
        lambda: (pos, frame))
    # GIFs walk to their first image descriptor, then over all their frames, out of
    # line: other batches pay one cond (and the maximum below).
    is_gif = tf.equal(layout, _GIF)
    pos, frame, gif_pixels = tf.cond(
        tf.reduce_any(is_gif),
        lambda: _gif_blocks(images, window[:, 10], pos, frame, is_gif),
        lambda: (pos, frame, tf.zeros_like(length, tf.int64)))

    inputs = tf.concat([window[:, :_HEAD_BYTES], frame, tf.stack([length, pos], axis=1)],
                       axis=1)
    fields = tf.matmul(tf.cast(inputs, tf.int64), _FIELD_WEIGHTS) + _FIELD_BIAS
    valid = tf.reduce_all(tf.logical_and(fields >= tf.gather(_LOWER, layout),
                                         fields <= tf.gather(_UPPER, layout)), axis=1)
    bmp_problem, bmp_bits, bmp_compression = _bmp_problems(window, layout, length)
    valid = tf.logical_and(valid, tf.equal(bmp_problem, _BMP_READ))
    widths, heights, frame_kind, _ = tf.split(fields, _FIELD_GROUPS, axis=1)
    pixels = tf.maximum(tf.gather(widths * heights, layout, batch_dims=1), gif_pixels)
    return _Headers(length=length, layout=layout, is_jpeg=is_jpeg, pos=pos, frame=frame,
                    fields=fields, frame_kind=frame_kind, valid=valid, pixels=pixels,
                    bmp_problem=bmp_problem, bmp_bits=bmp_bits,
                    bmp_compression=bmp_compression)


def _bmp_problems(window: tf.Tensor, layout: tf.Tensor, length: tf.Tensor):
    """``(problem, bit depth, compression)`` [N] of every image: why TensorFlow's BMP
    decoder does not read it (`_BMP_OS2`, ...), or `_BMP_READ` (for other formats too)."""
    bits = window[:, 28] + 256 * window[:, 29]
    compression = tf.reduce_sum(tf.cast(window[:, 30:34], tf.int64)
                                * np.array([1, 256, 65536, 16777216], np.int64), axis=1)
    info = tf.logical_or(tf.equal(layout, _BMP), tf.equal(layout, _BMP_TOP_DOWN))
    bitfields = tf.logical_and(tf.equal(compression, BMP_BITFIELDS), tf.equal(bits, 32))
    masks = window[:, BMP_MASKS_AT:BMP_MASKS_AT + len(_BMP_BGRA_BYTES)]
    problem = tf.where(tf.equal(layout, _BMP_CORE), _BMP_OS2, _BMP_READ)
    for kind, found in (
            (_BMP_DEPTH, tf.reduce_all(tf.not_equal(bits[:, None], BMP_BIT_DEPTHS), axis=1)),
            (_BMP_COMPRESSED, tf.logical_and(tf.not_equal(compression, 0),
                                             tf.logical_not(bitfields))),
            (_BMP_MASKS_CUT, tf.logical_and(bitfields, length < BMP_MASKS_AT + 12)),
            (_BMP_MASKS, tf.logical_and(bitfields, tf.reduce_any(
                tf.not_equal(masks, _BMP_BGRA_BYTES), axis=1)))):
        problem = tf.where(tf.logical_and(info, tf.logical_and(
            tf.equal(problem, _BMP_READ), found)), kind, problem)
    return problem, bits, compression


def _looks_complete(images: tf.Tensor, info: _Headers) -> tf.Tensor:
    """bool [N]: whether each image ends the way a complete file of its format does."""
    tail_length = tf.minimum(info.length, _TAIL_BYTES)
    tail = tf.cast(_read(images, info.length - tail_length, _TAIL_BYTES, length=tail_length),
                   tf.int32)
    ends = tf.reduce_all(tf.logical_or(tf.equal(tail, tf.gather(_ENDING_VALUES, info.layout)),
                                       tf.gather(_ENDING_WILDCARDS, info.layout)), axis=1)
    plain = tf.reduce_any(tf.equal(info.frame_kind, _PLAIN_JPEG_FRAMES), axis=1)
    return tf.logical_and(ends, tf.logical_or(plain, tf.logical_not(info.is_jpeg)))


def _hex(data: tf.Tensor) -> tf.Tensor:
    """Space-separated hex of a scalar string's bytes."""
    return tf.strings.reduce_join(
        tf.gather(_HEX, tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int32)), separator=" ")


def _str(value: tf.Tensor) -> tf.Tensor:
    return tf.strings.as_string(value)


def _format(template: str, value: tf.Tensor) -> tf.Tensor:
    """``template.format(value)`` in the graph, for a template with one ``{}``."""
    before, after = template.split("{}")
    return tf.strings.join([before, _str(value), after])


def _first(cases, default):
    """The value of the first ``(condition, value)`` whose scalar condition holds."""
    result = tf.constant(default) if isinstance(default, str) else default
    for condition, value in reversed(cases):
        result = tf.where(condition, value, result)
    return result


def _format_hint(image: tf.Tensor) -> tf.Tensor:
    """A hint for frequent mistakes, e.g. " (this looks like WebP, ...)", or "" (the
    table of `ofrnn_tf.features.images.format_hint`)."""
    # Padded, so that every substr below is in range whatever the length.
    head = tf.strings.join([tf.strings.substr(image, 0, MISTAKEN_FORMAT_BYTES),
                            "\0" * MISTAKEN_FORMAT_BYTES])

    def at(offset, magics):
        return tf.reduce_any(tf.stack([
            tf.equal(tf.strings.substr(head, offset, len(magic)), magic) for magic in magics]))

    return _first([(tf.reduce_all(tf.stack([at(offset, magics) for offset, magics in checks])),
                    f" ({hint})") for hint, checks in MISTAKEN_FORMATS], "")


@out_of_line
def _header_message(images: tf.Tensor, limit: tf.Tensor, passed: tf.Tensor,
                    max_jpeg_segments: int) -> tf.Tensor:
    """Why a batch is refused: empty, or the first refused image and why (``passed``:
    which images the header pass accepted).

    Runs only once a batch failed: it reads the refused image's header again and looks
    closer.
    """
    return tf.cond(tf.size(images) > 0,
                   lambda: _image_message(images, limit, passed, max_jpeg_segments),
                   lambda: tf.constant("images is an empty batch: send at least one image"))


def _image_message(images: tf.Tensor, limit: tf.Tensor, passed: tf.Tensor,
                   max_jpeg_segments: int) -> tf.Tensor:
    i = tf.argmax(tf.cast(tf.logical_not(passed), tf.int32), output_type=tf.int32)
    image = images[i:i + 1]
    info = _read_headers(image, max_jpeg_segments)
    image, length, layout, fields = image[0], info.length[0], info.layout[0], info.fields[0]
    pos, frame, pixels = info.pos[0], info.frame[0], info.pixels[0]
    bmp_problem, bmp_bits = info.bmp_problem[0], _str(info.bmp_bits[0])
    width, height = fields[_F_WIDTH + layout], fields[_F_HEIGHT + layout]
    is_jpeg, is_gif = tf.equal(layout, _JPEG), tf.equal(layout, _GIF)
    available = tf.where(tf.logical_or(is_jpeg, is_gif), fields[_F_AVAILABLE],
                         fields[_F_LENGTH])
    is_bmp_info = tf.logical_or(tf.equal(layout, _BMP), tf.equal(layout, _BMP_TOP_DOWN))

    name = tf.strings.join(["images[", _str(i), "]"])
    a_format = tf.strings.join([name, " is a ", tf.gather(_LAYOUT_FORMATS, layout)])
    found = tf.strings.reduce_join(tf.gather(_HEX, tf.minimum(frame[:2], 255)), separator=" ")
    truncated = tf.strings.join([a_format, tf.where(
        layout >= _BMP, _format(BMP_TRUNCATED, length),
        _format(" cut off inside its header ({} bytes), before its width and height", length))])

    def corrupt(*parts):
        return tf.strings.join([a_format, " with a corrupt header: ", *parts])

    size = tf.strings.join([_str(width), "x", _str(height)])
    accepted = ", ".join(ACCEPTED_FORMATS[:-1]) + " or " + ACCEPTED_FORMATS[-1]
    return _first([
        (tf.equal(length, 0), tf.strings.join([name, " is empty (0 bytes)"])),
        (tf.equal(layout, _UNKNOWN),
         tf.strings.join([name, " is not a ", accepted, " file: it starts with ",
                          _hex(tf.strings.substr(image, 0, 12)), _format_hint(image)])),
        (tf.logical_and(is_jpeg, tf.equal(frame[0], _GAVE_UP)),
         corrupt(f"no frame header (SOFn) in its first {max_jpeg_segments} marker segments")),
        # The walk stops at a marker, or at the end (then the frame read is zeros).
        (tf.logical_and(is_jpeg, tf.logical_or(available < 2, tf.not_equal(frame[0], 0xFF))),
         truncated),
        (tf.logical_and(is_jpeg, tf.logical_or(frame[1] < 0xC0, frame[1] > 0xCF)),
         corrupt("marker ", found, tf.gather(_JPEG_MARKER_NAMES, frame[1]), " at byte ",
                 _str(pos), " comes before any frame header (SOFn)")),
        (tf.logical_and(is_gif, tf.equal(frame[0], _GAVE_UP)),
         corrupt(f"no image descriptor in its first {MAX_GIF_BLOCKS} blocks")),
        # The GIF walk stops at a block start: the descriptor, something else, or the end.
        (tf.logical_and(is_gif, available <= 0), truncated),
        (tf.logical_and(is_gif, tf.equal(frame[0], _GIF_TRAILER)),
         corrupt("its trailer (3b) at byte ", _str(pos), " comes before any image")),
        (tf.logical_and(is_gif, tf.not_equal(frame[0], _GIF_DESCRIPTOR)),
         corrupt("byte ", tf.gather(_HEX, tf.minimum(frame[0], 255)), " at byte ", _str(pos),
                 " is no GIF block (an image descriptor 2c, an extension 21 or the "
                 "trailer 3b)")),
        (available < tf.gather(_NEEDED_BYTES, layout), truncated),
        (tf.logical_and(tf.equal(layout, _PNG),
                        tf.not_equal(fields[_F_CHUNK], _LOWER[_PNG, _F_CHUNK])),
         corrupt("its first chunk is not IHDR")),
        (tf.equal(bmp_problem, _BMP_OS2),
         tf.strings.join([a_format, " with an OS/2 header (BITMAPCOREHEADER)", BMP_REMEDY])),
        (tf.equal(bmp_problem, _BMP_DEPTH),
         tf.strings.join([a_format, " of bit depth ", bmp_bits, BMP_REMEDY])),
        (tf.equal(bmp_problem, _BMP_COMPRESSED),
         tf.strings.join([a_format, " of bit depth ", bmp_bits, " compressed with ",
                          tf.gather(BMP_COMPRESSIONS, tf.minimum(
                              info.bmp_compression[0], len(BMP_COMPRESSIONS) - 1)),
                          " (compression ", _str(info.bmp_compression[0]), ")", BMP_REMEDY])),
        (tf.equal(bmp_problem, _BMP_MASKS_CUT),
         tf.strings.join([a_format, _format(BMP_MASKS_CUT, length)])),
        (tf.equal(bmp_problem, _BMP_MASKS), tf.strings.join([a_format, BMP_MASKS_PROBLEM])),
        (tf.logical_or(tf.equal(width, 0), tf.equal(height, 0)),
         tf.strings.join([a_format, " of ", size, " pixels: an empty image"])),
        (tf.logical_and(is_bmp_info, width > _MAX_SIDE), corrupt("its width is negative")),
        (tf.maximum(width, height) > _MAX_SIDE,
         corrupt("its width or height is 2^31 or more")),
        (width * height > limit,
         tf.strings.join([a_format, " of ", size, " = ", _str(width * height),
                          " pixels, above the limit of ", _str(limit), " pixels"])),
        (tf.logical_and(is_gif, pixels > limit), tf.cond(
            tf.logical_and(is_gif, pixels > limit),
            lambda: _gif_frames_message(image[None], pos[None], limit, a_format),
            lambda: tf.constant(""))),
    ], tf.strings.join([a_format, " with an invalid header"]))


@out_of_line
def _gif_frames_message(image, pos, limit, a_format):
    """Why a GIF whose first frame is within ``limit`` is refused: its frames' canvas,
    their pixels together, or a walk that ran out of steps (`_gif_frames`)."""
    stats, unchecked = _gif_frames(image, pos, tf.ones([1], tf.bool))
    frames, pixels, width, height = tf.unstack(stats[0])
    canvas = width * height
    over = tf.strings.join([" pixels in all, above the limit of ", _str(limit), " pixels"])
    return tf.strings.join([_first([
        (unchecked[0], tf.strings.join([a_format, f" with more frames or blocks than the "
                                                  f"check reads ({MAX_GIF_STEPS} steps of its "
                                                  f"walk over the frames)"])),
        (canvas > limit,
         tf.strings.join([a_format, " whose frames make a canvas of ", _str(width), "x",
                          _str(height), " = ", _str(canvas), " pixels (the width of its widest "
                          "frame by the height of its tallest), above the limit of ",
                          _str(limit), " pixels"])),
    ], tf.strings.join([a_format, " whose ", _str(frames), " frames hold ", _str(pixels),
                        over])), GIF_REMEDY])


def _failing(message: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    """``value`` behind an assertion that fails with ``message``."""
    with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
        return tf.identity(value)


def _header_pass(images, max_image_pixels, max_jpeg_segments):
    """``(images, limit, headers, passed, ok)``: ``passed`` says which images pass,
    ``ok`` that the whole batch does."""
    images = tf.convert_to_tensor(images, tf.string)
    if images.shape.rank is not None and images.shape.rank != 1:
        raise ValueError(f"images must be a vector of encoded images, got shape {images.shape}")
    limit = tf.cast(tf.convert_to_tensor(max_image_pixels), tf.int64)
    info = _read_headers(images, max_jpeg_segments)
    passed = tf.logical_and(info.valid, info.pixels <= limit)
    return images, limit, info, passed, _all_passed(passed)


def _all_passed(passed: tf.Tensor) -> tf.Tensor:
    return tf.logical_and(tf.size(passed) > 0, tf.reduce_all(passed))


@tf.autograph.experimental.do_not_convert
def check_encoded_images(images, max_image_pixels,
                         max_jpeg_segments: int = DEFAULT_MAX_JPEG_SEGMENTS) -> tf.Tensor:
    """Checks the headers of a batch of encoded images, without decoding them.

    Args:
        images: ``tf.string [N]`` of encoded image files.
        max_image_pixels: the largest width x height accepted, an integer tensor or
            variable (cast to int64).
        max_jpeg_segments: JPEG marker segments walked looking for the frame header
            before the file is refused.

    Returns:
        ``images`` itself, computed only once the checks passed: feed the returned
        tensor, not the argument, to the decoder, so that the checks run first.
        Running the graph raises ``InvalidArgumentError`` if the batch is empty or
        if an image is empty, not a JPEG/PNG/GIF/BMP, has a truncated or corrupt
        header, no pixels, or more than ``max_image_pixels`` pixels; the message
        names the first such image as ``images[i]``.
    """
    images, limit, _, passed, ok = _header_pass(images, max_image_pixels, max_jpeg_segments)
    # The message is built in the false branch only: passing costs one cond.
    checked = tf.cond(ok, lambda: tf.constant(True), lambda: _failing(
        _header_message(images, limit, passed, max_jpeg_segments), tf.constant(False)))
    with tf.control_dependencies([checked]):
        return tf.identity(images)


def _decode_naming_failures(images: tf.Tensor, image_size: int,
                            max_jpeg_segments: int) -> tf.Tensor:
    """`decode_and_resize` on every image through ``tf.data``; a failure names its index."""
    n = tf.size(images, out_type=tf.int64)
    dataset = tf.data.Dataset.from_tensor_slices((tf.range(n), images))
    dataset = dataset.map(lambda index, encoded: (index, decode_and_resize(encoded, image_size)))
    # ignore_errors drops the images that failed to decode; the indices of the others
    # tell which. The empty batch appended turns "all failed" into one element too.
    nothing = tf.data.Dataset.from_tensors((tf.zeros([0], tf.int64),
                                            tf.zeros([0, image_size, image_size, 3], tf.uint8)))
    decoded, pixels = (dataset.ignore_errors().batch(n).concatenate(nothing).take(1)
                       .get_single_element())
    decoded_count = tf.size(decoded, out_type=tf.int64)

    def message():
        # The survivors keep their order: decoded[k] == k up to the first failure.
        i = tf.reduce_sum(tf.cast(tf.equal(decoded, tf.range(decoded_count)), tf.int32))
        info = _read_headers(images[i:i + 1], max_jpeg_segments)
        layout, fields = info.layout[0], info.fields[0]
        return tf.strings.join([
            "images[", _str(i), "] could not be decoded: its ",
            tf.gather(_LAYOUT_FORMATS, layout), " header (", _str(fields[_F_WIDTH + layout]),
            "x", _str(fields[_F_HEIGHT + layout]),
            ") is sound but the data behind it is truncated or corrupt"])

    return tf.cond(tf.equal(decoded_count, n), lambda: pixels,
                   lambda: _failing(message(), pixels))


@tf.autograph.experimental.do_not_convert
def decode_images(images, image_size: int, max_image_pixels, *,
                  name_decode_failures: str = "auto",
                  max_jpeg_segments: int = DEFAULT_MAX_JPEG_SEGMENTS) -> tf.Tensor:
    """Checks, decodes and resizes a batch of encoded images, as feature extraction does.

    Args:
        images: ``tf.string [N]`` of JPEG, PNG, GIF (first frame) or BMP files.
        image_size: output side length S.
        max_image_pixels: the largest width x height accepted (see
            `check_encoded_images`).
        name_decode_failures: how an image whose header is sound but whose data
            cannot be decoded is reported (see the module docstring): ``"auto"``
            names ``images[i]`` in a batch of several, and a single image when it is
            cut off; ``"always"`` names it in every case, at a cost on every request;
            ``"never"`` leaves TensorFlow's own message.
        max_jpeg_segments: see `check_encoded_images`.

    Returns:
        ``uint8 [N, S, S, 3]``: for each image, the pixels `decode_and_resize` gives.
        Running the graph raises ``InvalidArgumentError`` naming ``images[i]`` for
        the refusals of `check_encoded_images`, and for images that cannot be
        decoded as ``name_decode_failures`` says.
    """
    if name_decode_failures not in NAME_DECODE_FAILURES:
        raise ValueError(f"name_decode_failures must be one of {NAME_DECODE_FAILURES}, "
                         f"got {name_decode_failures!r}")
    images, limit, info, passed, ok = _header_pass(images, max_image_pixels, max_jpeg_segments)

    def refuse():
        return _failing(_header_message(images, limit, passed, max_jpeg_segments),
                        tf.zeros([0, image_size, image_size, 3], tf.uint8))

    # Under "auto" this plain path only takes a single image that looks complete, which a
    # BMP never does: the BMP colour step (costly inside map_fn) is left out.
    colour_tables = name_decode_failures == "never"

    def decode_all():
        return tf.map_fn(lambda encoded: decode_and_resize(encoded, image_size, colour_tables),
                         images,
                         fn_output_signature=tf.TensorSpec([image_size, image_size, 3],
                                                           tf.uint8))

    def decode_naming_failures():
        return _decode_naming_failures(images, image_size, max_jpeg_segments)

    # One cond in front of the decoder. Its predicate is the header checks, and for
    # "auto" a single image that looks complete; the other branch takes the checks'
    # verdict (a GIF's frames are walked once a request).
    if name_decode_failures == "auto":
        # One image alone is the only one a failure can be about; in a batch of several,
        # the index is worth a tf.data pipeline (a few per cent of a batch's decoding).
        alone = tf.equal(tf.size(images), 1)
        plain = tf.logical_and(ok, tf.logical_and(alone, tf.reduce_all(_looks_complete(images, info))))
        pixels = tf.cond(plain,
                         decode_all, lambda: _check_then_decode_naming_failures(
                             images, limit, passed, image_size, max_jpeg_segments))
    else:
        pixels = tf.cond(ok, decode_all if name_decode_failures == "never"
                         else decode_naming_failures, refuse)
    pixels.set_shape([None, image_size, image_size, 3])
    return pixels


def _check_then_decode_naming_failures(images: tf.Tensor, limit: tf.Tensor, passed: tf.Tensor,
                                       image_size: int, max_jpeg_segments: int) -> tf.Tensor:
    """The other branch of "auto": refuse the headers (``passed``: the header pass's
    verdict on each image), or decode through ``tf.data``."""
    return tf.cond(_all_passed(passed),
                   lambda: _decode_naming_failures(images, image_size, max_jpeg_segments),
                   lambda: _failing(_header_message(images, limit, passed, max_jpeg_segments),
                                    tf.zeros([0, image_size, image_size, 3], tf.uint8)))
