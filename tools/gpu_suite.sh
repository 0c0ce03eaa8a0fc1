#!/usr/bin/env bash
# Everything cosmos-hal measures on a GPU host, in parts that each fit a 10-minute slot.
#   bash tools/gpu_suite.sh setup            # install the package (offline: wheels in .whl/)
#   bash tools/gpu_suite.sh check            # info, CUDA tests, kernel bench, tiny train, parity
#   bash tools/gpu_suite.sh train_bench      # tools/bench_train_step.py at 93x432x768
#   bash tools/gpu_suite.sh train_bench_704  # the same at 93x704x1280 (a slot of its own)
#   bash tools/gpu_suite.sh infer_bench      # tools/bench_infer.py + predict2-2b training steps
#   bash tools/gpu_suite.sh train_sh_bench   # train.sh defaults vs fast=off vs the reference
#                                            # (SHAPES=93x432x768, DEVICES=0,1 runs jobs side by side)
#   bash tools/gpu_suite.sh memory_test      # ac_mode=auto with another process holding the GPU
#   bash tools/gpu_suite.sh multigpu         # tests/test_multigpu.py, test_checkpoint_sharded.py on two GPUs (NCCL)
#   bash tools/gpu_suite.sh cp_bench         # context_parallel=2 vs each GPU its own sample, 93x704x1280,
#                                            # two GPUs, with a profile of two CP steps (about 7 minutes)
#   bash tools/gpu_suite.sh blocks14b        # predict2-14b cut to 2 and 4 blocks, 93x704x1280, FSDP2 over two
#                                            # GPUs + context_parallel=2: per-block memory and s/step (~5 min)
#   bash tools/gpu_suite.sh predict1         # issue 17: Predict1 loss GPU fp32 = CPU, then a Predict1-7B
#                                            # Text2World step at 121x720x1280, reference vs hal (~8 min)
#   bash tools/gpu_suite.sh memory_measure   # issue 18: predict2-14b blocks at 93x704x1280 under an 80 GiB
#                                            # cap, 2B full/LoRA r32 at 93x432x768 via train.sh under 24/40
#                                            # GiB and uncapped, then tools/plan_14b.py on it (~8 minutes)
# Results go to $OUT (default ./gpu_results). Several parts may be given in one call.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_results}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

step() {  # step NAME TIMEOUT_S CMD...: run, log to $OUT/NAME.log, record rc and seconds
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "=== $name ($(date -u +%H:%M:%S))"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "=== $name rc=$rc in $((SECONDS - t0)) s"
    tail -n 15 "$OUT/$name.log"
    echo "$name rc=$rc s=$((SECONDS - t0))" >>"$OUT/summary.txt"
}

setup() {
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || return 1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    if ! $PY -c "import cosmos_hal.backends" 2>/dev/null; then
        $PY -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
            || ln -sfn ../backends cosmos_hal/backends
    fi
    $PY -c "import cosmos_hal.backends, diffusers; print('cosmos_hal ok, diffusers', diffusers.__version__)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
}

check() {
    step info 60 $PY -m cosmos_hal info
    $PY -m cosmos_hal info --json >"$OUT/info.json" 2>&1
    step cuda_tests 200 $PY -m pytest -q -m cuda -p no:cacheprovider
    step bench_kernels 150 $PY tools/bench_kernels.py --out "$OUT/bench_kernels.json"
    step tiny_train 60 bash train.sh output_dir=/tmp/tiny_default
    cp /tmp/tiny_default/metrics.jsonl "$OUT/tiny_train_metrics.jsonl" 2>/dev/null
    parity
}

parity() {  # tiny Video2World, 100 steps, parity mode: CPU fp32 is the reference
    local common="--EXP=tiny_video2world_synthetic max_iter=100 parity=true logging_iter=1 save_at_end=false"
    step parity_cpu 100 bash train.sh --backend=cpu $common output_dir=/tmp/par/cpu
    step parity_cuda_fp32 45 bash train.sh --backend=cuda $common output_dir=/tmp/par/cuda_fp32
    step parity_cuda_bf16 45 bash train.sh --backend=cuda $common precision=bf16 output_dir=/tmp/par/cuda_bf16
    for r in cpu cuda_fp32 cuda_bf16; do cp /tmp/par/$r/metrics.jsonl "$OUT/parity_$r.jsonl" 2>/dev/null; done
    step compare_fp32 20 $PY tools/loss_parity.py /tmp/par/cuda_fp32 /tmp/par/cpu --step-rtol 1e-4 --rtol 1e-4 \
        --window 10 --plot "$OUT/parity_fp32.png"
    step compare_bf16 20 $PY tools/loss_parity.py /tmp/par/cuda_bf16 /tmp/par/cpu --rtol 5e-3 --window 20 \
        --plot "$OUT/parity_bf16.png"
}

train_bench() {  # 93x432x768, both modes and paths, numerics check, profile: about 4 minutes on an H100
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True step bench_train_step 480 $PY tools/bench_train_step.py \
        ${TRAIN_BENCH_ARGS:---shapes 432x768 --modes full,lora --paths reference,hal --warmup 1 --repeats 3 --check-numerics --profile --time-budget-s 420} \
        --out "$OUT/bench_train_step.json" --md "$OUT/bench_train_step.md"
}

train_bench_704() {  # 93x704x1280, both modes and paths: about 6 minutes on an H100
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True step bench_train_step_704 580 $PY tools/bench_train_step.py \
        --shapes 704x1280 --modes full,lora --paths reference,hal --warmup 1 --repeats 3 --time-budget-s 540 \
        --out "$OUT/bench_train_step_704.json" --md "$OUT/bench_train_step_704.md"
}

train_sh_bench() {  # the user's train.sh command: defaults, fast=off and the diffusers reference
    local shapes="${SHAPES:-93x432x768}" tag="${SHAPES:-93x432x768}"
    tag="${tag//,/_}"
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True step "train_sh_$tag" "${TRAIN_SH_TIMEOUT:-570}" \
        $PY tools/bench_train_sh.py --shapes "$shapes" --devices "${DEVICES:-}" --iters "${ITERS:-8}" \
        --timeout-s "${JOB_TIMEOUT:-540}" --work /tmp/train_sh_runs --out "$OUT/train_sh_$tag.json" \
        --md "$OUT/train_sh_$tag.md" ${EXTRA_JOB:+--extra-job "$EXTRA_JOB"}
    # logs and metrics only (the runs' synthetic videos and latents would not come back)
    (cd /tmp/train_sh_runs && find . \( -name '*.log' -o -name '*.jsonl' -o -name '*.json' \) -print0 \
        | tar -czf "$OUT/train_sh_${tag}_logs.tgz" --null -T -) 2>/dev/null
}

memory_test() {
    step memory_test "${MEMORY_TEST_TIMEOUT:-400}" $PY -m pytest -q -p no:cacheprovider tests/test_memory_budget_gpu.py
}

multigpu() {  # DDP, FSDP2, context_parallel=2 and a two-node launch equal one process; clean stop
    step multigpu_tests "${MULTIGPU_TIMEOUT:-560}" $PY -m pytest -q -p no:cacheprovider -m multigpu tests/test_multigpu.py \
        tests/test_checkpoint_sharded.py  # + FSDP2 resume from full/sharded checkpoints, restore device peak
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader >"$OUT/gpu_apps_after.txt" 2>&1
}

cp_bench() {  # issue 19 point 2: CP samples/s over DP samples/s on the same two GPUs (goal >= 85 %)
    # CP_BEFORE=<folder or git rev>: also the CP run of that code (e.g. a folder made here with
    # `git archive 1611c01 | tar -x -C cp_before`); CP_RUNS=before runs only that one (each run ~3 min)
    local before=() src=""
    if [ -n "${CP_BEFORE:-}" ]; then
        if [ -d "$CP_BEFORE" ]; then
            src=$(cd "$CP_BEFORE" && pwd)
        else
            rm -rf /tmp/cp_before
            git worktree add --detach /tmp/cp_before "$CP_BEFORE" >/dev/null 2>&1 && src=/tmp/cp_before
        fi
        if [ -n "$src" ]; then
            ln -sfn ../backends "$src/cosmos_hal/backends" 2>/dev/null
            before=(--before-repo "$src")
        else
            echo "CP_BEFORE=$CP_BEFORE: neither a folder nor a git revision here; running without it"
        fi
    fi
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True step cp_bench "${CP_TIMEOUT:-570}" $PY tools/bench_context_parallel.py \
        --shape "${CP_SHAPE:-93x704x1280}" --nproc 2 --cp 2 --warmup "${WARMUP:-3}" --steady "${ITERS:-5}" \
        --runs "${CP_RUNS:-cp,dp,before}" --timeout-s "${JOB_TIMEOUT:-275}" --work /tmp/cp_runs \
        ${before[@]+"${before[@]}"} --out "$OUT/cp_bench.json" --md "$OUT/cp_bench.md"
    cp /tmp/cp_runs/cp2/profile/summary_rank*.json "$OUT/" 2>/dev/null
    gzip -c /tmp/cp_runs/cp2/profile/trace_rank0.json >"$OUT/cp2_trace_rank0.json.gz" 2>/dev/null
    (cd /tmp/cp_runs && find . \( -name '*.log' -o -name '*.jsonl' \) -print0 \
        | tar -czf "$OUT/cp_bench_logs.tgz" --null -T -) 2>/dev/null
}

blocks14b() {  # issue 19 point 4: per block = the difference of two cut models (num_layers=2, 4)
    local layers=(${BLOCKS14B_LAYERS:-2 4})
    for n in "${layers[@]}"; do  # memory=device: the estimate counts the whole 14B, not the cut model
        PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True step "blocks14b_$n" "${BLOCKS14B_TIMEOUT:-280}" bash train.sh \
            --EXP=predict2_video2world_training_14b_cosmos_nemo_assets --nproc_per_node=2 num_layers="$n" \
            context_parallel=2 memory=device memory_check=false data.synthetic=true data.synthetic_videos=2 \
            data.latent_cache=true data.num_workers=1 max_iter="${ITERS:-6}" logging_iter=1 save_at_end=false \
            save_iter=100000 resume=false output_dir="/tmp/blocks14b_$n" ${BLOCKS14B_ARGS:-}
        cp "/tmp/blocks14b_$n/metrics.jsonl" "$OUT/blocks14b_${n}_metrics.jsonl" 2>/dev/null
        grep -h "activation checkpointing\|memory:\|context parallel" "/tmp/blocks14b_$n/train_node0.log" \
            >"$OUT/blocks14b_${n}_plan.txt" 2>/dev/null
    done
    $PY - "$OUT" "${layers[@]}" <<'PYEOF' | tee "$OUT/blocks14b.txt"
import json, statistics, sys
out, layers = sys.argv[1], [int(n) for n in sys.argv[2:]]
rows = {}
for n in layers:
    try:
        recs = [json.loads(line) for line in open(f"{out}/blocks14b_{n}_metrics.jsonl") if line.strip()]
    except OSError:
        continue
    steady = [r["s_per_it"] for r in recs if r["iteration"] > 3] or [float("nan")]
    rows[n] = (statistics.median(steady), max(r["mem_gb"] for r in recs))
    print(f"num_layers={n}: {rows[n][0]:.3f} s/step (median after iteration 3), peak {rows[n][1]:.1f} GB per GPU")
if len(rows) >= 2:
    (a, (ta, ma)), (b, (tb, mb)) = sorted(rows.items())[0], sorted(rows.items())[-1]
    print(f"per 14B block (from {a} and {b} blocks): {(tb - ta) / (b - a):.3f} s/step, {(mb - ma) / (b - a):.2f} GB")
PYEOF
}

memory_measure() {  # issue 18: per-block memory/time (about 1 minute), then six train.sh runs within 6 minutes
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True step memory_measure "${MEMORY_MEASURE_TIMEOUT:-500}" \
        $PY tools/measure_memory.py --time-budget-s "${RUNS_BUDGET_S:-380}" --run-timeout-s "${RUN_TIMEOUT_S:-170}" \
        ${MEMORY_MEASURE_ARGS:-} --work /tmp/measure_memory_runs --out "$OUT/memory_measure.json" \
        --md "$OUT/memory_measure.md"
    step plan_14b 60 $PY tools/plan_14b.py --measured "$OUT/memory_measure.json" --json "$OUT/plan_14b.json"
    (cd /tmp/measure_memory_runs && find . \( -name '*.log' -o -name '*.jsonl' \) -print0 \
        | tar -czf "$OUT/memory_measure_logs.tgz" --null -T -) 2>/dev/null
}

predict1() {  # issue 17 point 6: the loss on the GPU in fp32, then one 7B training step beside diffusers'
    step predict1_cuda_tests 120 $PY -m pytest -q -m cuda -p no:cacheprovider tests/test_predict1_gpu.py
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True step bench_predict1_7b "${PREDICT1_TIMEOUT:-480}" \
        $PY tools/bench_train_step.py --preset predict1-7b-text2world --shapes 121x720x1280 \
        --modes "${PREDICT1_MODES:-lora,full}" --paths reference,hal --warmup 1 --repeats "${REPEATS:-2}" \
        --estimate '' --time-budget-s "${PREDICT1_BUDGET_S:-450}" \
        --out "$OUT/bench_predict1_7b.json" --md "$OUT/bench_predict1_7b.md"
}

infer_bench() {
    step bench_infer 170 $PY tools/bench_infer.py --json_out "$OUT/bench_infer.json"
    step train_2b_704 200 bash train.sh --EXP=predict2_video2world_training_2b_cosmos_nemo_assets \
        --nproc_per_node=1 data.synthetic=true data.synthetic_videos=2 data.latent_cache=true \
        data.num_workers=1 max_iter=5 logging_iter=1 save_at_end=false output_dir=/tmp/bench_2b_704
    cp /tmp/bench_2b_704/metrics.jsonl "$OUT/train_2b_704_metrics.jsonl" 2>/dev/null
}

[ $# -gt 0 ] || { sed -n 2,21p "$0"; exit 2; }
setup || { echo "setup failed"; exit 1; }
for part in "$@"; do
    case "$part" in
        setup) ;;
        check|parity|predict1|train_bench|train_bench_704|infer_bench|train_sh_bench|memory_test|multigpu|cp_bench|memory_measure|blocks14b) "$part" ;;
        *) echo "unknown part: $part"; exit 2 ;;
    esac
done
cat "$OUT/summary.txt" 2>/dev/null
