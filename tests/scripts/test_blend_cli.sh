#!/usr/bin/env bash
# Dataset blends end to end on the CPU: two sources prepared with one tokenizer, trained as a
# blend; the proportions drawn are logged; a stopped and resumed run is bitwise the same run; a
# run stopped under data=2 and resumed in one process continues at exactly the same data
# position; mismatched sources and positions are one-line errors.
# Usage: bash test_blend_cli.sh /path/to/ltrain WORKDIR
set -uo pipefail

export OMP_NUM_THREADS=1
source "$(dirname "$0")/cli_lib.sh" && cli_init "$@"
head -c 600000 "$CORPUS" > early.txt
tail -c +600001 "$CORPUS" > late.txt
cat > blend.yaml <<'YAML'
model: {hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 32}
optim: {lr: 3.0e-3, warmup_steps: 3}
train: {steps: 12, seq_len: 32, micro_batch_size: 2, global_batch_tokens: 256, val_every: 6,
        val_batches: 4, log_every: 1}
data:
  blend:
    - {path: early, weight: 3}
    - {path: late, weight: 1, name: tail}
checkpoint: {interval: 4}
YAML
run_ok "tokenizer train" tokenizer train --input "$CORPUS" --vocab-size 512 --out tok
run_ok "prepare early" prepare --tokenizer tok.model --input early.txt --out early --val-fraction 0.05
run_ok "prepare late" prepare --tokenizer tok.model --input late.txt --out late --val-fraction 0.05
run_ok "blend run" train --config blend.yaml train.run_dir=full

grep -q "data blend of 2 sources" full/train.log && grep -qE "early +share +75.00%" full/train.log &&
  echo "ok: the blend's sources and shares are logged" || fail "the blend's sources are not logged"
grep -q "blend drawn so far: early" full/train.log && echo "ok: the proportions drawn are in train.log" ||
  fail "train.log lacks the proportions drawn"
$PY - full <<'PYEOF' || fail "metrics.jsonl lacks the blend figures"
import json, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
steps = [r for r in rows if "loss" in r]
assert len(steps) == 12 and all(set(r["blend_drawn"]) == {"early", "tail"} for r in steps), steps[:1]
last = steps[-1]["blend_drawn"]
assert abs(sum(last.values()) - 1) < 1e-12 and 0.5 < last["early"] < 0.95, last
vals = [r for r in rows if "val_loss" in r]
assert vals and all(set(r["val_loss_by_source"]) == {"early", "tail"} for r in vals), vals
meta = json.load(open(f"{sys.argv[1]}/checkpoints/step_00000012/meta.json"))
pos = meta["data"]["train"]
assert pos["cursor"] == 12 * 8 and [s["name"] for s in pos["sources"]] == ["early", "tail"], pos
print(f"    drawn after 12 steps: {last}; position {pos}")
PYEOF

# same_position A B: the final checkpoints hold the same data position; with "exact", the step
# losses and grad norms are bitwise equal, else within fp32 tolerance.
same_position() {
  $PY - "$@" <<'PYEOF'
import json, sys
a, b, mode = sys.argv[1], sys.argv[2], sys.argv[3]
def steps(run):
    out = {}
    for l in open(f"{run}/metrics.jsonl"):
        r = json.loads(l)
        if "loss" in r: out[r["step"]] = (r["loss"], r["grad_norm"])
    return out
sa, sb = steps(a), steps(b)
assert sorted(sa) == sorted(sb) == list(range(1, 13)), (sorted(sa), sorted(sb))
for s in sa:
    if mode == "exact":
        assert sa[s] == sb[s], (s, sa[s], sb[s])
    else:
        assert all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(sa[s], sb[s])), (s, sa[s], sb[s])
pa = json.load(open(f"{a}/checkpoints/step_00000012/meta.json"))["data"]
pb = json.load(open(f"{b}/checkpoints/step_00000012/meta.json"))["data"]
assert pa == pb, (pa, pb)
print(f"    {b}: 12 steps match {a} ({mode}) and end at the same data position")
PYEOF
}

# Stop after step 6, resume: the same run, bit for bit.
LTRAIN_TEST_STOP_AT_STEP=6 "$LTRAIN" train --config blend.yaml train.run_dir=stopped > stopped.log 2>&1 ||
  fail "the stopped blend run failed: $(tail -3 stopped.log)"
run_ok "resume a blend" train --config blend.yaml train.run_dir=stopped --resume auto
same_position full stopped exact || fail "a resumed blend run differs"

# Resharding: stopped under data=2, resumed in one process.
LTRAIN_TEST_STOP_AT_STEP=6 $MPIRUN -np 2 "$LTRAIN" train --config blend.yaml train.run_dir=dp2to1 \
  parallel.data=2 > dp2.log 2>&1 || fail "the data=2 blend run failed: $(tail -3 dp2.log)"
run_ok "resume a data=2 blend in one process" train --config blend.yaml train.run_dir=dp2to1 --resume auto
same_position full dp2to1 close || fail "a blend resharded from data=2 to 1 differs"

# Mistakes.
run_ok "tokenizer of another vocabulary" tokenizer train --input late.txt --vocab-size 400 --out tok400
run_ok "prepare with it" prepare --tokenizer tok400.model --input late.txt --out other --val-fraction 0.05
run_bad "a source with another vocabulary" "data.blend[1] ('other', other) has a vocabulary of 400" train --config blend.yaml \
  train.run_dir=bad1 "data.blend=[{path: early, weight: 1}, {path: other, weight: 1}]"
run_bad "a missing source" "data.blend[1] ('missing_dir'): 'missing_dir' is not" train --config blend.yaml train.run_dir=bad2 \
  "data.blend=[{path: early, weight: 1}, {path: missing_dir, weight: 1}]"
run_bad "resuming a blend with other sources" "[early, tail]" train --config blend.yaml --resume full train.steps=20 \
  "data.blend=[{path: early, weight: 1}, {path: late, weight: 1}]"
run_bad "resuming a blend as one dataset" "blend of 2 sources" train --config blend.yaml --resume full train.steps=20 \
  data.blend=[] data.path=early
run_bad "data.path and data.blend" "both set" train --config blend.yaml data.path=early
finish
