"""What refused requests cost the server's memory: RSS of `ofrnn-serve` under a loop of them.

For each kind of request, a fresh ``serving.local_server`` child process serves the
export; one client thread sends ``--requests`` Predict requests of two images, and the
server's resident memory (VmRSS) is read every ``--sample_every`` requests:

- ``undecodable``: a 224x224 JPEG and a PNG whose header is sound but whose data is
  zeroed (refused: ``images[1] could not be decoded``);
- ``bad_header``: the JPEG and bytes that are no image (refused by the header checks);
- ``valid``: the JPEG twice (answered).

A client that sends bad requests in a loop must not grow the server without bound.

    python benchmarks/bench_refusal_memory.py --export_dir=exports/ofrnn

About 2 minutes per 25,000 requests on 2 CPU cores.
"""

from __future__ import annotations

import io
import struct
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks._results import publish  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from benchmarks._served import jpeg_224, rss_mib, start_server  # noqa: E402
from ofrnn_tf.serving import client  # noqa: E402
from ofrnn_tf.serving.server_process import stop  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("export_dir", None, "Model base path (integer version folders) to serve.")
flags.DEFINE_list("kinds", ["undecodable", "bad_header", "valid"], "Request kinds to send.")
flags.DEFINE_integer("requests", 25000, "Requests of each kind, after the warm-up.")
flags.DEFINE_integer("warmup", 2500, "Requests of each kind sent before the first reading "
                     "(the server's memory settles over its first requests).")
flags.DEFINE_string("about", "", "What the export is (written with the results).")
flags.DEFINE_integer("sample_every", 2500, "Requests between two readings of the RSS.")
flags.DEFINE_bool("append", True, "Append the results to benchmarks/RESULTS.md.")


def _png_with_zeroed_data() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(buffer, "PNG")
    png = buffer.getvalue()
    at = png.index(b"IDAT")
    length = struct.unpack(">I", png[at - 4:at])[0]
    data = png[at + 4:at + 6] + bytes(length - 2)  # the zlib header, then zeros
    return png[:at] + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data)) + \
        png[at + 8 + length:]


def requests() -> dict[str, list[bytes]]:
    jpeg = jpeg_224()
    return {"undecodable": [jpeg, _png_with_zeroed_data()],
            "bad_header": [jpeg, b"no image at all"],
            "valid": [jpeg, jpeg]}


def run_kind(images: list[bytes]) -> tuple[list[tuple[int, float]], dict[str, int]]:
    """RSS readings ``(requests sent, MiB)`` of a fresh server, and the answers' codes."""
    proc, target = start_server(FLAGS.export_dir, "bench_refusal_memory.py")
    codes: dict[str, int] = {}
    try:
        with client.make_channel(target) as channel:
            def send():
                try:
                    client.predict_images(target, images, channel=channel, timeout=60)
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
                codes[code] = codes.get(code, 0) + 1

            for _ in range(FLAGS.warmup):
                send()
            time.sleep(1)
            readings = [(0, rss_mib(proc.pid))]
            for sent in range(1, FLAGS.requests + 1):
                send()
                if sent % FLAGS.sample_every == 0 or sent == FLAGS.requests:
                    readings.append((sent, rss_mib(proc.pid)))
    finally:
        stop(proc)
    return readings, codes


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.export_dir:
        raise app.UsageError("--export_dir is required")
    made = requests()
    unknown = sorted(set(FLAGS.kinds) - set(made))
    if unknown:
        raise app.UsageError(f"unknown --kinds {unknown}; known: {sorted(made)}")
    if FLAGS.requests < 1 or FLAGS.sample_every < 1:
        raise app.UsageError("--requests and --sample_every must be at least 1")
    about = f" ({FLAGS.about})" if FLAGS.about else ""
    lines = [f"Export `{FLAGS.export_dir}`{about} served by `serving.local_server` (a fresh child "
             f"process per kind); one client thread, requests of two images; RSS read after "
             f"{FLAGS.warmup} warm-up requests, then every {FLAGS.sample_every}.", "",
             "| kind | answers | RSS at start, MiB | RSS at end, MiB | KiB per request | "
             "RSS readings, MiB |", "|---|---|---:|---:|---:|---|"]
    for kind in FLAGS.kinds:
        print(f"{kind}: {FLAGS.requests} requests ...", file=sys.stderr)
        readings, codes = run_kind(made[kind])
        (_, start), (sent, end) = readings[0], readings[-1]
        answers = ", ".join(f"{code} {n}" for code, n in sorted(codes.items()))
        curve = " ".join(f"{mib:.0f}" for _, mib in readings)
        lines.append(f"| {kind} | {answers} | {start:.0f} | {end:.0f} | "
                     f"{(end - start) * 1024 / sent:+.2f} | {curve} |")
    publish("What refused requests cost the server's memory", "\n".join(lines), FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
