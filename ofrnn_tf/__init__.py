"""ofrnn_tf: Order-Free RNN with Visual Attention (Chen et al., AAAI 2018) in TensorFlow.

Data flows through the sub-packages in this order:
``data`` (adapters, embedded benchmark, splits) → ``features`` (frozen backbones,
TFRecord cache) → ``modeling`` (Eq. 1–10) → ``training`` (Algorithm 1) → ``decoding``
(beam search, Eq. 11, τ calibration) → ``evaluation`` (scores of a run) →
``inference`` (a finished run as one module) → ``export`` (SavedModel for TensorFlow
Serving) → ``serving`` (gRPC client, local server). ``config`` holds every setting,
``configs`` the named presets, ``run_dir`` the files of a run, ``metrics`` the
multi-label metrics; ``pipeline`` chains the steps for ``cli``.

Importing the package before TensorFlow turns TensorFlow's oneDNN CPU kernels on
(``TF_ENABLE_ONEDNN_OPTS=1``) unless the environment already says otherwise.
On Linux, TensorFlow turns them on by itself only on CPUs with AVX-512 VNNI or BF16,
AVX-VNNI or AMX instructions; on the others (such as some of the AMD EPYC machines this
project is measured on) it leaves them off, and there they make feature extraction
1.6× and training steps 1.9× faster (benchmarks/RESULTS.md, "oneDNN"). They only
change floating-point round-off.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
