"""Trains and evaluates a run; the same as the `ofrnn-train` console script.

    python train.py --workdir=runs/order_free          # the main job (embedded benchmark)
    python train.py --helpfull                         # every setting and its default
"""

from ofrnn_tf.cli.train import run

if __name__ == "__main__":
    run()
