#!/usr/bin/env bash
# The step guard on the CPU: a NaN step is skipped and the run equals one that never saw that
# batch; injected spikes roll back to the last checkpoint, record the skipped data and complete;
# the rollback limit stops the run with exit code 3; a perturbed replica is caught under mpirun.
# Usage: bash test_guard_cli.sh /path/to/ltrain WORKDIR
set -uo pipefail

source "$(dirname "$0")/cli_lib.sh" && cli_init "$@"
cat > tiny.yaml <<'YAML'
model: {hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 32}
optim: {lr: 3.0e-3, warmup_steps: 3}
train: {steps: 16, seq_len: 32, micro_batch_size: 2, global_batch_tokens: 256, val_every: 0,
        val_batches: 4, log_every: 1}
data: {path: data}
checkpoint: {interval: 4}
guard: {min_history: 4, window: 10, spike_sigma: 50.0, rollback_after: 3, max_rollbacks: 2}
YAML
run_ok "tokenizer train" tokenizer train --input "$CORPUS" --vocab-size 512 --out tok
run_ok "prepare" prepare --tokenizer tok.model --input "$CORPUS" --out data --val-fraction 0.05

# 1. A NaN in the gradients at step 5: skipped, and the run equals one without that batch.
#    Step 5's first attempt reads windows 32..40 (8 windows of 32+1 tokens per step).
out=$(LTRAIN_TEST_NAN_AT_STEP=5 "$LTRAIN" train --config tiny.yaml train.run_dir=nan 2>&1); rc=$?
[ $rc -eq 0 ] || { fail "NaN run exited $rc"; echo "$out" | tail -5; }
echo "$out" | grep -q "step      5 | skipped: non-finite step" && echo "ok: the NaN step was skipped" || fail "no skip logged"
mkdir -p without
echo '{"step": 5, "from": {"epoch": 0, "cursor": 32}, "to": {"epoch": 0, "cursor": 40}}' > without/skipped_samples.jsonl
run_ok "a run that never sees step 5's first batch" train --config tiny.yaml train.run_dir=without
$PY - nan without <<'PYEOF' || fail "the NaN-skipping run differs from the run without that batch"
import json, sys
def run(d):
    rows = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}, rows
(a, ra), (b, rb) = run(sys.argv[1]), run(sys.argv[2])
assert a == b, [(s, a[s], b.get(s)) for s in a if a[s] != b.get(s)]
skipped = [r for r in ra if r.get("event") == "skipped_step"]
assert len(skipped) == 1 and skipped[0]["step"] == 5 and skipped[0]["data_from"]["cursor"] == 32, skipped
assert [r for r in ra if "loss" in r][-1]["skipped_steps"] == 1
x = open(f"{sys.argv[1]}/checkpoints/step_00000016/model_00000.bin", "rb").read()
y = open(f"{sys.argv[2]}/checkpoints/step_00000016/model_00000.bin", "rb").read()
assert x == y, "final weights differ"
print("    16 losses and the final weights are bitwise equal; skipped_steps = 1")
PYEOF

# 2. Spikes at step 10 (x1000 gradients, until one rollback): two skips, then a rollback to step 8
#    that records the data it skips; the run completes.
out=$(LTRAIN_TEST_SPIKE_STEPS=10-10,0 "$LTRAIN" train --config tiny.yaml train.run_dir=spike 2>&1); rc=$?
[ $rc -eq 0 ] || { fail "spike run exited $rc"; echo "$out" | tail -8; }
echo "$out" | grep -q "ROLLBACK 1/2 to spike/checkpoints/step_00000008" && echo "ok: rolled back to step 8" \
  || { fail "no rollback to step 8"; echo "$out" | grep -E "skipped|ROLLBACK" | head; }
[ -s spike/skipped_samples.jsonl ] && echo "ok: $(cat spike/skipped_samples.jsonl)" || fail "no skipped_samples.jsonl"
$PY - spike <<'PYEOF' || fail "spike run records"
import json, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
rb = [r for r in rows if r.get("event") == "rollback"]
assert len(rb) == 1 and rb[0]["to_step"] == 8, rb
sk = json.loads(open(f"{sys.argv[1]}/skipped_samples.jsonl").read())
# the data of the three spiking attempts of step 10: windows 72..96
pos = lambda p: (p["epoch"], p["cursor"])
assert pos(sk["from"]) == (0, 72) and pos(sk["to"]) == (0, 96) and sk["to"]["order"] == "feistel6-v1", sk
assert max(r["step"] for r in rows if "loss" in r) == 16
print("    rollback to step 8, skipped windows 72..96, completed 16 steps")
PYEOF

# 3. Spikes that never stop: the rollback limit ends the run with exit code 3 and one clear line.
out=$(LTRAIN_TEST_SPIKE_STEPS=10-16,inf "$LTRAIN" train --config tiny.yaml train.run_dir=limit 2>&1); rc=$?
[ $rc -eq 3 ] && echo "$out" | tail -1 | grep -q "guard: 2 rollbacks did not help" \
  && echo "ok: the rollback limit stops the run (exit 3)" || { fail "rollback limit: exit $rc"; echo "$out" | tail -3; }

# 4. A replica whose weights drift is caught (world rank 1 nudges a weight after step 3).
out=$(LTRAIN_TEST_PERTURB_RANK=1@3 OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 "$LTRAIN" train --config tiny.yaml \
      train.run_dir=replica parallel.data=2 guard.replica_check_interval=2 2>&1); rc=$?
[ $rc -ne 0 ] && echo "$out" | grep -q "replica check at step 4: 1 data-parallel rank(s) hold different weights than rank 0 (first: data rank 1" \
  && echo "ok: the perturbed replica was caught (exit $rc)" || { fail "replica check: exit $rc"; echo "$out" | grep -v "^  " | tail -5; }
out=$(OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=replica_ok \
      parallel.data=2 guard.replica_check_interval=2 train.steps=4 2>&1); rc=$?
[ $rc -eq 0 ] && grep -q '"event":"replica_check","ok":true' replica_ok/metrics.jsonl \
  && echo "ok: healthy replicas pass the check" || fail "healthy replicas: exit $rc"

run_bad "bad guard config" "guard.rollback_lr_factor" train --config tiny.yaml train.run_dir=bad guard.rollback_lr_factor=2
finish
