"""What determines the embedded benchmark's canvases: `CanvasConfig` and the scene tables.

Scenes. Real multi-label data is full of label co-occurrence, which a recurrent label
decoder can exploit. With ``scenes="outfits"`` each canvas first draws a scene (an
outfit or occasion) from `OUTFIT_SCENES`; the scene sets the canvas's item count and
the class distribution of its items, and each item's source image is then the next
one of its class in the split's pool (cycled per class, so sources are still used
about equally and the splits' sources stay disjoint). Each scene is centred on 3–4
classes with a little mass on 1–2 others; classes it leaves out never appear in it::

    scene    share  items  item classes
    casual   0.20   3-5    Pullover .28, Trouser .26, Sneaker .26, Bag .10,
                           Shirt .05, T-shirt/top .05
    beach    0.18   2-4    Sandal .30, T-shirt/top .30, Dress .20, Bag .12,
                           Sneaker .04, Shirt .04
    office   0.17   2-4    Shirt .32, Trouser .30, Bag .20, Ankle boot .10,
                           Coat .04, Pullover .04
    winter   0.15   3-5    Coat .32, Pullover .26, Ankle boot .26, Trouser .10, Bag .06
    sport    0.12   2-3    Sneaker .38, T-shirt/top .32, Trouser .20, Bag .06,
                           Pullover .04
    evening  0.10   2-3    Dress .42, Bag .28, Sandal .20, Coat .06, Ankle boot .04
    laundry  0.08   3-5    T-shirt/top .32, Shirt .30, Trouser .28, Dress .05,
                           Pullover .05

On 2,000 canvases this gives 3.3 items and 2.4 labels per canvas (2.5 and 2.3
without scenes); Coat and Ankle boot appear together 3.4 times as often as
independent labels would (Dress and Sandal 2.7 times), 19 of the 45 class pairs
appear together less than half as often (6 never: Coat with Sneaker or T-shirt/top,
Sandal with Trouser or Pullover, Ankle boot with Sneaker or T-shirt/top), and the
scene can be told from the label set for about 4 canvases in 5 (the most probable
scene given a test canvas's label set is its own for 81-82 % of them, seeds 0-2).
Sizes, the small-item share and placement are as without scenes (at 224×224 five
items still fit). Each COCO image record carries its ``"scene"``, and the table is
part of the recorded configuration (``config.scene_table``, also in each COCO file's
``info``), so editing it changes the fingerprint. Without scenes the configuration,
fingerprint and files are exactly those of builds made before scenes existed.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from ofrnn_tf.data.fashion_mnist import FASHION_MNIST_CLASSES

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Scene:
    """One scene of a scene table.

    Attributes:
        name: recorded as the ``"scene"`` of each canvas that shows it.
        frequency: share of canvases that show this scene.
        item_range: (min, max) items on such a canvas, drawn uniformly.
        classes: class name -> probability of each item being of that class; classes
            left out never appear in this scene.
    """

    name: str
    frequency: float
    item_range: tuple[int, int]
    classes: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "frequency": self.frequency,
                "item_range": list(self.item_range), "classes": dict(self.classes)}

    def class_probabilities(self) -> np.ndarray:
        """The item-class distribution over `FASHION_MNIST_CLASSES`."""
        p = np.array([self.classes.get(name, 0.0) for name in FASHION_MNIST_CLASSES])
        return p / p.sum()


# Outfits: each scene is centred on 3-4 classes that are worn or carried together,
# with a little mass on 1-2 others, so labels predict one another (Sandal with Dress,
# Coat with Ankle boot, Shirt with Trouser) and some pairs rarely meet (Sandal and Coat).
OUTFIT_SCENES = (
    Scene("casual", 0.20, (3, 5), {"Pullover": 0.28, "Trouser": 0.26, "Sneaker": 0.26,
                                   "Bag": 0.10, "Shirt": 0.05, "T-shirt/top": 0.05}),
    Scene("beach", 0.18, (2, 4), {"Sandal": 0.30, "T-shirt/top": 0.30, "Dress": 0.20,
                                  "Bag": 0.12, "Sneaker": 0.04, "Shirt": 0.04}),
    Scene("office", 0.17, (2, 4), {"Shirt": 0.32, "Trouser": 0.30, "Bag": 0.20,
                                   "Ankle boot": 0.10, "Coat": 0.04, "Pullover": 0.04}),
    Scene("winter", 0.15, (3, 5), {"Coat": 0.32, "Pullover": 0.26, "Ankle boot": 0.26,
                                   "Trouser": 0.10, "Bag": 0.06}),
    Scene("sport", 0.12, (2, 3), {"Sneaker": 0.38, "T-shirt/top": 0.32, "Trouser": 0.20,
                                  "Bag": 0.06, "Pullover": 0.04}),
    Scene("evening", 0.10, (2, 3), {"Dress": 0.42, "Bag": 0.28, "Sandal": 0.20,
                                    "Coat": 0.06, "Ankle boot": 0.04}),
    Scene("laundry", 0.08, (3, 5), {"T-shirt/top": 0.32, "Shirt": 0.30, "Trouser": 0.28,
                                    "Dress": 0.05, "Pullover": 0.05}),
)
SCENE_TABLES = {"outfits": OUTFIT_SCENES}


@dataclasses.dataclass(frozen=True)
class CanvasConfig:
    """Everything that determines the canvases (recorded in ``benchmark.json``).

    Attributes:
        num_train, num_val, num_test: canvases per split.
        canvas_size: side of the square RGB canvas in pixels.
        min_items, max_items: items per canvas, drawn uniformly (without scenes; a
            scene sets its own range). An item that cannot be placed without overlap
            after shrinking is left out, so a crowded canvas may hold fewer than
            drawn (never fewer than one).
        item_size_range: (min, max) side in pixels of an ordinary item.
        small_item_share: probability that an item is drawn from the small range.
        small_item_size_range: (min, max) side in pixels of a small item.
        val_source_fraction: share of the Fashion-MNIST training images reserved
            for the validation canvases.
        image_format: "jpg" (quality 90) or "png".
        seed: the seed of every random choice.
        scenes: "none" (every item's class is that of an evenly cycled source image,
            independent of the others) or the name of a table in `SCENE_TABLES`: each
            canvas first draws a scene, which sets its item count and its items'
            class distribution.
    """

    num_train: int = 10000
    num_val: int = 1000
    num_test: int = 2000
    canvas_size: int = 224
    min_items: int = 1
    max_items: int = 4
    item_size_range: tuple[int, int] = (40, 100)
    small_item_share: float = 0.3
    small_item_size_range: tuple[int, int] = (20, 36)
    val_source_fraction: float = 0.1
    image_format: str = "jpg"
    seed: int = 0
    scenes: str = "none"

    def __post_init__(self):
        for name in ("num_train", "num_val", "num_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 1 <= self.min_items <= self.max_items:
            raise ValueError(f"need 1 <= min_items <= max_items, got "
                             f"{self.min_items}, {self.max_items}")
        for name in ("item_size_range", "small_item_size_range"):
            lo, hi = _pair(name, getattr(self, name))
            object.__setattr__(self, name, (lo, hi))  # a list or numpy pair, as a tuple
            if not 4 <= lo <= hi <= self.canvas_size:
                raise ValueError(f"{name} must satisfy 4 <= min <= max <= canvas_size "
                                 f"({self.canvas_size}), got {(lo, hi)}")
        if not 0.0 <= self.small_item_share <= 1.0:
            raise ValueError(f"small_item_share must be in [0, 1], got "
                             f"{self.small_item_share}")
        if not 0.0 < self.val_source_fraction < 1.0:
            raise ValueError(f"val_source_fraction must be in (0, 1), got "
                             f"{self.val_source_fraction}")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got "
                             f"{self.image_format!r}")
        if self.scenes != "none" and self.scenes not in SCENE_TABLES:
            raise ValueError(f"scenes must be 'none' or one of {sorted(SCENE_TABLES)}, "
                             f"got {self.scenes!r}")

    @property
    def scene_table(self) -> tuple[Scene, ...]:
        """The scenes drawn from; empty without scenes."""
        return SCENE_TABLES.get(self.scenes, ())

    def to_dict(self) -> dict[str, Any]:
        """The JSON form recorded in ``benchmark.json`` and fingerprinted.

        Without scenes the ``scenes`` field is left out, so such a configuration has
        the dict (and fingerprint) it had before scenes existed. With scenes the
        table's contents are added as ``scene_table``, so editing a table changes
        the fingerprint of the builds that use it.
        """
        config = json.loads(json.dumps(dataclasses.asdict(self)))
        if self.scenes == "none":
            del config["scenes"]
        else:
            config["scene_table"] = [scene.to_dict() for scene in self.scene_table]
        return config

    @property
    def small_area_fraction(self) -> float:
        """Image-area fraction below which an object counts as small (the area of the
        largest small item's square)."""
        return (self.small_item_size_range[1] / self.canvas_size) ** 2


def _pair(name: str, value: Any) -> tuple[int, int]:
    """`value` as a (min, max) pair of integers; ValueError naming the setting otherwise."""
    try:
        lo, hi = value
        if int(lo) != lo or int(hi) != hi:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two whole numbers (min, max) in pixels, got "
                         f"{value!r}") from None
    return int(lo), int(hi)
