#!/usr/bin/env bash
# Run a Python module of the project on every host at once, e.g.
#   tpu/run.sh experiments.pipeline --out=runs/smollm2
#   tpu/run.sh experiments.elicit --out=runs/smollm2
# Every host runs the same command; on a pod slice they join one JAX runtime
# (emojax.parallel.distributed.initialize_distributed) and only host 0 writes results.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=tpu/env.sh
source "$here/env.sh"

if [[ $# -lt 1 ]]; then
  echo "usage: $0 MODULE [ARGS...]   (e.g. experiments.pipeline --out=runs/x)" >&2
  exit 2
fi
module="$1"
shift

multihost=0
if (( $(worker_count) > 1 )); then
  multihost=1
fi
args=""
if [[ $# -gt 0 ]]; then
  args="$(printf '%q ' "$@")"
fi

# shellcheck disable=SC2016  # $HOME expands on the hosts, not here.
on_all_workers "set -euo pipefail
cd '$REMOTE_DIR'
. \"\$HOME/$REMOTE_VENV/bin/activate\"
EMOJAX_MULTIHOST=$multihost python -m $(printf '%q' "$module") $args"
