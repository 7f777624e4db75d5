"""Predicts image files with a run; the same as the `ofrnn-predict` console script.

    python predict.py --workdir=runs/order_free photo.jpg folder/
"""

from ofrnn_tf.cli.predict import run

if __name__ == "__main__":
    run()
