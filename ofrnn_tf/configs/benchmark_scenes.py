"""The main job's decoder on the benchmark's scene mode, where labels co-occur.

Each canvas first draws a scene — casual, beach, office, winter, sport, evening or
laundry, with unequal shares — and each scene has its own class distribution (3–4
main classes) and item count (2–3 up to 3–5 items); see
`ofrnn_tf.data.fashion_canvases.OUTFIT_SCENES`. Labels then predict one another
(Coat with Ankle boot: lift 3.4; Sandal never with Trouser), as on MS-COCO or
NUS-WIDE, which is what the paper's recurrent decoder is meant to exploit.

Command:
    ofrnn-train --config=benchmark_scenes --workdir=runs/scenes

Its M_map reads each position alone (`head_kernel_size=1`): over data seeds 0-2 the
decoder over that head scored higher on validation than over a 3×3 head of 256 units
(docs/model.md, "The head's 3×3 kernel"); over the main job's 3×3 head (128 units, 12
epochs) it scores the same ("Memorised scores, probed further"). It keeps the 256
units and 16 stage-1 epochs it was measured with.

Run time on 2 CPU cores: about 6¼ minutes from nothing, 3½ once the scene-mode canvases
and features are cached (measured with this head before the main job's became 3×3).

Expected test result (mean over data seeds 0–2 of the paper table's main-job row,
whose stage 1 runs 40 epochs; benchmarks/RESULTS.md): C-F1 86.6, O-F1 87.7, mAP 92.6,
small-object AP 75.3.
"""

from ofrnn_tf.configs import benchmark


def get_config():
    return benchmark.get_config().replace(data={"scenes": "outfits"},
                                          model={"head_kernel_size": 1, "head_units": 256},
                                          stage1={"epochs": 16})
