#!/usr/bin/env bash
# Smoke test: every host joins the runtime and reports its devices; host 0 prints the global view.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=tpu/env.sh
source "$here/env.sh"

multihost=0
if (( $(worker_count) > 1 )); then
  multihost=1
fi
# shellcheck disable=SC2016  # $HOME expands on the hosts, not here.
on_all_workers "set -euo pipefail
cd '$REMOTE_DIR'
. \"\$HOME/$REMOTE_VENV/bin/activate\"
EMOJAX_MULTIHOST=$multihost python - <<'PY'
from emojax.parallel.distributed import initialize_distributed, is_primary_host
initialize_distributed()
import jax
from emojax import parallel
print(f'host {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local devices')
if is_primary_host():
    print(f'{jax.device_count()} devices in all; mesh {dict(parallel.make_mesh().shape)}')
PY"
