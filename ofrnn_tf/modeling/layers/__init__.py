"""One Keras layer per file, each citing the paper equation it implements."""

from ofrnn_tf.modeling.layers.label_map_head import LabelMapHead
from ofrnn_tf.modeling.layers.visual_attention import VisualAttention
from ofrnn_tf.modeling.layers.confidence_ranked_cell import ConfidenceRankedLSTMCell

__all__ = ["LabelMapHead", "VisualAttention", "ConfidenceRankedLSTMCell"]
