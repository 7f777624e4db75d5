"""ofrnn_tf: Order-Free RNN with Visual Attention (Chen et al., AAAI 2018) in TensorFlow.

Data flows through the sub-packages in this order:
``data`` (adapters, embedded benchmark, splits) → ``features`` (frozen backbones,
TFRecord cache) → ``modeling`` (Eq. 1–10) → ``training`` (Algorithm 1) → ``decoding``
(beam search, Eq. 11, τ calibration) → ``evaluation`` (scores of a run) →
``inference`` (a finished run as one module) → ``export`` (SavedModel for TensorFlow
Serving) → ``serving`` (gRPC client, local server). ``config`` holds every setting,
``configs`` the named presets, ``run_dir`` the files of a run, ``metrics`` the
multi-label metrics; ``pipeline`` chains the steps for ``cli``.
"""

__version__ = "0.1.0"
