#!/usr/bin/env bash
# End-to-end test of `ltrain tokenizer train` and `ltrain prepare`.
# Usage: bash test_data_cli.sh /path/to/ltrain WORKDIR
# Good inputs must produce the expected files; each bad input must exit non-zero (but below 128,
# i.e. not a crash) with exactly one line of output that names the offending file or flag.
set -uo pipefail  # no -e: failing commands are the point here; every check is explicit

LTRAIN=${1:?usage: test_data_cli.sh /path/to/ltrain WORKDIR}
WORK=${2:?usage: test_data_cli.sh /path/to/ltrain WORKDIR}
CORPUS="$(cd "$(dirname "$0")/../data" && pwd)/tinyshakespeare.txt"
source "$(dirname "$0")/cli_lib.sh"

if [ ! -x "$LTRAIN" ]; then
  echo "FAIL: ltrain binary '$LTRAIN' not found or not executable"
  exit 1
fi
if [ ! -f "$CORPUS" ]; then
  echo "FAIL: corpus '$CORPUS' not found"
  exit 1
fi
rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK" || exit 1

# ---- good inputs ---------------------------------------------------------------------------------
start=$(date +%s%N)
run_ok "tokenizer train" tokenizer train --input "$CORPUS" --vocab-size 1024 --out tok/ts
echo "    ($(( ($(date +%s%N) - start) / 1000000 )) ms)"
expect_file tok/ts.model
expect_file tok/ts.vocab

start=$(date +%s%N)
run_ok "prepare" prepare --tokenizer tok/ts.model --input "$CORPUS" --out data --shard-tokens 200000
echo "    ($(( ($(date +%s%N) - start) / 1000000 )) ms)"
for f in meta.json tokenizer.model train_00000.bin train_00001.bin val_00000.bin; do expect_file "data/$f"; done
grep -q '"format": "ltrain-dataset"' data/meta.json || fail "data/meta.json lacks the format field"

printf '{"text": "one document"}\n{"text": "another\\nwith a newline"}\n' > good.jsonl
run_ok "prepare jsonl, line boundary, force" prepare --tokenizer tok/ts.model --input good.jsonl "$CORPUS" \
  --out data --force --doc-boundary line --val-fraction 0.05
expect_file data/meta.json

# ---- bad inputs ----------------------------------------------------------------------------------
printf '\n   \n\t\n' > empty.txt
printf '{"text": "fine"}\nnot json at all\n' > bad.jsonl

run_bad "tokenizer: missing input file" "missing.txt" \
  tokenizer train --input missing.txt --vocab-size 512 --out tok/x
run_bad "tokenizer: empty corpus" "empty.txt" \
  tokenizer train --input empty.txt --vocab-size 512 --out tok/x
run_bad "tokenizer: vocab too small" "--vocab-size" \
  tokenizer train --input "$CORPUS" --vocab-size 100 --out tok/x
run_bad "tokenizer: vocab too large for the corpus" "--vocab-size 5000" \
  tokenizer train --input good.jsonl --vocab-size 5000 --out tok/x
run_bad "tokenizer: bad jsonl" "bad.jsonl:2" \
  tokenizer train --input bad.jsonl --vocab-size 512 --out tok/x
run_bad "tokenizer: unknown action" "encode" tokenizer encode --input x
run_bad "tokenizer: missing --out" "--out" tokenizer train --input "$CORPUS" --vocab-size 512
[ -e tok/x.model ] && fail "a failed tokenizer training wrote tok/x.model"

run_bad "prepare: missing input file" "missing.txt" \
  prepare --tokenizer tok/ts.model --input missing.txt --out out1
run_bad "prepare: empty corpus" "empty.txt" \
  prepare --tokenizer tok/ts.model --input empty.txt --out out2
[ -e out2 ] && fail "a failed prepare left directory out2 behind"
run_bad "prepare: missing tokenizer" "nope.model" \
  prepare --tokenizer nope.model --input "$CORPUS" --out out3
run_bad "prepare: tokenizer is not a model" "not a SentencePiece" \
  prepare --tokenizer "$CORPUS" --input "$CORPUS" --out out3
: > empty.model
run_bad "prepare: empty tokenizer file" "empty.model" \
  prepare --tokenizer empty.model --input "$CORPUS" --out out3
run_bad "prepare: existing output without --force" "--force" \
  prepare --tokenizer tok/ts.model --input "$CORPUS" --out data
run_bad "prepare: non-JSON jsonl line" "bad.jsonl:2" \
  prepare --tokenizer tok/ts.model --input bad.jsonl --out out4
[ -e out4 ] && fail "a failed prepare left directory out4 behind"
run_bad "prepare: bad --doc-boundary" "--doc-boundary" \
  prepare --tokenizer tok/ts.model --input "$CORPUS" --out out5 --doc-boundary page
run_bad "prepare: bad --val-fraction" "--val-fraction" \
  prepare --tokenizer tok/ts.model --input "$CORPUS" --out out5 --val-fraction 2
run_bad "prepare: unknown flag" "--shards" \
  prepare --tokenizer tok/ts.model --input "$CORPUS" --out out5 --shards 3
# The dataset from before is untouched by the refused overwrite.
expect_file data/meta.json

finish
