"""Readers that turn a data set's own files into `Example` records and a `LabelMap`.

Each adapter returns ``(examples, label_map, stats)``; images without any label are
dropped and counted in ``stats``.
"""

from ofrnn_tf.data.adapters.coco import load_coco
from ofrnn_tf.data.adapters.manifest import load_manifest
from ofrnn_tf.data.adapters.nuswide import load_nuswide

__all__ = ["load_coco", "load_manifest", "load_nuswide"]
