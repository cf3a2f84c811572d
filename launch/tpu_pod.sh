#!/usr/bin/env bash
# TPU pod slice: run the same command on every worker over `gcloud ... tpu-vm ssh`;
# jax.distributed.initialize() discovers the pod topology itself.
#
#   launch/tpu_pod.sh my-tpu us-central2-b gin_configs/experiments/ernie3_10b_paper.gin gs://bucket/run \
#       [extra flags, e.g. --gin.train.num_steps=1000]
#
# Every worker needs the repository at REPO_DIR (default ~/ernie3-jax, on the worker) with
# its virtualenv; PYTHON (default .venv/bin/python) is relative to REPO_DIR. The command
# is quoted word by word for the workers' shell (bash), so extra flags may hold spaces
# and quotes.
set -euo pipefail
TPU_NAME=${1:?TPU name}
ZONE=${2:?zone}
GIN_FILE=${3:?gin file}
MODEL_DIR=${4:?model dir (a gs:// path every worker can reach)}
shift 4
REPO_DIR=${REPO_DIR:-"~/ernie3-jax"}
PYTHON=${PYTHON:-.venv/bin/python}
if [[ "$REPO_DIR" == "~/"* ]]; then  # the worker's home, not this machine's
  CD="cd ~/$(printf '%q' "${REPO_DIR#"~/"}")"
else
  CD="cd $(printf '%q' "$REPO_DIR")"
fi
RUN=$(printf ' %q' "$PYTHON" -m ernie3_jax.cli.main --gin_file="$GIN_FILE" \
  --gin.MODEL_DIR="'$MODEL_DIR'" --auto_distributed "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
  --command="$CD && exec$RUN"
