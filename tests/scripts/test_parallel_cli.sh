#!/usr/bin/env bash
# Data and tensor parallelism on the CPU under mpirun: 10 optimizer steps of a tiny model give
# the same losses and final weights as one process with the same global batch, for data=2
# (bucketed all-reduce), data=2 with ZeRO-1, data=4, tensor=2 (with sequence parallelism),
# data=2 x tensor=2, and data=2 x tensor=2 with ZeRO-1; each checkpoint holds one shard file per
# writing rank and verifies; and the layout errors are clear.
# Usage: bash test_parallel_cli.sh /path/to/ltrain WORKDIR
set -uo pipefail

export OMP_NUM_THREADS=1
source "$(dirname "$0")/cli_lib.sh" && cli_init "$@"
cat > tiny.yaml <<'YAML'
model: {hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 32}
optim: {lr: 3.0e-3, warmup_steps: 3}
train: {steps: 10, seq_len: 32, micro_batch_size: 2, global_batch_tokens: 256, val_every: 5,
        val_batches: 4, log_every: 1}
data: {path: data}
parallel: {bucket_mb: 0.01}
YAML
export PYTHONPATH="$ROOT/tests/scripts"  # ckpt_tensors.py: whole tensors from shard files

run_ok "tokenizer train" tokenizer train --input "$CORPUS" --vocab-size 512 --out tok
run_ok "prepare" prepare --tokenizer tok.model --input "$CORPUS" --out data --val-fraction 0.05

run_ok "one process" train --config tiny.yaml train.run_dir=single
for layout in "dp2:2:parallel.data=2" "zero2:2:parallel.data=2 parallel.zero=1" "dp4:4:parallel.data=4" \
              "tp2:2:parallel.tensor=2" "dp2tp2:4:parallel.tensor=2" "zero2tp2:4:parallel.tensor=2 parallel.zero=1 train.recompute=selective"; do
  name=${layout%%:*}
  rest=${layout#*:}
  np=${rest%%:*}
  layout=$rest
  out=$($MPIRUN -np $np "$LTRAIN" train --config tiny.yaml train.run_dir=$name ${layout#*:} 2>&1)
  rc=$?
  if [ $rc -ne 0 ]; then fail "$name: mpirun exited $rc"; echo "$out" | tail -20 | sed 's/^/    /'; continue; fi
  echo "ok: $name ran ($(echo "$out" | grep -E '^parallel:'))"
  $PY - single $name <<'PYEOF' || fail "$name differs from one process"
import json, sys
import numpy as np
from ckpt_tensors import flat
a, b = sys.argv[1], sys.argv[2]
def losses(run):
    rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
    return ([r["loss"] for r in rows if "loss" in r], [r["grad_norm"] for r in rows if "loss" in r],
            [r["val_loss"] for r in rows if "val_loss" in r])
(la, ga, va), (lb, gb, vb) = losses(a), losses(b)
assert len(la) == len(lb) == 10, (len(la), len(lb))
dl = max(abs(x - y) / abs(x) for x, y in zip(la, lb))
dg = max(abs(x - y) / abs(x) for x, y in zip(ga, gb))
dv = max(abs(x - y) / abs(x) for x, y in zip(va, vb))
ca, cb = f"{a}/checkpoints/step_00000010", f"{b}/checkpoints/step_00000010"
wa, wb, ma, mb = flat(ca), flat(cb), flat(ca, "optimizer"), flat(cb, "optimizer")
dw = np.abs(wa - wb).max() / np.abs(wa).max()
dm = np.abs(ma - mb).max() / np.abs(ma).max()
print(f"    {b}: max rel diff loss {dl:.2e}, grad_norm {dg:.2e}, val_loss {dv:.2e}; "
      f"weights {dw:.2e}, moments {dm:.2e} (of the largest element)")
# fp32: summing the gradient over ranks in another order changes the last bits; Adam turns that
# into small weight differences. A wrong slice, a missing reduction or a double count is O(1).
assert dl < 1e-5 and dg < 1e-4 and dv < 1e-5, "loss curves differ"
assert dw < 1e-5 and dm < 1e-4, "final weights or moments differ"
PYEOF
done
grep -q "ZeRO-1" zero2/train.log || fail "the ZeRO run did not report ZeRO-1"
[ -e dp2/checkpoints/latest ] && [ ! -e dp2/checkpoints/latest.tmp* ] || fail "dp2 checkpoint layout"
# One shard file pair per writing rank: data rank 0 of each tensor group without ZeRO (replicas
# are identical), every rank with it; each checkpoint verifies.
for spec in "dp2:0" "zero2:0 1" "dp4:0" "tp2:0 1" "dp2tp2:0 1" "zero2tp2:0 1 2 3"; do
  name=${spec%%:*}
  ck=$name/checkpoints/step_00000010
  want=$(for r in ${spec#*:}; do printf 'model_%05d.bin\noptim_%05d.bin\n' $r $r; done | sort | tr '\n' ' ')
  got=$(cd $ck 2>/dev/null && ls model_*.bin optim_*.bin 2>/dev/null | sort | tr '\n' ' ')
  [ "$got" == "$want" ] && echo "ok: $name wrote $got" || fail "$name wrote '$got', expected '$want'"
  out=$("$LTRAIN" ckpt verify $ck 2>&1) && echo "ok: ckpt verify $name: $out" || { fail "ckpt verify $name"; echo "    $out"; }
done
writers=$($PY -c "import json; print(json.load(open('zero2tp2/checkpoints/step_00000010/meta.json'))['layout']['writers'])")
[ "$writers" == "[0, 1, 2, 3]" ] && echo "ok: the manifest names the writing ranks $writers" || fail "zero2tp2 writers: $writers"

# Layout errors: every rank reports, the job ends non-zero, nothing is written.
out=$($MPIRUN -np 3 "$LTRAIN" train --config tiny.yaml train.run_dir=bad1 parallel.data=2 2>&1); rc=$?
[ $rc -ne 0 ] && [[ "$out" == *"does not factor as parallel.data (2) x parallel.pipeline (1) x parallel.tensor (1)"* ]] \
  && echo "ok: world that does not factor (exit $rc)" || { fail "world that does not factor"; echo "$out" | head -5; }
out=$($MPIRUN -np 4 "$LTRAIN" train --config tiny.yaml train.run_dir=bad2 parallel.tensor=4 2>&1); rc=$?
[ $rc -ne 0 ] && [[ "$out" == *"model.num_key_value_heads (2) is smaller than parallel.tensor (4)"* ]] \
  && echo "ok: fewer KV heads than tensor ranks refused (exit $rc)" || { fail "KV heads < tensor refusal"; echo "$out" | head -5; }
out=$($MPIRUN -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=bad4 parallel.tensor=2 model.vocab_size=513 2>&1); rc=$?
[ $rc -ne 0 ] && [[ "$out" == *"model.vocab_size (513) must be divisible by parallel.tensor (2)"* ]] \
  && echo "ok: vocabulary not divisible by tensor ranks (exit $rc)" || { fail "vocab % tensor"; echo "$out" | head -5; }
out=$($MPIRUN -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=bad3 train.global_batch_tokens=192 2>&1); rc=$?
[ $rc -ne 0 ] && [[ "$out" == *"* 2 = 128"* ]] \
  && echo "ok: global batch vs data ranks (exit $rc)" || { fail "global batch vs data ranks"; echo "$out" | head -5; }
# A rank that stops answering: the others' watchdog ends the job with exit code 4 and names the
# collective, instead of hanging (rank 1 stalls for 60 s; the timeout is 2 s).
start=$(date +%s)
out=$(LTRAIN_TEST_HANG_RANK=1@3 $MPIRUN -np 2 "$LTRAIN" train --config tiny.yaml train.run_dir=hang parallel.data=2 \
      parallel.timeout_s=2 2>&1); rc=$?
took=$(( $(date +%s) - start ))
[ $rc -eq 4 ] && [ $took -lt 30 ] && [[ "$out" == *"did not finish within parallel.timeout_s = 2 s"* ]] \
  && echo "ok: a stalled rank ends the job with exit 4 after ${took} s" || { fail "collective timeout (exit $rc, ${took} s)"; echo "$out" | grep error | head -3; }

[ -e bad1 ] || [ -e bad2 ] || [ -e bad3 ] || [ -e bad4 ] && fail "a refused parallel run created its run directory"

finish
