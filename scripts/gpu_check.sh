#!/usr/bin/env bash
# Runs the packed CUDA tests on a GPU machine. From the repository root, after
# scripts/gpu_pack.sh on the build machine and with .devpack carried over:
#   scripts/gpu_check.sh [gtest filter]        (default: all tests of the CUDA binaries)
# Prints nvidia-smi, runs the binaries with GPU tests (test_mma_selftest: the CUDA emulator's mma
# self-test on the hardware; the op tests, one binary per tests/ops/test_*.cpp; test_cuda_model,
# test_nccl, test_deterministic, test_memory_plan, test_bench; with ALL=1 every packed test binary), then,
# without a filter, the end-to-end checks of `deterministic: true` (two short `ltrain train` runs
# on the GPU must give identical losses, gradient norms and checkpoint files), exact resume on the GPU
# (15 steps + stop + resume = 30 steps, bitwise) and the memory refusal; BENCH=1 adds `ltrain bench --profile` on the TinyLlama shape with deterministic off and
# on, and `ltrain bench --attention` (TinyLlama's shape and FlashAttention-2's H100 point). Keeps each log in ${LOG_DIR:-.devpack/logs}, and ends with a pass/fail table.
set -uo pipefail
cd "$(dirname "$0")/.."
PACK=.devpack
LOG_DIR=${LOG_DIR:-$PACK/logs}
FILTER=${1:-*}
mkdir -p "$LOG_DIR"

if [[ -f "$PACK/devpack.tar.xz" && ! -d "$PACK/bin" ]]; then
  tar -C "$PACK" -xJf "$PACK/devpack.tar.xz" || { echo "[gpu_check] cannot unpack $PACK/devpack.tar.xz"; exit 1; }
fi
[[ -d "$PACK/bin" ]] || { echo "[gpu_check] no $PACK/bin: run scripts/gpu_pack.sh on the build machine"; exit 1; }

nvidia-smi || echo "[gpu_check] nvidia-smi failed: is there a GPU?"
# Our libraries first, then CUDA's (cudart, cuBLASLt) from the image's toolkit.
export LD_LIBRARY_PATH="$PWD/$PACK/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"

# The test binaries were built elsewhere: point the compiled-in source path at this checkout.
src=$(cat "$PACK/source_dir" 2>/dev/null || true)
if [[ -n "$src" && "$src" != "$PWD" && ! -e "$src" ]]; then
  mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src" 2>/dev/null || true
fi

# The op tests: one binary per op family, named after tests/ops/test_*.cpp in this checkout.
op_bins=()
for f in tests/ops/test_*.cpp; do op_bins+=("$(basename "$f" .cpp)"); done
bins=(test_mma_selftest "${op_bins[@]}" test_cuda_model test_nccl test_deterministic test_memory_plan test_bench)
if [[ "${ALL:-0}" == 1 ]]; then
  bins=()
  for f in "$PACK"/bin/test_*; do bins+=("$(basename "$f")"); done
fi

missing=$(for b in "${bins[@]}"; do ldd "$PACK/bin/$b" | grep "not found"; done | sort -u)
if [[ -n "$missing" ]]; then
  echo "[gpu_check] missing shared libraries:"
  echo "$missing"
fi

declare -A result
for b in "${bins[@]}"; do
  echo "=================== $b ==================="
  start=$(date +%s)
  "$PACK/bin/$b" --gtest_filter="$FILTER" --gtest_color=no 2>&1 | tee "$LOG_DIR/$b.log"
  rc=${PIPESTATUS[0]}
  secs=$(( $(date +%s) - start ))
  passed=$(grep -c '^\[       OK \]' "$LOG_DIR/$b.log")
  # Count the lines printed as each test ends ("... (N ms)"), not gtest's closing lists.
  failed=$(grep -cE '^\[  FAILED  \] [A-Za-z].*\([0-9]+ ms\)$' "$LOG_DIR/$b.log")
  skipped=$(grep -cE '^\[  SKIPPED \] [A-Za-z].*\([0-9]+ ms\)$' "$LOG_DIR/$b.log")
  result[$b]="rc=$rc passed=$passed failed=$failed skipped=$skipped ${secs}s"
done

LT="$PACK/bin/ltrain"
if [[ "$FILTER" == "*" ]]; then
  # deterministic: true end to end: the quickstart model with head dim 64 (what the CUDA attention
  # supports), 30 steps on device=cuda, twice.
  echo "=================== deterministic: two ltrain train runs ==================="
  W="$LOG_DIR/deterministic"
  rm -rf "$W" && mkdir -p "$W"
  start=$(date +%s)
  (
    set -e
    "$LT" tokenizer train --input tests/data/tinyshakespeare.txt --vocab-size 512 --out "$W/tok"
    "$LT" prepare --tokenizer "$W/tok.model" --input tests/data/tinyshakespeare.txt --out "$W/data" --val-fraction 0.1
    for run in a b; do
      "$LT" train --config configs/tiny-shakespeare.yaml device=cuda deterministic=true data.path="$W/data" \
        train.run_dir="$W/run_$run" model.hidden_size=256 model.num_attention_heads=4 model.num_key_value_heads=2 \
        model.vocab_size=512 train.steps=30 train.log_every=1 train.val_every=0 checkpoint.interval=0
    done
  ) > "$W/log.txt" 2>&1
  rc=$?
  verdict="rc=$rc"
  if [[ $rc == 0 ]]; then
    values() { grep -oE '"(loss|grad_norm|val_loss)":[^,}]*' "$1/metrics.jsonl"; }
    nvals=$(values "$W/run_a" | wc -l)
    diff <(values "$W/run_a") <(values "$W/run_b") > "$W/metrics.diff" && same_metrics=1 || same_metrics=0
    nfiles=0
    same_files=1
    while IFS= read -r f; do
      nfiles=$((nfiles + 1))
      cmp -s "$W/run_a/$f" "$W/run_b/$f" || { same_files=0; echo "differs: $f" >> "$W/metrics.diff"; }
    done < <(cd "$W/run_a" && find checkpoints -type f ! -name '*.json' | sort)
    diff <(grep -rhoE '"crc32": *[0-9]+' "$W/run_a/checkpoints") <(grep -rhoE '"crc32": *[0-9]+' "$W/run_b/checkpoints") \
      >> "$W/metrics.diff" || same_files=0
    if [[ $same_metrics == 1 && $same_files == 1 && $nvals -gt 30 && $nfiles -gt 0 ]]; then
      verdict="rc=0 identical: $nvals loss/grad_norm/val_loss values, $nfiles checkpoint files"
    else
      verdict="rc=1 DIFFERENT or missing ($nvals values, $nfiles files; see $W/metrics.diff)"
    fi
  fi
  tail -n 5 "$W/log.txt"
  cat "$W/metrics.diff" 2>/dev/null | head -20
  bins+=(determinism)
  result[determinism]="$verdict $(( $(date +%s) - start ))s"
  echo "determinism: $verdict"

  # Exact resume on the GPU (issue 5): run_a's 30 steps against 15 steps, a stop (as SIGTERM would),
  # and --resume auto for the other 15, both with deterministic: true.
  echo "=================== exact resume on the GPU ==================="
  start=$(date +%s)
  args=(--config configs/tiny-shakespeare.yaml device=cuda deterministic=true data.path="$W/data" train.run_dir="$W/run_c"
        model.hidden_size=256 model.num_attention_heads=4 model.num_key_value_heads=2 model.vocab_size=512
        train.steps=30 train.log_every=1 train.val_every=0 checkpoint.interval=0)
  ( LTRAIN_TEST_STOP_AT_STEP=15 "$LT" train "${args[@]}" && "$LT" train "${args[@]}" --resume auto ) > "$W/resume.txt" 2>&1
  rc=$?
  steps_of() {  # step, loss, grad_norm and lr of every step record, exactly as logged
    python3 -c 'import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if "loss" in r: print(r["step"], repr(r["loss"]), repr(r["grad_norm"]), repr(r["lr"]))' "$1/metrics.jsonl"
  }
  if [[ $rc != 0 ]]; then
    verdict="rc=$rc (see $W/resume.txt)"
  elif diff <(steps_of "$W/run_a") <(steps_of "$W/run_c") > "$W/resume.diff" &&
       diff <(cd "$W/run_a/checkpoints/step_00000030" && cksum model_* optim_*) \
            <(cd "$W/run_c/checkpoints/step_00000030" && cksum model_* optim_*) >> "$W/resume.diff"; then
    verdict="rc=0 bitwise: $(steps_of "$W/run_c" | wc -l) step records and the step-30 weights and moments"
  else
    verdict="rc=1 DIFFERENT (see $W/resume.diff)"
  fi
  tail -n 3 "$W/resume.txt"
  head -5 "$W/resume.diff" 2>/dev/null
  bins+=(exact_resume)
  result[exact_resume]="$verdict $(( $(date +%s) - start ))s"

  # The memory check refuses a run that cannot fit, before allocating, with the breakdown.
  echo "=================== memory refusal ==================="
  out=$("$LT" bench --config configs/bench/llama2-7b-4layers.yaml model.num_hidden_layers=200 --steps 1 --warmup 0 2>&1)
  rc=$?
  echo "$out" | tail -n 3
  bins+=(memory_refusal)
  if [[ $rc == 2 && "$out" == *"this run needs"* && "$out" == *"activations"* ]]; then
    result[memory_refusal]="rc=0 refused with exit code 2 and the breakdown"
  else
    result[memory_refusal]="rc=1 expected exit code 2 and 'this run needs ...', got rc=$rc"
  fi
fi

if [[ "${BENCH:-0}" == 1 ]]; then
  # Per-family time (CUDA events), bandwidth against the copy bandwidth, and the cost of determinism.
  for det in false true; do
    echo "=================== ltrain bench --profile (deterministic=$det) ==================="
    "$LT" bench --config configs/bench/tinyllama-1.1b.yaml deterministic=$det --warmup 3 --steps 10 --profile \
      --json "$LOG_DIR/bench_tinyllama_det_$det.json" 2>&1 | tee "$LOG_DIR/bench_tinyllama_det_$det.log"
    rc=${PIPESTATUS[0]}
    bins+=("bench_det_$det")
    result["bench_det_$det"]="rc=$rc $(grep -E 'step time|tokens/s' "$LOG_DIR/bench_tinyllama_det_$det.log" | tr -s ' ' | tr '\n' ' ')"
  done  # Attention alone in TFLOP/s (FlashAttention-2's convention): the TinyLlama shape (GQA 32/4,
  # HD 64, T 2048) and FA2's published H100 point (B 8, T 2048, 16 heads of 128, causal: ~265).
  for shape in "tinyllama|configs/bench/tinyllama-1.1b.yaml" \
               "fa2_hd128|configs/bench/llama2-7b-4layers.yaml train.micro_batch_size=8 train.seq_len=2048 model.num_attention_heads=16 model.num_key_value_heads=16 model.hidden_size=2048"; do
    name=${shape%%|*}; args=${shape#*|}
    echo "=================== ltrain bench --attention ($name) ==================="
    # shellcheck disable=SC2086
    "$LT" bench --attention --config $args --warmup 5 --steps 20 --json "$LOG_DIR/attention_$name.json" 2>&1 |
      tee "$LOG_DIR/attention_$name.log"
    rc=${PIPESTATUS[0]}
    bins+=("attention_$name")
    result["attention_$name"]="rc=$rc $(grep -E 'total' "$LOG_DIR/attention_$name.log" | tr -s ' ')"
  done
fi

echo
echo "=================== summary ==================="
printf '%-20s %s\n' binary result
status=0
for b in "${bins[@]}"; do
  printf '%-20s %s\n' "$b" "${result[$b]}"
  [[ "${result[$b]}" == rc=0* ]] || status=1
done
grep -h '^\[  FAILED  \] [A-Za-z]' "$LOG_DIR"/*.log 2>/dev/null | sort -u
exit $status
