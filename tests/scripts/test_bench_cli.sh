#!/usr/bin/env bash
# `ltrain bench` end to end on the CPU: the figures and JSON of configs/bench/cpu-small.yaml, MFU
# only with a peak, data parallelism under mpirun with the scaling efficiency against the one-rank
# JSON, and the bad-input cases.
# Usage: bash test_bench_cli.sh /path/to/ltrain WORKDIR
set -uo pipefail

export OMP_NUM_THREADS=1
source "$(dirname "$0")/cli_lib.sh" && cli_init "$@"
CFG="$ROOT/configs/bench/cpu-small.yaml"

run_ok "bench with profile" bench --config "$CFG" --warmup 1 --steps 3 --json one.json --profile
expect_file one.json
# The JSON's figures, and flops_per_token recomputed here from the config with the formula.
$PY - one.json "$CFG" <<'PYEOF' || fail "one-rank JSON checks"
import json, sys, re
r = json.load(open(sys.argv[1]))
cfg = {}
section = None
for line in open(sys.argv[2]):  # the flat two-level YAML of the bench configs
    line = line.split("#")[0].rstrip()
    if not line: continue
    if not line.startswith(" "): section = line.rstrip(":"); continue
    k, v = line.strip().split(":", 1)
    cfg[f"{section}.{k}"] = v.strip()
C = int(cfg["model.hidden_size"]); L = int(cfg["model.num_hidden_layers"])
H = int(cfg["model.num_attention_heads"]); KV = int(cfg["model.num_key_value_heads"])
FF = int(cfg["model.intermediate_size"]); V = int(cfg["model.vocab_size"]); T = int(cfg["train.seq_len"])
hd = C // H
bracket = L * (C * (H + 2 * KV) * hd + H * hd * C + 3 * C * FF) + C * V
assert r["flops_per_token"] == 6 * bracket + 6 * L * H * hd * T, (r["flops_per_token"], 6 * bracket + 6 * L * H * hd * T)
assert r["flops_per_token_palm"] == 6 * bracket + 12 * L * H * hd * T
assert r["tokens_per_sec"] > 0 and r["tokens_per_sec_per_rank"] == r["tokens_per_sec"]
assert r["step_ms"] > 0 and r["step_ms_min"] <= r["step_ms"] <= r["step_ms_max"]
assert len(r["step_ms_all"]) == 3 and r["steps"] == 3 and r["warmup_steps"] == 1
assert abs(r["tokens_per_sec"] - r["tokens_per_step"] / (r["step_ms"] / 1e3)) < 1e-6 * r["tokens_per_sec"]
assert abs(r["tflops_per_rank"] * 1e12 - r["flops_per_token"] * r["tokens_per_sec_per_rank"]) < 1e-6 * r["tflops_per_rank"] * 1e12
assert r["mfu"] is None and r["mfu_palm"] is None and r["peak_tflops_per_rank"] is None, "CPU without a peak: mfu must be null"
assert r["backend"] == "cpu" and r["world_size"] == 1 and r["memory_bytes"] > 0
assert r["scaling_efficiency"] is None
p = r["profile"]
fam = {f["name"]: f for f in p["families"]}
assert fam["matmul"]["ms_per_step"] > 0 and fam["attention"]["ms_per_step"] > 0, fam
print(f"    {r['tokens_per_sec']:.0f} tokens/s, {r['step_ms']:.1f} ms/step, {r['flops_per_token']:.4g} FLOPs/token; "
      f"profile: matmul {fam['matmul']['percent']:.0f}%, attention {fam['attention']['percent']:.0f}%")
PYEOF

run_ok "bench with --peak-tflops" bench --config "$CFG" --warmup 0 --steps 1 --json peak.json --peak-tflops 1
$PY - peak.json <<'PYEOF' || fail "--peak-tflops JSON checks"
import json, sys
r = json.load(open(sys.argv[1]))
assert isinstance(r["mfu"], float) and r["mfu"] > 0, r["mfu"]
assert abs(r["mfu"] - r["tflops_per_rank"] / 1.0) < 1e-12 and r["mfu_palm"] > r["mfu"]
assert r["peak_tflops_per_rank"] == 1.0 and r["peak_source"] == "--peak-tflops"
PYEOF

# Data parallelism: two ranks, each with half of the global batch, against the one-rank JSON.
out=$($MPIRUN -np 2 "$LTRAIN" bench --config "$CFG" parallel.data=2 --warmup 1 --steps 3 \
      --json two.json --baseline one.json 2>&1); rc=$?
if [ $rc -ne 0 ]; then
  fail "mpirun -np 2 bench: exit $rc"; echo "$out" | tail -20 | sed 's/^/    /'
else
  echo "ok: mpirun -np 2 bench"; echo "$out" | sed 's/^/    /'
  [ "$(echo "$out" | grep -c '^  tokens/s ')" -eq 1 ] || fail "the report must be printed once (rank 0)"
  $PY - two.json one.json <<'PYEOF' || fail "two-rank JSON checks"
import json, sys
r, one = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert r["world_size"] == 2 and r["data_parallel"] == 2 and r["grad_accum_steps"] == 1
assert len(r["per_rank_tokens_per_sec"]) == 2 and all(x > 0 for x in r["per_rank_tokens_per_sec"])
assert abs(r["tokens_per_sec_per_rank"] * 2 - r["tokens_per_sec"]) < 1e-6 * r["tokens_per_sec"]
# The aggregate is set by the slowest rank: no rank's own figure is below the per-rank share.
assert min(r["per_rank_tokens_per_sec"]) >= r["tokens_per_sec_per_rank"] * (1 - 1e-9)
assert r["baseline"]["tokens_per_sec_per_rank"] == one["tokens_per_sec_per_rank"]
eff = r["tokens_per_sec"] / (2 * one["tokens_per_sec_per_rank"])
assert abs(r["scaling_efficiency"] - eff) < 1e-9 and 0 < eff < 10, eff
assert r["comm_ms_per_step"] > 0 and r["compute_ms_per_step"] > 0
assert abs(r["comm_ms_per_step"] + r["compute_ms_per_step"] - r["step_ms_mean"]) < 1e-6 * r["step_ms_mean"]
assert 0 < r["comm_fraction"] < 1 and len(r["per_rank_comm_ms_per_step"]) == 2
assert r["flops_per_token"] == one["flops_per_token"]
PYEOF
fi

# ZeRO-1 runs through the same step (reduce-scatter and all-gather inside AdamW).
out=$($MPIRUN -np 2 "$LTRAIN" bench --config "$CFG" parallel.data=2 parallel.zero=1 --warmup 0 --steps 1 2>&1); rc=$?
[ $rc -eq 0 ] && [[ "$out" == *"ZeRO-1 on"* ]] && echo "ok: mpirun -np 2 bench with ZeRO-1" \
  || { fail "bench with ZeRO-1 (exit $rc)"; echo "$out" | tail -10 | sed 's/^/    /'; }

# Tensor parallelism (with sequence parallelism) runs through the same step.
out=$($MPIRUN -np 2 "$LTRAIN" bench --config "$CFG" parallel.tensor=2 --warmup 0 --steps 1 2>&1); rc=$?
[ $rc -eq 0 ] && [[ "$out" == *"data 1 x pipeline 1 x tensor 2"* ]] && [[ "$out" == *"step time"* ]] \
  && echo "ok: mpirun -np 2 bench with parallel.tensor=2" || { fail "bench with parallel.tensor=2 (exit $rc)"; echo "$out" | tail -10 | sed 's/^/    /'; }

# Bad input: one line, exit 2.
bad() {  # bad DESCRIPTION NEEDLE ARGS...
  local what=$1 needle=$2
  shift 2
  run_bad "$what" "$needle" "$@"
  "$LTRAIN" "$@" >/dev/null 2>&1
  local rc=$?
  [ $rc -eq 2 ] || fail "$what: exit $rc, expected 2"
}
bad "unknown flag" "unknown flag '--stepz'" bench --config "$CFG" --stepz 3
bad "--steps 0" "--steps must be >= 1" bench --config "$CFG" --steps 0
bad "--steps not a number" "takes an integer" bench --config "$CFG" --steps many
bad "--warmup negative" "--warmup must be >= 0" bench --config "$CFG" --warmup -1
bad "--peak-tflops 0" "--peak-tflops must be a positive" bench --config "$CFG" --peak-tflops 0
bad "missing config file" "nope.yaml" bench --config nope.yaml
bad "no --config" "--config" bench --steps 2
bad "unreadable --baseline" "missing.json" bench --config "$CFG" --baseline missing.json
echo '{"tokens_per_sec": 1}' > nofield.json
bad "--baseline without the field" "tokens_per_sec_per_rank" bench --config "$CFG" --baseline nofield.json
bad "--baseline of another shape" "another model shape" bench --config "$CFG" --baseline one.json train.seq_len=128
bad "--json into a missing directory" "does not exist" bench --config "$CFG" --json nodir/out.json
bad "bad override" "model.hidden_sise" bench --config "$CFG" model.hidden_sise=64
bad "tensor parallelism without the ranks" "parallel.tensor (2)" bench --config "$CFG" parallel.tensor=2

finish
