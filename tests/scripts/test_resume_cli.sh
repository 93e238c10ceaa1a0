#!/usr/bin/env bash
# Checkpoints and resume on the CPU: exact (bitwise) resume after a stop, after SIGTERM and after
# a kill -9 during a save; resuming under another data-parallel layout; falling back from a
# corrupt checkpoint; retention; ckpt info/verify.
# Usage: bash test_resume_cli.sh /path/to/ltrain WORKDIR
set -uo pipefail

LTRAIN=${1:?usage: test_resume_cli.sh /path/to/ltrain WORKDIR}
WORK=${2:?usage: test_resume_cli.sh /path/to/ltrain WORKDIR}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CORPUS="$ROOT/tests/data/tinyshakespeare.txt"
PY=/usr/bin/python3
source "$(dirname "$0")/cli_lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN="mpirun --oversubscribe"

rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK" || exit 1
cat > tiny.yaml <<'YAML'
model: {hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 32}
optim: {lr: 3.0e-3, warmup_steps: 3}
train: {steps: 12, seq_len: 32, micro_batch_size: 2, global_batch_tokens: 256, val_every: 0,
        val_batches: 4, log_every: 1}
data: {path: data}
checkpoint: {interval: 4}
YAML
run_ok "tokenizer train" tokenizer train --input "$CORPUS" --vocab-size 512 --out tok
run_ok "prepare" prepare --tokenizer tok.model --input "$CORPUS" --out data --val-fraction 0.05
run_ok "uninterrupted run" train --config tiny.yaml train.run_dir=full

# same_run A B: bitwise equal step losses and final weights and moments.
same_run() {
  $PY - "$1" "$2" <<'PYEOF'
import json, sys
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
for f in ("model_00000.bin", "optim_00000.bin"):
    x = open(f"{a}/checkpoints/step_00000012/{f}", "rb").read()
    y = open(f"{b}/checkpoints/step_00000012/{f}", "rb").read()
    assert x == y, f"{f} differs"
print(f"    {b}: 12 step losses, grad norms, lrs and the final weights and moments are bitwise equal to {a}")
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

# 5. Another data-parallel layout: 2 ranks to 1, and 1 to 2 (fp32 sums in another order: close, not bitwise).
close_run() {
  $PY - "$1" "$2" <<'PYEOF'
import json, sys
import numpy as np
a, b = sys.argv[1], sys.argv[2]
la = {json.loads(l)["step"]: json.loads(l)["loss"] for l in open(f"{a}/metrics.jsonl") if '"loss"' in l}
lb = {json.loads(l)["step"]: json.loads(l)["loss"] for l in open(f"{b}/metrics.jsonl") if '"loss"' in l}
assert sorted(la) == sorted(lb), (sorted(la), sorted(lb))
dl = max(abs(la[s] - lb[s]) / la[s] for s in la)
wa = np.fromfile(f"{a}/checkpoints/step_00000012/model_00000.bin", dtype=np.float32)
wb = np.fromfile(f"{b}/checkpoints/step_00000012/model_00000.bin", dtype=np.float32)
dw = np.abs(wa - wb).max() / np.abs(wa).max()
print(f"    {b}: max rel loss diff {dl:.1e}, weights {dw:.1e}")
assert dl < 1e-5 and dw < 1e-5
PYEOF
}
LTRAIN_TEST_STOP_AT_STEP=6 OMP_NUM_THREADS=1 $MPIRUN -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=dp2to1 parallel.zero=1 > dp2to1.log 2>&1 \
  || fail "dp2 first half"
run_ok "resume a 2-rank ZeRO checkpoint on 1 rank" train --config tiny.yaml train.run_dir=dp2to1 --resume auto
close_run full dp2to1 || fail "data 2 -> 1 resume differs"
LTRAIN_TEST_STOP_AT_STEP=6 "$LTRAIN" train --config tiny.yaml train.run_dir=dp1to2 > dp1to2.log 2>&1 || fail "dp1 first half"
OMP_NUM_THREADS=1 $MPIRUN -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=dp1to2 --resume auto > dp1to2b.log 2>&1 \
  || { fail "resume on 2 ranks"; tail -5 dp1to2b.log; }
close_run full dp1to2 || fail "data 1 -> 2 resume differs"

# Tensor parallelism: 2 ranks to 1, and 1 to 2 (checkpoints hold whole tensors).
LTRAIN_TEST_STOP_AT_STEP=6 OMP_NUM_THREADS=1 $MPIRUN -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=tp2to1 parallel.tensor=2 > tp2to1.log 2>&1 \
  || { fail "tensor 2 first half"; tail -5 tp2to1.log; }
run_ok "resume a tensor-parallel checkpoint on 1 rank" train --config tiny.yaml train.run_dir=tp2to1 --resume auto
close_run full tp2to1 || fail "tensor 2 -> 1 resume differs"
LTRAIN_TEST_STOP_AT_STEP=6 "$LTRAIN" train --config tiny.yaml train.run_dir=tp1to2 > tp1to2.log 2>&1 || fail "tensor 1 first half"
OMP_NUM_THREADS=1 $MPIRUN -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=tp1to2 parallel.tensor=2 --resume auto > tp1to2b.log 2>&1 \
  || { fail "resume on 2 tensor ranks"; tail -5 tp1to2b.log; }
close_run full tp1to2 || fail "tensor 1 -> 2 resume differs"

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
