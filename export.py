"""Exports a run as a SavedModel; the same as the `ofrnn-export` console script.

    python export.py --workdir=runs/order_free --export_dir=exports/ofrnn
"""

from ofrnn_tf.cli.export import run

if __name__ == "__main__":
    run()
