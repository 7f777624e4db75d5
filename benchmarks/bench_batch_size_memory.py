"""What each request batch size costs the server's memory: RSS of `ofrnn-serve` as new sizes come.

The local server runs each request at its own batch size, and TensorFlow (oneDNN) keeps
the buffers of every size it has run: its resident memory grows with each new size up to
``--max_batch_size`` and then levels off. A fresh ``serving.local_server`` child process
serves the export; one client sends requests of 1, 2, ... ``--max_size`` copies of a
224x224 JPEG, then every size again, and the server's VmRSS is read after each request.
The numbers size a container for the server.

    python benchmarks/bench_batch_size_memory.py --export_dir=exports/ofrnn

About 3 minutes for sizes 1 to 64 on 2 CPU cores.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

from benchmarks._results import publish  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from benchmarks._served import jpeg_224, rss_mib, start_server  # noqa: E402
from ofrnn_tf.serving import client  # noqa: E402
from ofrnn_tf.serving.server_process import DEFAULT_MAX_BATCH_SIZE, stop  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("export_dir", None, "Model base path (integer version folders) to serve.")
flags.DEFINE_integer("max_size", DEFAULT_MAX_BATCH_SIZE, "Largest batch size sent (at most "
                     "the server's --max_batch_size, whose default this is).", lower_bound=1)
flags.DEFINE_list("report_at", ["1", "8", "16", "32", "64"], "Sizes after which the RSS is "
                  "reported (the readings after the others are kept in the total only).")
flags.DEFINE_string("about", "", "What the export is (written with the results).")
flags.DEFINE_bool("append", True, "Append the results to benchmarks/RESULTS.md.")


def measure(export_dir: str, max_size: int) -> tuple[float, dict[int, float], float]:
    """RSS in MiB of a fresh server: listening (its warm-up requests done), after sizes
    1..n for every n, and after every size once more."""
    proc, target = start_server(export_dir, "bench_batch_size_memory.py")
    image = jpeg_224()
    try:
        with client.make_channel(target) as channel:
            time.sleep(1)
            start = rss_mib(proc.pid)
            after: dict[int, float] = {}
            for size in range(1, max_size + 1):
                client.predict_images(target, [image] * size, channel=channel, timeout=300)
                after[size] = rss_mib(proc.pid)
                print(f"size {size}: {after[size]:.0f} MiB", file=sys.stderr)
            for size in range(1, max_size + 1):
                client.predict_images(target, [image] * size, channel=channel, timeout=300)
            again = rss_mib(proc.pid)
    finally:
        stop(proc)
    return start, after, again


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.export_dir:
        raise app.UsageError("--export_dir is required")
    try:
        report_at = sorted({int(n) for n in FLAGS.report_at if int(n) <= FLAGS.max_size})
    except ValueError:
        raise app.UsageError(f"--report_at takes sizes, got {FLAGS.report_at}") from None
    start, after, again = measure(FLAGS.export_dir, FLAGS.max_size)
    about = f" ({FLAGS.about})" if FLAGS.about else ""
    lines = [f"Export `{FLAGS.export_dir}`{about} served by `serving.local_server` (a fresh "
             f"child process); one client sends requests of 1, 2, ... {FLAGS.max_size} copies "
             f"of a 224x224 JPEG, then every size again; the server's RSS after each.", "",
             "| after | RSS, MiB | over the idle server, MiB | MiB per size |",
             "|---|---:|---:|---:|",
             f"| listening (warm-up requests done) | {start:.0f} | | |"]
    for size in report_at:
        grown = after[size] - start
        lines.append(f"| {'size 1' if size == 1 else f'sizes 1–{size}'} | {after[size]:.0f} | "
                     f"{grown:+.0f} | {grown / size:.1f} |")
    grown = again - start
    lines.append(f"| every size again | {again:.0f} | {grown:+.0f} | "
                 f"{grown / FLAGS.max_size:.1f} |")
    publish("What each batch size costs the server's memory", "\n".join(lines), FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
