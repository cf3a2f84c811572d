#!/usr/bin/env bash
# TPU pod slice: run the same command on every worker over `gcloud ... tpu-vm ssh`;
# jax.distributed.initialize() discovers the pod topology itself.
#
#   launch/tpu_pod.sh my-tpu us-central2-b gin_configs/experiments/ernie3_10b_paper.gin gs://bucket/run
set -euo pipefail
TPU_NAME=${1:?TPU name}
ZONE=${2:?zone}
GIN_FILE=${3:?gin file}
MODEL_DIR=${4:?model dir (a gs:// path every worker can reach)}
shift 4
REPO_DIR=${REPO_DIR:-~/ernie3-jax}
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  cd $REPO_DIR && .venv/bin/python -m ernie3_jax.cli.main --gin_file=$GIN_FILE \
    --gin.MODEL_DIR=\"'$MODEL_DIR'\" --auto_distributed $*"
