#!/usr/bin/env bash
# Two hosts on one machine (network namespaces, netns_lib.sh), mpirun --hostfile across them over
# TCP: data=2 across the hosts, tensor=2 inside each host x data=2 across them, and pipeline=2
# across them (tensor=2 inside each), each matching
# one process with the same global batch (losses and final weights) and printing the rank map each
# rank derived (its host, local rank and coordinates); the same local ranks from the host names
# alone when the launcher's variables are removed; a tensor group across the hosts refused in one
# line, and run when parallel.allow_cross_node_tensor is set.
# Usage: bash test_netns_launch.sh /path/to/ltrain WORKDIR (exits 77, skipped, without root/ip netns)
set -uo pipefail

LTRAIN=${1:?usage: test_netns_launch.sh /path/to/ltrain WORKDIR}
WORK=${2:?usage: test_netns_launch.sh /path/to/ltrain WORKDIR}
HERE="$(cd "$(dirname "$0")" && pwd)"
CORPUS="$HERE/../data/tinyshakespeare.txt"
PY=/usr/bin/python3
source "$HERE/../scripts/cli_lib.sh"
source "$HERE/netns_lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
STEPS=6

netns_require
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK" || exit 1
netns_setup 2 2 "$WORK/hosts"
cat > tiny.yaml <<YAML
model: {hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 32}
optim: {lr: 3.0e-3, warmup_steps: 2}
train: {steps: $STEPS, seq_len: 32, micro_batch_size: 2, global_batch_tokens: 256, val_every: 3,
        val_batches: 2, log_every: 1}
data: {path: $WORK/data}
parallel: {bucket_mb: 0.01, timeout_s: 60}
YAML

run_ok "tokenizer train" tokenizer train --input "$CORPUS" --vocab-size 512 --out tok
run_ok "prepare" prepare --tokenizer tok.model --input "$CORPUS" --out data --val-fraction 0.05
run_ok "one process" train --config tiny.yaml train.run_dir=$WORK/single
"$LTRAIN" export-hf --checkpoint single --out single.hf --dtype fp32 >/dev/null || fail "export-hf single"

# expect_map OUT LINE...: each rank-map line must be in the output, with the header's host count.
expect_map() {
  local out=$1 want
  shift
  for want in "$@"; do
    grep -qF "rank map: $want" <<<"$out" && echo "ok:   rank map: $want" || fail "missing 'rank map: $want'"
  done
}

# layout NAME NP "MPIRUN ARGS" "TRAIN ARGS" [ENV PREFIX]: trains across the hosts and compares with
# the single process. Prints the output (for the rank map) in $out.
layout() {
  local name=$1 np=$2 mpi_args=$3 train_args=$4 prefix=${5:-}
  local start=$(date +%s.%N) rc
  out=$(netns_mpirun -np $np $mpi_args $prefix "$LTRAIN" train --config tiny.yaml train.run_dir=$WORK/$name \
        $train_args 2>&1)
  rc=$?
  if [ $rc -ne 0 ]; then fail "$name: mpirun exited $rc"; echo "$out" | tail -20 | sed 's/^/    /'; return; fi
  echo "ok: $name ran in $(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)") s ($(grep -E '^parallel:' <<<"$out"))"
  "$LTRAIN" export-hf --checkpoint $name --out $name.hf --dtype fp32 >/dev/null || fail "export-hf $name"
  $PY "$HERE/compare_runs.py" single single.hf $name $name.hf $STEPS || fail "$name differs from one process"
}

# data=2 across the hosts: one rank per host.
layout dp2 2 "--map-by ppr:1:node" "parallel.data=2"
expect_map "$out" "2 ranks on 2 hosts (local rank from OMPI_COMM_WORLD_LOCAL_RANK)" \
  "rank 0 | host ltrain-h0 (#0) | local rank 0 of 1 | device cpu | data 0 pipeline 0 tensor 0" \
  "rank 1 | host ltrain-h1 (#1) | local rank 0 of 1 | device cpu | data 1 pipeline 0 tensor 0"

# tensor=2 inside each host, data=2 across them: ranks 0-1 on ltrain-h0, 2-3 on ltrain-h1.
layout dp2tp2 4 "" "parallel.tensor=2"
expect_map "$out" "4 ranks on 2 hosts (local rank from OMPI_COMM_WORLD_LOCAL_RANK)" \
  "rank 0 | host ltrain-h0 (#0) | local rank 0 of 2 | device cpu | data 0 pipeline 0 tensor 0" \
  "rank 1 | host ltrain-h0 (#0) | local rank 1 of 2 | device cpu | data 0 pipeline 0 tensor 1" \
  "rank 2 | host ltrain-h1 (#1) | local rank 0 of 2 | device cpu | data 1 pipeline 0 tensor 0" \
  "rank 3 | host ltrain-h1 (#1) | local rank 1 of 2 | device cpu | data 1 pipeline 0 tensor 1"

# Pipeline stages across the hosts, tensor=2 inside each: stage 0 on ltrain-h0, stage 1 on
# ltrain-h1, so only the activations at the stage boundary cross the link.
layout pp2tp2 4 "" "parallel.pipeline=2 parallel.tensor=2"
expect_map "$out" "rank 0 | host ltrain-h0 (#0) | local rank 0 of 2 | device cpu | data 0 pipeline 0 tensor 0" \
  "rank 1 | host ltrain-h0 (#0) | local rank 1 of 2 | device cpu | data 0 pipeline 0 tensor 1" \
  "rank 2 | host ltrain-h1 (#1) | local rank 0 of 2 | device cpu | data 0 pipeline 1 tensor 0" \
  "rank 3 | host ltrain-h1 (#1) | local rank 1 of 2 | device cpu | data 0 pipeline 1 tensor 1"

# Without the launcher's local-rank variables the ranks find their hosts by name.
layout dp2tp2_names 4 "" "parallel.tensor=2" "env -u OMPI_COMM_WORLD_LOCAL_RANK -u OMPI_COMM_WORLD_LOCAL_SIZE"
expect_map "$out" "4 ranks on 2 hosts (local rank from host names)" \
  "rank 1 | host ltrain-h0 (#0) | local rank 1 of 2" "rank 2 | host ltrain-h1 (#1) | local rank 0 of 2" \
  "rank 3 | host ltrain-h1 (#1) | local rank 1 of 2"

# A tensor group across the hosts: refused on every rank with one line each, before anything is
# written; run when allowed.
out=$(netns_mpirun -np 2 --map-by ppr:1:node "$LTRAIN" train --config tiny.yaml train.run_dir=$WORK/cross \
      parallel.tensor=2 2>&1)
rc=$?
errors=$(grep -c "^ltrain: error:" <<<"$out")
want="the tensor-parallel group of ranks 0-1 spans hosts: ltrain-h0 (rank 0), ltrain-h1 (rank 1);"
if [ $rc -ne 0 ] && [ "$errors" -ge 1 ] && [ "$(grep "^ltrain: error:" <<<"$out" | grep -cF "$want")" -eq "$errors" ] \
   && grep -q "parallel.tensor = 1 does with this placement.*parallel.allow_cross_node_tensor: true" <<<"$out" \
   && [ ! -e cross ]; then
  echo "ok: cross-host tensor group refused (exit $rc): $(grep -m1 "^ltrain: error:" <<<"$out")"
else
  fail "cross-host tensor group not refused as expected (exit $rc)"
  echo "$out" | head -20 | sed 's/^/    /'
fi
layout cross_allowed 2 "--map-by ppr:1:node" "parallel.tensor=2 parallel.allow_cross_node_tensor=true"
expect_map "$out" "rank 0 | host ltrain-h0 (#0) | local rank 0 of 1 | device cpu | data 0 pipeline 0 tensor 0" \
  "rank 1 | host ltrain-h1 (#1) | local rank 0 of 1 | device cpu | data 0 pipeline 0 tensor 1"

finish
