#!/usr/bin/env bash
# What failed and interrupted saves leave behind, on the CPU: a save whose write fails (a full
# disk, LTRAIN_TEST_DISK_FULL) on one process and on rank 1 of 2 ranks with ZeRO-1 stops the run
# with one error naming the file, leaves no step_N.tmp, keeps the previous checkpoint as the latest
# and intact, and the run resumes from it bit for bit; at start-up `ltrain train` removes the
# step_N.tmp a kill left (resuming, or starting a new run in that run directory) and logs each,
# keeps a .tmp that holds meta.json (it may be complete), and never touches a checkpoint.
# Usage: bash test_checkpoint_cleanup_cli.sh /path/to/ltrain WORKDIR
set -uo pipefail

export OMP_NUM_THREADS=1
source "$(dirname "$0")/cli_lib.sh" && cli_init "$@"
cat > tiny.yaml <<'YAML'
model: {hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 32}
optim: {lr: 3.0e-3, warmup_steps: 3}
train: {steps: 12, seq_len: 32, micro_batch_size: 2, global_batch_tokens: 256, val_every: 0,
        val_batches: 2, log_every: 1}
data: {path: data}
checkpoint: {interval: 4}
YAML
run_ok "tokenizer train" tokenizer train --input "$CORPUS" --vocab-size 512 --out tok
run_ok "prepare" prepare --tokenizer tok.model --input "$CORPUS" --out data --val-fraction 0.05 --quiet

# no_tmp RUN: nothing named *.tmp* (a partial directory or file) anywhere under RUN/checkpoints.
no_tmp() {
  local left
  left=$(find "$1/checkpoints" -name '*.tmp*' | tr '\n' ' ')
  [ -z "$left" ] && echo "ok: nothing partial left in $1/checkpoints" || fail "$1: partial save left behind: $left"
}
# same_weights A B: the final checkpoints' weights and moments files are bitwise equal.
same_weights() {
  local f
  for f in $(cd "$1/checkpoints/step_00000012" && ls model_*.bin optim_*.bin); do
    cmp -s "$1/checkpoints/step_00000012/$f" "$2/checkpoints/step_00000012/$f" || { fail "$2: $f differs from $1's"; return; }
  done
  echo "ok: $2 ends with the weights and moments of $1, bit for bit"
}

run_ok "uninterrupted run" train --config tiny.yaml train.run_dir=full

# 1. One process: the moments file of step 8 fails half-written with ENOSPC.
out=$(LTRAIN_TEST_DISK_FULL=0@8 "$LTRAIN" train --config tiny.yaml train.run_dir=full1 2>&1); rc=$?
err=$(echo "$out" | tail -1)
[ $rc -eq 2 ] || fail "a failed save must exit 2, got $rc"
[[ "$err" == "ltrain: error: saving the checkpoint of step 8 failed: failed writing 'full1/checkpoints/step_00000008.tmp/optim_00000.bin' (disk full?): No space left on device; removed the partial 'full1/checkpoints/step_00000008.tmp'"* ]] \
  && echo "ok: one line names the step, the file and the cleanup: $err" || fail "failed save, 1 process: $err"
no_tmp full1
[ "$(cat full1/checkpoints/latest)" == "step_00000004" ] || fail "latest moved after a failed save"
run_ok "verify the previous checkpoint" ckpt verify full1
run_ok "resume after a failed save" train --config tiny.yaml train.run_dir=full1 --resume auto
grep -q "resumed from full1/checkpoints/step_00000004" full1/train.log || fail "did not resume from step 4"
same_weights full full1

# 2. Two ranks with ZeRO-1 (each writes its own files): rank 1 fails while rank 0's are complete.
$MPIRUN -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=zfull parallel.zero=1 > zfull.log 2>&1 \
  || { fail "2-rank uninterrupted run"; tail -5 zfull.log; }
LTRAIN_TEST_DISK_FULL=1@8 $MPIRUN -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=z2 parallel.zero=1 > z2.log 2>&1 \
  && fail "a failed save on rank 1 of 2 exited 0"
# Every rank reports the same line (whichever prints before MPI_Abort ends the job).
grep -q "ltrain: error: \[rank [01]/2\] saving the checkpoint of step 8 failed on rank 1: failed writing 'z2/checkpoints/step_00000008.tmp/optim_00001.bin' (disk full?): No space left on device; removed the partial 'z2/checkpoints/step_00000008.tmp'" z2.log \
  && echo "ok: the error names the failing rank, its file and the cleanup" || { fail "failed save on rank 1 of 2"; tail -3 z2.log; }
no_tmp z2
[ "$(cat z2/checkpoints/latest)" == "step_00000004" ] || fail "2 ranks: latest moved after a failed save"
$MPIRUN -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=z2 parallel.zero=1 --resume auto > z2b.log 2>&1 \
  || { fail "2 ranks: resume after a failed save"; tail -5 z2b.log; }
same_weights zfull z2

# 3. A kill during the save of step 8 leaves step_00000008.tmp; resuming removes it and says so.
LTRAIN_TEST_KILL_DURING_SAVE=8 "$LTRAIN" train --config tiny.yaml train.run_dir=killed > killed.log 2>&1
[ -d killed/checkpoints/step_00000008.tmp ] || fail "the kill left no partial step_00000008.tmp to clean up"
run_ok "resume after a kill during a save" train --config tiny.yaml train.run_dir=killed --resume auto
grep -q "^removed killed/checkpoints/step_00000008.tmp, the partial checkpoint of an interrupted save$" killed/train.log \
  && echo "ok: the stale step_00000008.tmp was removed and logged" || fail "the stale .tmp of the kill was not logged"
no_tmp killed
same_weights full killed

# 4. Planted: a stale .tmp without meta.json goes, one with meta.json stays (with a warning), and
#    the completed checkpoints and other names are untouched.
LTRAIN_TEST_STOP_AT_STEP=6 "$LTRAIN" train --config tiny.yaml train.run_dir=planted > planted.log 2>&1 || fail "stopped run"
mkdir -p planted/checkpoints/step_00000010.tmp planted/checkpoints/step_00000011.tmp planted/checkpoints/notes.tmp
echo partial > planted/checkpoints/step_00000010.tmp/model_00000.bin
echo '{}' > planted/checkpoints/step_00000011.tmp/meta.json
run_ok "resume with stale partial saves" train --config tiny.yaml train.run_dir=planted --resume auto
grep -q "^removed planted/checkpoints/step_00000010.tmp, the partial checkpoint of an interrupted save$" planted/train.log \
  && echo "ok: step_00000010.tmp removed and logged" || fail "step_00000010.tmp: no log line"
grep -q "^WARNING: left planted/checkpoints/step_00000011.tmp in place: .* may be complete" planted/train.log \
  && echo "ok: step_00000011.tmp (with meta.json) kept, with a warning" || fail "step_00000011.tmp: no warning"
kept=$(ls planted/checkpoints | tr '\n' ' ')
[ "$kept" == "latest notes.tmp step_00000004 step_00000006 step_00000008 step_00000011.tmp step_00000012 " ] \
  && echo "ok: checkpoints kept: $kept" || fail "planted: left $kept"
run_ok "verify the checkpoint written before the restart" ckpt verify planted/checkpoints/step_00000006

# A new run in a run directory that holds only a partial first save (no `latest`): it starts,
# and removes the partial save.
mkdir -p fresh/checkpoints/step_00000004.tmp
run_ok "new run over a partial first save" train --config tiny.yaml train.run_dir=fresh train.steps=2
grep -q "^removed fresh/checkpoints/step_00000004.tmp, " fresh/train.log && [ ! -e fresh/checkpoints/step_00000004.tmp ] \
  && echo "ok: a new run removed the partial first save" || fail "a new run did not remove step_00000004.tmp"

finish
