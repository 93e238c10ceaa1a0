#!/usr/bin/env bash
# From a fresh Debian machine to a trained small LLaMA, with no further input:
#   install dependencies, build, train a tokenizer on tinyshakespeare, tokenize the corpus,
#   train the model in configs/tiny-shakespeare.yaml on the CPU (a few minutes on 2 cores),
#   report validation perplexity and print a generated sample.
# It builds only what it runs, in a build directory of its own (BUILD_DIR, default
# build-quickstart, so the tests' ./build keeps its options): the ltrain binary without the tests,
# and without the CUDA backend unless nvidia-smi lists a GPU (nvcc alone does not count).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install_deps.sh
BUILD_DIR=${BUILD_DIR:-build-quickstart}
# nvidia-smi -L: one "GPU 0: NAME (UUID: ...)" line per GPU ("No devices were found" without one).
gpus=$( (command -v nvidia-smi > /dev/null && nvidia-smi -L 2> /dev/null | grep '^GPU [0-9]') || true)
if [ -n "$gpus" ]; then
  echo "[quickstart] GPU found (${gpus%%$'\n'*}): building the CPU and CUDA backends in $BUILD_DIR"
  cuda=ON
else
  echo "[quickstart] no GPU visible (nvidia-smi absent or listing none): building the CPU backend only" \
    "(-DLTRAIN_CUDA=OFF) in $BUILD_DIR"
  cuda=OFF
fi
BUILD_DIR="$BUILD_DIR" ./scripts/build.sh -DLTRAIN_CUDA=$cuda -DLTRAIN_TESTS=OFF
LTRAIN=$BUILD_DIR/ltrain
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
