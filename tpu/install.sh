#!/usr/bin/env bash
# Copy the committed tree of this repository to every host and install it with JAX for TPU.
# SHARED_DIR=/path/to/shared also copies the shared specs and data next to it (as ../shared).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=tpu/env.sh
source "$here/env.sh"

repo="$(git -C "$here" rev-parse --show-toplevel)"
staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT
git -C "$repo" archive --format=tar.gz -o "$staging/emojax.tar.gz" HEAD
tpu_vm scp "$staging/emojax.tar.gz" "$TPU_NAME:emojax.tar.gz" --worker=all

if [[ -n "${SHARED_DIR:-}" ]]; then
  tar -czf "$staging/shared.tar.gz" -C "$SHARED_DIR" .
  tpu_vm scp "$staging/shared.tar.gz" "$TPU_NAME:shared.tar.gz" --worker=all
  on_all_workers "set -euo pipefail; rm -rf shared && mkdir -p shared && tar -xzf shared.tar.gz -C shared"
fi

# shellcheck disable=SC2016  # $HOME and $(...) expand on the hosts, not here.
on_all_workers "set -euo pipefail
rm -rf '$REMOTE_DIR' && mkdir -p '$REMOTE_DIR' && tar -xzf emojax.tar.gz -C '$REMOTE_DIR'
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
  sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv
fi
python3 -m venv \"\$HOME/$REMOTE_VENV\"
. \"\$HOME/$REMOTE_VENV/bin/activate\"
pip install -q -U pip
pip install -q -U 'jax[tpu]'
pip install -q -e './$REMOTE_DIR' $EXTRA_PIP
echo \"\$(hostname): emojax installed, jax \$(python -c 'import jax; print(jax.__version__)')\""
