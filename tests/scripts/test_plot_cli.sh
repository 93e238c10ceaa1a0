#!/usr/bin/env bash
# scripts/plot_metrics.py on real run directories: two tiny CPU runs with different learning rates,
# plotted overlaid; every PNG exists, is non-empty, has the PNG signature and its header's size;
# a missing run directory is one line of error and a non-zero exit.
# Usage: bash test_plot_cli.sh /path/to/ltrain WORKDIR
set -uo pipefail

LTRAIN=${1:?usage: test_plot_cli.sh /path/to/ltrain WORKDIR}
WORK=${2:?usage: test_plot_cli.sh /path/to/ltrain WORKDIR}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CORPUS="$ROOT/tests/data/tinyshakespeare.txt"
PLOT="$ROOT/scripts/plot_metrics.py"
PY=/usr/bin/python3
source "$(dirname "$0")/cli_lib.sh"

if ! $PY -c "import matplotlib" 2>/dev/null; then
  echo "SKIP: matplotlib is not installed (apt-get install python3-matplotlib, or scripts/install_deps.sh)"
  exit 0
fi

rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK" || exit 1
cat > tiny.yaml <<'YAML'
model: {hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 32}
optim: {lr: 3.0e-3, warmup_steps: 3}
train: {steps: 10, seq_len: 32, micro_batch_size: 2, global_batch_tokens: 256, val_every: 5,
        val_batches: 4, log_every: 1}
data: {path: data}
YAML
run_ok "tokenizer train" tokenizer train --input "$CORPUS" --vocab-size 512 --out tok
run_ok "prepare" prepare --tokenizer tok.model --input "$CORPUS" --out data --val-fraction 0.05
run_ok "run with lr 3e-3" train --config tiny.yaml train.run_dir=runs/lr3e-3
run_ok "run with lr 1e-3" train --config tiny.yaml train.run_dir=runs/lr1e-3 optim.lr=1e-3

out=$($PY "$PLOT" runs/lr3e-3 runs/lr1e-3 --out plots 2>&1); rc=$?
[ $rc -eq 0 ] && echo "ok: plot two runs" || { fail "plot_metrics.py exit $rc"; echo "$out" | sed 's/^/    /'; }
for f in loss_vs_steps loss_vs_tokens lr grad_norm tokens_per_sec; do
  expect_file "plots/$f.png"
done
# PNG signature, IHDR size, and both runs drawn (the two lr curves differ, so the image is not
# what one run alone gives).
$PY - plots <<'PYEOF' || fail "the PNG files are not valid images"
import os, struct, sys
d = sys.argv[1]
for name in ("loss_vs_steps", "loss_vs_tokens", "lr", "grad_norm", "tokens_per_sec"):
    data = open(os.path.join(d, name + ".png"), "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{name}: not a PNG"
    assert data[12:16] == b"IHDR", f"{name}: no IHDR chunk"
    w, h = struct.unpack(">II", data[16:24])
    assert w >= 400 and h >= 300, f"{name}: {w}x{h}"
    assert len(data) > 5000, f"{name}: only {len(data)} bytes"
    print(f"    {name}.png: {w}x{h}, {len(data)} bytes")
PYEOF

# One run alone gives a different lr plot than both overlaid.
$PY "$PLOT" runs/lr3e-3 --out one > /dev/null 2>&1 || fail "plot one run"
if [ -s one/lr.png ] && [ -s plots/lr.png ] && ! cmp -s one/lr.png plots/lr.png; then
  echo "ok: the overlay differs from one run"
else
  fail "the overlaid lr plot is missing or equals the one-run plot"
fi

# Errors: one line, non-zero exit.
plot_bad() {
  local what=$1 needle=$2
  shift 2
  local out rc lines
  out=$($PY "$PLOT" "$@" 2>&1); rc=$?
  lines=$(printf '%s\n' "$out" | grep -c .)
  if [ $rc -eq 0 ]; then fail "$what: succeeded"
  elif [ "$lines" -ne 1 ]; then fail "$what: expected one line, got $lines"; echo "$out" | sed 's/^/    /'
  elif [[ "$out" != *"$needle"* ]]; then fail "$what: '$out' does not mention '$needle'"
  else echo "ok: $what (exit $rc): $out"; fi
}
plot_bad "missing run directory" "run directory 'runs/nope' does not exist" runs/lr3e-3 runs/nope --out plots2
[ -e plots2 ] && fail "a failed plot created its output directory" || true
mkdir -p empty_run
plot_bad "a directory without metrics.jsonl" "has no metrics.jsonl" empty_run
plot_bad "labels that do not match the runs" "--labels gives 1 label(s) for 2 run(s)" runs/lr3e-3 runs/lr1e-3 --labels a

finish
