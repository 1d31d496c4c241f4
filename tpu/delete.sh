#!/usr/bin/env bash
# Delete the TPU VM or pod slice (billing stops only once it is deleted).
set -euo pipefail
# shellcheck source=tpu/env.sh
source "$(dirname "$0")/env.sh"

tpu_vm delete "$TPU_NAME" --quiet
