#!/usr/bin/env bash
# Hugging Face export/import end to end on the CPU: train a tiny model on tinyshakespeare, export
# it (fp32, bf16, sharded), import each back and compare the weights bit for bit (fp32) or with
# bf16 rounding (bf16), continue pretraining from the imported checkpoint, and the bad-input
# cases (exit 2, one line, no partial output directory). The logits of an exported model against
# an independent Hugging Face-style forward pass are checked in tests/test_hf.cpp.
# Usage: bash test_hf_cli.sh /path/to/ltrain WORKDIR
set -uo pipefail

source "$(dirname "$0")/cli_lib.sh" && cli_init "$@"
cat > tiny.yaml <<'YAML'
model: {hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 32, rope_theta: 500}
optim: {lr: 3.0e-3, warmup_steps: 2}
train: {steps: 6, seq_len: 32, micro_batch_size: 2, global_batch_tokens: 256, val_every: 0,
        val_batches: 4, log_every: 1}
data: {path: data}
YAML
run_ok "tokenizer train" tokenizer train --input "$CORPUS" --vocab-size 512 --out tok
run_ok "prepare" prepare --tokenizer tok.model --input "$CORPUS" --out data --val-fraction 0.05
run_ok "train" train --config tiny.yaml train.run_dir=run
CK=run/checkpoints/step_00000006
expect_file $CK/model_00000.bin

# bad_exit2 DESCRIPTION NEEDLE OUTDIR ARGS...: exit 2, one line containing NEEDLE, and neither
# OUTDIR nor OUTDIR.tmp left behind (pass "" when OUTDIR exists on purpose).
bad_exit2() {
  local what=$1 needle=$2 outdir=$3
  shift 3
  local out rc
  out=$("$LTRAIN" "$@" 2>&1)
  rc=$?
  if [ $rc -ne 2 ]; then
    fail "$what: exit $rc (expected 2): ltrain $*"
    echo "$out" | sed 's/^/    /'
    return
  fi
  run_bad "$what" "$needle" "$@"
  if [ -n "$outdir" ]; then
    [ -e "$outdir" ] && fail "$what: left '$outdir' behind"
    [ -e "$outdir.tmp" ] && fail "$what: left '$outdir.tmp' behind"
  fi
}

# ---- fp32: bitwise round trip ----------------------------------------------------------------
run_ok "export-hf fp32" export-hf --checkpoint run --out hf32 --dtype fp32
for f in config.json generation_config.json model.safetensors tokenizer.model; do expect_file hf32/$f; done
[ -e hf32/model.safetensors.index.json ] && fail "a small model should not be sharded"
[ -e hf32.tmp ] && fail "export left hf32.tmp behind"
cmp -s hf32/tokenizer.model $CK/tokenizer.model || fail "tokenizer.model is not the checkpoint's"
$PY - hf32 <<'PYEOF' || fail "hf32 config.json / safetensors header"
import json, struct, sys
d = sys.argv[1]
c = json.load(open(f"{d}/config.json"))
want = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 160,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
        "max_position_embeddings": 32, "rope_theta": 500.0, "tie_word_embeddings": False, "hidden_act": "silu",
        "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2, "attention_bias": False, "rope_scaling": None}
bad = {k: (c.get(k), v) for k, v in want.items() if c.get(k) != v}
assert not bad, bad
blob = open(f"{d}/model.safetensors", "rb").read()
(n,) = struct.unpack("<Q", blob[:8])
assert (8 + n) % 8 == 0, n
h = json.loads(blob[8:8 + n])
assert h["__metadata__"] == {"format": "pt"}, h["__metadata__"]
ts = {k: v for k, v in h.items() if k != "__metadata__"}
assert len(ts) == 1 + 2 * 9 + 2, sorted(ts)
assert all(v["dtype"] == "F32" for v in ts.values())
assert ts["model.layers.1.self_attn.k_proj.weight"]["shape"] == [32, 64]
assert max(v["data_offsets"][1] for v in ts.values()) == len(blob) - 8 - n
print(f"    config.json and the safetensors header are as documented ({len(ts)} tensors)")
PYEOF
run_ok "import-hf fp32" import-hf --hf hf32 --out back32
expect_file back32/checkpoints/step_00000000/meta.json
cmp -s back32/checkpoints/step_00000000/model_00000.bin $CK/model_00000.bin \
  && echo "ok: fp32 export -> import is bitwise (model_00000.bin identical)" \
  || fail "fp32 export -> import changed the weights"
cmp -s back32/checkpoints/step_00000000/tokenizer.model $CK/tokenizer.model || fail "import lost the tokenizer"
run_ok "ckpt verify imported" ckpt verify back32
run_ok "eval imported" eval --checkpoint back32 --data data --batches 2

# ---- bf16: the import equals the original rounded to bf16 (nearest even) ---------------------
run_ok "export-hf bf16 (default)" export-hf --checkpoint $CK --out hf16
grep -q '"torch_dtype": "bfloat16"' hf16/config.json || fail "bf16 config.json does not say bfloat16"
s32=$(stat -c %s hf32/model.safetensors); s16=$(stat -c %s hf16/model.safetensors)
[ $(( s16 * 2 )) -lt $(( s32 + 8192 )) ] || fail "bf16 file ($s16 B) is not half the fp32 one ($s32 B)"
run_ok "import-hf bf16" import-hf --hf hf16 --out back16
$PY - $CK/model_00000.bin back16/checkpoints/step_00000000/model_00000.bin <<'PYEOF' || fail "bf16 round trip is not bf16_round(w)"
import sys
import numpy as np
w = np.fromfile(sys.argv[1], dtype="<f4")
got = np.fromfile(sys.argv[2], dtype="<f4")
u = w.view(np.uint32).astype(np.uint64)
r = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)  # round to nearest even
assert got.shape == w.shape, (got.shape, w.shape)
assert np.array_equal(got.view(np.uint32), r.view(np.uint32)), "differs from round-to-nearest-even"
print(f"    {w.size} weights: import(export_bf16(w)) == bf16_round(w); max |w - bf16(w)| = {np.abs(w - r).max():.2e}")
PYEOF

# ---- sharded: index + several files, imported back bitwise ------------------------------------
run_ok "export-hf sharded" export-hf --checkpoint run --out hfsh --dtype fp32 --max-shard-size 40000
expect_file hfsh/model.safetensors.index.json
[ -e hfsh/model.safetensors ] && fail "sharded export also wrote model.safetensors"
nshards=$(ls hfsh | grep -c '^model-.*-of-.*\.safetensors$')
[ "$nshards" -ge 3 ] && echo "ok: $nshards shards" || fail "expected several shards, got $nshards"
$PY - hfsh <<'PYEOF' || fail "index.json"
import json, os, struct, sys
d = sys.argv[1]
idx = json.load(open(f"{d}/model.safetensors.index.json"))
files = sorted(set(idx["weight_map"].values()))
total = 0
for f in files:
    blob = open(os.path.join(d, f), "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    h = json.loads(blob[8:8 + n])
    for k, v in h.items():
        if k == "__metadata__": continue
        assert idx["weight_map"][k] == f, (k, f)
        total += v["data_offsets"][1] - v["data_offsets"][0]
assert total == idx["metadata"]["total_size"], (total, idx["metadata"])
print(f"    index: {len(idx['weight_map'])} tensors in {len(files)} files, total_size {total}")
PYEOF
run_ok "import-hf sharded" import-hf --hf hfsh --out backsh
cmp -s backsh/checkpoints/step_00000000/model_00000.bin $CK/model_00000.bin \
  && echo "ok: sharded export -> import is bitwise" || fail "sharded export -> import changed the weights"

# ---- continued pretraining from the imported checkpoint ---------------------------------------
run_ok "train from the imported weights" train --config tiny.yaml train.run_dir=cont train.steps=2 train.init_from=back32
# Its step-0 validation (same windows) must equal the source run's final one: the same weights.
$PY - run/metrics.jsonl cont/metrics.jsonl <<'PYEOF' || fail "the imported weights are not the trained ones"
import json, sys
def vals(p): return [json.loads(l) for l in open(p) if "val_loss" in l]
src, cont = vals(sys.argv[1])[-1], vals(sys.argv[2])[0]
assert cont["step"] == 0 and src["val_loss"] == cont["val_loss"], (src, cont)
print(f"    step-0 val_loss after import {cont['val_loss']:.6f} == the source run's final {src['val_loss']:.6f}")
PYEOF

# ---- bad input --------------------------------------------------------------------------------
bad_exit2 "export: missing checkpoint" "checkpoint not found" hfx export-hf --checkpoint nowhere --out hfx
bad_exit2 "export: --out exists" "use --force" "" export-hf --checkpoint run --out hf32 --dtype fp32
expect_file hf32/model.safetensors
bad_exit2 "export: bad dtype" "--dtype" hfx export-hf --checkpoint run --out hfx --dtype fp8
bad_exit2 "export: bad shard size" "--max-shard-size" hfx export-hf --checkpoint run --out hfx --max-shard-size lots
run_ok "export --force replaces" export-hf --checkpoint run --out hf32 --dtype fp32 --force
mkdir -p nocfg && cp hf32/model.safetensors nocfg/
bad_exit2 "import: no config.json" "config.json" bx1 import-hf --hf nocfg --out bx1
bad_exit2 "import: missing dir" "not found" bx2 import-hf --hf nowhere --out bx2
cp -r hf32 hfcorrupt
$PY - hfcorrupt/model.safetensors <<'PYEOF'
import struct, sys
f = open(sys.argv[1], "r+b"); f.write(struct.pack("<Q", 1 << 40)); f.close()
PYEOF
bad_exit2 "import: corrupt safetensors header" "hfcorrupt/model.safetensors" bx3 import-hf --hf hfcorrupt --out bx3
cp -r hf32 hfbadjson && printf '{"hidden_size": ' > hfbadjson/config.json
bad_exit2 "import: bad config.json" "not valid JSON" bx4 import-hf --hf hfbadjson --out bx4
cp -r hf32 hfrope
$PY - hfrope/config.json <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1])); c["rope_scaling"] = {"type": "linear", "factor": 2.0}
json.dump(c, open(sys.argv[1], "w"))
PYEOF
bad_exit2 "import: rope_scaling" "rope_scaling" bx5 import-hf --hf hfrope --out bx5
cp -r hf32 hfshape
$PY - hfshape/config.json <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1])); c["intermediate_size"] = 128
json.dump(c, open(sys.argv[1], "w"))
PYEOF
bad_exit2 "import: shapes disagree with config.json" "mlp.gate_proj.weight" bx6 import-hf --hf hfshape --out bx6
bad_exit2 "import: --out exists" "use --force" "" import-hf --hf hf32 --out back32
cmp -s back32/checkpoints/step_00000000/model_00000.bin $CK/model_00000.bin || fail "a refused import damaged back32"

finish
