#!/usr/bin/env bash
# Runs N processes of the trainer on this machine as one jax.distributed cluster
# (CPU devices, gloo collectives). Each process gets DEVICES_PER_PROCESS simulated devices
# and reads its own shard of the data.
#
#   launch/local_multiprocess.sh 2 gin_configs/experiments/demo.gin /tmp/ernie3_mp [extra flags]
#
# Restart: run the same command again. Every process resumes from the last checkpoint that
# verifies, at the exact data position. After a crash or kill of any process the others
# exit within seconds; SIGTERM to any one process stops all of them at one saved step.
# Another process count resumes too, if it divides the run's data shards (set
# --gin.PretrainInput.num_data_shards=2 at the first start to move between 1 and 2):
#   launch/local_multiprocess.sh 1 gin_configs/experiments/demo.gin /tmp/ernie3_mp \
#       --gin.NUM_STEPS=600
# Each process's output goes to MODEL_DIR.processN.log beside MODEL_DIR.
set -euo pipefail
NUM_PROCESSES=${1:?number of processes}
GIN_FILE=${2:?gin file}
MODEL_DIR=${3:?model dir}
shift 3
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-2}
PORT=${PORT:-12355}
PYTHON=${PYTHON:-.venv/bin/python}
# glibc settings that keep XLA:CPU's per-step buffers mapped (ernie3_jax/runtime/host_memory.py).
HOST_MEMORY_TUNABLES="$("$PYTHON" -m ernie3_jax.runtime.host_memory)"
pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS}" \
  GLIBC_TUNABLES="$HOST_MEMORY_TUNABLES" \
  JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo \
    "$PYTHON" -m ernie3_jax.cli.main --gin_file="$GIN_FILE" --gin.MODEL_DIR="'$MODEL_DIR'" \
      --coordinator_address="localhost:${PORT}" --num_processes="$NUM_PROCESSES" \
      --process_id="$i" "$@" > "${MODEL_DIR%/}.process${i}.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
