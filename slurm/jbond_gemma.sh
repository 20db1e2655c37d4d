#!/bin/bash
# J-BOND with megatron-bond on N nodes × G GPUs, one srun task per GPU:
#
#   sbatch slurm/jbond_gemma.sh                                   # 2 nodes × 8 GPUs, Gemma 7B recipe
#   RECIPE=recipes/jbond_gemma2_27b.yaml sbatch --nodes=4 slurm/jbond_gemma.sh
#   sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=0 slurm/jbond_gemma.sh   # no GPUs: tiny CPU recipe, gloo
#
# Inputs (environment variables; default in brackets):
#   RECIPE            recipe YAML [recipes/jbond_gemma_7b.yaml; recipes/tiny_cpu.yaml where the nodes have no GPU]
#   OVERRIDES         space-separated key=value overrides of the recipe, e.g. "train.steps=200 policy.ckpt=ckpt/7b" [none]
#   RUN_DIR           run.output_dir: metrics, checkpoints, logs; a requeued or resubmitted job resumes from it [runs/$SLURM_JOB_NAME]
#   CONTAINER_IMAGE   a pyxis / enroot image (e.g. an NVIDIA PyTorch container with megatron-bond installed);
#                     unset: the tasks run on the host [unset]
#   CONTAINER_MOUNTS  pyxis mounts; the repository and RUN_DIR must be visible at the same paths [$PWD:$PWD]
#   PYTHON            the interpreter with megatron-bond's dependencies [.venv/bin/python if present, else python3]
#   NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME   the network interface(s) between nodes (e.g. ib0, or eth0 where the
#                     default route is not the cluster's fabric): either one set is passed to both, since vLLM's
#                     data-parallel replicas (rollout.engine=vllm) talk over gloo across nodes [unset: auto]
#   NCCL_NVLS_ENABLE  [0: NVLink SHARP's 1.6-6 GB buffers per GPU are not in the memory plan]; with
#   rollout.engine=vllm NCCL_CUMEM_ENABLE [0: vLLM's sleep-mode memory pool does not work with NCCL's cuMem]
#
# Preemption and time limits: Slurm sends SIGUSR1 to every task 300 s before the end (--signal) or on
# `scancel --signal=USR1 JOBID`; the ranks agree on it, write a checkpoint, write RUN_DIR/PREEMPTED and
# exit 0; this script then requeues the job (--requeue), and the next start resumes from the checkpoint.
#SBATCH --job-name=jbond-gemma
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --time=04:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$PWD}"
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-0}
if [ "$GPUS_PER_NODE" -gt 0 ]; then RECIPE=${RECIPE:-recipes/jbond_gemma_7b.yaml}; else RECIPE=${RECIPE:-recipes/tiny_cpu.yaml}; fi
OVERRIDES=${OVERRIDES:-}
RUN_DIR=${RUN_DIR:-runs/${SLURM_JOB_NAME:-jbond}}
if [ -x .venv/bin/python ]; then PYTHON=${PYTHON:-$PWD/.venv/bin/python}; else PYTHON=${PYTHON:-python3}; fi
mkdir -p "$RUN_DIR/logs"
LOG="$RUN_DIR/logs/job-${SLURM_JOB_ID}.log"
# The log copy must outlive the signals below (a dead tee would kill this shell on its next write).
exec > >(trap '' USR1 TERM; exec tee -a "$LOG") 2>&1
# USR1 / TERM may reach this shell too (scancel --signal, some preemption setups): the training tasks
# act on them; this shell only notes them and waits for srun.
trap 'echo "== the batch shell received a stop signal; the training tasks checkpoint and exit"' USR1 TERM

LAUNCH=()
if [ -n "${CONTAINER_IMAGE:-}" ]; then
    LAUNCH=(--container-image="$CONTAINER_IMAGE" --container-mounts="${CONTAINER_MOUNTS:-$PWD:$PWD}" --container-workdir="$PWD")
    [ "$PYTHON" = "$PWD/.venv/bin/python" ] && PYTHON=python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# shellcheck disable=SC2206
ARGS=("$RECIPE" $OVERRIDES "run.output_dir=$RUN_DIR")

# Rendezvous from the allocation: the first node's address as the other nodes reach it (Slurm's
# NodeAddr: an IP literal as it is, a name resolved where it resolves; node names need not), a port
# derived from the job id (the runtime derives the same if these are unset), ranks from SLURM_PROCID /
# SLURM_NTASKS / SLURM_LOCALID. An IPv6 address is bracketed where a URL is formed (the runtime).
# awk reads every line: `head -n1` would leave scontrol writing into a closed pipe (SIGPIPE, and pipefail
# ends the job) on a long node list.
FIRST_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk 'NR == 1')
NODE_ADDR=$(scontrol show node "$FIRST_NODE" | grep -oE 'NodeAddr=[^ ]+' | cut -d= -f2)
if [[ "$NODE_ADDR" =~ ^[0-9.]+$ || "$NODE_ADDR" == *:* ]]; then
    MASTER_ADDR=$NODE_ADDR
else  # getent exits 2 for a name without a host entry: keep the name then
    MASTER_ADDR=$(getent hosts "$NODE_ADDR" | awk '{print $1; exit}' || true)
fi
export MASTER_ADDR=${MASTER_ADDR:-$NODE_ADDR}
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one process per GPU (or CPU task): no thread oversubscription
# A collective (NCCL or gloo) that waits this long fails, and the job ends, instead of hanging: longer
# than one rank's evaluation or checkpoint write at Gemma scale, short enough not to burn an allocation.
export MEGATRON_BOND_TIMEOUT_MINUTES=${MEGATRON_BOND_TIMEOUT_MINUTES:-30}
if [ "$GPUS_PER_NODE" -gt 0 ]; then
    # Megatron overlaps TP communication with compute only if kernels launch in issue order: one queue.
    # Asked of the recipe where the tasks run (the container's python; the batch host may have none);
    # a bad recipe or override ends the job here, with megatron-bond's one-line message.
    TP=$(srun --ntasks=1 --nodes=1 "${LAUNCH[@]}" "$PYTHON" -m megatron_bond.cli config "${ARGS[@]}" --get parallel.tp) \
        || { echo "== the recipe was refused (above): nothing was launched"; exit 2; }
    if [ "$TP" -gt 1 ]; then export CUDA_DEVICE_MAX_CONNECTIONS=1; fi
    export TORCH_NCCL_AVOID_RECORD_STREAMS=1  # free NCCL's buffers without recordStream: less memory held
    export TORCH_NCCL_ASYNC_ERROR_HANDLING=1  # a failed or timed-out collective ends the process, not a hang
    export NCCL_DEBUG=${NCCL_DEBUG:-WARN}  # NCCL's own warnings (a failed transport, a timeout) reach the logs; INFO to debug a hang
    # Read when NCCL starts, so set before any process group (the CLI sets the same where unset).
    export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
    ENGINE=$(srun --ntasks=1 --nodes=1 "${LAUNCH[@]}" "$PYTHON" -m megatron_bond.cli config "${ARGS[@]}" --get rollout.engine)
    if [ "$ENGINE" = vllm ]; then export NCCL_CUMEM_ENABLE=${NCCL_CUMEM_ENABLE:-0}; fi
    export TRITON_CACHE_DIR="/tmp/triton-${SLURM_JOB_ID}"  # per job: a shared cache races between jobs
fi

# One interface for both backends where the user named one (srun passes the environment on).
if [ -n "${NCCL_SOCKET_IFNAME:-}${GLOO_SOCKET_IFNAME:-}" ]; then
    export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-$GLOO_SOCKET_IFNAME} GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$NCCL_SOCKET_IFNAME}
    echo "== network interface: NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME} GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME}"
fi
echo "== megatron-bond J-BOND job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NUM_NODES} node(s): ${SLURM_JOB_NODELIST}"
echo "== ${SLURM_NTASKS} tasks, ${GPUS_PER_NODE} GPU(s) per node; rendezvous ${MASTER_ADDR} port ${MASTER_PORT}; run dir ${RUN_DIR}"
echo "== recipe ${RECIPE}; overrides: ${OVERRIDES:-none}"
TASKS_PER_NODE=${SLURM_NTASKS_PER_NODE:-$((SLURM_NTASKS / SLURM_JOB_NUM_NODES))}
PLAN_ARGS=(--nodes "$SLURM_JOB_NUM_NODES" --gpus-per-node "$TASKS_PER_NODE")
[ "$GPUS_PER_NODE" -eq 0 ] && PLAN_ARGS+=(--cpu)
srun --ntasks=1 --nodes=1 "${LAUNCH[@]}" "$PYTHON" tools/plan_memory.py "${ARGS[@]}" "${PLAN_ARGS[@]}" || true

status=0
srun --kill-on-bad-exit=1 --label --wait=120 "${LAUNCH[@]}" \
    "$PYTHON" -m megatron_bond.cli train "${ARGS[@]}" || status=$?

if [ "$status" -eq 0 ] && [ -f "$RUN_DIR/PREEMPTED" ]; then
    echo "== stopped on a signal at step $(cat "$RUN_DIR/PREEMPTED"): requeueing job ${SLURM_JOB_ID} to resume"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
if [ "$status" -ne 0 ]; then  # one log per rank, from srun's labels, and the failing ranks' last lines
    awk -v dir="$RUN_DIR/logs" -v job="$SLURM_JOB_ID" \
        'match($0, /^ *[0-9]+: /) { r = substr($0, RSTART, RLENGTH); gsub(/[ :]/, "", r);
                                    print substr($0, RLENGTH + 1) > (dir "/job-" job "-rank" r ".log") }' "$LOG"
    echo "== training failed (exit ${status}); per-rank logs: ${RUN_DIR}/logs/job-${SLURM_JOB_ID}-rank*.log"
fi
exit "$status"
