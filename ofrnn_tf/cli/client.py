"""ofrnn-client: label sets for image files from a model server over gRPC.

    ofrnn-client --server=127.0.0.1:8500 photo.jpg more_photos/ --output=out.jsonl
    ofrnn-client --server=127.0.0.1:8500 --threshold=0.05 photo.jpg   # more labels
    ofrnn-client --server=127.0.0.1:8500 photo.jpg more_photos/ --output=out.jsonl --resume

Takes files and folders (and ``--files_from``) as ``ofrnn-predict`` does and writes its
JSON lines, less the step probabilities, which the export does not serve: ``image``,
``labels`` (decoding order), ``label_ids``, ``scores``, ``log_prob``, and the
``model_version`` that answered (TF Serving moves to a new version as it appears, and
another version may hold another label map: a line on stderr names the first image a new
version answered), and with ``--all_scores`` every class's
score by class id (``ofrnn-predict`` names them; the export's
``assets.extra/label_map.json`` holds the names), one per input, as each request of
``--batch_size`` images returns (a batch over ``--max_request_bytes`` goes in several
requests). A file that cannot be read, or that the server refuses as an image, gets an
``error`` line and the others go on. A server that cannot be reached (restarting, still
loading) is tried again for up to ``--wait_for_server`` seconds. A refusal that names no
image (unknown model, a threshold outside [0, 1]), a server still away or a request past
``--timeout`` stops the command in one line that says why, how many inputs have their
line and which is the first without one; the lines already written stand, and
``--resume`` goes on after them; the exit status is then 1, as when no image was
labelled. Ctrl-C, SIGTERM and a full disk end with the same count and remedy (and 130, 143
and 1). A progress bar on stderr counts the inputs when the lines go to a file or a pipe.
"""

import json
import math
import re
from typing import Iterable, Iterator

import grpc
from absl import app, flags

from ofrnn_tf.cli import refuse_below, refuse_unservable_version, refuse_non_probability, runner
from ofrnn_tf.cli.image_inputs import (
    FILES_FROM_HELP, LineFields, close_iterable, expand_inputs, given_inputs, merge_results,
    pixel_limit_remedied, resumable_report, shows_progress, stopped_report, write_report)
from ofrnn_tf.features.image_headers import GIF_REMEDY
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
                       "calibrated one: lower for more labels (recall), higher for fewer "
                       "(--tau, ofrnn-predict's name for it, is taken too)")
    flags.DEFINE_alias("tau", "threshold")
    flags.DEFINE_integer("version", None, "model version (default: the newest)")
    flags.DEFINE_integer("batch_size", 32, "images per Predict request")
    flags.DEFINE_integer("max_request_bytes", 32 * 1024 * 1024, "a batch of files larger than "
                         "this goes in several requests (ofrnn-serve takes up to 64 MiB)")
    flags.DEFINE_float("timeout", 30.0, "seconds per request (inf: no limit)")
    flags.DEFINE_float("wait_for_server", DEFAULT_WAIT_FOR_SERVER_S, "seconds to go on trying "
                       "a server that cannot be reached (restarting, still loading), each time "
                       "it goes away (0: stop at once; inf: no limit)")
    flags.DEFINE_string("output", None, "JSON-lines file to write (default, or -: stdout)")
    flags.DEFINE_bool("resume", False, "go on from the lines --output holds, which a run with "
                      "the same inputs wrote before it stopped: its inputs are skipped and the "
                      "new lines follow them")
    flags.DEFINE_string("files_from", None, FILES_FROM_HELP)
    flags.DEFINE_bool("all_scores", False, "Also write every class's score, by class id "
                      "(all_scores; the names are in the export's assets.extra/label_map.json)")


def main(argv):
    refuse_below("batch_size")
    refuse_below("max_request_bytes")
    refuse_non_probability("threshold", "tau")
    if FLAGS.threshold is not None and FLAGS.signature_name in CALIBRATED_SIGNATURES:
        raise app.UsageError(f"--signature_name={FLAGS.signature_name} decodes with the "
                             f"export's calibrated τ and takes no threshold: leave out "
                             f"--signature_name (--threshold sends predict_with_threshold) "
                             f"or --threshold")
    refuse_unservable_version()
    check_server(FLAGS.server)
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
    entries = expand_inputs(inputs, FLAGS.output)
    report = resumable_report(entries, FLAGS.output, FLAGS.resume, "ofrnn-client",
                              line_fields(FLAGS.all_scores))
    if isinstance(report, int):  # every input had its line already
        return report
    out, progress = report
    from ofrnn_tf.serving.client import predict_files  # gRPC: only once the flags are good

    results = predict_files(FLAGS.server, progress.paths, batch_size=FLAGS.batch_size,
                            max_request_bytes=FLAGS.max_request_bytes,
                            model_name=FLAGS.model_name, signature_name=FLAGS.signature_name,
                            version=FLAGS.version, threshold=FLAGS.threshold,
                            timeout=FLAGS.timeout, all_scores=FLAGS.all_scores,
                            wait_for_server=FLAGS.wait_for_server)
    results = versions_noted(results, kept_version(FLAGS.output, progress.kept.size)
                             if progress.kept.size else None)
    lines = merge_results(progress.left, with_remedies(results))
    if shows_progress(out):
        lines = progress_bar(lines, total=len(progress.left), desc="labelling", unit="img")
    try:
        return write_report(lines, out, "client", "labelled", progress=progress)
    except grpc.RpcError as error:
        say(f"[client] stopped: "
            f"{stop_reason(error, FLAGS.server, FLAGS.timeout, FLAGS.wait_for_server)}; "
            f"{progress.where()}")
        return 1


def line_fields(all_scores: bool) -> LineFields:
    """The fields of a labelled line this command writes, which the lines ``--resume``
    keeps must hold as well."""
    always = {"labels", "label_ids", "scores", "log_prob", "model_version"}
    return LineFields(frozenset(always | ({"all_scores"} if all_scores else set())))


def versions_noted(results: Iterable[dict], previous: int | None = None) -> Iterator[dict]:
    """`results` as they come, with a line on stderr wherever the version that answers
    changes from the one before (`previous`: that of the lines ``--resume`` goes on from):
    a version rolled out or back during the run. Each version may hold another label
    map, which the lines' ``label_ids`` and ``all_scores`` index, so a report mixing
    versions is said to, once for each change. Closed, it closes `results`."""
    results = iter(results)
    try:
        for result in results:
            version = result.get("model_version")
            if version is not None:
                if previous is not None and version != previous:
                    say(f"[client] version {version} of the model answers from "
                        f"{result['image']} on, version {previous} before it: each line's "
                        f"label_ids and all_scores are in the label map of its model_version")
                previous = version
            yield result
    finally:
        close_iterable(results)


def kept_version(output: str, keep: int) -> int | None:
    """The ``model_version`` of the last line that answered among the first `keep` bytes
    of `output` (the lines ``--resume`` keeps), None where none did. Read from the end
    back, a block at a time: the report may be gigabytes, its last line the one sought."""
    with open(output, "rb") as f:
        for line in _lines_back_from(f, keep):
            if line.strip():
                version = json.loads(line).get("model_version")
                if version is not None:
                    return version
    return None


def _lines_back_from(f, end: int, block: int = 1 << 16) -> Iterator[bytes]:
    """The lines of the first `end` bytes of the file `f`, the last first."""
    # The blocks of a line whose beginning is in an earlier block, the last first; joined
    # once its beginning is read, not block by block (a line of many blocks was copied
    # again with each, in time growing with the square of its length).
    rest: list[bytes] = []
    while end > 0:
        start = max(0, end - block)
        f.seek(start)
        pieces = f.read(end - start).split(b"\n")
        end = start
        if start and len(pieces) == 1:  # no line begins in this block
            rest.append(pieces[0])
            continue
        pieces[-1] += b"".join(reversed(rest))
        rest = [pieces.pop(0)] if start else []
        yield from reversed(pieces)


# The export's signatures that take no threshold (docs/serving.md, "Signatures").
CALIBRATED_SIGNATURES = ("serving_default", "predict_features")

# What to do about an image the server refuses for its pixel limit, which the client
# cannot raise (a GIF's refusal says already: send its first frame).
PIXEL_LIMIT_REMEDY = (" (scale the image down: the model reads it at its input size; or raise "
                      "the server's limit: ofrnn-serve's --max_image_pixels where it was "
                      "started with one, else an export of a higher --max_image_pixels)")


def with_remedies(results: Iterable[dict]) -> Iterator[dict]:
    """`results`, a refusal for the server's pixel limit told what to do about it."""
    return pixel_limit_remedied(results, PIXEL_LIMIT_REMEDY, unless=GIF_REMEDY)


def check_server(server: str) -> None:
    """A usage error for a ``--server`` that is not ``host:port`` (``[IPv6]:port``) with a
    port in 1..65535: gRPC would take a port modulo 65536 (74137 reaching 8601) and none
    as 443, where TF Serving and ``ofrnn-serve`` listen on 8500 by default."""
    example = f"127.0.0.1:{DEFAULT_PORT}"
    if not server.strip():
        raise app.UsageError(f"--server is empty: give the model server's host:port, e.g. "
                             f"{example}")
    match = re.fullmatch(r"(\[[^\]/\s]+\]|[^:/\[\]\s]+)(?::(\d*))?", server)
    if match is None:
        raise app.UsageError(f"--server={server} is not host:port: give the model server's "
                             f"host and gRPC port, e.g. {example} (an IPv6 address in "
                             f"brackets: [::1]:{DEFAULT_PORT}; no scheme, no path)")
    if not match.group(2) and match.group(1).isdigit():  # a port alone
        raise app.UsageError(f"--server={server} has no host: give host:port, e.g. "
                             f"127.0.0.1:{match.group(1)} for a server on this machine")
    if not match.group(2):
        raise app.UsageError(f"--server={server} has no port: give host:port, e.g. "
                             f"{match.group(1)}:{DEFAULT_PORT} (the gRPC port of ofrnn-serve "
                             f"and TF Serving by default)")
    if not 1 <= int(match.group(2)) <= 65535:
        raise app.UsageError(f"--server={server}: the port must be in 1..65535, got "
                             f"{int(match.group(2))}")


def stop_reason(error: grpc.RpcError, server: str, timeout: float,
                wait_for_server: float) -> str:
    """Why the command stopped, in one line (TF Serving's details of a failed Assert span
    two, with node names): what `server` answered, or that it could not be reached within
    ``--wait_for_server``, or that it did not answer within ``--timeout``."""
    from ofrnn_tf.serving.client import not_grpc, proxy_note, unreachable

    reason = reason_text(error.details() or "")
    if not_grpc(error):
        return (f"{server} is not a gRPC server: it answered in HTTP/1, as a REST port does "
                f"(TF Serving's REST API listens on 8501 by default, its gRPC on "
                f"{DEFAULT_PORT}, as ofrnn-serve does) (UNAVAILABLE: {reason}"
                f"{proxy_note(server)})")
    if unreachable(error):
        waited = f" within --wait_for_server={wait_for_server:g} s" if wait_for_server else ""
        return (f"{server} could not be reached{waited} (UNAVAILABLE: {reason}"
                f"{proxy_note(server)})")
    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return (f"{server} did not answer a request within --timeout={timeout:g} s "
                f"(DEADLINE_EXCEEDED): raise --timeout (inf: no limit), or lower --batch_size "
                f"or --max_request_bytes")
    return f"{server} answered {error.code().name}: {reason}"


run = runner(define_flags, main, on_interrupt=stopped_report,
             on_disk_full=lambda: stopped_report("free space, then "))

if __name__ == "__main__":
    run()
