#!/usr/bin/env bash
# End to end on the CPU: tokenizer -> prepare -> train on tinyshakespeare -> eval -> generate,
# then every bad-input case of the training side (config, data, checkpoints).
# Usage: bash test_train_cli.sh /path/to/ltrain WORKDIR
set -uo pipefail  # no -e: failing commands are the point here; every check is explicit

source "$(dirname "$0")/cli_lib.sh" && cli_init "$@"

# A model small enough to learn something in about a minute on 2 cores.
cat > small.yaml <<'YAML'
model:
  hidden_size: 128
  intermediate_size: 344
  num_hidden_layers: 2
  num_attention_heads: 4
  num_key_value_heads: 2
  vocab_size: 512
  max_position_embeddings: 128
optim:
  lr: 3.0e-3
  warmup_steps: 10
train:
  steps: 80
  seq_len: 128
  micro_batch_size: 8
  global_batch_tokens: 2048
  run_dir: run
  log_every: 10
  val_every: 40
  val_batches: 20
data:
  path: data
YAML

run_ok "tokenizer train" tokenizer train --input "$CORPUS" --vocab-size 512 --out tok
run_ok "prepare" prepare --tokenizer tok.model --input "$CORPUS" --out data --val-fraction 0.05
start=$(date +%s)
run_ok "train" train --config small.yaml
echo "    (training took $(( $(date +%s) - start )) s)"
expect_file run/config.json
expect_file run/metrics.jsonl
expect_file run/train.log
expect_file run/checkpoints/latest
expect_file run/checkpoints/step_00000080/model_00000.bin
expect_file run/checkpoints/step_00000080/tokenizer.model

# The loss must fall well below where it started, and the JSONL must carry the documented fields.
$PY - run/metrics.jsonl <<'PYEOF' || fail "metrics.jsonl checks"
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
steps = [r for r in rows if "loss" in r]
vals = [r for r in rows if "val_loss" in r]
for r in steps:
    for k in ("step", "loss", "lr", "grad_norm", "tokens_per_sec"):
        assert k in r and math.isfinite(r[k]), f"step record lacks {k}: {r}"
for r in vals:
    assert abs(r["val_ppl"] - math.exp(r["val_loss"])) < 1e-6 * r["val_ppl"], r
first, last = vals[0]["val_loss"], vals[-1]["val_loss"]
print(f"    val_loss {first:.3f} (step {vals[0]['step']}) -> {last:.3f} (step {vals[-1]['step']})")
assert vals[0]["step"] == 0 and vals[-1]["step"] == 80, vals
assert first > 5.5, f"initial val loss {first} should be near ln(512) = 6.24"
assert last < first - 1.2, f"val loss fell only from {first} to {last}"
assert steps[0]["lr"] < steps[1]["lr"], "warmup should raise the lr"
PYEOF

# eval on the same data reproduces the trainer's last validation (same windows, same weights).
out=$("$LTRAIN" eval --checkpoint run --data data --batches 20 2>&1)
echo "    $out"
$PY - "$out" run/metrics.jsonl <<'PYEOF' || fail "eval does not match the trainer's final val_loss"
import json, re, sys
got = float(re.search(r"val_loss ([0-9.]+)", sys.argv[1]).group(1))
want = [json.loads(l) for l in open(sys.argv[2]) if "val_loss" in l][-1]["val_loss"]
assert abs(got - want) < 1e-3, (got, want)
PYEOF

out=$("$LTRAIN" generate --checkpoint run --prompt "ROMEO:" --max-tokens 40 --seed 3 --ignore-eos 2>&1)
rc=$?
echo "    generate: $(echo "$out" | head -c 300 | tr '\n' ' ')"
[ $rc -eq 0 ] || fail "generate exited $rc"
[ "$(echo "$out" | wc -c)" -gt 40 ] || fail "generate printed too little"
[[ "$out" == ROMEO:* ]] || fail "generate should echo the prompt first"
out2=$("$LTRAIN" generate --checkpoint run --prompt "ROMEO:" --max-tokens 40 --seed 3 --ignore-eos 2>&1)
[ "$out" == "$out2" ] || fail "generate is not deterministic for a fixed seed"

# ---- bad input: one line naming the key/file/value, non-zero exit, nothing damaged ------------
run_bad "unknown key" "did you mean 'model.hidden_size'" train --config small.yaml model.hiden_size=64
run_bad "wrong type" "'optim.lr' expects a number" train --config small.yaml optim.lr=fast
run_bad "heads do not divide hidden" "must be divisible by model.num_attention_heads" train --config small.yaml model.num_attention_heads=3
run_bad "kv heads do not divide heads" "must be divisible by model.num_key_value_heads" train --config small.yaml model.num_key_value_heads=3
run_bad "global batch not divisible" "train.global_batch_tokens (3000) must be a multiple" train --config small.yaml train.global_batch_tokens=3000
run_bad "missing config" "config file not found" train --config nope.yaml
run_bad "run dir in use" "already holds a run" train --config small.yaml
run_bad "model vocab smaller than data" "set model.vocab_size >= 512" train --config small.yaml model.vocab_size=300 train.run_dir=run2
run_bad "no data dir" "not a prepared data directory" train --config small.yaml data.path=missing train.run_dir=run3
[ -e run2/checkpoints ] && fail "a refused run wrote checkpoints"

cp -r data data_trunc
shard=data_trunc/train_00000.bin
truncate -s $(( $(stat -c %s $shard) - 100 )) $shard
run_bad "truncated shard" "train_00000.bin" train --config small.yaml data.path=data_trunc train.run_dir=run4
cp -r data data_corrupt
$PY - data_corrupt/train_00000.bin <<'PYEOF'
import sys
f = open(sys.argv[1], "r+b"); f.seek(200); b = f.read(1); f.seek(200); f.write(bytes([b[0] ^ 0xFF])); f.close()
PYEOF
run_bad "corrupt shard" "checksum" train --config small.yaml data.path=data_corrupt train.run_dir=run5
cp -r data data_missing && rm data_missing/val_00000.bin
run_bad "missing shard" "val_00000.bin" train --config small.yaml data.path=data_missing train.run_dir=run6

cp -r run/checkpoints/step_00000080 ck_corrupt
$PY - ck_corrupt/model_00000.bin <<'PYEOF'
import sys
f = open(sys.argv[1], "r+b"); f.seek(1000); b = f.read(1); f.seek(1000); f.write(bytes([b[0] ^ 0x55])); f.close()
PYEOF
run_bad "corrupt checkpoint" "checksum mismatch" eval --checkpoint ck_corrupt --data data
run_bad "missing checkpoint" "checkpoint not found" eval --checkpoint nowhere --data data
run_bad "generate without tokenizer" "tokenizer not found" generate --checkpoint run --prompt hi --tokenizer missing.model
run_bad "bad top-p" "--top-p" generate --checkpoint run --prompt hi --top-p 2
# The good checkpoint is intact after all of this.
run_ok "eval after the refusals" eval --checkpoint run --data data --batches 2

finish
