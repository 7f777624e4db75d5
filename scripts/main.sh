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
.venv/bin/python train.py --workdir="$WORKDIR" --cache_dir="$CACHE_DIR" "$@"
SAMPLE_GLOB="$CACHE_DIR/fashion_canvases/images/test/00000[0-3].jpg"  # 4 test canvases
.venv/bin/python export.py --workdir="$WORKDIR" --export_dir="$EXPORT_DIR" --warmup_images="$SAMPLE_GLOB"
# shellcheck disable=SC2086  # the glob is meant to expand here
.venv/bin/python scripts/grpc_demo.py --export_dir="$EXPORT_DIR" $SAMPLE_GLOB
