#!/usr/bin/env bash
# The main job on the embedded benchmark: canvases → features → train → evaluate →
# export → one gRPC call against the local server. Extra arguments go to train.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export TF_CPP_MIN_LOG_LEVEL=2
WORKDIR=${WORKDIR:-runs/order_free}
EXPORT_DIR=${EXPORT_DIR:-exports/ofrnn}
CACHE_DIR=${CACHE_DIR:-data}
KEEP_VERSIONS=${KEEP_VERSIONS:-3}  # a rerun's export removes all but the 3 highest (0: none)
.venv/bin/python train.py --workdir="$WORKDIR" --runtime.cache_dir="$CACHE_DIR" "$@"
# export.py uses the run's example images (copied from its test split) as warm-up requests.
.venv/bin/python export.py --workdir="$WORKDIR" --export_dir="$EXPORT_DIR" \
  --keep_versions="$KEEP_VERSIONS"
# The folder, not a glob: its images keep their data's extension (PNG, GIF... too).
.venv/bin/python scripts/grpc_demo.py --export_dir="$EXPORT_DIR" "$WORKDIR"/examples
