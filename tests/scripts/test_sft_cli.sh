#!/usr/bin/env bash
# Supervised fine-tuning data end to end: `prepare --sft` through the binary (shards + .mask files,
# meta.json "sft": true), a few training steps of a tiny model on it (runs, finite loss), and
# bad inputs (one-line errors, exit 2).
# Usage: bash test_sft_cli.sh /path/to/ltrain WORKDIR
set -uo pipefail

source "$(dirname "$0")/cli_lib.sh" && cli_init "$@"
SFT="$ROOT/tests/data/sft_example.jsonl"
# The example file is small (30 examples, ~800 tokens): seq_len 16, 2 sequences per step.
cat > tiny.yaml <<'YAML'
model: {hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 32}
optim: {lr: 3.0e-3, warmup_steps: 2}
train: {steps: 6, seq_len: 16, micro_batch_size: 2, global_batch_tokens: 32, val_every: 3,
        val_batches: 2, log_every: 1}
data: {path: sft}
checkpoint: {interval: 0}
YAML
run_ok "tokenizer train" tokenizer train --input "$CORPUS" --vocab-size 512 --out tok
run_ok "prepare --sft" prepare --sft --tokenizer tok.model --input "$SFT" --out sft --val-fraction 0.2 --quiet
expect_file sft/train_00000.bin
expect_file sft/train_00000.mask
expect_file sft/val_00000.mask
$PY - <<'PYEOF' || fail "meta.json / mask files do not follow the documented format"
import json, struct, zlib
meta = json.load(open("sft/meta.json"))
assert meta["sft"] is True and meta["sft_separator"] == "\n\n", meta
for split in ("train", "val"):
    for e in meta[split]["shards"]:
        b = open("sft/" + e["mask"], "rb").read()
        magic, ver, res, n, crc, hcrc = struct.unpack_from("<8sIIQII", b, 0)
        assert magic == b"LTRNMASK" and ver == 1 and res == 0, (magic, ver, res)
        assert n == e["tokens"] and len(b) == 32 + n, (n, e, len(b))
        assert zlib.crc32(b[32:]) == crc and zlib.crc32(b[:28]) == hcrc
        assert set(b[32:]) <= {0, 1} and 0 < sum(b[32:]) < n
        assert b[32] == 0 and b[-1] == 1  # BOS of the first example; EOS of the last
print("    meta.json and the mask files follow the documented layout")
PYEOF

run_ok "train on SFT data" train --config tiny.yaml train.run_dir=run
$PY - <<'PYEOF' || fail "training on SFT data did not log finite losses"
import json, math
rows = [json.loads(l) for l in open("run/metrics.jsonl")]
losses = [r["loss"] for r in rows if "loss" in r]
assert len(losses) == 6, losses
assert all(math.isfinite(x) and x > 0 for x in losses), losses
print(f"    6 finite step losses: {losses[0]:.3f} ... {losses[-1]:.3f}")
PYEOF

# A plain prepare of the same tokenizer still writes no masks.
run_ok "plain prepare" prepare --tokenizer tok.model --input "$CORPUS" --out plain --quiet
[ ! -e plain/train_00000.mask ] || fail "a plain prepare wrote a mask file"
grep -q '"sft"' plain/meta.json && fail "a plain prepare's meta.json mentions sft"

# Bad inputs: exit 2 and one line.
printf '{"prompt": "a", "answer": "b"}\n{"prompt": "c"}\n' > no_answer.jsonl
: > empty.jsonl
expect_exit2() {
  local what=$1 needle=$2
  shift 2
  local out rc
  out=$("$LTRAIN" "$@" 2>&1); rc=$?
  [ $rc -eq 2 ] || fail "$what: exit $rc (expected 2)"
  run_bad "$what" "$needle" "$@"
}
expect_exit2 "a line without answer" 'no_answer.jsonl:2: no string field "answer"' \
  prepare --sft --tokenizer tok.model --input no_answer.jsonl --out bad1 --quiet
[ ! -e bad1 ] || fail "a failed prepare --sft left its output directory"
expect_exit2 "an empty file" "empty SFT input" prepare --sft --tokenizer tok.model --input empty.jsonl --out bad2 --quiet
expect_exit2 "--sft with --format megatron" "--sft writes only the ltrain format" \
  prepare --sft --format megatron --tokenizer tok.model --input "$SFT" --out bad3 --quiet
expect_exit2 "--sft-separator without --sft" "--sft-separator needs --sft" \
  prepare --sft-separator x --tokenizer tok.model --input "$CORPUS" --out bad4 --quiet

# A damaged mask file stops training with one line naming it.
cp -r sft sft_bad && printf 'XXXXXXXX' | dd of=sft_bad/train_00000.mask conv=notrunc status=none
expect_exit2 "a mask file with bad magic" "train_00000.mask" train --config tiny.yaml data.path=sft_bad train.run_dir=bad_run

finish
