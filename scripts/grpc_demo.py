"""Serves an export over gRPC for a moment and classifies a few images through it.

Starts ``ofrnn_tf.serving.local_server`` on the export's model base path in a child process
(it loads the newest version and replays its warm-up requests), sends the images in
one Predict request with ``ofrnn_tf.serving.client.predict_files``, prints one JSON line per
image (as ``ofrnn-client`` does: label names in decoding order, their scores, the path's
log-probability; or the reason a file was refused) and stops the server. Takes image files
and folders (their images, one level deep), as ``ofrnn-client`` does.

    python scripts/grpc_demo.py --export_dir=exports/ofrnn img1.jpg img2.png photos/

Takes about 10 s to a minute on a 2-core CPU, almost all of it the server loading the
SavedModel and replaying its warm-up requests (the slower the host, the longer). The
server starts first; the client imports no TensorFlow, so nearly all the time is the
server's. Ctrl-C or SIGTERM stops the server too (exit status 130 or 143),
and a demo killed outright takes it along (the server stops when its standard input, a
pipe from here, closes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import grpc
from absl import app, flags

from ofrnn_tf.cli import runner
from ofrnn_tf.cli.image_inputs import expand_inputs, merge_results
from ofrnn_tf.serving.client import predict_files, unreachable
from ofrnn_tf.serving.server_process import (DEFAULT_MODEL_NAME, find_latest_version, spawn,
                                              stop, wait_until_listening)

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The script's flags (defined when it runs, as the commands' are)."""
    flags.DEFINE_string("export_dir", None, "model base path (integer version directories); "
                        "a version folder stands for its base path, whose newest version is "
                        "served")
    flags.DEFINE_string("model_name", DEFAULT_MODEL_NAME, "model name the server answers to")
    flags.DEFINE_float("timeout", 120.0, "seconds for the server to start and for the request")


def model_base_path(export_dir: str) -> str:
    """The base path to serve: `export_dir` itself, or its parent if it is a version folder.
    (``--export_dir=~/…``, which a shell leaves unexpanded after ``=``, comes here expanded
    by the commands' `runner`, as the ``ofrnn-*`` commands' flags do.)"""
    path = Path(export_dir)
    if (path / "saved_model.pb").is_file() and path.name.isdigit():
        return str(path.parent)
    find_latest_version(str(path))  # raises a clear error when nothing servable is there
    return str(path)


def demo(export_dir: str, inputs: Sequence[str], model_name: str = DEFAULT_MODEL_NAME,
         timeout: float = 120.0) -> list[dict]:
    """Starts the server, classifies the images of `inputs` (files and folders, as
    `expand_inputs` reads them) over gRPC, stops the server; returns the results of
    `ofrnn_tf.serving.client.predict_files`, one per image, and an error record for each
    input that is no image (a folder without images, a file of another kind)."""
    base = model_base_path(export_dir)
    entries = expand_inputs(list(inputs))
    image_paths = [entry for entry in entries if isinstance(entry, str)]
    if not image_paths:  # nothing to send: no server to start
        return entries
    print(f"starting the local server on {base} ...", file=sys.stderr, flush=True)
    proc = spawn(base, model_name)
    try:
        target = wait_until_listening(proc, timeout)
        print(f"serving on {target}; sending {len(image_paths)} image(s)", file=sys.stderr,
              flush=True)
        return list(merge_results(entries, predict_files(target, image_paths,
                                                         model_name=model_name,
                                                         timeout=timeout)))
    finally:
        stop(proc)


def main(argv: Sequence[str]) -> None:
    inputs = argv[1:]
    if not FLAGS.export_dir:
        raise app.UsageError("--export_dir is required")
    if not inputs:
        raise app.UsageError("give one or more image files or folders")
    try:
        results = demo(FLAGS.export_dir, inputs, FLAGS.model_name, FLAGS.timeout)
    except (ValueError, OSError, RuntimeError) as e:  # OSError: a folder this user may not read
        sys.exit(f"grpc_demo: {e}")
    except grpc.RpcError as e:
        what = ("could not reach its server" if unreachable(e) else "server refused the request")
        sys.exit(f"grpc_demo: {what}: {e.code().name}: {e.details()}")
    for result in results:
        print(json.dumps(result))
    if all("error" in r for r in results):
        sys.exit("grpc_demo: no image was labelled")


run = runner(define_flags, main)

if __name__ == "__main__":
    sys.argv[0] = "grpc_demo"  # its name in the one-line usage errors, as in its other lines
    run()
