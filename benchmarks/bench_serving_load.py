"""Load test of the gRPC serving path on loopback: concurrent clients, throughput, latency.

Starts ``serving.local_server`` in a child process on the export (or targets a
running server, e.g. TF Serving in Docker, with ``--server``), then runs
``--clients`` threads, each on its own channel, sending ``--requests`` Predict
requests of ``--batch_size`` JPEG images through ``serving.client.predict_images``.
Reports throughput, p50/p99 latency and the error count (which must be 0: the
script exits 1 otherwise) and appends them to benchmarks/RESULTS.md.

    python benchmarks/bench_serving_load.py --export_dir=exports/ofrnn     # real export
    python benchmarks/bench_serving_load.py --stand_in --requests=20       # plumbing only

Default (8 clients x 200 requests, batch 1, 224x224 JPEGs). The stand-in model is
arithmetic, so its numbers measure the server and protocol overhead only.
"""

from __future__ import annotations

import io
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks._results import publish, usable_cores  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from ofrnn_tf.serving import client  # noqa: E402
from ofrnn_tf.serving.server_process import DEFAULT_MODEL_NAME, start_subprocess, stop  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("export_dir", None, "model base path (integer version directories) to serve")
flags.DEFINE_bool("stand_in", False, "serve a stand-in model with the export contract instead")
flags.DEFINE_string("server", None, "host:port of a running server; nothing is started")
flags.DEFINE_string("model_name", DEFAULT_MODEL_NAME, "model name")
flags.DEFINE_integer("clients", 8, "concurrent clients, one channel each")
flags.DEFINE_integer("requests", 200, "requests per client")
flags.DEFINE_integer("batch_size", 1, "images per request", lower_bound=1)
flags.DEFINE_integer("image_size", 224, "side of the synthetic JPEG images", lower_bound=1)
flags.DEFINE_multi_string("image", [], "image files to send instead of synthetic ones (cycled)")
flags.DEFINE_integer("warmup_requests", 5, "untimed requests per client before the run",
                     lower_bound=0)
flags.DEFINE_integer("server_workers", 16, "request threads of the started local server",
                     lower_bound=1)
flags.DEFINE_float("timeout", 60.0, "seconds per request", lower_bound=0.001)
flags.DEFINE_bool("append", True, "Append the results to benchmarks/RESULTS.md.")


def synthetic_images(n: int, side: int) -> list[bytes]:
    """Distinct smooth colour images as JPEG, deterministic."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / max(side - 1, 1)
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0, 255, size=(3, 3))
        rgb = np.stack([a[0] + (a[1] - a[0]) * xx, b[0] + (b[1] - b[0]) * yy,
                        c[0] + (c[2] - c[0]) * xx * yy], axis=-1).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def run_load(target: str, images: list[bytes]) -> dict:
    clients, per_client, batch = FLAGS.clients, FLAGS.requests, FLAGS.batch_size
    latencies = [[] for _ in range(clients)]
    errors: list[str] = []
    start_line = threading.Barrier(clients + 1)
    lock = threading.Lock()

    def worker(k: int) -> None:
        try:
            load(k)
        except threading.BrokenBarrierError:  # another client failed
            pass
        except BaseException:
            start_line.abort()  # the others, and the timing thread, stop waiting for it
            raise

    def load(k: int) -> None:
        with client.make_channel(target) as channel:
            def batch_at(i):
                first = (k * per_client + i) * batch
                return [images[(first + j) % len(images)] for j in range(batch)]

            for i in range(FLAGS.warmup_requests):
                try:
                    client.predict_images(target, batch_at(i), model_name=FLAGS.model_name,
                                          timeout=FLAGS.timeout, channel=channel)
                except grpc.RpcError as e:
                    with lock:
                        errors.append(f"warm-up: {e.code().name}: {e.details()}")
            start_line.wait()
            for i in range(per_client):
                t0 = time.perf_counter()
                try:
                    client.predict_images(target, batch_at(i), model_name=FLAGS.model_name,
                                          timeout=FLAGS.timeout, channel=channel)
                    latencies[k].append(time.perf_counter() - t0)
                except grpc.RpcError as e:
                    with lock:
                        errors.append(f"{e.code().name}: {e.details()}")

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    try:
        start_line.wait()
    except threading.BrokenBarrierError:
        raise SystemExit("bench_serving_load.py: a client failed before the timed run (its "
                         "traceback is above)") from None
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array([x for per in latencies for x in per]) * 1000.0
    done = len(lat)
    return {
        "wall_s": wall,
        "requests": done,
        "errors": len(errors),
        "first_errors": errors[:3],
        "rps": done / wall if wall else 0.0,
        "ips": done * batch / wall if wall else 0.0,
        "p50_ms": float(np.percentile(lat, 50)) if done else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if done else float("nan"),
        "mean_ms": float(lat.mean()) if done else float("nan"),
    }


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    chosen = [bool(FLAGS.export_dir), FLAGS.stand_in, bool(FLAGS.server)]
    if sum(chosen) != 1:
        raise app.UsageError("give exactly one of --export_dir, --stand_in, --server")
    if FLAGS.clients < 1 or FLAGS.requests < 1 or FLAGS.batch_size < 1:
        raise app.UsageError("--clients, --requests and --batch_size must be >= 1")
    if FLAGS.image:
        images = []
        for path in FLAGS.image:
            try:
                images.append(Path(path).read_bytes())
            except OSError as e:
                raise app.UsageError(f"cannot read --image {path!r}: {e.strerror}")
    else:
        images = synthetic_images(16, FLAGS.image_size)

    proc, tmp = None, None
    if FLAGS.server:
        target, model = FLAGS.server, f"server {FLAGS.server}"
    else:
        base = FLAGS.export_dir
        if FLAGS.stand_in:
            from ofrnn_tf.serving.stand_in_model import write_stand_in_model

            tmp = tempfile.TemporaryDirectory(prefix="stand_in_model_")
            base = tmp.name
            write_stand_in_model(base, 1, model_name=FLAGS.model_name)
        print(f"starting serving.local_server on {base} ...", file=sys.stderr)
        try:
            proc, target = start_subprocess(base, FLAGS.model_name,
                                            [f"--max_workers={FLAGS.server_workers}"])
        except RuntimeError as e:
            raise SystemExit(f"bench_serving_load.py: {e} (its message is above)") from None
        model = "stand-in model (arithmetic; server overhead only)" if FLAGS.stand_in else f"export {base}"
    try:
        print(f"{FLAGS.clients} clients x {FLAGS.requests} requests x {FLAGS.batch_size} image(s) "
              f"against {target} ...", file=sys.stderr)
        r = run_load(target, images)
    finally:
        if proc is not None:
            stop(proc)
        if tmp is not None:
            tmp.cleanup()

    image_desc = (f"{len(FLAGS.image)} given image(s)" if FLAGS.image
                  else f"synthetic {FLAGS.image_size}x{FLAGS.image_size} JPEG")
    lines = [
        f"- model: {model}; server: {'given' if FLAGS.server else 'serving.local_server (child process)'}",
        f"- load: {FLAGS.clients} clients x {FLAGS.requests} requests, batch {FLAGS.batch_size}, "
        f"{image_desc}; loopback gRPC; {usable_cores()} ({platform.machine()})",
        f"- throughput: {r['rps']:.1f} requests/s ({r['ips']:.1f} images/s) over {r['wall_s']:.2f} s",
        f"- latency: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, mean {r['mean_ms']:.1f} ms",
        f"- errors: {r['errors']} of {FLAGS.clients * FLAGS.requests}"
        + (f" (first: {r['first_errors']})" if r["errors"] else ""),
    ]
    publish("Serving load test (gRPC, loopback)", "\n".join(lines), FLAGS.append)
    if r["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    stops.run(main)
