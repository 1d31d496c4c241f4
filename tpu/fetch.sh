#!/usr/bin/env bash
# Copy a run directory written by host 0 back here: tpu/fetch.sh runs/smollm2 [local_dir]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=tpu/env.sh
source "$here/env.sh"

if [[ $# -lt 1 ]]; then
  echo "usage: $0 RUN_DIR [LOCAL_DIR]   (RUN_DIR relative to the project on the hosts)" >&2
  exit 2
fi
dest="${2:-.}"
mkdir -p "$dest"
tpu_vm scp --recurse "$TPU_NAME:$REMOTE_DIR/$1" "$dest" --worker=0
