#!/usr/bin/env bash
# A host drops off the network mid-run (its link goes down while data=2 trains across two hosts):
# the job ends within parallel.timeout_s with a message naming the rank, its host and the
# collective, instead of hanging; the last checkpoint is intact, and once the link is back the
# run resumes from it across both hosts.
# Usage: bash test_netns_fault.sh /path/to/ltrain WORKDIR (exits 77, skipped, without root/ip netns)
set -uo pipefail

LTRAIN=${1:?usage: test_netns_fault.sh /path/to/ltrain WORKDIR}
WORK=${2:?usage: test_netns_fault.sh /path/to/ltrain WORKDIR}
HERE="$(cd "$(dirname "$0")" && pwd)"
CORPUS="$HERE/../data/tinyshakespeare.txt"
source "$HERE/../scripts/cli_lib.sh"
source "$HERE/netns_lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
TIMEOUT_S=2

netns_require
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK" || exit 1
netns_setup 2 1 "$WORK/hosts"
# Many steps, so the run is still going when the link goes down; a checkpoint every 20.
cat > tiny.yaml <<YAML
model: {hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 32}
optim: {lr: 3.0e-3, warmup_steps: 2}
train: {steps: 1000000, seq_len: 32, micro_batch_size: 2, global_batch_tokens: 256, val_every: 0,
        log_every: 100, run_dir: $WORK/run}
checkpoint: {interval: 20, keep_last: 2}
data: {path: $WORK/data}
parallel: {data: 2, bucket_mb: 0.01, timeout_s: $TIMEOUT_S}
YAML
run_ok "tokenizer train" tokenizer train --input "$CORPUS" --vocab-size 512 --out tok
run_ok "prepare" prepare --tokenizer tok.model --input "$CORPUS" --out data --val-fraction 0.05

NETNS_MPIRUN_TIMEOUT=60 netns_mpirun -np 2 --map-by ppr:1:node "$LTRAIN" train --config tiny.yaml > job.out 2>&1 &
job=$!
for ((i = 0; i < 600; i++)); do  # up to 60 s for the first checkpoints (about 1 s alone)
  [ -e run/checkpoints/step_00000040 ] && break
  sleep 0.1
done
[ -e run/checkpoints/step_00000040 ] || { fail "no checkpoint after 60 s"; tail -20 job.out; finish; }
# ltrain processes left on either host
ranks_alive() {
  local pids
  pids=$(ip netns pids ${NETNS_PREFIX}h0; ip netns pids ${NETNS_PREFIX}h1)
  [ -n "$pids" ] && ps -o comm= -p $(echo $pids) 2>/dev/null | grep -qx ltrain
}
ranks_alive || fail "no ltrain rank is running before the link goes down"
netns_link 1 down
down=$(date +%s.%N)
while ranks_alive && (( $(echo "$(date +%s.%N) - $down < 30" | bc) )); do sleep 0.1; done
ranks_took=$(echo "$(date +%s.%N) - $down" | bc)
wait $job
rc=$?
job_took=$(echo "$(date +%s.%N) - $down" | bc)
echo "ltrain-h1's link went down: the ranks ended after $(printf '%.1f' $ranks_took) s, mpirun after $(printf '%.1f' $job_took) s (exit $rc)"
# Rank 0 on ltrain-h0 sees its collective stall; ltrain-h1's report cannot cross the cut link.
msg=$(grep -m1 "^ltrain: error: \[rank 0 on host ltrain-h0\] collective .* on the data-parallel group (2 ranks) did not finish within parallel.timeout_s = $TIMEOUT_S s" job.out)
[ -n "$msg" ] && echo "ok: the watchdog reports: $msg" || { fail "no watchdog message from rank 0"; tail -20 job.out | sed 's/^/    /'; }
(( $(echo "$ranks_took < $TIMEOUT_S + 2" | bc) )) && echo "ok: every rank ended within parallel.timeout_s + 2 s" \
  || fail "ranks still running $(printf '%.1f' $ranks_took) s after the partition"
# mpirun then waits for ltrain-h1's daemon until its send fails (netns_lib.sh: about 6 s).
[ $rc -ne 0 ] && [ $rc -ne 124 ] && (( $(echo "$job_took < $TIMEOUT_S + 15" | bc) )) && echo "ok: mpirun ended (exit $rc)" \
  || { fail "mpirun did not end in time (exit $rc)"; tail -20 job.out | sed 's/^/    /'; }

# The operator's part: the cut-off host's daemon is ended and its cable mended.
netns_kill_processes
netns_link 1 up
out=$("$LTRAIN" ckpt verify run 2>&1) && echo "ok: the latest checkpoint verifies: $out" || { fail "ckpt verify"; echo "    $out"; }
last=$(cat run/checkpoints/latest)
step=$((10#${last#step_}))
out=$(NETNS_MPIRUN_TIMEOUT=30 netns_mpirun -np 2 --map-by ppr:1:node "$LTRAIN" train --config tiny.yaml train.steps=$((step + 3)) \
      --resume auto 2>&1)
rc=$?
if [ $rc -eq 0 ] && grep -q "resumed from .*$last at step $step" <<<"$out" && [ -e run/checkpoints/step_$(printf %08d $((step + 3))) ]; then
  echo "ok: resumed across both hosts from $last to step $((step + 3))"
else
  fail "resume after the partition (exit $rc)"
  echo "$out" | tail -20 | sed 's/^/    /'
fi

finish
