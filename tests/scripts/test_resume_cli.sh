#!/usr/bin/env bash
# Checkpoints and resume on the CPU: exact (bitwise) resume after a stop, after SIGTERM and after
# a kill -9 during a save, on one process and on 2 x 2 ranks with ZeRO-1 (per-rank shard files);
# resuming under another data x tensor layout, with and without ZeRO-1; falling back from a
# corrupt checkpoint; a missing shard file; retention; ckpt info/verify.
# Usage: bash test_resume_cli.sh /path/to/ltrain WORKDIR
set -uo pipefail

source "$(dirname "$0")/cli_lib.sh" && cli_init "$@"
cat > tiny.yaml <<'YAML'
model: {hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 32}
optim: {lr: 3.0e-3, warmup_steps: 3}
train: {steps: 12, seq_len: 32, micro_batch_size: 2, global_batch_tokens: 256, val_every: 0,
        val_batches: 4, log_every: 1}
data: {path: data}
checkpoint: {interval: 4}
YAML
export PYTHONPATH="$ROOT/tests/scripts"  # ckpt_tensors.py: whole tensors from shard files

run_ok "tokenizer train" tokenizer train --input "$CORPUS" --vocab-size 512 --out tok
run_ok "prepare" prepare --tokenizer tok.model --input "$CORPUS" --out data --val-fraction 0.05
run_ok "uninterrupted run" train --config tiny.yaml train.run_dir=full

# same_run A B: bitwise equal step losses and final weights and moments (every shard file).
same_run() {
  $PY - "$1" "$2" <<'PYEOF'
import json, os, sys
a, b = sys.argv[1], sys.argv[2]
def steps(run):
    out = {}
    for l in open(f"{run}/metrics.jsonl"):
        r = json.loads(l)
        if "loss" in r: out[r["step"]] = (r["loss"], r["grad_norm"], r["lr"])
    return out
sa, sb = steps(a), steps(b)
assert sorted(sa) == sorted(sb) == list(range(1, 13)), (sorted(sa), sorted(sb))
bad = [s for s in sa if sa[s] != sb[s]]
assert not bad, f"steps {bad} differ: {[(sa[s], sb[s]) for s in bad]}"
ca, cb = f"{a}/checkpoints/step_00000012", f"{b}/checkpoints/step_00000012"
files = sorted(f for f in os.listdir(ca) if f.startswith(("model_", "optim_")))
assert files and files == sorted(f for f in os.listdir(cb) if f.startswith(("model_", "optim_"))), (files, os.listdir(cb))
for f in files:
    assert open(f"{ca}/{f}", "rb").read() == open(f"{cb}/{f}", "rb").read(), f"{f} differs"
print(f"    {b}: 12 step losses, grad norms, lrs and the final weights and moments ({len(files)} files) are bitwise equal to {a}")
PYEOF
}

# 1. Stop after step 6 (as SIGTERM would), resume from the run directory.
out=$(LTRAIN_TEST_STOP_AT_STEP=6 "$LTRAIN" train --config tiny.yaml train.run_dir=stopped 2>&1); rc=$?
[ $rc -eq 0 ] || fail "a stopped run must exit 0, got $rc"
[ -d stopped/checkpoints/step_00000006 ] || fail "the stop did not save step 6"
run_ok "resume auto" train --config tiny.yaml train.run_dir=stopped --resume auto
same_run full stopped || fail "resume after a stop is not exact"

# 2. A real SIGTERM while training: finishes the step, saves, exits 0; resume gives the same run.
"$LTRAIN" train --config tiny.yaml train.run_dir=sig train.steps=400 checkpoint.interval=0 > sig.log 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q '"step":3,' sig/metrics.jsonl 2>/dev/null && break; sleep 0.1; done
kill -TERM $pid
wait $pid; rc=$?
[ $rc -eq 0 ] || fail "SIGTERM: exit $rc, expected 0"
grep -q "signal 15: saving and stopping" sig.log && echo "ok: SIGTERM saved and stopped" || fail "SIGTERM was not reported"
ls sig/checkpoints | grep -q step_ || fail "SIGTERM left no checkpoint"
"$LTRAIN" ckpt verify sig > /dev/null 2>&1 || fail "the checkpoint written on SIGTERM does not verify"

# 3. kill -9 in the middle of saving step 8: step 4 stays the latest and resume continues from it.
LTRAIN_TEST_KILL_DURING_SAVE=8 "$LTRAIN" train --config tiny.yaml train.run_dir=killed > killed.log 2>&1
rc=$?
[ $rc -ge 128 ] || fail "the kill hook did not kill (exit $rc)"
[ -d killed/checkpoints/step_00000008.tmp ] && echo "ok: a partial step_00000008.tmp was left behind" || fail "expected a partial save"
[ "$(cat killed/checkpoints/latest)" == "step_00000004" ] || fail "latest moved to an incomplete checkpoint"
run_ok "verify the survivor" ckpt verify killed
run_ok "resume after kill -9" train --config tiny.yaml train.run_dir=killed --resume auto
grep -q "resumed from killed/checkpoints/step_00000004" killed/train.log || fail "did not resume from step 4"
same_run full killed || fail "resume after a kill during a save is not exact"

# 4. A corrupt newest checkpoint: loud warning, the older one is used.
cp -r full corrupt
$PY - corrupt/checkpoints/step_00000012/model_00000.bin <<'PYEOF'
import sys
f = open(sys.argv[1], "r+b"); f.seek(64); b = f.read(1); f.seek(64); f.write(bytes([b[0] ^ 1])); f.close()
PYEOF
cp -r corrupt corrupt_copy
run_bad "verify finds the corrupt file" "model_00000.bin: corrupt: checksum mismatch" ckpt verify corrupt
out=$("$LTRAIN" train --config tiny.yaml train.run_dir=corrupt train.steps=14 --resume auto 2>&1); rc=$?
[ $rc -eq 0 ] || fail "resume past a corrupt checkpoint failed ($rc)"
echo "$out" | grep -q "WARNING: corrupt or incomplete checkpoint:.*step_00000012.*model_00000.bin" \
  && echo "ok: warned about the corrupt checkpoint" || fail "no warning for the corrupt checkpoint"
echo "$out" | grep -q "resumed from corrupt/checkpoints/step_00000008" || fail "did not fall back to step 8"
run_bad "resume from a corrupt checkpoint named explicitly" "checksum mismatch" \
  train --config tiny.yaml train.run_dir=corrupt2 train.steps=14 --resume corrupt_copy/checkpoints/step_00000012
run_bad "resume a finished run" "raise train.steps" train --config tiny.yaml train.run_dir=full --resume auto

# 5. Another layout: data 2 <-> 1, tensor 2 <-> 1, with and without ZeRO-1 (fp32 sums in another
#    order: close, not bitwise). The weights are assembled from the shard files of each run.
close_run() {
  $PY - "$1" "$2" <<'PYEOF'
import json, sys
import numpy as np
from ckpt_tensors import flat
a, b = sys.argv[1], sys.argv[2]
la = {json.loads(l)["step"]: json.loads(l)["loss"] for l in open(f"{a}/metrics.jsonl") if '"loss"' in l}
lb = {json.loads(l)["step"]: json.loads(l)["loss"] for l in open(f"{b}/metrics.jsonl") if '"loss"' in l}
assert sorted(la) == sorted(lb), (sorted(la), sorted(lb))
dl = max(abs(la[s] - lb[s]) / la[s] for s in la)
wa, wb = flat(f"{a}/checkpoints/step_00000012"), flat(f"{b}/checkpoints/step_00000012")
ma, mb = flat(f"{a}/checkpoints/step_00000012", "optimizer"), flat(f"{b}/checkpoints/step_00000012", "optimizer")
dw = np.abs(wa - wb).max() / np.abs(wa).max()
dm = np.abs(ma - mb).max() / np.abs(ma).max()
print(f"    {b}: max rel loss diff {dl:.1e}, weights {dw:.1e}, moments {dm:.1e}")
assert dl < 1e-5 and dw < 1e-5 and dm < 1e-4
PYEOF
}
# has_shards CKPT FILE...: exactly these shard files (model_*, optim_*).
has_shards() {
  local ck=$1; shift
  local got want
  got=$(cd "$ck" && ls model_*.bin optim_*.bin 2>/dev/null | sort | tr '\n' ' ')
  want=$(printf '%s\n' "$@" | sort | tr '\n' ' ')
  [ "$got" == "$want" ] && echo "ok: $ck holds $got" || fail "$ck holds '$got', expected '$want'"
}
LTRAIN_TEST_STOP_AT_STEP=6 OMP_NUM_THREADS=1 $MPIRUN -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=dp2to1 parallel.zero=1 > dp2to1.log 2>&1 \
  || fail "dp2 first half"
has_shards dp2to1/checkpoints/step_00000006 model_00000.bin model_00001.bin optim_00000.bin optim_00001.bin
run_ok "resume a 2-rank ZeRO checkpoint on 1 rank" train --config tiny.yaml train.run_dir=dp2to1 --resume auto
close_run full dp2to1 || fail "data 2 -> 1 resume differs"
LTRAIN_TEST_STOP_AT_STEP=6 "$LTRAIN" train --config tiny.yaml train.run_dir=dp1to2 > dp1to2.log 2>&1 || fail "dp1 first half"
cp -r dp1to2 zero1to2 && cp -r dp1to2 zero1to2x2
OMP_NUM_THREADS=1 $MPIRUN -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=dp1to2 --resume auto > dp1to2b.log 2>&1 \
  || { fail "resume on 2 ranks"; tail -5 dp1to2b.log; }
# Data-parallel replicas without ZeRO are identical: only data rank 0 writes.
has_shards dp1to2/checkpoints/step_00000012 model_00000.bin optim_00000.bin
close_run full dp1to2 || fail "data 1 -> 2 resume differs"
for layout in "zero1to2:2:parallel.zero=1" "zero1to2x2:4:parallel.tensor=2 parallel.zero=1"; do
  name=${layout%%:*}; rest=${layout#*:}; np=${rest%%:*}
  OMP_NUM_THREADS=1 $MPIRUN -np $np "$LTRAIN" train --config tiny.yaml train.run_dir=$name ${rest#*:} --resume auto > $name.log 2>&1 \
    || { fail "$name: resume on $np ranks"; tail -5 $name.log; }
  close_run full $name || fail "$name: resume of a 1-rank checkpoint under ZeRO-1 differs"
done
has_shards zero1to2x2/checkpoints/step_00000012 model_00000.bin model_00001.bin model_00002.bin model_00003.bin \
  optim_00000.bin optim_00001.bin optim_00002.bin optim_00003.bin

# Tensor parallelism: 2 ranks to 1, and 1 to 2 (checkpoints hold whole tensors).
LTRAIN_TEST_STOP_AT_STEP=6 OMP_NUM_THREADS=1 $MPIRUN -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=tp2to1 parallel.tensor=2 > tp2to1.log 2>&1 \
  || { fail "tensor 2 first half"; tail -5 tp2to1.log; }
run_ok "resume a tensor-parallel checkpoint on 1 rank" train --config tiny.yaml train.run_dir=tp2to1 --resume auto
close_run full tp2to1 || fail "tensor 2 -> 1 resume differs"
LTRAIN_TEST_STOP_AT_STEP=6 "$LTRAIN" train --config tiny.yaml train.run_dir=tp1to2 > tp1to2.log 2>&1 || fail "tensor 1 first half"
OMP_NUM_THREADS=1 $MPIRUN -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=tp1to2 parallel.tensor=2 --resume auto > tp1to2b.log 2>&1 \
  || { fail "resume on 2 tensor ranks"; tail -5 tp1to2b.log; }
close_run full tp1to2 || fail "tensor 1 -> 2 resume differs"
has_shards tp1to2/checkpoints/step_00000012 model_00000.bin model_00001.bin optim_00000.bin optim_00001.bin

# 2 x 2 ranks with ZeRO-1: every rank writes its own files; ckpt verify and info read them; the
# same layout resumes bit for bit; another layout (tensor 2, no ZeRO; one process) resumes close.
OMP_NUM_THREADS=1 $MPIRUN -np 4 "$LTRAIN" train --config tiny.yaml train.run_dir=z22full parallel.tensor=2 parallel.zero=1 > z22full.log 2>&1 \
  || { fail "2x2 ZeRO run"; tail -5 z22full.log; }
LTRAIN_TEST_STOP_AT_STEP=6 OMP_NUM_THREADS=1 $MPIRUN -np 4 "$LTRAIN" train --config tiny.yaml train.run_dir=z22 parallel.tensor=2 parallel.zero=1 > z22a.log 2>&1 \
  || { fail "2x2 ZeRO first half"; tail -5 z22a.log; }
has_shards z22/checkpoints/step_00000006 model_00000.bin model_00001.bin model_00002.bin model_00003.bin \
  optim_00000.bin optim_00001.bin optim_00002.bin optim_00003.bin
run_ok "verify a 2x2 ZeRO checkpoint" ckpt verify z22/checkpoints/step_00000006
out=$("$LTRAIN" ckpt info z22/checkpoints/step_00000006 2>&1)
echo "$out" | grep -q "shards       8 files from 4 writing rank(s)" && echo "$out" | grep -q "model_00003.bin .*rank 3 (data 1, stage 0, tensor 1)" \
  && echo "ok: ckpt info lists the shard files and their ranks" || { fail "ckpt info of a sharded checkpoint"; echo "$out"; }
cp -r z22 z22_to_tp2
cp -r z22 z22_to_1
OMP_NUM_THREADS=1 $MPIRUN -np 4 "$LTRAIN" train --config tiny.yaml train.run_dir=z22 parallel.tensor=2 parallel.zero=1 --resume auto > z22b.log 2>&1 \
  || { fail "2x2 ZeRO resume"; tail -5 z22b.log; }
same_run z22full z22 || fail "2x2 ZeRO resume under the same layout is not exact"
OMP_NUM_THREADS=1 $MPIRUN -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=z22_to_tp2 parallel.tensor=2 --resume auto > z22c.log 2>&1 \
  || { fail "2x2 ZeRO -> tensor 2 resume"; tail -5 z22c.log; }
close_run full z22_to_tp2 || fail "2x2 ZeRO -> tensor 2 resume differs"
run_ok "resume a 2x2 ZeRO checkpoint on 1 rank" train --config tiny.yaml train.run_dir=z22_to_1 --resume auto
close_run full z22_to_1 || fail "2x2 ZeRO -> 1 resume differs"

# kill -9 of every rank in the middle of a 2x2 save (after each rank's weights file): step 4 stays
# the latest, nothing names the partial step 8, and the run resumes from step 4 bit for bit.
LTRAIN_TEST_KILL_DURING_SAVE=8 OMP_NUM_THREADS=1 $MPIRUN -np 4 "$LTRAIN" train --config tiny.yaml train.run_dir=z22killed \
  parallel.tensor=2 parallel.zero=1 > z22killed.log 2>&1 && fail "the kill hook did not kill the 2x2 run"
[ -d z22killed/checkpoints/step_00000008.tmp ] && [ ! -e z22killed/checkpoints/step_00000008.tmp/meta.json ] \
  && echo "ok: a partial step_00000008.tmp without meta.json was left behind" || fail "expected a partial 2x2 save"
[ "$(cat z22killed/checkpoints/latest)" == "step_00000004" ] || fail "2x2: latest moved to an incomplete checkpoint"
run_ok "verify the 2x2 survivor" ckpt verify z22killed
OMP_NUM_THREADS=1 $MPIRUN -np 4 "$LTRAIN" train --config tiny.yaml train.run_dir=z22killed parallel.tensor=2 parallel.zero=1 --resume auto > z22killed2.log 2>&1 \
  || { fail "2x2 resume after kill -9"; tail -5 z22killed2.log; }
grep -q "resumed from z22killed/checkpoints/step_00000004" z22killed/train.log || fail "2x2: did not resume from step 4"
same_run z22full z22killed || fail "2x2 resume after a kill during a save is not exact"

# A missing or damaged shard file is named, in ckpt verify and in an explicit --resume.
cp -r z22/checkpoints/step_00000006 z22_missing && rm z22_missing/model_00002.bin
run_bad "verify: a missing shard file" "checkpoint file missing: 'z22_missing/model_00002.bin'" ckpt verify z22_missing
run_bad "resume from a checkpoint missing a shard" "model_00002.bin" \
  train --config tiny.yaml train.run_dir=missing_res --resume z22_missing
cp -r z22/checkpoints/step_00000006 z22_trunc && truncate -s -8 z22_trunc/optim_00001.bin
run_bad "verify: a truncated shard file" "z22_trunc/optim_00001.bin: truncated or damaged" ckpt verify z22_trunc
cp -r z22/checkpoints/step_00000006 z22_flip
$PY - z22_flip/model_00003.bin <<'PYEOF'
import sys
f = open(sys.argv[1], "r+b"); f.seek(100); b = f.read(1); f.seek(100); f.write(bytes([b[0] ^ 4])); f.close()
PYEOF
run_bad "verify: a flipped byte in a shard file" "z22_flip/model_00003.bin: corrupt: checksum mismatch" ckpt verify z22_flip
run_bad "eval: a flipped byte in a shard file" "model_00003.bin: corrupt: checksum mismatch in tensor" \
  eval --checkpoint z22_flip --data data --batches 1
# The ranks share the checksum reading when resuming (rank 3 of 4 reads model_00003.bin): a flip
# there is still found, every rank agrees to fall back, and rank 0 names the file.
cp -r z22full z22corrupt
$PY - z22corrupt/checkpoints/step_00000012/model_00003.bin <<'PYEOF'
import sys
f = open(sys.argv[1], "r+b"); f.seek(40); b = f.read(1); f.seek(40); f.write(bytes([b[0] ^ 2])); f.close()
PYEOF
OMP_NUM_THREADS=1 $MPIRUN -np 4 "$LTRAIN" train --config tiny.yaml train.run_dir=z22corrupt parallel.tensor=2 parallel.zero=1 \
  train.steps=14 --resume auto > z22corrupt.log 2>&1 || { fail "2x2 resume past a corrupt shard"; tail -5 z22corrupt.log; }
grep -q "WARNING: corrupt or incomplete checkpoint:.*model_00003.bin: corrupt: checksum mismatch" z22corrupt/train.log &&
  grep -q "resumed from z22corrupt/checkpoints/step_00000008" z22corrupt/train.log &&
  echo "ok: 4 ranks sharing the verification fell back past a corrupt shard" ||
  { fail "4 ranks did not fall back past a corrupt shard"; grep -E "WARN|resumed" z22corrupt/train.log; }

# A manifest of another model: resuming with a wider model names meta.json and the tensor.
out=$("$LTRAIN" train --config tiny.yaml train.run_dir=other_model model.hidden_size=128 --resume z22/checkpoints/step_00000006 2>&1); rc=$?
[ $rc -eq 2 ] && echo "$out" | tail -1 | grep -q "ltrain: error: z22/checkpoints/step_00000006/meta.json: tensor 'model.embed_tokens.weight' has shape (512, 64) but the model needs (512, 128)" \
  && echo "ok: resuming with another model names meta.json and the tensor (exit $rc)" \
  || { fail "resume with another model (exit $rc)"; echo "$out" | tail -2; }

# Continued pretraining from another run's weights: fresh optimizer and schedule, trained weights.
run_ok "init_from" train --config tiny.yaml train.run_dir=cont train.init_from=full train.steps=2
grep -q "initialized the weights from full/checkpoints/step_00000012" cont/train.log || fail "init_from not reported"
$PY - full cont <<'PYEOF' || fail "init_from did not start from the trained weights"
import json, sys
first = lambda run: [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"loss"' in l][0]
a, b = first(sys.argv[1]), first(sys.argv[2])
print(f"    first-step loss: fresh {a['loss']:.3f}, from trained weights {b['loss']:.3f}")
assert b["step"] == 1 and b["loss"] < a["loss"] - 0.1
PYEOF

# 6. Retention: keep the newest 2 and every multiple of 8.
run_ok "retention" train --config tiny.yaml train.run_dir=keep checkpoint.interval=2 checkpoint.keep_last=2 checkpoint.keep_every=8
kept=$(ls keep/checkpoints | grep -v latest | tr '\n' ' ')
[ "$kept" == "step_00000008 step_00000010 step_00000012 " ] && echo "ok: kept $kept" || fail "retention kept: $kept"

out=$("$LTRAIN" ckpt info full 2>&1)
echo "$out" | grep -q "step         12 (3072 tokens)" && echo "ok: ckpt info" || { fail "ckpt info"; echo "$out"; }
run_bad "ckpt without a directory" "usage: ltrain ckpt" ckpt info

finish
