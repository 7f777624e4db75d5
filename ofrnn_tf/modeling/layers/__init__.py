"""One Keras layer per file, each citing the paper equation it implements (or replaces)."""

from ofrnn_tf.modeling.layers.confidence_ranked_cell import ConfidenceRankedLSTMCell
from ofrnn_tf.modeling.layers.feature_standardizer import FeatureStandardizer
from ofrnn_tf.modeling.layers.label_context import LabelContext
from ofrnn_tf.modeling.layers.label_map_head import LabelMapHead
from ofrnn_tf.modeling.layers.residual_decoder_cell import ResidualDecoderCell
from ofrnn_tf.modeling.layers.spatial_label_head import SpatialLabelHead
from ofrnn_tf.modeling.layers.visual_attention import VisualAttention

__all__ = ["ConfidenceRankedLSTMCell", "FeatureStandardizer", "LabelContext", "LabelMapHead",
           "ResidualDecoderCell", "SpatialLabelHead", "VisualAttention"]
