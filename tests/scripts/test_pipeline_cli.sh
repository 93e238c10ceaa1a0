#!/usr/bin/env bash
# Pipeline parallelism on the CPU under mpirun: 10 optimizer steps of a tiny 4-layer model give
# the same losses and final weights as one process with the same global batch, for pipeline=2, 3
# and 4, pipeline=2 x tensor=2, pipeline=2 x data=2 (with and without ZeRO-1), the interleaved
# schedule (pipeline=2, virtual_stages=2; alone and with data=2) and tied embeddings; checkpoints
# resume across layouts; bench reports the bubble; bad layouts are refused before anything is
# written; a stalled stage ends the job.
# Usage: bash test_pipeline_cli.sh /path/to/ltrain WORKDIR
set -uo pipefail

export OMP_NUM_THREADS=1
source "$(dirname "$0")/cli_lib.sh" && cli_init "$@"
cat > tiny.yaml <<'YAML'
model: {hidden_size: 64, intermediate_size: 160, num_hidden_layers: 4, num_attention_heads: 4,
        num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 32}
optim: {lr: 3.0e-3, warmup_steps: 3}
train: {steps: 10, seq_len: 32, micro_batch_size: 2, global_batch_tokens: 512, val_every: 5,
        val_batches: 4, log_every: 1}
checkpoint: {interval: 5}
data: {path: data}
parallel: {bucket_mb: 0.01}
YAML
export PYTHONPATH="$ROOT/tests/scripts"  # ckpt_tensors.py: whole tensors from shard files
# Compares run $2 with run $1: losses, gradient norms and validation losses of every step, and the
# final weights and moments.
compare() {
  $PY - "$1" "$2" <<'PYEOF' || fail "$2 differs from $1 (above)"
import json, sys
import numpy as np
from ckpt_tensors import flat
a, b = sys.argv[1], sys.argv[2]
def losses(run):
    rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
    return ({r["step"]: r["loss"] for r in rows if "loss" in r}, {r["step"]: r["grad_norm"] for r in rows if "loss" in r},
            {r["step"]: r["val_loss"] for r in rows if "val_loss" in r})
(la, ga, va), (lb, gb, vb) = losses(a), losses(b)
steps = sorted(lb)
assert len(la) == 10 and steps and steps[-1] == 10, (len(la), steps)
dl = max(abs(la[s] - lb[s]) / abs(la[s]) for s in steps)
dg = max(abs(ga[s] - gb[s]) / abs(ga[s]) for s in steps)
dv = max(abs(va[s] - vb[s]) / abs(va[s]) for s in vb)
ca, cb = f"{a}/checkpoints/step_00000010", f"{b}/checkpoints/step_00000010"
# The same data windows consumed: the loader's position at the end is the same.
pa, pb = (json.load(open(f"{c}/meta.json"))["data"] for c in (ca, cb))
assert pa == pb, (pa, pb)
wa, wb, ma, mb = flat(ca), flat(cb), flat(ca, "optimizer"), flat(cb, "optimizer")
dw = np.abs(wa - wb).max() / np.abs(wa).max()
dm = np.abs(ma - mb).max() / np.abs(ma).max()
print(f"    {b}: max rel diff loss {dl:.2e}, grad_norm {dg:.2e}, val_loss {dv:.2e}; "
      f"weights {dw:.2e}, moments {dm:.2e} (of the largest element)")
# fp32, not bitwise: the gradient norm adds the stages' partial sums, and a tied embedding's
# gradient adds two stages' parts, in another order than one process does; Adam turns those last
# bits into small weight differences. A wrong stage cut, a lost message or a double count is O(1).
assert dl < 1e-5 and dg < 1e-4 and dv < 1e-5, "loss curves differ"
assert dw < 1e-5 and dm < 1e-4, "final weights or moments differ"
PYEOF
}
# run NAME NP ARGS...: trains under mpirun; prints the parallel and pipeline lines.
run() {
  local name=$1 np=$2
  shift 2
  local out rc
  out=$($MPIRUN -np $np "$LTRAIN" train --config tiny.yaml train.run_dir=$name "$@" 2>&1)
  rc=$?
  if [ $rc -ne 0 ]; then fail "$name: mpirun exited $rc"; echo "$out" | grep -v '^  ' | tail -20 | sed 's/^/    /'; return 1; fi
  echo "ok: $name ran ($(echo "$out" | grep -E '^pipeline:' | head -1))"
}

run_ok "tokenizer train" tokenizer train --input "$CORPUS" --vocab-size 512 --out tok
run_ok "prepare" prepare --tokenizer tok.model --input "$CORPUS" --out data --val-fraction 0.05

run_ok "one process" train --config tiny.yaml train.run_dir=single
run_ok "one process, tied embeddings" train --config tiny.yaml train.run_dir=single_tied model.tie_word_embeddings=true
run pp2 2 parallel.pipeline=2 && compare single pp2
run pp4 4 parallel.pipeline=4 && compare single pp4
run pp2tp2 4 parallel.pipeline=2 parallel.tensor=2 train.recompute=selective && compare single pp2tp2
run pp2dp2z 4 parallel.pipeline=2 parallel.data=2 parallel.zero=1 && compare single pp2dp2z
run pp2dp2 4 parallel.pipeline=2 parallel.data=2 && compare single pp2dp2  # buckets armed on the last backward
run pp2v2dp2 4 parallel.pipeline=2 parallel.data=2 parallel.schedule=interleaved parallel.virtual_stages=2 \
  && compare single pp2v2dp2
run pp2v2 2 parallel.pipeline=2 parallel.schedule=interleaved parallel.virtual_stages=2 && compare single pp2v2
run pp2tied 2 parallel.pipeline=2 model.tie_word_embeddings=true && compare single_tied pp2tied
run pp3cut 3 parallel.pipeline=3 "parallel.pipeline_layers=[2,1,1]" train.recompute=full && compare single pp3cut
grep -q "layers per chunk \[1,1,1,1\]" pp2v2/train.log && echo "ok: interleaved cut into 4 chunks" || fail "interleaved chunks"
grep -q "layers per chunk \[2,1,1\]" pp3cut/train.log && echo "ok: parallel.pipeline_layers is followed" || fail "pipeline_layers"
# The checkpoint lists every tensor once; only the first stage writes a tied embedding.
$PY - <<'PYEOF' && echo "ok: pipeline checkpoints list every tensor once, in the model's order" || fail "pipeline manifest"
import json
a = json.load(open("single/checkpoints/step_00000010/meta.json"))
for run in ["pp2", "pp4", "pp2v2", "pp2tp2"]:
    b = json.load(open(f"{run}/checkpoints/step_00000010/meta.json"))
    assert [t["name"] for t in a["tensors"]] == [t["name"] for t in b["tensors"]], run
    assert b["layout"]["pipeline"] > 1, run
t = json.load(open("pp2tied/checkpoints/step_00000010/meta.json"))
names = [p["name"] for s in t["shards"] for p in s["pieces"]]
assert names.count("model.embed_tokens.weight") == 1 and "lm_head.weight" not in names, names
PYEOF
out=$("$LTRAIN" ckpt verify pp2v2/checkpoints/step_00000010 2>&1) && echo "ok: ckpt verify pp2v2" || { fail "ckpt verify pp2v2"; echo "    $out"; }
out=$("$LTRAIN" ckpt info pp2tp2/checkpoints/step_00000010 2>&1)
[[ "$out" == *"layout       data 1 x pipeline 2 x tensor 2"* && "$out" == *"(data 0, stage 1, tensor 1)"* ]] \
  && echo "ok: ckpt info shows the pipeline layout and each file's stage" || { fail "ckpt info layout"; echo "$out" | head -8; }

# Resume across layouts from step 5: the same data windows, and the uninterrupted curve.
resume() {  # NAME FROM_RUN NP ARGS...
  local name=$1 from=$2 np=$3
  shift 3
  rm -rf $name && mkdir -p $name/checkpoints && cp -r $from/checkpoints/step_00000005 $name/checkpoints/ \
    && echo step_00000005 > $name/checkpoints/latest && cp $from/config.json $name/ 2>/dev/null
  local out rc
  out=$($MPIRUN -np $np "$LTRAIN" train --config tiny.yaml train.run_dir=$name --resume auto "$@" 2>&1)
  rc=$?
  if [ $rc -ne 0 ]; then fail "$name: resume exited $rc"; echo "$out" | grep -v '^  ' | tail -10 | sed 's/^/    /'; return 1; fi
  echo "ok: $name resumed ($(echo "$out" | grep -E '^resumed' | head -1))"
}
resume r_pp2_to_1 pp2 1 && compare single r_pp2_to_1
resume r_1_to_pp2 single 2 parallel.pipeline=2 && compare single r_1_to_pp2
resume r_pp2tp2_to_tp2 pp2tp2 2 parallel.tensor=2 && compare single r_pp2tp2_to_tp2
resume r_1_to_pp2tp2 single 4 parallel.pipeline=2 parallel.tensor=2 && compare single r_1_to_pp2tp2
resume r_pp4_to_pp2dp2z pp4 4 parallel.pipeline=2 parallel.data=2 parallel.zero=1 && compare single r_pp4_to_pp2dp2z
resume r_pp2_to_pp2 pp2 2 parallel.pipeline=2
cmp -s pp2/checkpoints/step_00000010/model_00000.bin r_pp2_to_pp2/checkpoints/step_00000010/model_00000.bin \
  && cmp -s pp2/checkpoints/step_00000010/optim_00001.bin r_pp2_to_pp2/checkpoints/step_00000010/optim_00001.bin \
  && echo "ok: resuming under the same pipeline layout is bitwise" || fail "same-layout resume is not bitwise"

# bench: the same step, with the measured bubble beside the ideal one.
out=$($MPIRUN -np 2 "$LTRAIN" bench --config tiny.yaml --steps 2 --warmup 1 --json bench_pp2.json parallel.pipeline=2 2>&1); rc=$?
if [ $rc -eq 0 ] && [[ "$out" == *"bubble"*"measured"*"ideal 11.1%"* ]] && $PY - <<'PYEOF'
import json
r = json.load(open("bench_pp2.json"))
p = r["pipeline"]
assert r["pipeline_parallel"] == 2 and p["stages"] == 2 and p["micro_batches"] == 8, p
assert abs(p["ideal_bubble"] - 1 / 9) < 1e-12, p  # (P - 1) / (m + P - 1)
assert 0 < p["bubble"] < 1 and len(p["per_rank_bubble"]) == 2, p
assert p["wait_ms_per_step"] > 0, p
# 1F1B over 2 stages: stage 0's one warm-up forward overlaps its exchange; 9 exchanges a stage
assert p["overlapped_exchanges"] == 1 and p["exchanges"] == 18, p
assert r["tokens_per_sec_per_rank"] > 0
PYEOF
then echo "ok: bench reports the pipeline's bubble"; else fail "bench under pipeline (exit $rc)"; echo "$out" | tail -5; fi

# Bad layouts: one line each, non-zero, nothing written.
expect_refused() {  # NAME NP MESSAGE ARGS...
  local name=$1 np=$2 msg=$3
  shift 3
  local out rc
  out=$($MPIRUN -np $np "$LTRAIN" train --config tiny.yaml train.run_dir=$name "$@" 2>&1); rc=$?
  if [ $rc -ne 0 ] && [[ "$out" == *"$msg"* ]] && [ ! -e $name ]; then echo "ok: refused: $msg (exit $rc)"
  else fail "$name: expected a refusal naming '$msg' (exit $rc)"; echo "$out" | grep -v '^  ' | tail -5 | sed 's/^/    /'; fi
}
expect_refused bad_stages 5 "more than the 4 layers" parallel.pipeline=5
expect_refused bad_virtual 2 "do not divide the 6 layers" parallel.pipeline=2 parallel.schedule=interleaved parallel.virtual_stages=2 \
  model.num_hidden_layers=6
expect_refused bad_micro 2 "needs the micro-batches per step (1) to be a multiple of parallel.pipeline (2)" \
  parallel.pipeline=2 parallel.schedule=interleaved parallel.virtual_stages=2 train.global_batch_tokens=64
expect_refused bad_world 3 "is not divisible by parallel.pipeline (2) x parallel.tensor (1)" parallel.pipeline=2
expect_refused bad_factor 4 "does not factor as parallel.data (3) x parallel.pipeline (2) x parallel.tensor (1)" \
  parallel.pipeline=2 parallel.data=3
expect_refused bad_cut 2 "parallel.pipeline_layers must give 2 counts" parallel.pipeline=2 "parallel.pipeline_layers=[3,2]"

# A stage that stops answering: the other's watchdog ends the job naming the rank and the stage.
start=$(date +%s)
out=$(LTRAIN_TEST_HANG_RANK=1@3 $MPIRUN -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=hang parallel.pipeline=2 \
      parallel.timeout_s=2 2>&1); rc=$?
took=$(( $(date +%s) - start ))
[ $rc -eq 4 ] && [ $took -lt 30 ] && [[ "$out" == *"[rank 0 on host "*"pipeline (stage 0 of 2)"*"did not finish within parallel.timeout_s = 2 s"* ]] \
  && echo "ok: a stalled stage ends the job with exit 4 after ${took} s" || { fail "stalled stage (exit $rc, ${took} s)"; echo "$out" | grep error | head -3; }

finish
