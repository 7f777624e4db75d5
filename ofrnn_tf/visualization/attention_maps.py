"""Attention pictures in the style of the paper's Fig. 3.

One PNG per image: the image on the left, then one panel per decoding step (eight
panels a row, further steps in rows below) with that step's attention map α_t (Eq. 4)
upsampled bilinearly onto the image and overlaid with a colour map, titled with the
label chosen at the step and its probability at that step (`sigmoid(p_t[l_t])`, one
factor of Eq. 11). A map is coloured from the uniform level 1/(h·w) (nothing) to its
own peak (red, if that is at least twice the uniform level), and a caption under it says
how many times the uniform level that peak is: a step that looks everywhere stays clear
instead of drawing red all over. A map at full colour is also outlined where it is half
way from the uniform level to its peak, a white line edged in black: colour alone is lost
to a reader who does not see red (over a dark object the red peak looks as dark as the
object to a deuteranope), and no colour stands apart from both light and dark images,
while the double line does. The figure
title names the image, the path probability and, when known, the true labels, wrapped
to the figure's width.

Each PNG also says in words what it shows (`describe_attention`, its ``Description``
text), for a reader who cannot see it; `render_examples` gathers these in
``captions.md`` beside the pictures.

Drawing uses matplotlib's Agg canvas directly (no pyplot), so it needs no display
and leaves the global matplotlib state alone.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from typing import Mapping, Optional, Sequence, Union

import matplotlib
import numpy as np
from matplotlib import font_manager, patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from matplotlib.textpath import TextToPath
import tensorflow as tf
from PIL import Image

from ofrnn_tf.features.images import decode_rgb
from ofrnn_tf.jsonio import LONGEST_NAME, out_of_room, replaced_whole
from ofrnn_tf.status import printable, say


DPI = 100
PANEL_PIXELS = 256  # width of one panel (the image and each step)
PANELS_PER_ROW = 8  # the image and 7 steps; a longer path goes on in rows below
_MARGIN = 6  # pixels inside each panel cell, around the picture
_PICTURE_RATIO = (0.25, 2.0)  # the height/width a picture is drawn at, at least and at most
_STEP_TITLE_PIXELS = 26
_CAPTION_PIXELS = 14  # under each step's picture: its peak (over the map, it hid a corner)
_TITLE_LINE_PIXELS = 20
_TITLE_SIZES = (11, 10)  # font size of the title's first line, and of the others
_GROUND_TRUTH_LINES = 3  # at most; a longer list ends in "…"
_STEP_TITLE_SIZE = 10
_OUTLINE_LEVEL = 0.5  # of the way from the uniform level to the peak
_OUTLINE_WIDTHS = (1.2, 3.2)  # points: the white line, and the black edge around it
_TEXT_TO_PATH = TextToPath()  # measures text as the figure lays it out
CAPTIONS = "captions.md"  # `render_examples`' descriptions of its pictures, beside them
_THIRDS = (("top", "middle", "bottom"), ("left", "centre", "right"))


@functools.lru_cache(maxsize=1)
def _font_characters() -> frozenset:
    """The code points matplotlib's default font draws, in its regular and bold faces
    (the picture's first title line is bold)."""
    faces = [font_manager.FontProperties(), font_manager.FontProperties(weight="bold")]
    return frozenset.intersection(*(
        frozenset(FT2Font(font_manager.findfont(face)).get_charmap()) for face in faces))


def _drawable(text: str) -> str:
    """`text` with the characters the font lacks written as escapes (``\\u72d7``): a
    class name in another script is read rather than drawn as empty boxes."""
    known = _font_characters()
    # A tab, line break or other space the font lacks is escaped too (matplotlib warns
    # of each, and a line break in a step's title ran it into the figure's title).
    return "".join(c if ord(c) in known or c == " " else
                   c.encode("unicode_escape").decode("ascii") for c in text)


def _text_pixels(text: str, size: float, bold: bool = False) -> float:
    """The width in pixels `text` takes at font `size` (points) in the picture."""
    face = font_manager.FontProperties(size=size, weight="bold" if bold else "normal")
    width, _, _ = _TEXT_TO_PATH.get_text_width_height_descent(text, face, ismath=False)
    return width * DPI / 72


def _shortened(text: str, pixels: float, size: float, bold: bool = False) -> str:
    """`text`, or its longest start that fits `pixels` with "…" after it."""
    if _text_pixels(text, size, bold) <= pixels:
        return text
    low, high = 0, len(text)  # the longest start that fits lies in [low, high)
    while high - low > 1:
        middle = (low + high) // 2
        if _text_pixels(text[:middle] + "…", size, bold) <= pixels:
            low = middle
        else:
            high = middle
    return text[:low] + "…"


def _wrapped(text: str, pixels: float, size: float, bold: bool = False,
             max_lines: int = 2) -> list[str]:
    """`text` broken at spaces into lines that fit `pixels`, at most `max_lines` of them
    (the last shortened with "…" if the text goes on); a word too long for a line is
    shortened."""
    lines: list[str] = []
    for word in text.split(" "):
        joined = f"{lines[-1]} {word}" if lines else word
        if lines and _text_pixels(joined, size, bold) <= pixels:
            lines[-1] = joined
        else:
            lines.append(_shortened(word, pixels, size, bold))
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [_shortened(" ".join(lines[max_lines - 1:]) + " …",
                                                    pixels, size, bold)]
    return lines


def _as_rgb(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"image must be [H, W, 3] (or a PIL image); got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB; got dtype {array.dtype}")
    return array[..., :3]


def upsample(attention_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """One `[h, w]` attention map → `[height, width]` by bilinear interpolation."""
    source = Image.fromarray(np.asarray(attention_map, np.float32), mode="F")
    return np.asarray(source.resize((width, height), Image.Resampling.BILINEAR), np.float32)


def _picture_height(picture_width: int, image_height: int, image_width: int) -> int:
    """The height of each panel's picture: the image's own proportions between a quarter
    and twice its width. A strip beyond them is stretched, as the backbone's square input
    stretches every image; kept, it drew 3 pixels high or tens of thousands high."""
    ratio = min(max(image_height / image_width, _PICTURE_RATIO[0]), _PICTURE_RATIO[1])
    return round(picture_width * ratio)


def _grid(num_steps: int) -> tuple[int, int]:
    """`(columns, rows)` of the panels: the image, then one a step, `PANELS_PER_ROW` a row."""
    columns = min(num_steps + 1, PANELS_PER_ROW)
    return columns, math.ceil((num_steps + 1) / columns)


def _cell_height(image_height: int, image_width: int, panel_pixels: int) -> int:
    """The height of one row of panels: a step's title, its picture and its caption."""
    picture_height = _picture_height(panel_pixels - 2 * _MARGIN, image_height, image_width)
    return _STEP_TITLE_PIXELS + picture_height + _CAPTION_PIXELS + 2 * _MARGIN


def figure_pixels(num_steps: int, image_height: int, image_width: int,
                  title_lines: int = 0, panel_pixels: int = PANEL_PIXELS) -> tuple[int, int]:
    """`(width, height)` in pixels of the PNG `draw_attention` writes."""
    columns, rows = _grid(num_steps)
    height = (title_lines * _TITLE_LINE_PIXELS + (_MARGIN if title_lines else 0)
              + rows * _cell_height(image_height, image_width, panel_pixels))
    return columns * panel_pixels, height


def _inches(pixels: int) -> float:
    """`pixels` at `DPI` as a figure size in inches, one float above `pixels / DPI`:
    matplotlib before 3.11 (the newest for Python 3.10) truncates inches × dpi to whole
    pixels, and 113 / 100 × 100 is 112.99999999999999, a picture a pixel short of
    `figure_pixels`."""
    return math.nextafter(pixels / DPI, math.inf)


def draw_attention(image: Union[np.ndarray, Image.Image], attention: np.ndarray,
                   label_names: Sequence[str], probabilities: Sequence[float], path: str,
                   title: Optional[str] = None, *, ground_truth: Optional[Sequence[str]] = None,
                   panel_pixels: int = PANEL_PIXELS, cmap: str = "jet", alpha: float = 0.7) -> str:
    """Writes one PNG: the image, then α_t over the image for each decoding step t.

    Args:
        image: uint8 RGB `[H, W, 3]` or a PIL image (any size; the attention grid is
            stretched over the whole image, as the image was stretched to the
            backbone's input).
        attention: `[T, h, w]` attention of each step (rows sum to 1 over h·w).
        label_names: the label chosen at each of the T steps.
        probabilities: each label's probability at its step.
        path: the PNG to write (folders are created).
        title: first line of the figure title.
        ground_truth: true label names, shown as a second title line.
        panel_pixels: width of each of the T + 1 panels.
        cmap, alpha: colour map and largest opacity of the overlay. Each map is
            coloured from the uniform level (clear) to its own maximum, so the colours
            show where a step looks; the number under it (its peak over the uniform
            level) shows how sharply.

    Returns:
        `path`.
    """
    rgb = _as_rgb(image)
    attention = np.asarray(attention, np.float32)
    if attention.ndim != 3:
        raise ValueError(f"attention must be [T, h, w]; got shape {attention.shape}")
    steps = attention.shape[0]
    if len(label_names) != steps or len(probabilities) != steps:
        raise ValueError(f"attention has {steps} steps but {len(label_names)} label names and "
                         f"{len(probabilities)} probabilities were given")
    if not np.all(np.isfinite(attention)):
        raise ValueError("attention holds NaN or infinite values")

    height_px, width_px = rgb.shape[:2]
    columns, _ = _grid(steps)
    text_width = columns * panel_pixels - 2 * _MARGIN
    lines = []  # (text, first line's style)
    if title:
        lines += [(line, True) for line in _wrapped(_drawable(title), text_width,
                                                      _TITLE_SIZES[0], bold=True)]
    if ground_truth is not None:
        truth = "ground truth: " + (", ".join(ground_truth) or "(none)")
        lines += [(line, False) for line in _wrapped(_drawable(truth), text_width,
                                                       _TITLE_SIZES[1],
                                                       max_lines=_GROUND_TRUTH_LINES)]
    fig_w, fig_h = figure_pixels(steps, height_px, width_px, len(lines), panel_pixels)
    picture_w = panel_pixels - 2 * _MARGIN
    picture_h = _picture_height(picture_w, height_px, width_px)

    figure = Figure(figsize=(_inches(fig_w), _inches(fig_h)), dpi=DPI, facecolor="white")
    FigureCanvasAgg(figure)
    for i, (line, first) in enumerate(lines):
        y = fig_h - _MARGIN - (i + 0.5) * _TITLE_LINE_PIXELS
        figure.text(0.5, y / fig_h, line, ha="center", va="center", parse_math=False,
                    fontsize=_TITLE_SIZES[0] if first else _TITLE_SIZES[1],
                    weight="bold" if first else "normal")

    cell_h = _cell_height(height_px, width_px, panel_pixels)
    titles_h = fig_h - _grid(steps)[1] * cell_h

    def panel(index: int, heading: str, caption: str = ""):
        row, column = divmod(index, columns)
        left = column * panel_pixels + _MARGIN
        bottom = fig_h - titles_h - (row + 1) * cell_h + _MARGIN + _CAPTION_PIXELS
        axes = figure.add_axes([left / fig_w, bottom / fig_h, picture_w / fig_w,
                                picture_h / fig_h])
        axes.set_axis_off()
        # aspect="auto": the picture fills the panel sized by _picture_height (matplotlib's
        # default shrinks it back to the image's own proportions, a strip to a thin line).
        axes.imshow(rgb, extent=(0, width_px, height_px, 0), interpolation="bilinear",
                    aspect="auto")
        axes.set_title(heading, fontsize=_STEP_TITLE_SIZE, pad=4, parse_math=False)
        if caption:
            figure.text(left / fig_w, (bottom - 1) / fig_h, caption, fontsize=8,
                        color="0.25", ha="left", va="top", parse_math=False)
        return axes

    colormap = matplotlib.colormaps[cmap]
    panel(0, "image")
    uniform = 1.0 / (attention.shape[1] * attention.shape[2])
    for t in range(steps):
        number, probability = f"{t + 1}. ", f"  {float(probabilities[t]):.2f}"
        room = picture_w - _text_pixels(number + probability, _STEP_TITLE_SIZE)
        name = _shortened(_drawable(str(label_names[t])), room, _STEP_TITLE_SIZE)
        peak = float(attention[t].max())
        axes = panel(t + 1, number + name + probability, f"peak {peak / uniform:.1f}× uniform")
        heat = upsample(attention[t], height_px, width_px)
        # From the uniform level (clear) to the peak (red), the peak drawn at full colour
        # only from twice the uniform level on: a flat or barely uneven map stays clear.
        heat = np.clip((heat - uniform) / max(peak - uniform, uniform), 0.0, 1.0)
        overlay = colormap(heat)
        # Opacity grows with attention: weakly attended regions keep the image visible.
        overlay[..., 3] = alpha * heat
        axes.imshow(overlay, extent=(0, width_px, height_px, 0), interpolation="bilinear",
                    aspect="auto")
        if _at_full_colour(peak, uniform):  # outlined too
            _outline(axes, heat)
    description = describe_attention(attention, label_names, probabilities, title=title,
                                     ground_truth=ground_truth)
    # Whole or not at all: a full disk left an empty PNG under the picture's name.
    with replaced_whole(path) as tmp:
        # zlib's fastest level: the default's files are a fifth smaller for much more time.
        figure.savefig(tmp, dpi=DPI, format="png", facecolor="white",
                       metadata={"Description": description},
                       pil_kwargs={"compress_level": 1})
    return path


def _at_full_colour(peak: float, uniform: float) -> bool:
    """Whether a step's map, of highest weight `peak`, is drawn at full colour: from twice
    the `uniform` level 1/(h·w) on, where `draw_attention`'s colour scale, from the uniform
    level to `max(peak - uniform, uniform)` above it, reaches its top; a flatter map looks
    all over the image."""
    return peak >= 2 * uniform


def describe_attention(attention: np.ndarray, label_names: Sequence[str],
                       probabilities: Sequence[float], title: Optional[str] = None,
                       ground_truth: Optional[Sequence[str]] = None) -> str:
    """What `draw_attention`'s picture of these arguments shows, in one paragraph: its
    title, the true labels, and each step's label, probability, where it looks (the
    third of the image across and down that holds the map's peak, or all over where the
    map is drawn clear) and its peak over the uniform level."""
    attention = np.asarray(attention, np.float32)
    words = [" ".join(printable(title).split()) + "."] if title else []
    if ground_truth is not None:
        words.append("Ground truth: " + (", ".join(map(printable, ground_truth)) or "(none)")
                     + ".")
    uniform = 1.0 / (attention.shape[1] * attention.shape[2])
    for t, (name, probability) in enumerate(zip(label_names, probabilities)):
        peak = float(attention[t].max())
        where = "all over the image"
        if _at_full_colour(peak, uniform):  # drawn and outlined where it looks
            row, column = np.unravel_index(int(np.argmax(attention[t])), attention[t].shape)
            # By the cell's centre: the thirds of 7 cells are 2, 3 and 2 of them.
            down = _THIRDS[0][int(3 * (row + 0.5) / attention.shape[1])]
            across = _THIRDS[1][int(3 * (column + 0.5) / attention.shape[2])]
            where = ("at the centre" if (down, across) == ("middle", "centre")
                     else f"at the {down} {across}")
        words.append(f"Step {t + 1}: {printable(name)}, probability {float(probability):.2f}, "
                     f"looks {where} (peak {peak / uniform:.1f}× uniform).")
    if not len(label_names):
        words.append("No label chosen.")
    return " ".join(words)


def description(path: str) -> Optional[str]:
    """The ``Description`` a PNG `draw_attention` wrote holds (None for another PNG)."""
    with Image.open(path) as picture:
        return getattr(picture, "text", {}).get("Description")


def _outline(axes, heat: np.ndarray) -> None:
    """Draws where `heat` (0 at the uniform level, 1 at the peak) crosses `_OUTLINE_LEVEL`,
    over the picture `axes` shows: a white line edged in black, seen over light and dark
    pixels alike, in any colour vision."""
    height, width = heat.shape
    # A contour needs two points a side: an image 1 pixel high or wide is doubled that way.
    heat = np.repeat(np.repeat(heat, 2 if height < 2 else 1, axis=0), 2 if width < 2 else 1,
                     axis=1)
    # Pixel centres in the picture's coordinates (`extent` of its `imshow`).
    xs = (np.arange(heat.shape[1]) + 0.5) * width / heat.shape[1]
    ys = (np.arange(heat.shape[0]) + 0.5) * height / heat.shape[0]
    edge = [patheffects.withStroke(linewidth=_OUTLINE_WIDTHS[1], foreground="black")]
    lines = axes.contour(xs, ys, heat, levels=[_OUTLINE_LEVEL], colors="white",
                         linewidths=_OUTLINE_WIDTHS[0])
    lines.set(path_effects=edge)
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)  # as `imshow` set them: contour may have widened them


def _display_size(image: Image.Image, longest: int = 448) -> Image.Image:
    scale = longest / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.LANCZOS)


def render_examples(predictor, image_paths: Sequence[str], out_dir: str,
                    ground_truth: Optional[Mapping[str, Sequence[str]]] = None,
                    max_images: int = 8) -> list[str]:
    """Predicts images with a run's `Predictor` and draws one attention PNG each.

    Args:
        predictor: a `ofrnn_tf.inference.Predictor` of a run whose model attends.
        image_paths: image files; the first `max_images` are drawn.
        out_dir: where `<index>_<file stem>.png` go (see `draw_prediction`).
        ground_truth: true label names per image, keyed by the path as given (or its
            file name).
        max_images: at most this many pictures.

    Returns:
        the PNG paths written; none for the variants without attention (`baseline`,
        `no_attention`). Images that cannot be read, and pictures that cannot be drawn, are
        reported on stderr and skipped; a full disk raises its OSError. What each picture
        shows is written in words to `CAPTIONS` in `out_dir` (`write_captions`).
    """
    if not predictor.module.has_attention:
        print(f"[attention] the {predictor.module.model.variant} variant has no attention; "
              f"no pictures drawn", file=sys.stderr)
        return []
    paths = list(image_paths)[:max_images]
    written = []
    for index, result in enumerate(predictor.predict_files(paths, all_scores=False,
                                                           keep_bytes=True)):
        if "error" in result:
            say(f"[attention] skipped {result['error']}")
            continue
        truth = None
        if ground_truth is not None:
            image_path = result["image"]
            truth = ground_truth.get(image_path, ground_truth.get(os.path.basename(image_path)))
        try:
            written.append(draw_prediction(result, out_dir, index, ground_truth=truth))
        except Exception as error:  # noqa: BLE001 - a picture is never worth the run
            if out_of_room(error):  # ... but a full disk stops the next writes too
                raise
            say(f"[attention] {result['image']}: no picture: {error}")
    if written:
        write_captions(written, out_dir)
    return written


def write_captions(pictures: Sequence[str], out_dir: str) -> str:
    """Writes `CAPTIONS` in `out_dir`: each picture's name and its `description`, the
    pictures' text for a reader who cannot see them. Returns its path."""
    path = os.path.join(out_dir, CAPTIONS)
    lines = ["# Attention pictures", "",
             "Each picture in words: the labels chosen step by step, each with its",
             "probability, where the step looks and how sharply (its peak over the",
             "uniform level 1/(h·w); below twice that level it looks all over the image).",
             ""]
    for picture in pictures:
        lines += [f"## {_utf8_name(os.path.basename(picture))}", "",
                  description(picture) or "", ""]
    with replaced_whole(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path


def picture_path(image_path: str, out_dir: str, index: int) -> str:
    """Where `draw_prediction` draws the image file `image_path`, the `index`-th input:
    ``<out_dir>/<index>_<file stem>.png``, the stem alone where it starts with that number
    already, as a run's example copies do."""
    stem = os.path.splitext(os.path.basename(image_path))[0]
    numbered = stem if stem.startswith(f"{index:03d}_") else f"{index:03d}_{stem}"
    return os.path.join(out_dir, fitting_stem(numbered, ".png") + ".png")


def draw_prediction(result: dict, out_dir: str, index: int,
                    ground_truth: Optional[Sequence[str]] = None) -> str:
    """Draws one prediction of ``Predictor.predict_files(..., attention=True)`` over its
    image (the bytes it was decoded from, ``result["image_bytes"]`` where it holds them,
    else the file ``result["image"]`` read again) as `picture_path` says (the paper's
    Fig. 3); returns the path."""
    image_path = result["image"]
    log_prob = result["log_prob"]
    if not result["labels"]:
        probability = "  (no label chosen)"
    else:
        probability = "" if log_prob is None else f"  (path probability {math.exp(log_prob):.3f})"
    data = result.get("image_bytes")
    if data is None:
        with open(image_path, "rb") as f:
            data = f.read()
    pixels = decode_rgb(tf.constant(data)).numpy()  # what the model saw
    picture = _display_size(Image.fromarray(pixels))
    return draw_attention(
        picture, result["attention"], result["labels"], result["step_probabilities"],
        picture_path(image_path, out_dir, index),
        title=_utf8_name(os.path.basename(image_path)) + probability, ground_truth=ground_truth)




def fitting_stem(stem: str, *extensions: str) -> str:
    """`stem` shortened (by characters, from the end) so that `stem` with each of
    `extensions` is a file name of at most 255 bytes, the limit of common file systems."""
    room = LONGEST_NAME - max(len(e.encode("utf-8", "surrogateescape")) for e in extensions)
    while len(stem.encode("utf-8", "surrogateescape")) > room:
        stem = stem[:-1]
    return stem


def _utf8_name(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (kept by Python as lone surrogates,
    which no font draws) become U+FFFD, control characters (a newline) ``\\xNN``."""
    return printable(name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
