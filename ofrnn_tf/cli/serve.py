"""ofrnn-serve: an export served over TensorFlow Serving's gRPC API, on this machine.

    ofrnn-serve --model_base_path=exports/ofrnn --port=8500

Serves the newest integer version under ``--model_base_path`` through
`ofrnn_tf.serving.local_server` (what it serves, checks and refuses) until SIGTERM or
Ctrl-C, which give requests in flight a short grace (with ``--stop_when_stdin_closes``,
also until its standard input closes, as it does when the process that started it ends).
The version is the one newest when it starts: restart it to serve a later export
(TensorFlow Serving watches the folder instead). It prints
``LISTENING <host>:<port>`` once the warm-up requests have run and the port is
open; from then on the lines native code (libjpeg, TensorFlow's C++ log) writes to
stderr are rate-limited (`ofrnn_tf.serving.native_log`).
"""

import math
import os
import signal
import sys
from typing import Sequence

from absl import app, flags, logging

from ofrnn_tf.cli import refuse_below, refuse_glob_characters, runner
from ofrnn_tf.serving.server_process import (
    DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MODEL_NAME, DEFAULT_PORT,
    LISTENING_PREFIX, stop_when_stdin_closes)


def define_flags() -> None:
    """The command's flags (defined when it runs, so importing this module defines none)."""
    flags.DEFINE_string("model_base_path", None, "directory of integer-named SavedModel versions")
    flags.DEFINE_string("model_name", DEFAULT_MODEL_NAME, "model name clients ask for")
    flags.DEFINE_string("host", "127.0.0.1", "interface to bind (0.0.0.0 exposes the server)")
    flags.DEFINE_integer("port", DEFAULT_PORT, "gRPC port; 0 picks a free one")
    flags.DEFINE_integer("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES, "largest gRPC message")
    flags.DEFINE_float("max_image_pixels", None,
                       "largest width*height of an input image (default: the export's own "
                       "limit; a value can only lower it)")
    flags.DEFINE_integer("max_batch_size", DEFAULT_MAX_BATCH_SIZE,
                         "most images (or feature maps) in one request")
    flags.DEFINE_integer("max_workers", 16,
                         "threads that run requests, each once it has arrived whole")
    flags.DEFINE_integer("max_concurrent_rpcs", None,
                         "beyond this many requests in flight, RESOURCE_EXHAUSTED (default: "
                         "no limit)")
    flags.DEFINE_bool("warmup", True,
                      "replay assets.extra/tf_serving_warmup_requests before serving")
    flags.DEFINE_bool("xla_cpu_compilation_enabled", False,
                      "serve an export with XLA-compiled functions (ofrnn-export --jit_compile), "
                      "as TF Serving does with this flag; refused without it")
    flags.DEFINE_bool("stop_when_stdin_closes", False,
                      "stop as on SIGTERM once standard input is closed: a parent holding "
                      "the other end of a pipe takes the server with it when it ends, "
                      "however it ends (how scripts/grpc_demo.py and the tests start it)")


def main(argv: Sequence[str]) -> None:
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.model_base_path:
        raise app.UsageError("--model_base_path is required")
    # gRPC and getaddrinfo take a port modulo 65536: 99999 would serve on 34463.
    if not 0 <= FLAGS.port <= 65535:
        raise app.UsageError(f"--port must be in 0..65535 (0: a free one), got {FLAGS.port}")
    pixels = FLAGS.max_image_pixels
    if pixels is not None and not (math.isfinite(pixels) and pixels >= 1):
        raise app.UsageError(f"--max_image_pixels must be a number of pixels, at least 1; "
                             f"got {pixels:g}")
    # Before the model loads and warms up, which they would otherwise fail (or blame).
    for name in ("max_message_bytes", "max_batch_size", "max_workers", "max_concurrent_rpcs"):
        refuse_below(name)
    # As TensorFlow Serving is given it: an absolute path, its variables read by pattern.
    refuse_glob_characters("model_base_path", FLAGS.model_base_path, absolute=True)
    if FLAGS.stop_when_stdin_closes:  # from now: a parent gone while the model loads too
        stop_when_stdin_closes()
    # Here, after the flags are checked: TensorFlow takes seconds to import.
    from ofrnn_tf.serving.local_server import SHUTDOWN_GRACE_SECONDS, grpc_address, serve
    from ofrnn_tf.serving.native_log import limit_native_stderr

    try:
        server, port = serve(FLAGS.model_base_path, FLAGS.model_name, FLAGS.host, FLAGS.port,
                             max_message_bytes=FLAGS.max_message_bytes,
                             max_image_pixels=(None if FLAGS.max_image_pixels is None
                                               else int(FLAGS.max_image_pixels)),
                             max_batch_size=FLAGS.max_batch_size,
                             max_workers=FLAGS.max_workers,
                             max_concurrent_rpcs=FLAGS.max_concurrent_rpcs, warmup=FLAGS.warmup,
                             xla_compilation_enabled=FLAGS.xla_cpu_compilation_enabled)
    except (OSError, ValueError, RuntimeError) as e:
        sys.exit(f"{os.path.basename(sys.argv[0])}: {e}")

    def stop(why: str):
        logging.info("stopping (%s): requests in flight have %.0f s to finish", why,
                     SHUTDOWN_GRACE_SECONDS)
        return server.stop(grace=SHUTDOWN_GRACE_SECONDS)

    signal.signal(signal.SIGTERM, lambda *_: stop("SIGTERM"))
    # From here on, what libjpeg and TensorFlow's C++ code write to stderr is rate-limited
    # (a damaged JPEG gets a few lines each); TensorFlow's start-up lines went through.
    native_stderr = None
    try:
        native_stderr = limit_native_stderr()
        print(f"{LISTENING_PREFIX}{grpc_address(FLAGS.host, port)}", flush=True)
        server.wait_for_termination()  # in slices: a signal another thread took is run
    except KeyboardInterrupt:
        stop("Ctrl-C").wait()
    finally:
        if native_stderr is not None:
            native_stderr.close()


run = runner(define_flags, main)


if __name__ == "__main__":  # `python -m ofrnn_tf.cli.serve`, as `server_process` starts it
    sys.argv[0] = "ofrnn-serve"  # its name in the one-line failures, not serve.py
    run()
