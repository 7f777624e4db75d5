"""What image files each path accepts: ofrnn-predict's header check and the served graph's
guard give the same hints for files mistaken for images, and the run's example images
(the export's warm-up) are only test images the served model accepts."""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ofrnn_tf import pipeline
from ofrnn_tf.data.example import Example
from ofrnn_tf.features.image_guards import DEFAULT_MAX_IMAGE_PIXELS, check_encoded_images
from ofrnn_tf.features.images import read_image_header
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.run_dir import RunDir


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
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
                                                 "decoded bytes, in the REST API as "
                                                 "{\"b64\": \"...\"})"),
    "data url": (b"data:image/png;base64,iVBO", " (this looks like a data URL: send the "
                                                "decoded bytes)"),
    "riff that is not webp": (b"RIFF\0\0\0\0WAVEfmt " + bytes(16), ""),
    "plain text": (b"meeting notes, not a picture", ""),
}


def graph_hint(data: bytes) -> str:
    """What the served graph's guard adds after the bytes it shows ("" for none)."""
    with pytest.raises(tf.errors.InvalidArgumentError) as refused:
        check_encoded_images(tf.constant([data]), DEFAULT_MAX_IMAGE_PIXELS)
    message = refused.value.message  # eagerly, the Assert's text ends as a bytes repr: '
    match = re.search(r"starts with (?:[0-9a-f]{2} ?)+(.*?)'?$", message.splitlines()[0])
    assert match, message
    return match.group(1)


@pytest.mark.parametrize("name", MISTAKEN)
def test_predict_and_the_served_graph_give_the_same_hint(name):
    data, hint = MISTAKEN[name]
    assert graph_hint(data) == hint.strip()
    with pytest.raises(ValueError) as refused:
        read_image_header(data)
    message = str(refused.value)
    assert message.startswith("not a JPEG/PNG/GIF/BMP image (starts with ")
    assert message.endswith(")" + hint) if hint else message.endswith(")")


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
    data = pipeline.Data({"test": examples}, LabelMap(["a", "b"]))
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
    monkeypatch.setattr(pipeline, "_NAMED_LEFT_OUT", 1)
    data = pipeline.Data({"test": examples}, LabelMap(["a", "b"]))
    save_examples_unpictured(RunDir(str(tmp_path / "run")), data)
    err = capsys.readouterr().err
    assert sum(path in err for path in refused) == 1
    assert f"{len(refused) - 1} more test image(s) left out" in err
