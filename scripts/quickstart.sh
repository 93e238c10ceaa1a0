#!/usr/bin/env bash
# From a fresh Debian machine to a trained small LLaMA, with no further input:
#   install dependencies, build, train a tokenizer on tinyshakespeare, tokenize the corpus,
#   train the model in configs/tiny-shakespeare.yaml on the CPU (a few minutes on 2 cores),
#   report validation perplexity and print a generated sample.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install_deps.sh
./scripts/build.sh
LTRAIN=./build/ltrain
CORPUS=tests/data/tinyshakespeare.txt
RUN=runs/tiny-shakespeare

echo; echo "== 1/5 tokenizer =="
mkdir -p data
$LTRAIN tokenizer train --input "$CORPUS" --vocab-size 1024 --out data/tiny-shakespeare-tokenizer

echo; echo "== 2/5 prepare =="
$LTRAIN prepare --tokenizer data/tiny-shakespeare-tokenizer.model --input "$CORPUS" \
  --out data/tiny-shakespeare --val-fraction 0.1 --force

echo; echo "== 3/5 train =="
if [ -d "$RUN" ]; then
  echo "removing the previous quickstart run in $RUN"
  rm -rf "$RUN"
fi
start=$(date +%s)
$LTRAIN train --config configs/tiny-shakespeare.yaml train.run_dir="$RUN"
echo "training took $(( $(date +%s) - start )) s"

echo; echo "== 4/5 eval =="
$LTRAIN eval --checkpoint "$RUN" --data data/tiny-shakespeare

echo; echo "== 5/5 generate =="
$LTRAIN generate --checkpoint "$RUN" --prompt "ROMEO:" --max-tokens 200 --temperature 0.8 --seed 1 --ignore-eos
