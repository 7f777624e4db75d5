"""ofrnn-client: label sets for image files from a model server over gRPC.

    ofrnn-client --server=127.0.0.1:8500 photo.jpg more_photos/ --output=out.jsonl
    ofrnn-client --server=127.0.0.1:8500 --threshold=0.05 photo.jpg   # more labels

Takes files and folders (and ``--files_from``) as ``ofrnn-predict`` does and writes its
JSON lines, less the step probabilities, which the export does not serve: ``image``,
``labels`` (decoding order), ``label_ids``, ``scores``, ``log_prob``, and the
``model_version`` that answered (TF Serving moves to a new version as it appears, and
another version may hold another label map), and with ``--all_scores`` every class's
score by class id (``ofrnn-predict`` names them; the export's
``assets.extra/label_map.json`` holds the names), one per input, as each request of
``--batch_size`` images returns (a batch over ``--max_request_bytes`` goes in several
requests). A file that cannot be read, or that the server refuses as an image, gets an
``error`` line and the others go on. A server that cannot be reached (restarting, still
loading) is tried again for up to ``--wait_for_server`` seconds. A refusal that names no
image (unknown model, a threshold outside [0, 1]), or a server still away, stops the
command with the server's status and message; the lines already written stand. The exit status is 1
when the command stopped so or no image was labelled. A progress bar on stderr counts
the inputs when the lines go to a file or a pipe.
"""

import math

import grpc
from absl import app, flags

from ofrnn_tf.cli import refuse_below, refuse_unservable_version, refuse_non_probability, runner
from ofrnn_tf.cli.image_inputs import (
    FILES_FROM_HELP, expand_inputs, given_inputs, merge_results, open_report, shows_progress,
    write_report)
from ofrnn_tf.serving.server_process import (
    DEFAULT_MODEL_NAME, DEFAULT_PORT, DEFAULT_WAIT_FOR_SERVER_S, MAX_TIMEOUT_S)
from ofrnn_tf.status import progress_bar, say
from ofrnn_tf.tf_errors import reason_text

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined when it runs, so importing this module defines none)."""
    flags.DEFINE_string("server", f"127.0.0.1:{DEFAULT_PORT}", "gRPC host:port of the model server")
    flags.DEFINE_string("model_name", DEFAULT_MODEL_NAME, "model name in the server's config")
    flags.DEFINE_string("signature_name", None, "signature taking `images` (default: "
                        "serving_default, or predict_with_threshold with --threshold)")
    flags.DEFINE_float("threshold", None, "decode with this τ in [0, 1] instead of the "
                       "calibrated one: lower for more labels (recall), higher for fewer")
    flags.DEFINE_integer("version", None, "model version (default: the newest)")
    flags.DEFINE_integer("batch_size", 32, "images per Predict request")
    flags.DEFINE_integer("max_request_bytes", 32 * 1024 * 1024, "a batch of files larger than "
                         "this goes in several requests (ofrnn-serve takes up to 64 MiB)")
    flags.DEFINE_float("timeout", 30.0, "seconds per request (inf: no limit)")
    flags.DEFINE_float("wait_for_server", DEFAULT_WAIT_FOR_SERVER_S, "seconds to go on trying "
                       "a server that cannot be reached (restarting, still loading), each time "
                       "it goes away (0: stop at once; inf: no limit)")
    flags.DEFINE_string("output", None, "JSON-lines file to write (default, or -: stdout)")
    flags.DEFINE_string("files_from", None, FILES_FROM_HELP)
    flags.DEFINE_bool("all_scores", False, "Also write every class's score, by class id "
                      "(all_scores; the names are in the export's assets.extra/label_map.json)")


def main(argv):
    refuse_below("batch_size")
    refuse_below("max_request_bytes")
    refuse_non_probability("threshold")
    refuse_unservable_version()
    if not FLAGS.server.strip():
        raise app.UsageError("--server is empty: give the model server's host:port")
    if not FLAGS.timeout > 0:
        raise app.UsageError(f"--timeout must be a number of seconds above 0, got "
                             f"{FLAGS.timeout}")
    if MAX_TIMEOUT_S < FLAGS.timeout < math.inf:  # gRPC's deadline would overflow
        raise app.UsageError(f"--timeout must be at most {MAX_TIMEOUT_S:g} seconds, or inf for "
                             f"no limit; got {FLAGS.timeout!r}")
    if not FLAGS.wait_for_server >= 0:
        raise app.UsageError(f"--wait_for_server must be a number of seconds, 0 or more (0: "
                             f"stop at once; inf: no limit), got {FLAGS.wait_for_server}")
    inputs = given_inputs(argv[1:], FLAGS.files_from)
    from ofrnn_tf.serving.client import predict_files  # TensorFlow: only once the flags are good

    entries = expand_inputs(inputs)
    paths = [e for e in entries if isinstance(e, str)]
    out = open_report(FLAGS.output, paths)
    results = predict_files(FLAGS.server, paths, batch_size=FLAGS.batch_size,
                            max_request_bytes=FLAGS.max_request_bytes,
                            model_name=FLAGS.model_name, signature_name=FLAGS.signature_name,
                            version=FLAGS.version, threshold=FLAGS.threshold,
                            timeout=FLAGS.timeout, all_scores=FLAGS.all_scores,
                            wait_for_server=FLAGS.wait_for_server)
    lines = merge_results(entries, results)
    if shows_progress(out):
        lines = progress_bar(lines, total=len(entries), desc="labelling", unit="img")
    try:
        return write_report(lines, out, "client", "labelled")
    except grpc.RpcError as error:
        # One line: TF Serving's details of a failed Assert span two, with node names.
        say(f"[client] stopped: {FLAGS.server} answered {error.code().name}: "
            f"{reason_text(error.details() or '')} (the inputs after the lines written were "
            f"not labelled)")
        return 1


run = runner(define_flags, main)

if __name__ == "__main__":
    run()
