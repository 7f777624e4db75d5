"""The main job's decoder on the benchmark's scene mode, where labels co-occur.

Each canvas first draws a scene — casual, beach, office, winter, sport, evening or
laundry, with unequal shares — and each scene has its own class distribution (3–4
main classes) and item count (2–3 up to 3–5 items); see
`ofrnn_tf.data.fashion_canvases.OUTFIT_SCENES`. Labels then predict one another
(Coat with Ankle boot: lift 3.4; Sandal never with Trouser), as on MS-COCO or
NUS-WIDE, which is what the paper's recurrent decoder is meant to exploit.

Command:
    ofrnn-train --config=benchmark_scenes --workdir=runs/scenes

Its model is the main job's (the 3×3 spatial head with 128 units, 12 stage-1 epochs,
the residual decoder) with a label context: a 256-unit MLP that corrects M_map's
logits from all of its class probabilities, fitted between the two stages
(`--model.label_context_units`; docs/model.md, "Label context"). Where labels
co-occur it takes as much from them as the decoder did over the same head; the
decoder over it leads the 256-unit head with the same context and no decoder by
0.3 C-F1 and 0.3 O-F1 on average, where the decoder alone only tied it.

Run time on 2 CPU cores: about 5½ minutes once the scene-mode canvases and features are
cached (training 309 s, of which the label context about 50 s; seed 0 then scored
86.7 / 87.5 / 93.0 / 77.2), and about 4 minutes more from nothing to build them.

Expected test result (mean over data seeds 0-2 of the paper table's main-job row,
whose stage 1 runs up to 40 epochs; benchmarks/RESULTS.md): C-F1 86.9, O-F1 87.9,
mAP 92.8, small-object AP 75.4.
"""

from ofrnn_tf.configs import benchmark


def get_config():
    return benchmark.get_config().replace(data={"scenes": "outfits"},
                                          model={"label_context_units": 256})
