#!/usr/bin/env bash
# cosmos-hal launcher: one command line for NVIDIA GPUs, Ascend NPUs and CPUs (torchrun underneath).
usage() {
    cat <<'USAGE'
usage: bash train.sh [--EXP=<experiment>] [--nproc_per_node=N] [--nnodes=N] [--node_rank=R]
                     [--master_addr=HOST] [--master_port=PORT] [--hccl_if_ip=IP]
                     [--backend=cpu|cuda|npu] [key=value ...]

  --EXP             experiment name (default tiny_video2world_synthetic; --list shows all)
  --nproc_per_node  processes on this node (default: the backend's device count; 1 on a CPU)
  --nnodes          number of nodes (default 1)
  --node_rank       this node's rank, 0..nnodes-1 (default 0)
  --master_addr     address of node 0 (default 127.0.0.1)
  --master_port     port on node 0 (default: a free port when nnodes=1, else 29500)
  --hccl_if_ip      this node's IP for HCCL (Ascend; each node passes its own)
  --backend         force a backend instead of auto-detection (also COSMOS_HAL_BACKEND)
  --list            print the experiment names and exit
  key=value         experiment overrides, nested with dots: max_iter=20 optim.lr=1e-4
                    output_dir=/path model_path=/weights dataset_path=/data parity=true
                    speed: the Predict2/2.5 experiments run the fast path the backend has
                    proven (fast=auto: fused attention, compiled blocks, ac_mode=auto sized to
                    free memory); fast=off is the plain path, fast=on forces it (docs/training.md);
                    memory: context_parallel=2 splits each sample's tokens over 2 ranks;
                    memory=auto (default: offloads only when the estimate does not fit on the
                    device, and stops before training when nothing does, naming what would fit)
                    | device | offload_optimizer | offload_params; optim.name=adamw_bf16|adamw_8bit;
                    memory_cap_gb=24 plans and runs as if the card had 24 GiB (docs/training.md)

With no arguments it trains the tiny default on whatever hardware there is.
Logs, metrics.jsonl and checkpoints go to output/<EXP>/ (or output_dir=); a run resumes from
the latest checkpoint there. Examples:
  bash train.sh
  bash train.sh --EXP=predict2_video2world_training_2b_cosmos_nemo_assets --nproc_per_node=8 \
      model_path=checkpoints/nvidia/Cosmos-Predict2-2B-Video2World dataset_path=datasets/cosmos_nemo_assets
  # two nodes (run on each, with its own --node_rank and --hccl_if_ip):
  bash train.sh --EXP=... --nnodes=2 --node_rank=0 --master_addr=10.0.0.1 --master_port=29500 --hccl_if_ip=10.0.0.1
USAGE
}

set -euo pipefail
cd "$(dirname "$0")"

EXP=""
NPROC=""
NNODES=1
NODE_RANK=0
MASTER_ADDR=127.0.0.1
MASTER_PORT=""
HCCL_IF_IP=""
BACKEND="${COSMOS_HAL_BACKEND:-}"
LIST=0
PARITY=0
OVERRIDES=()

bad() { echo "train.sh: $1" >&2; usage >&2; exit 2; }
# Flags of diffusers' examples/cosmos/train_cosmos_predict25_lora.py (seed 000): name our override.
diffusers_flag() {
    local eq
    case "${1%%=*}" in
        --pretrained_model_name_or_path) eq="model_path=DIR (a local download of that revision)" ;;
        --revision) eq="model_path=DIR pointing at the revision's download" ;;
        --train_data_dir) eq="dataset_path=DIR" ;;
        --output_dir) eq="output_dir=DIR" ;;
        --seed) eq="seed=N" ;;
        --train_batch_size) eq="batch_size=N (per process)" ;;
        --num_train_epochs|--checkpointing_epochs) eq="max_iter=STEPS save_iter=STEPS (steps, not epochs)" ;;
        --height|--width|--num_frames) eq="data.height=H data.width=W data.num_frames=N" ;;
        --lora_rank|--lora_alpha) eq="lora.rank=R lora.alpha=A" ;;
        --use_dora) eq="lora.kind=dora" ;;
        --gradient_checkpointing) eq="activation_checkpointing=true (the default)" ;;
        --learning_rate) eq="optim.lr=LR" ;;
        --report_to|--allow_tf32|--mixed_precision) eq="nothing to pass (metrics.jsonl in output_dir; bf16 and fast kernels by default)" ;;
        *) return 1 ;;
    esac
    echo "${1%%=*} is a flag of diffusers' train_cosmos_predict25_lora.py; here: $eq. Its recipe is" \
         "bash train.sh --EXP=predict25_video2world_lora_rank32_gr1 model_path=DIR dataset_path=gr1_dataset/train" \
         "(docs/porting.md maps every flag)"
}
need_int() { [[ "$2" =~ ^[0-9]+$ ]] || bad "$1 must be a non-negative integer, got '$2'"; }

for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
        --list) LIST=1 ;;
        --EXP=*|--exp=*) EXP="${arg#*=}" ;;
        --nproc_per_node=*) NPROC="${arg#*=}"; need_int --nproc_per_node "$NPROC" ;;
        --nnodes=*) NNODES="${arg#*=}"; need_int --nnodes "$NNODES" ;;
        --node_rank=*) NODE_RANK="${arg#*=}"; need_int --node_rank "$NODE_RANK" ;;
        --master_addr=*) MASTER_ADDR="${arg#*=}" ;;
        --master_port=*) MASTER_PORT="${arg#*=}"; need_int --master_port "$MASTER_PORT" ;;
        --hccl_if_ip=*) HCCL_IF_IP="${arg#*=}" ;;
        --backend=*) BACKEND="${arg#*=}" ;;
        # cosmos-predict1's launch (seed 004): torchrun ... --config=.../config.py -- experiment=NAME
        --config=*) bad "--config is cosmos-predict1's config file; here the experiment's name picks its whole recipe: bash train.sh --EXP=NAME (docs/porting.md)" ;;
        --) ;;
        -*) bad "$(diffusers_flag "$arg" || echo "unknown option '$arg'")" ;;
        experiment=*) bad "experiment=${arg#*=} is cosmos-predict1's Hydra override; here: bash train.sh --EXP=${arg#*=} dataset_path=DIR model_path=FILE (docs/porting.md)" ;;
        *=*) OVERRIDES+=("$arg")
             case "${arg,,}" in parity=true|parity=1|parity=yes|parity=on) PARITY=1 ;; esac ;;
        *) bad "unexpected argument '$arg' (options are --name=value, overrides key=value)" ;;
    esac
done
[[ "$NNODES" -ge 1 ]] || bad "--nnodes must be at least 1"
[[ "$NODE_RANK" -lt "$NNODES" ]] || bad "--node_rank=$NODE_RANK must be below --nnodes=$NNODES"
[[ -z "$NPROC" || "$NPROC" -ge 1 ]] || bad "--nproc_per_node must be at least 1"
case "$BACKEND" in ""|cpu|cuda|npu) ;; *) bad "--backend must be cpu, cuda or npu, got '$BACKEND'" ;; esac

# Ascend: CANN's environment must be in place before Python imports torch_npu.
if [[ "$BACKEND" == "npu" || ( -z "$BACKEND" && ( -d /usr/local/Ascend || -n "${ASCEND_TOOLKIT_HOME:-}" ) ) ]]; then
    for f in "${ASCEND_TOOLKIT_HOME:+$ASCEND_TOOLKIT_HOME/set_env.sh}" "${ASCEND_TOOLKIT_HOME:+$ASCEND_TOOLKIT_HOME/../set_env.sh}" \
             /usr/local/Ascend/ascend-toolkit/set_env.sh; do
        if [[ -n "$f" && -f "$f" ]]; then
            set +u; source "$f"; set -u
            echo "[train.sh] sourced $f" >&2
            break
        fi
    done
fi

source tools/setup_env.sh

if [[ "$LIST" == 1 ]]; then exec "$PYTHON" -m cosmos_hal train --list; fi
EXP="${EXP:-tiny_video2world_synthetic}"

# Stopping (docs/training.md, "Stopping a run"). SIGTERM, SIGINT or SIGHUP to this script (timeout,
# Slurm, Ctrl-C) sends SIGTERM once to every process of the run; the ranks end at once
# (cosmos_hal/liveness.py); whatever is left after COSMOS_HAL_STOP_GRACE seconds is killed. The
# run's processes are found by COSMOS_HAL_RUN_ID in their environment: torchrun starts each rank
# in a session of its own, out of reach of a process-group kill. torchrun runs in its own session
# too (only this script signals it, once) and gets SIGTERM if this script is killed outright.
STOP_GRACE="${COSMOS_HAL_STOP_GRACE:-20}"
need_int COSMOS_HAL_STOP_GRACE "$STOP_GRACE"
export COSMOS_HAL_RUN_ID="train.sh:${HOSTNAME:-node}:$$:$RANDOM$RANDOM"
NEW_SESSION='import ctypes, os, signal, sys
os.setsid()
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG: end with train.sh
except (OSError, AttributeError):
    pass
os.execv(sys.executable, [sys.executable] + sys.argv[1:])'

run_pids() {  # processes of this run still alive, except this script and the log's tee
    local f p
    for f in $(env -u COSMOS_HAL_RUN_ID grep -lsxzF "COSMOS_HAL_RUN_ID=$COSMOS_HAL_RUN_ID" /proc/[0-9]*/environ); do
        p="${f#/proc/}"; p="${p%/environ}"
        [[ "$p" == "$$" || "$p" == "${TEE_PID:-}" ]] || echo "$p"
    done
}
signal_run() { local p; for p in $(run_pids); do kill -"$1" "$p" 2>/dev/null || true; done; }
finish() {  # kill leftovers, let tee write the last lines, exit with $1
    signal_run KILL
    exec 3>&-
    [[ -z "${TEE_PID:-}" ]] || wait "$TEE_PID" 2>/dev/null || true
    exit "$1"
}
stop() {
    local sig="$1" waited=0
    trap '' INT TERM HUP
    echo "[train.sh] SIG$sig: stopping the run (SIGTERM to torchrun and the ranks, SIGKILL after ${STOP_GRACE} s)" >&2
    signal_run TERM
    while [[ -n "$(run_pids)" ]] && (( waited < STOP_GRACE * 5 )); do sleep 0.2; waited=$((waited + 1)); done
    finish $((128 + $(kill -l "$sig")))
}
trap 'stop TERM' TERM
trap 'stop INT' INT
trap 'stop HUP' HUP

# Validate the experiment and overrides before starting any process; pick the backend.
# It also estimates the memory each device needs, where the backend can tell its device's memory,
# and stops (exit 2) with the overrides that would fit (cosmos_hal/train/memory_plan.py).
PLAN="$("$PYTHON" -m cosmos_hal train --check --EXP="$EXP" ${BACKEND:+--backend="$BACKEND"} \
    ${NPROC:+--nproc_per_node="$NPROC"} --nnodes="$NNODES" "${OVERRIDES[@]}")" \
    || { usage >&2; exit 2; }
eval "$PLAN"   # OUT_DIR, BACKEND, DEVICES, DIST_TIMEOUT
if [[ -z "$NPROC" ]]; then
    if [[ "$BACKEND" == cpu ]]; then NPROC=1; else NPROC="$DEVICES"; fi
fi

ENV_ARGS=(--backend="$BACKEND" --nproc_per_node="$NPROC" --nnodes="$NNODES" --dist_timeout="$DIST_TIMEOUT")
[[ -n "$HCCL_IF_IP" ]] && ENV_ARGS+=(--hccl_if_ip="$HCCL_IF_IP")
[[ "$PARITY" == 1 ]] && ENV_ARGS+=(--parity)
LAUNCH_ENV="$("$PYTHON" -m cosmos_hal launch-env "${ENV_ARGS[@]}")"
eval "$LAUNCH_ENV"

RUN=(--nproc_per_node="$NPROC" --nnodes="$NNODES" --node_rank="$NODE_RANK")
if [[ "$NNODES" == 1 && -z "$MASTER_PORT" ]]; then
    RUN+=(--standalone)
else
    RUN+=(--master_addr="$MASTER_ADDR" --master_port="${MASTER_PORT:-29500}")
fi

mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/train_node${NODE_RANK}.log"
echo "[train.sh] $EXP on $BACKEND: $NNODES node(s) x $NPROC process(es), node_rank $NODE_RANK; log $LOG" >&2

exec 3> >(trap '' INT TERM HUP; exec tee -a "$LOG")  # tee outlives the run's last line, not a signal
TEE_PID=$!
"$PYTHON" -c "$NEW_SESSION" -m torch.distributed.run "${RUN[@]}" -m cosmos_hal train --EXP="$EXP" \
    --backend="$BACKEND" "${OVERRIDES[@]}" >&3 2>&1 &
RC=0
wait $! || RC=$?
finish "$RC"
