"""The model of the paper: M_map (Eq. 1–3), M_att (Eq. 4–5), M_pred (Eq. 6–7), the candidate
pool (Eq. 9–10, `candidate_pool`) and the losses (Eq. 8, `model`)."""

from ofrnn_tf.modeling.model import OrderFreeRNN, build_model

__all__ = ["OrderFreeRNN", "build_model"]
