"""The main job's model on the benchmark's scene mode, where labels co-occur.

Each canvas first draws a scene — casual, beach, office, winter, sport, evening or
laundry, with unequal shares — and each scene has its own class distribution (3–4
main classes) and item count (2–3 up to 3–5 items); see
`ofrnn_tf.data.fashion_canvases.OUTFIT_SCENES`. Labels then predict one another
(Coat with Ankle boot: lift 3.4; Sandal never with Trouser), as on MS-COCO or
NUS-WIDE, which is what the paper's recurrent decoder is meant to exploit.

Command:
    ofrnn-train --config=benchmark_scenes --workdir=runs/scenes

Run time on 2 CPU cores: like the main job's (about 6¼ minutes from nothing, 3½ once
the scene-mode canvases and features are cached).

Expected test result (mean over data seeds 0–2 of the paper table's main-job row, whose
stage 1 runs 40 epochs; benchmarks/RESULTS.md): C-F1 86.5, O-F1 87.6, mAP 92.7,
small-object AP 75.2.
"""

from ofrnn_tf.configs import benchmark


def get_config():
    # The per-position head (1x1): over data seeds 0-2 its decoder scored higher on validation
    # here than over the 3x3 head the independent benchmark prefers (docs/model.md).
    return benchmark.get_config().replace(data={"scenes": "outfits"},
                                          model={"head_kernel_size": 1})
