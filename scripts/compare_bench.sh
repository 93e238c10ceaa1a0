#!/usr/bin/env bash
# Side-by-side benchmark on one GPU: `ltrain bench` and scripts/bench_pytorch.py (eager and
# torch.compile) on the same config, then a table of tokens/s/GPU, step time, MFU and peak memory
# with each PyTorch variant's ratio to ltrain.
#
#   scripts/compare_bench.sh CONFIG [key=value ...]
#
# Environment: LTRAIN (default build/ltrain), PYTHON (default python3), DEVICE (cuda; cpu for a
# smoke test), WARMUP (3), STEPS (10), OUT (where the three JSON files go; default a temporary
# directory, kept). A variant that fails (e.g. compile on torch < 2.0) is shown as failed; the
# others still run. docs/estimates.md describes the comparison; record results in performance.md.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CONFIG=${1:?usage: scripts/compare_bench.sh CONFIG [key=value ...]}
shift
LTRAIN=${LTRAIN:-$ROOT/build/ltrain}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
WARMUP=${WARMUP:-3}
STEPS=${STEPS:-10}
OUT=${OUT:-$(mktemp -d /tmp/compare_bench.XXXXXX)}

[ -f "$CONFIG" ] || { echo "compare_bench.sh: error: config '$CONFIG' does not exist" >&2; exit 2; }
[ -x "$LTRAIN" ] || { echo "compare_bench.sh: error: no ltrain binary at '$LTRAIN' (build it, or set LTRAIN)" >&2; exit 2; }
mkdir -p "$OUT" || exit 2

echo "== ltrain bench"
"$LTRAIN" bench --config "$CONFIG" "$@" --warmup "$WARMUP" --steps "$STEPS" --json "$OUT/ltrain.json" \
  || echo "ltrain bench failed"
for variant in eager compile; do
  echo "== PyTorch $variant"
  "$PYTHON" "$ROOT/scripts/bench_pytorch.py" --config "$CONFIG" "$@" --variant "$variant" --device "$DEVICE" \
    --warmup "$WARMUP" --steps "$STEPS" --json "$OUT/pytorch_$variant.json" || echo "PyTorch $variant failed"
done

echo
"$PYTHON" - "$OUT" "$CONFIG" <<'PYEOF'
import json, os, sys
out, config = sys.argv[1], sys.argv[2]
rows = [("ltrain", "ltrain.json"), ("PyTorch eager", "pytorch_eager.json"), ("PyTorch compile", "pytorch_compile.json")]
res = {}
for name, f in rows:
    p = os.path.join(out, f)
    res[name] = json.load(open(p)) if os.path.exists(p) else None
base = res["ltrain"]
def num(r, k):
    return None if r is None else r.get(k)
def fmt(x, spec, scale=1.0, suffix=""):
    return "-" if x is None else format(x * scale, spec) + suffix
dev = next((r["device_name"] for r in res.values() if r), "?")
print(f"config {config} on {dev}")
cols = [("", 16), ("tokens/s/GPU", 12), ("step ms", 9), ("MFU", 6), ("MFU PaLM", 8), ("memory GiB", 10), ("vs ltrain", 9)]
def line(cells):
    return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, (_, w)) in enumerate(zip(cells, cols))) + " |"
print(line([c for c, _ in cols]))
print("|" + "|".join("-" * (w + 2) for _, w in cols) + "|")
for name, _ in rows:
    r = res[name]
    if r is None:
        print(line([name, "failed", "", "", "", "", ""]))
        continue
    tok = r.get("tokens_per_sec_per_rank")
    if name == "ltrain":
        ratio = "1.00x"
    else:
        ratio = fmt(None if base is None else tok / base["tokens_per_sec_per_rank"], ".2f", 1, "x")
    print(line([name, fmt(tok, ".1f"), fmt(r.get("step_ms"), ".2f"), fmt(num(r, "mfu"), ".1f", 100, "%"),
                fmt(num(r, "mfu_palm"), ".1f", 100, "%"), fmt(r.get("memory_bytes"), ".2f", 1 / 2**30), ratio]))
if base:
    for name, _ in rows[1:]:
        r = res[name]
        if r and abs(r["flops_per_token"] - base["flops_per_token"]) > 1e-6 * base["flops_per_token"]:
            print(f"WARNING: {name} counts {r['flops_per_token']:.4g} FLOPs/token, ltrain {base['flops_per_token']:.4g}")
print(f"(JSON files in {out}; memory: ltrain's backend peak vs torch.cuda.max_memory_allocated)")
PYEOF
