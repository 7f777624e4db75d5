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
  whatever its size field says, as TF does; a negative height means top-down). A
  GIF's logical screen descriptor (bytes 6 to 9) is not read: TF ignores it and
  decodes the first frame at the size of its image descriptor, found after the
  global colour table and any extension blocks as giflib reads them (a first
  sub-block, then sub-blocks up to an empty one: an empty first sub-block does not
  end an extension). A file cut off before the descriptor, a trailer or any other
  byte before it, or more than ``MAX_GIF_BLOCKS`` extension headers and sub-blocks
  before it are refused;
- a JPEG that TensorFlow's JPEG decoder does not read, which it would fail on as if
  corrupt: of a lossless or hierarchical process, or of samples other than 8 bits
  (`ofrnn_tf.features.image_headers.jpeg_frame_problem`);
- a JPEG or PNG larger than TensorFlow's decoders read (``DECODER_LIMIT`` in
  `ofrnn_tf.features.image_headers`), whatever ``max_image_pixels``;
- a progressive JPEG of more than ``MAX_JPEG_SCANS`` scans (SOS markers, FF DA, in
  the file): libjpeg decodes each scan over the whole image, and a scan can take a few
  bytes, so a small file of many scans would hold a core for seconds to minutes;
- a BMP that TensorFlow's BMP decoder does not read (`ofrnn_tf.features.image_headers.bmp_problem`):
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
data", and inside ``tf.map_fn`` nothing says which image it was. A ``tf.data``
pipeline that decodes ``(index, bytes)`` pairs names it, at a cost (docs/image_guards.md,
"Naming an image that fails to decode"). So by default (``name_decode_failures="auto"``)
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

All of this is plain graph code (no ``py_function``, no XLA): it works in a
``tf.function``, in a SavedModel loaded with ``tf.saved_model.load``, and in the
C++ session loader TensorFlow Serving uses. What it costs, and how the code keeps
that cost low, is in docs/image_guards.md.

The modules, each importing only those listed before it:

- `reading`: ``_read``, the bytes of every image at given positions;
- `jpeg_walk`: the walk over a JPEG's marker segments to its frame header;
- `gif_walk`: the walks over a GIF's blocks, to its first image descriptor and over
  all its frames;
- `layouts`: the layouts, their signatures, header fields and bounds, the BMP checks,
  and the header pass (``_read_headers``) that reads them with both walks;
- `messages`: the refusal messages, built in the graph once a batch is refused;
- `decode`: the entry points, `check_encoded_images` and `decode_images`, and the
  constants of their arguments.
"""

from __future__ import annotations

from ofrnn_tf.features.image_guards.decode import (
    DEFAULT_MAX_JPEG_SEGMENTS, NAME_DECODE_FAILURES, check_encoded_images, decode_images)
from ofrnn_tf.features.image_guards.gif_walk import _gif_frames
from ofrnn_tf.features.image_guards.layouts import ACCEPTED_FORMATS, has_accepted_bmp_layout
from ofrnn_tf.features.images import MAX_GIF_BLOCKS, MAX_GIF_STEPS
from ofrnn_tf.features.pixel_limit import DEFAULT_MAX_IMAGE_PIXELS

# _gif_frames: tests/test_image_formats.py calls it as `image_guards._gif_frames`.
__all__ = ["ACCEPTED_FORMATS", "DEFAULT_MAX_IMAGE_PIXELS", "DEFAULT_MAX_JPEG_SEGMENTS",
           "MAX_GIF_BLOCKS", "MAX_GIF_STEPS", "NAME_DECODE_FAILURES", "check_encoded_images",
           "decode_images", "has_accepted_bmp_layout", "_gif_frames"]
