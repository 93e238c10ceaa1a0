#!/usr/bin/env bash
# Data users already have, end to end on the CPU: `ltrain prepare --format megatron|llmc` writes
# Megatron-LM indexed datasets and llm.c shards; `ltrain train` reads them in place and must see
# exactly the windows it sees in the ltrain-format dataset of the same documents (same split, same
# seed -> bitwise equal losses); malformed files are one-line errors naming the file.
# Usage: bash test_formats_cli.sh /path/to/ltrain WORKDIR
set -uo pipefail  # no -e: failing commands are the point here; every check is explicit

source "$(dirname "$0")/cli_lib.sh" && cli_init "$@"
cat > tiny.yaml <<'YAML'
model: {hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 32}
optim: {lr: 3.0e-3, warmup_steps: 2}
train: {steps: 4, seq_len: 32, micro_batch_size: 2, global_batch_tokens: 256, val_every: 2,
        val_batches: 3, log_every: 1}
checkpoint: {interval: 0}
YAML

run_ok "tokenizer train" tokenizer train --input "$CORPUS" --vocab-size 512 --out tok
# Small shards so that the ltrain and llm.c datasets have several train shards each.
prep="--tokenizer tok.model --input $CORPUS --val-fraction 0.05 --shard-tokens 200000 --quiet"
run_ok "prepare ltrain" prepare $prep --out d_lt
# A Megatron split is one stream (one .bin), so it compares with a one-shard ltrain dataset.
run_ok "prepare ltrain, one shard per split" prepare $prep --out d_lt1 --shard-tokens 100000000
run_ok "prepare megatron" prepare $prep --out d_mg --format megatron
run_ok "prepare llmc" prepare $prep --out d_lc --format llmc
for f in train.bin train.idx val.bin val.idx tokenizer.model ltrain-data.json; do expect_file "d_mg/$f"; done
for f in tokens_train_000000.bin tokens_train_000001.bin tokens_val_000000.bin tokenizer.model ltrain-data.json; do
  expect_file "d_lc/$f"
done

# The files follow the published layouts (read back here with numpy, independently of ltrain).
$PY - <<'PYEOF' || fail "the written files do not follow the published formats"
import glob, struct
import numpy as np
lt_docs = 0
for split in ("train", "val"):
    idx = open(f"d_mg/{split}.idx", "rb").read()
    assert idx[:9] == b"MMIDIDX\x00\x00", idx[:9]
    version, code, S, D1 = struct.unpack_from("<QBQQ", idx, 9)
    assert version == 1 and code == 8, (version, code)  # uint16
    lengths = np.frombuffer(idx, "<i4", S, 34)
    pointers = np.frombuffer(idx, "<i8", S, 34 + 4 * S)
    docs = np.frombuffer(idx, "<i8", D1, 34 + 12 * S)
    assert list(docs) == list(range(S + 1))
    assert pointers[0] == 0 and (np.diff(pointers) == 2 * lengths[:-1]).all()
    toks = np.fromfile(f"d_mg/{split}.bin", "<u2")
    assert len(toks) == lengths.sum()
    # llm.c shards of the same split: the same tokens
    lc = []
    for f in sorted(glob.glob(f"d_lc/tokens_{split}_*.bin")):
        h = np.fromfile(f, "<i4", 256)
        assert h[0] == 20240520 and h[1] == 1, h[:3]
        t = np.fromfile(f, "<u2", offset=1024)
        assert len(t) == h[2]
        lc.append(t)
    assert (np.concatenate(lc) == toks).all(), split
    print(f"    {split}: {S} documents, {len(toks)} tokens in both files")
PYEOF

# Bitwise-equal losses: every step and every validation.
same_losses() {
  $PY - "$1" "$2" <<'PYEOF'
import json, sys
def rows(run):
    return [{k: r[k] for k in ("step", "loss", "val_loss") if k in r}
            for r in map(json.loads, open(f"{run}/metrics.jsonl")) if "loss" in r or "val_loss" in r]
a, b = rows(sys.argv[1]), rows(sys.argv[2])
assert a == b, f"{sys.argv[1]}: {a}\n{sys.argv[2]}: {b}"
first = [r for r in a if "loss" in r][0]
print(f"    {sys.argv[2]}: {len(a)} loss records equal to {sys.argv[1]} (step 1 loss {first['loss']:.6f})")
PYEOF
}
run_ok "train on ltrain data" train --config tiny.yaml data.path=d_lt train.run_dir=run_lt
run_ok "train on one-shard ltrain data" train --config tiny.yaml data.path=d_lt1 train.run_dir=run_lt1
run_ok "train on the Megatron prefix" train --config tiny.yaml data.path=d_mg/train train.run_dir=run_mg
run_ok "train on the llm.c directory" train --config tiny.yaml data.path=d_lc train.run_dir=run_lc
run_ok "train on an llm.c glob" train --config tiny.yaml "data.path=d_lc/tokens_*.bin" train.run_dir=run_lcg
same_losses run_lt1 run_mg || fail "Megatron data does not train like the same ltrain data"
same_losses run_lt run_lc || fail "llm.c data does not train like the same ltrain data"
same_losses run_lt run_lcg || fail "an llm.c glob does not train like the same ltrain data"

# Without ltrain-data.json the vocabulary comes from a scan (a note, and the run still works).
cp -r d_mg d_mg_nosidecar && rm d_mg_nosidecar/ltrain-data.json
out=$("$LTRAIN" train --config tiny.yaml data.path=d_mg_nosidecar/train.idx train.run_dir=run_scan train.steps=1 2>&1)
rc=$?
[ $rc -eq 0 ] || { fail "training without ltrain-data.json: exit $rc"; echo "$out" | tail -3; }
echo "$out" | grep -q "vocabulary size .* taken from the largest token id" && echo "ok: vocabulary scanned" \
  || fail "no note about the vocabulary scan"

# eval reads the same val windows from each format.
# (The val split is one shard in every dataset here, so all three read the same val windows.)
e_lt=$("$LTRAIN" eval --checkpoint run_lt --data d_lt --batches 3 2>&1 | grep -o "val_loss [0-9.]*")
e_mg=$("$LTRAIN" eval --checkpoint run_lt --data d_mg/train --batches 3 2>&1 | grep -o "val_loss [0-9.]*")
e_lc=$("$LTRAIN" eval --checkpoint run_lt --data d_lc --batches 3 2>&1 | grep -o "val_loss [0-9.]*")
[ -n "$e_lt" ] && [ "$e_lt" == "$e_mg" ] && [ "$e_lt" == "$e_lc" ] && echo "ok: eval $e_lt on all three" \
  || fail "eval differs: ltrain '$e_lt', megatron '$e_mg', llmc '$e_lc'"

# ---- bad input: exit 2, one line naming the file ---------------------------------------------
corrupt() {  # corrupt FILE OFFSET BYTES(hex)
  $PY - "$@" <<'PYEOF'
import sys
f = open(sys.argv[1], "r+b"); f.seek(int(sys.argv[2])); f.write(bytes.fromhex(sys.argv[3])); f.close()
PYEOF
}
bad_train() {  # bad_train DESCRIPTION NEEDLE DATA_PATH
  run_bad "$1" "$2" train --config tiny.yaml "data.path=$3" train.run_dir="run_bad_$RANDOM"
  out=$("$LTRAIN" train --config tiny.yaml "data.path=$3" train.run_dir=run_bad_rc 2>&1)
  [ $? -eq 2 ] || fail "$1: exit code is not 2"
}
run_bad "unknown --format" "--format 'parquet' is not one of ltrain, megatron, llmc" prepare $prep --out d_x --format parquet
run_bad "prepare over an existing dataset" "already holds a prepared dataset (ltrain-data.json)" prepare $prep --out d_mg --format megatron
run_ok "prepare --force over it" prepare $prep --out d_mg --format megatron --force

cp -r d_mg mg_trunc && truncate -s -2 mg_trunc/train.bin
bad_train "truncated Megatron .bin" "mg_trunc/train.bin" mg_trunc/train
cp -r d_mg mg_magic && corrupt mg_magic/val.idx 0 58
bad_train "bad Megatron magic" "mg_magic/val.idx" mg_magic/train
cp -r d_mg mg_version && corrupt mg_version/train.idx 9 02
bad_train "Megatron version 2" "has version 2" mg_version/train
cp -r d_mg mg_dtype && corrupt mg_dtype/train.idx 17 07
bad_train "float Megatron dtype" "dtype code 7 (float32)" mg_dtype/train
S=$(od -An -t u8 -j 18 -N 8 d_mg/train.idx | tr -d ' ')  # sequence count; the last pointer:
cp -r d_mg mg_ptr && corrupt mg_ptr/train.idx $(( 34 + 4 * S + 8 * (S - 1) )) ffffffffff
bad_train "Megatron pointer past the end" "points past the end of" mg_ptr/train
bad_train "Megatron prefix that does not exist" "not a prepared data directory" d_mg/nothing

cp -r d_lc lc_magic && corrupt lc_magic/tokens_train_000001.bin 0 00000000
bad_train "bad llm.c magic" "lc_magic/tokens_train_000001.bin" lc_magic
cp -r d_lc lc_trunc && truncate -s -3 lc_trunc/tokens_val_000000.bin
bad_train "truncated llm.c shard" "lc_trunc/tokens_val_000000.bin" lc_trunc
cp -r d_lc lc_noval && rm lc_noval/tokens_val_000000.bin
bad_train "llm.c without a val shard" "no llm.c validation shard" lc_noval
run_bad "model vocabulary smaller than the Megatron data" "set model.vocab_size >= 512" \
  train --config tiny.yaml data.path=d_mg/train model.vocab_size=300 train.run_dir=run_v

finish
