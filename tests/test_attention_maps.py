"""Tests for ofrnn_tf/visualization/attention_maps.py (Fig. 3 pictures)."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from PIL import Image

from ofrnn_tf.inference import Predictor
from ofrnn_tf.visualization.attention_maps import (
    _CAPTION_PIXELS, CAPTIONS, PANEL_PIXELS, PANELS_PER_ROW, describe_attention, description,
    draw_attention, draw_prediction, figure_pixels, render_examples, upsample)


def gray_image(height=120, width=160) -> np.ndarray:
    return np.full((height, width, 3), 128, np.uint8)


def panel_columns(png: np.ndarray, row: int) -> int:
    """Runs of non-white columns along one pixel row (the panels it crosses)."""
    inked = (png[row, :, :3].astype(int).sum(-1) < 3 * 250)
    return int(np.sum(inked[1:] & ~inked[:-1]) + inked[0])


def test_draw_attention_writes_one_panel_per_step_plus_the_image(tmp_path):
    steps = 3
    attention = np.random.default_rng(0).random((steps, 7, 7)).astype(np.float32)
    attention /= attention.sum(axis=(1, 2), keepdims=True)
    path = draw_attention(gray_image(), attention, ["a", "b", "c"], [0.9, 0.5, 0.3],
                          str(tmp_path / "sub" / "fig.png"), title="img.jpg",
                          ground_truth=["a", "c"])
    with Image.open(path) as opened:
        assert opened.format == "PNG"
        png = np.asarray(opened.convert("RGB"))
    width, height = figure_pixels(steps, 120, 160, title_lines=2)
    assert png.shape[:2] == (height, width) and width == (steps + 1) * PANEL_PIXELS
    assert png.std() > 20  # not blank
    middle = height - 6 - _CAPTION_PIXELS - (PANEL_PIXELS - 12) * 120 // 160 // 2
    assert panel_columns(png, middle) == steps + 1
    # The image panel is the plain gray picture; the step panels are coloured by the map.
    left = png[middle, 6 + 10]
    assert np.all(np.abs(left.astype(int) - 128) <= 2)
    row = slice(middle - 20, middle + 20)
    assert all(np.ptp(png[row, (t + 1) * PANEL_PIXELS + 16:(t + 2) * PANEL_PIXELS - 16]
                      .astype(int), axis=-1).max() > 20 for t in range(steps))


def test_a_long_path_goes_on_in_rows_of_eight_panels(tmp_path):
    steps = 10  # the image and 7 steps, then 3 steps in a second row
    attention = np.random.default_rng(1).random((steps, 7, 7)).astype(np.float32)
    attention /= attention.sum(axis=(1, 2), keepdims=True)
    path = draw_attention(gray_image(140, 140), attention, list("abcdefghij"), [0.5] * steps,
                          str(tmp_path / "long.png"))
    png = np.asarray(Image.open(path).convert("RGB"))
    width, height = figure_pixels(steps, 140, 140)
    one_row = figure_pixels(1, 140, 140)[1]
    assert png.shape[:2] == (height, width) == (2 * one_row, PANELS_PER_ROW * PANEL_PIXELS)
    side = PANEL_PIXELS - 12
    for row in (0, 1):
        middle = (row + 1) * one_row - 6 - _CAPTION_PIXELS - side // 2
        coloured = [np.ptp(png[middle - 20:middle + 20,
                               c * PANEL_PIXELS + 16:(c + 1) * PANEL_PIXELS - 16].astype(int),
                           axis=-1).max() > 20 for c in range(PANELS_PER_ROW)]
        # Row 1: the gray image, then 7 steps; row 2: steps 8-10, then nothing drawn.
        assert coloured == ([False] + [True] * 7 if row == 0 else [True] * 3 + [False] * 5)
    assert np.all(png[one_row + 10:, 3 * PANEL_PIXELS + 8:] == 255)  # no panel: white


def test_attention_overlay_lands_where_the_map_peaks(tmp_path):
    # Each step looks elsewhere: top right, bottom left, top left; panel t + 1 is step t's.
    peaks = [(1, 5), (5, 1), (1, 1)]
    attention = np.zeros((len(peaks), 7, 7), np.float32)
    for t, (row, column) in enumerate(peaks):
        attention[t, row, column] = 1.0
    path = draw_attention(gray_image(140, 140), attention, ["x", "y", "z"], [0.7, 0.6, 0.5],
                          str(tmp_path / "p.png"))
    png = np.asarray(Image.open(path).convert("RGB")).astype(int)
    width, height = figure_pixels(len(peaks), 140, 140)
    side = PANEL_PIXELS - 12
    top = height - 6 - _CAPTION_PIXELS - side
    for t, (row, column) in enumerate(peaks):
        left = (t + 1) * PANEL_PIXELS + 6
        panel = png[top:top + side, left:left + side]
        y, x = int(side * (row + 0.5) / 7), int(side * (column + 0.5) / 7)
        peak, far = panel[y, x], panel[side - y, side - x]
        # jet: the peak is red; where the map is at or below the uniform level, the image.
        assert peak[0] - peak[2] > 60 and peak[0] - peak[1] > 60, t
        assert np.all(np.abs(far - 128) <= 2), t


# Machado, Oliveira and Fernandes (2009), severity 1, on linear RGB.
COLOUR_VISION = {
    "deuteranopia": np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                              [-0.011820, 0.042940, 0.968881]]),
    "protanopia": np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                            [-0.003882, -0.048116, 1.051998]]),
}


def seen_as_lab(rgb: np.ndarray, vision: str) -> np.ndarray:
    """CIELAB of uint8 sRGB pixels as a reader with `vision` sees them."""
    c = rgb.astype(float) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    linear = np.clip(linear @ COLOUR_VISION[vision].T, 0, 1)
    xyz = linear @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192],
                             [0.1805, 0.0722, 0.9505]]) / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


@pytest.mark.parametrize("vision", sorted(COLOUR_VISION))
@pytest.mark.parametrize("colour", [(84, 89, 26), (40, 40, 40), (245, 245, 245)],
                         ids=["olive", "dark", "light"])
def test_where_a_step_looks_stands_apart_in_any_colour_vision(tmp_path, vision, colour):
    """The attended region is outlined (white edged in black) where the map is half way
    from the uniform level to its peak, ΔE over 70 from the image behind it for these
    readers. In jet's colours alone nothing in the picture was 40 from an olive object
    for them (the red peak 9 for a deuteranope, 50 in normal vision), nor 60 from a
    light one."""
    image = np.empty((140, 140, 3), np.uint8)
    image[:] = colour
    attention = np.full((1, 7, 7), 0.3 / 49, np.float32)
    attention[0, 1, 5] += 0.7  # top right
    path = draw_attention(image, attention, ["x"], [0.7], str(tmp_path / "p.png"))
    png = np.asarray(Image.open(path).convert("RGB"))
    width, height = figure_pixels(1, 140, 140)
    side = PANEL_PIXELS - 12
    top = height - 6 - _CAPTION_PIXELS - side
    panel = png[top + 2:top + side - 2, PANEL_PIXELS + 8:PANEL_PIXELS + 4 + side]
    seen = seen_as_lab(panel, vision)
    bare = seen_as_lab(np.array(colour, np.uint8), vision)
    apart = np.linalg.norm(seen - bare, axis=-1)
    assert apart.max() > 60, apart.max()
    # ... around the peak only: the far half of the picture is the image.
    rows, columns = np.nonzero(apart > 60)
    assert rows.max() < side / 2 and columns.min() > side / 2


def test_a_flat_map_leaves_the_image_clear_and_says_its_peak(tmp_path):
    """A step that looks everywhere (α = 1/(h·w), or within 1 % of it) is not drawn as
    red all over: its panel is the image, and the caption under it gives its peak."""
    rng = np.random.default_rng(0)
    flat = np.full((7, 7), 1 / 49, np.float32)
    uneven = flat * (1 + 0.01 * rng.standard_normal((7, 7))).astype(np.float32)
    path = draw_attention(gray_image(140, 140), np.stack([flat, uneven]), ["x", "y"],
                          [0.5, 0.5], str(tmp_path / "flat.png"))
    png = np.asarray(Image.open(path).convert("RGB")).astype(int)
    width, height = figure_pixels(2, 140, 140)
    side = PANEL_PIXELS - 12
    top = height - 6 - _CAPTION_PIXELS - side
    for t in (1, 2):
        # The whole picture, corners too (a box over the map hid its bottom-left corner).
        picture = png[top + 1:top + side - 1, t * PANEL_PIXELS + 7:t * PANEL_PIXELS + 5 + side]
        assert np.abs(picture - 128).max() <= 4, t
        caption = png[top + side:top + side + _CAPTION_PIXELS,
                      t * PANEL_PIXELS + 6:t * PANEL_PIXELS + 120]
        assert caption.min() < 120  # "peak 1.0× uniform", on white


@pytest.mark.parametrize("height, width", [(1, 100), (100, 1), (1, 1)])
def test_an_image_one_pixel_high_or_wide_is_outlined_too(tmp_path, height, width):
    attention = np.full((1, 7, 7), 0.3 / 49, np.float32)
    attention[0, 1, 5] += 0.7
    path = draw_attention(np.zeros((height, width, 3), np.uint8), attention, ["x"], [0.5],
                          str(tmp_path / "thin.png"))
    with Image.open(path) as opened:
        assert opened.size == figure_pixels(1, height, width)


@pytest.mark.parametrize("height, width", [(40, 3000), (1, 100), (120, 160)])
def test_the_png_is_the_size_figure_pixels_says_where_matplotlib_truncates(
        tmp_path, monkeypatch, height, width):
    # matplotlib before 3.11, the newest for Python 3.10, truncates a figure's inches × dpi
    # to whole pixels: a picture 113 pixels high (113 / 100 × 100 = 112.99999999999999)
    # came out 112. Its rule is put in place here on a newer matplotlib.
    from matplotlib.backend_bases import FigureCanvasBase

    monkeypatch.setattr(FigureCanvasBase, "get_width_height", lambda self, *, physical=False:
                        tuple(int(size) for size in self.figure.bbox.max))
    path = draw_attention(gray_image(height, width), np.full((1, 7, 7), 1 / 49, np.float32),
                          ["x"], [0.5], str(tmp_path / "fig.png"))
    with Image.open(path) as opened:
        assert opened.size == figure_pixels(1, height, width)


def test_a_picture_says_in_words_what_it_shows(tmp_path):
    """For a reader who cannot see it: each step's label, probability, the third of the
    image its peak is in (or all over, where the map is drawn clear) and the peak."""
    looking = np.full((7, 7), 0.3 / 49, np.float32)
    looking[1, 5] += 0.7  # top right
    centre = np.full((7, 7), 0.5 / 49, np.float32)
    centre[3, 3] += 0.5
    flat = np.full((7, 7), 1 / 49, np.float32)
    attention = np.stack([looking, centre, flat])
    path = draw_attention(gray_image(), attention, ["cat", "new\nline", "dog"], [0.9, 0.5, 0.25],
                          str(tmp_path / "p.png"), title="img.jpg  (path probability 0.113)",
                          ground_truth=["cat", "dog"])
    words = describe_attention(attention, ["cat", "new\nline", "dog"], [0.9, 0.5, 0.25],
                               title="img.jpg  (path probability 0.113)",
                               ground_truth=["cat", "dog"])
    assert description(path) == words == (
        "img.jpg (path probability 0.113). Ground truth: cat, dog. "
        "Step 1: cat, probability 0.90, looks at the top right (peak 34.6× uniform). "
        "Step 2: new\\x0aline, probability 0.50, looks at the centre (peak 25.0× uniform). "
        "Step 3: dog, probability 0.25, looks all over the image (peak 1.0× uniform).")
    assert describe_attention(np.zeros((0, 7, 7)), [], [], ground_truth=[]) == (
        "Ground truth: (none). No label chosen.")


def test_long_titles_wrap_to_the_figure_and_long_names_are_shortened(tmp_path):
    from ofrnn_tf.visualization.attention_maps import _text_pixels, _wrapped

    truth = [f"class number {k}" for k in range(60)]
    lines = _wrapped("ground truth: " + ", ".join(truth), 500, 10, max_lines=3)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(_text_pixels(line, 10) <= 500 for line in lines)
    assert _wrapped("x" * 400, 300, 11, bold=True) == [_wrapped("x" * 400, 300, 11, True)[0]]
    attention = np.full((1, 7, 7), 1 / 49, np.float32)
    path = draw_attention(gray_image(), attention, ["a class name far too long for a panel"],
                          [0.5], str(tmp_path / "long.png"), title="f" * 200 + ".jpg",
                          ground_truth=truth)
    with Image.open(path) as picture:  # the title's 1 line and the truth's 3 added
        assert picture.size == figure_pixels(1, 120, 160, title_lines=4)


@pytest.mark.parametrize("height, width, picture_height", [
    (3000, 20, 2 * (PANEL_PIXELS - 12)), (40, 3000, (PANEL_PIXELS - 12) // 4)],
    ids=["tall", "wide"])
def test_a_strip_is_drawn_within_bounds_the_eye_can_read(tmp_path, height, width, picture_height):
    # Drawn in its own proportions, the tall strip made a PNG 36,501 pixels high and the
    # wide one a picture 3 pixels high.
    path = draw_attention(gray_image(height, width), np.full((1, 7, 7), 1 / 49, np.float32),
                          ["x"], [0.7], str(tmp_path / "strip.png"))
    with Image.open(path) as opened:
        size = opened.size
        png = np.asarray(opened.convert("RGB")).astype(int)
    assert size == figure_pixels(1, height, width)
    assert size[1] == figure_pixels(1, 1, 1)[1] - (PANEL_PIXELS - 12) + picture_height
    # The picture fills its panel (drawn in its own proportions inside it, it was a line).
    for column in (PANEL_PIXELS // 2, PANEL_PIXELS + PANEL_PIXELS // 2):
        gray_rows = np.sum(np.all(np.abs(png[:, column] - 128) <= 4, axis=-1))
        assert abs(gray_rows - picture_height) <= 2, (column, gray_rows)
    wide = png[size[1] - 6 - _CAPTION_PIXELS - picture_height // 2]
    assert np.sum(np.all(np.abs(wide - 128) <= 4, axis=-1)) >= 2 * (PANEL_PIXELS - 12) - 4


def test_draw_attention_checks_its_inputs(tmp_path):
    with pytest.raises(ValueError, match="2 steps but 1 label names and 2 probabilities"):
        draw_attention(gray_image(), np.ones((2, 7, 7)), ["a"], [0.1, 0.2], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match=r"attention must be \[T, h, w\]"):
        draw_attention(gray_image(), np.ones((7, 7)), [], [], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="must be uint8"):
        draw_attention(gray_image().astype(float), np.ones((0, 7, 7)), [], [],
                       str(tmp_path / "x.png"))


def test_upsample_is_smooth_and_keeps_orientation():
    grid = np.zeros((2, 2), np.float32)
    grid[0, 1] = 1.0
    big = upsample(grid, 40, 40)
    assert big.shape == (40, 40)
    assert big[0, -1] == pytest.approx(1.0) and big[-1, 0] == pytest.approx(0.0)
    assert 0.0 < big[20, 20] < 1.0  # interpolated, not blocky


@pytest.fixture(scope="module")
def predictor(tmp_path_factory, make_fake_run, tiny_backbone):
    """A fake run's `Predictor` over the tiny backbone, whose attention is drawn."""
    workdir = make_fake_run(tmp_path_factory.mktemp("run"))
    return Predictor.from_run(str(workdir), backbone=tiny_backbone)


def test_render_examples_one_png_per_readable_image(predictor, sample_images, tmp_path):
    images = sample_images  # 3 JPEGs + a corrupt one at index 1
    truth = {images[0].name: ["circle"], str(images[2]): ["dot", "ring"]}
    written = render_examples(predictor, [str(p) for p in images], str(tmp_path / "out"),
                              ground_truth=truth, max_images=3)
    assert [p.rsplit("/", 1)[1] for p in written] == ["000_img0.png", "002_img1.png"]
    # The pictures in words, beside them: a heading and a description each.
    captions = (tmp_path / "out" / CAPTIONS).read_text(encoding="utf-8")
    for path in written:
        heading = f"## {os.path.basename(path)}\n\n{description(path)}\n"
        assert heading in captions and "Ground truth: " in description(path)
    results = predictor.predict_files(images[:3:2])
    for path, result in zip(written, results):
        with Image.open(path) as opened:
            assert opened.width == (len(result["labels"]) + 1) * PANEL_PIXELS


def test_render_examples_skips_variants_without_attention(tmp_path, make_fake_run,
                                                          tiny_backbone, sample_images):
    workdir = make_fake_run(tmp_path / "run", variant="baseline")
    predictor = Predictor.from_run(str(workdir), backbone=tiny_backbone)
    assert render_examples(predictor, [str(sample_images[0])], str(tmp_path / "out")) == []
    assert not (tmp_path / "out").exists()


def _prediction(image_path) -> dict:
    attention = np.full((2, 4, 4), 1 / 16, np.float32)
    return {"image": str(image_path), "log_prob": -0.1, "attention": attention,
            "labels": ["$x$", "b"], "step_probabilities": [0.9, 0.8]}


def test_any_file_name_can_title_a_picture(tmp_path):
    # '$..$' would be read as mathtext; bytes that are not UTF-8 are lone surrogates.
    for name in ("price_$5_$.png", os.fsdecode(b"caf\xe9.png"), "a\\b{c}^_.png"):
        Image.fromarray(gray_image(40, 40)).save(tmp_path / name)
        path = draw_prediction(_prediction(tmp_path / name), str(tmp_path / "out"), 0)
        with Image.open(path) as opened:
            assert opened.format == "PNG"


def test_the_picture_of_an_image_with_a_name_of_255_bytes_is_drawn_under_a_shorter_one(
        tmp_path):
    name = "é" * 125 + ".jpeg"  # 255 bytes: with its number and .png it would pass them
    Image.fromarray(gray_image(40, 40)).save(tmp_path / name, format="PNG")
    path = draw_prediction(_prediction(tmp_path / name), str(tmp_path / "out"), 7)
    assert os.path.basename(path).startswith("007_éé") and path.endswith("é.png")
    assert len(os.path.basename(path).encode()) <= 255
    with Image.open(path) as opened:
        assert opened.format == "PNG"


def test_a_class_name_the_font_lacks_is_written_as_escapes_not_empty_boxes(tmp_path):
    import warnings

    from ofrnn_tf.visualization.attention_maps import _drawable

    assert _drawable("狗 and café") == "\\u72d7 and café"
    assert _drawable("tab\tname") == "tab\\tname"  # a space the font lacks
    assert _drawable("new\nline") == "new\\nline"  # it broke a step's title in two
    Image.fromarray(gray_image(40, 40)).save(tmp_path / "dog\tx.png")  # a tab in its name
    prediction = dict(_prediction(tmp_path / "dog\tx.png"), labels=["狗", "new\nline"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns of each glyph it cannot draw
        path = draw_prediction(prediction, str(tmp_path / "out"), 0)
    with Image.open(path) as opened:
        assert opened.format == "PNG"


def test_the_picture_shows_the_pixels_the_model_decodes(tmp_path):
    """A 16-bit gray PNG: TensorFlow scales it to 8 bits, PIL's RGB conversion would clip it
    to white."""
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    path = draw_prediction(_prediction(tmp_path / "deep.png"), str(tmp_path / "out"), 0)
    with Image.open(path) as opened:
        png = np.asarray(opened.convert("RGB"))
    first_panel = png[:, :PANEL_PIXELS]
    dark = first_panel.astype(int).sum(-1) < 3 * 64
    assert dark.mean() > 0.05, "the image panel is blank"


def test_render_examples_loses_only_the_picture_that_cannot_be_drawn(
        tmp_path, make_fake_run, tiny_backbone, sample_images, monkeypatch, capsys):
    from ofrnn_tf.visualization import attention_maps

    predictor = Predictor.from_run(str(make_fake_run(tmp_path / "run")), backbone=tiny_backbone)
    drawn = attention_maps.draw_prediction
    first = str(sample_images[0])

    def failing_on_the_first(result, *args, **kwargs):
        if result["image"] == first:
            raise RuntimeError("font cache is broken")
        return drawn(result, *args, **kwargs)

    monkeypatch.setattr(attention_maps, "draw_prediction", failing_on_the_first)
    written = render_examples(predictor, [first, str(sample_images[2])], str(tmp_path / "out"))
    assert len(written) == 1 and "font cache is broken" in capsys.readouterr().err


def test_a_full_disk_leaves_no_picture_behind_and_stops_render_examples(
        tmp_path, make_fake_run, tiny_backbone, sample_images, monkeypatch):
    from matplotlib.figure import Figure

    predictor = Predictor.from_run(str(make_fake_run(tmp_path / "run")), backbone=tiny_backbone)

    def filling(self, path, **kwargs):  # as Pillow's PNG writer on a full disk
        with open(path, "wb") as f:
            f.write(b"\x89PNG")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", filling)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left on device"):
        render_examples(predictor, [str(sample_images[0]), str(sample_images[1])], str(out))
    assert os.listdir(out) == []


def test_a_picture_without_labels_says_so_and_a_numbered_copy_keeps_its_name(tmp_path,
                                                                              monkeypatch):
    from ofrnn_tf.visualization import attention_maps

    titles = []
    drawn = attention_maps.draw_attention
    monkeypatch.setattr(attention_maps, "draw_attention", lambda *args, **kwargs: (
        titles.append(kwargs["title"]), drawn(*args, **kwargs))[1])
    Image.fromarray(gray_image(40, 40)).save(tmp_path / "003_photo.png")
    empty = dict(_prediction(tmp_path / "003_photo.png"), labels=[], step_probabilities=[],
                 attention=np.zeros((0, 4, 4), np.float32), log_prob=0.0)
    path = draw_prediction(empty, str(tmp_path / "out"), 3)
    assert titles == ["003_photo.png  (no label chosen)"]  # not "path probability 1.000"
    assert os.path.basename(path) == "003_photo.png"  # a run's example copy: no 003_003_
    assert os.path.basename(draw_prediction(empty, str(tmp_path / "out"), 4)) == \
        "004_003_photo.png"
