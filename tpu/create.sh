#!/usr/bin/env bash
# Create a TPU VM (ACCELERATOR_TYPE=v5litepod-8, v4-8) or a pod slice (v5litepod-32, v4-32, ...).
# SPOT=1 asks for spot capacity (cheaper, can be reclaimed at any time).
set -euo pipefail
# shellcheck source=tpu/env.sh
source "$(dirname "$0")/env.sh"

extra=()
if [[ "${SPOT:-0}" == 1 ]]; then
  extra+=(--spot)
fi

tpu_vm create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
  ${extra[@]+"${extra[@]}"}
echo "created $TPU_NAME ($ACCELERATOR_TYPE, $(worker_count) host(s)) in $ZONE"
