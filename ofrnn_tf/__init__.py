"""ofrnn_tf: Order-Free RNN with Visual Attention (Chen et al., AAAI 2018) in TensorFlow.

Data flows through the sub-packages in this order:
``data`` (adapters, embedded benchmark) → ``features`` (frozen backbones, TFRecord
cache) → ``modeling`` (Eq. 1–10) → ``training`` (Algorithm 1) → ``decoding``
(beam search, Eq. 11, τ calibration) → ``evaluation`` (metrics, pictures) →
``export`` (SavedModel for TensorFlow Serving).
"""

__version__ = "0.1.0"
