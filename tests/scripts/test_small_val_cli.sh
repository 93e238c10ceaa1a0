#!/usr/bin/env bash
# A validation split smaller than one batch per rank, on the CPU: 3 val windows with micro-batch
# 2 (rank 1 of 2 gets one window) and 4 (rank 1 gets none). The in-training validation under
# `mpirun -np 2` reports the val loss a single process reports for the same windows and weights,
# `ltrain eval` (one process) reproduces the 2-rank run's last one, and the counts (windows,
# batches, fewer than one full batch per rank) are in train.log, on stdout and in metrics.jsonl.
# A val split with no window at all stays an error naming the data and what would be right.
# Usage: bash test_small_val_cli.sh /path/to/ltrain WORKDIR
set -uo pipefail

# One thread everywhere, so that one process and each rank compute every batch bit for bit alike.
export OMP_NUM_THREADS=1
source "$(dirname "$0")/cli_lib.sh" && cli_init "$@"
cat > tiny.yaml <<'YAML'
model: {hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 32}
optim: {lr: 3.0e-3, warmup_steps: 3}
train: {steps: 2, seq_len: 32, global_batch_tokens: 256, val_every: 0, val_batches: 4, log_every: 1}
data: {path: small}
checkpoint: {interval: 0}
YAML
run_ok "tokenizer train" tokenizer train --input "$CORPUS" --vocab-size 512 --out tok
# Two documents (--doc-boundary file), every second one to val: the val split is 12 lines, about
# 110 tokens, 3 windows of 33 tokens.
head -c 20000 "$CORPUS" > train.txt
sed -n 3000,3011p "$CORPUS" > val.txt
run_ok "prepare" prepare --tokenizer tok.model --input train.txt val.txt --out small --doc-boundary file \
  --val-fraction 0.5 --quiet
windows=$($PY -c "import json; m = json.load(open('small/meta.json')); print(sum((s['tokens'] - 1) // 32 for s in m['val']['shards']))")
[ "$windows" -eq 3 ] || { fail "the fixture's val split has $windows windows of 33 tokens, this test needs 3"; finish; }

# val_records RUN: every validation record of a run, as JSON lines.
val_records() { grep '"val_loss"' "$1/metrics.jsonl"; }

for B in 2 4; do
  run_ok "B=$B one process" train --config tiny.yaml train.run_dir=one$B train.micro_batch_size=$B
  out=$($MPIRUN -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=two$B train.micro_batch_size=$B 2>&1) \
    || { fail "B=$B: 2 ranks failed"; echo "$out" | tail -5; continue; }
  # The step-0 validation sees the same initial weights: the same loss, to the last bits.
  $PY - one$B two$B $B <<'PYEOF' || fail "B=$B: the 2-rank val loss or counts differ from one process's"
import json, math, sys
one, two, B = sys.argv[1], sys.argv[2], int(sys.argv[3])
vals = lambda run: [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"val_loss"' in l]
a, b = vals(one)[0], vals(two)[0]
assert a["step"] == b["step"] == 0, (a, b)
assert math.isfinite(a["val_loss"]) and a["val_loss"] > 0, a
rel = abs(a["val_loss"] - b["val_loss"]) / a["val_loss"]
assert rel <= 1e-12, f"val_loss {a['val_loss']!r} (1 process) vs {b['val_loss']!r} (2 ranks)"
assert a["val_windows"] == b["val_windows"] == 3, (a, b)
assert a["val_batches"] == -(-3 // B) and b["val_batches"] == 1, (a, b)
print(f"    B={B}: step-0 val_loss {a['val_loss']:.12f} on 1 process and 2 ranks (rel diff {rel:.1e}), 3 windows")
PYEOF
  grep -q "step      0 | val_loss .* | 3 windows in 1 batch: fewer than one full batch per rank (2 ranks x $B windows) |" two$B/train.log \
    && echo "$out" | grep -q "fewer than one full batch per rank (2 ranks x $B windows)" \
    && echo "ok: B=$B: train.log and stdout say 3 windows in 1 batch, fewer than one full batch per rank" \
    || { fail "B=$B: the 2-rank validation does not log its counts"; grep val_loss two$B/train.log; }
  # ltrain eval, one process, on the 2-rank run's final weights: its last validation.
  ev=$("$LTRAIN" eval --checkpoint two$B --data small 2>&1)
  want=$(val_records two$B | tail -1 | $PY -c "import json, sys; print('%.4f' % json.loads(sys.stdin.read())['val_loss'])")
  [[ "$ev" == *"val_loss $want "*"| 3 windows in "* ]] && echo "ok: B=$B: eval reproduces the 2-rank run's last val_loss $want: $ev" \
    || fail "B=$B: eval says '$ev', the 2-rank run's last val_loss is $want"
done
grep -q "| 3 windows in 2 batches |" one2/train.log || fail "B=2, one process: expected '3 windows in 2 batches'"
grep -q "| 3 windows in 1 batch: fewer than one full batch (4 windows) |" one4/train.log \
  || fail "B=4, one process: expected 'fewer than one full batch (4 windows)'"

# No window at all: seq_len 128 needs 129 tokens per window, the val split holds about 110.
run_bad "a val split with no window" "data dir 'small': the val split has 0 windows of seq_len+1 = 129 tokens" \
  train --config tiny.yaml train.run_dir=none train.seq_len=128 model.max_position_embeddings=128 train.micro_batch_size=2
[ ! -e none/checkpoints ] || fail "the refused run wrote checkpoints"
run_bad "eval: negative --batches" "--batches -1 must be >= 0" eval --checkpoint two2 --data small --batches -1

finish
