#!/usr/bin/env bash
# Registers, spills, static shared memory and occupancy of every CUDA kernel, from ptxas.
#
#   ./scripts/kernel_resources.sh [ARCH ...]      (default: sm_80 sm_90; run from anywhere)
#
# Compiles each kernels/*.cu with nvcc (-Xptxas -v, into a temporary directory; nothing in the
# tree changes) and prints one markdown table per architecture, for docs/cuda-backend.md:
# kernel (demangled, namespaces and parameters dropped), registers per thread, spill stores and
# loads (bytes), static shared memory, the kernel's __launch_bounds__ (when the source gives it as
# a number or a constexpr int of the file), and the blocks per SM that registers, static shared
# memory, 2048 threads and 32 blocks per SM allow for blocks of 128 and 256 threads and of the
# bound (a script cannot know each launch's block size; the launchers use 256 or the bound).
# Registers are allocated per warp in units of 256 out of 65536 per SM. Dynamic shared memory
# (sized at launch) is not counted. Exits non-zero when nvcc (or python3, which formats the
# table) is missing or a file fails to compile; lists the kernels that spill. JOBS=n sets the
# parallel compilations (default: the CPU count); NVCC=path picks the compiler.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-}
if [[ -z "$NVCC" ]]; then
  if command -v nvcc >/dev/null 2>&1; then NVCC=$(command -v nvcc)
  elif [[ -x /usr/local/cuda/bin/nvcc ]]; then NVCC=/usr/local/cuda/bin/nvcc
  else
    echo "kernel_resources.sh: nvcc not found (set NVCC or put it on PATH)" >&2
    exit 1
  fi
fi
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "kernel_resources.sh: nvcc not found at $NVCC" >&2
  exit 1
fi
command -v python3 >/dev/null 2>&1 || { echo "kernel_resources.sh: python3 is needed to format the table" >&2; exit 1; }

ARCHS=("$@")
[[ ${#ARCHS[@]} -gt 0 ]] || ARCHS=(sm_80 sm_90)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
pids=()
for arch in "${ARCHS[@]}"; do
  for src in kernels/*.cu; do
    stem=$(basename "$src" .cu)
    (
      "$NVCC" -std=c++17 -Iinclude -Ikernels --expt-relaxed-constexpr -arch="$arch" -Xptxas -v \
        -c "$src" -o "$TMP/$stem.$arch.o" >"$TMP/$stem.$arch.log" 2>&1 || { echo "failed" >"$TMP/$stem.$arch.fail"; }
    ) &
    pids+=($!)
    if [[ ${#pids[@]} -ge $JOBS ]]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  done
done
wait
status=0
for f in "$TMP"/*.fail; do
  [[ -e "$f" ]] || continue
  log=${f%.fail}.log
  echo "kernel_resources.sh: nvcc failed on $(basename "${f%.fail}"):" >&2
  cat "$log" >&2
  status=1
done
[[ $status -eq 0 ]] || exit $status

python3 - "$TMP" "$("$NVCC" --version | tail -1)" "${ARCHS[@]}" <<'EOF'
import os, re, subprocess, sys

tmp, nvcc_version, archs = sys.argv[1], sys.argv[2], sys.argv[3:]
REGS_PER_SM, REG_UNIT, MAX_THREADS, MAX_BLOCKS = 65536, 256, 2048, 32
SMEM_PER_SM = {"sm_80": 164 * 1024, "sm_86": 100 * 1024, "sm_89": 100 * 1024, "sm_90": 228 * 1024}
SMEM_RESERVED = 1024  # per block, sm_80 and later

def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    return out.splitlines()

def short(d):
    d = re.sub(r"^void ", "", d)
    d = d.replace("ltrain::cuda::", "").replace("(anonymous namespace)::", "")
    d = d.replace("__nv_bfloat16", "bf16")
    # drop the parameter list: the last top-level "(...)"
    depth = 0
    for i, ch in enumerate(d):
        if ch == "<": depth += 1
        elif ch == ">": depth -= 1
        elif ch == "(" and depth == 0: return d[:i]
    return d

def base_name(s):
    return re.sub(r"<.*", "", s).split("::")[-1]

def launch_bounds(src):
    """kernel base name -> max threads per block, from __launch_bounds__ in the source."""
    text = open(src).read()
    consts = dict((m.group(1), int(m.group(2))) for m in re.finditer(r"constexpr\s+int\s+(\w+)\s*=\s*(\d+)\s*[;,]", text))
    for m in re.finditer(r"constexpr\s+int\s+[^;]*;", text):  # "constexpr int a = 1, b = 2;"
        for n, v in re.findall(r"(\w+)\s*=\s*(\d+)", m.group(0)):
            consts.setdefault(n, int(v))
    out = {}
    for m in re.finditer(r"__launch_bounds__\(\s*([^,)]+?)\s*(?:,[^)]*)?\)\s*(\w+)\s*\(", text):
        expr, name = m.group(1), m.group(2)
        if expr.isdigit(): out[name] = int(expr)
        elif expr in consts: out[name] = consts[expr]
        else: out[name] = None  # template-dependent
    return out

def blocks_per_sm(regs, smem, threads, arch):
    warps = (threads + 31) // 32
    regs_per_warp = -(-regs * 32 // REG_UNIT) * REG_UNIT if regs else REG_UNIT
    by_regs = (REGS_PER_SM // regs_per_warp) // warps
    by_threads = MAX_THREADS // (warps * 32)
    limit = min(by_regs, by_threads, MAX_BLOCKS)
    if smem:
        limit = min(limit, SMEM_PER_SM.get(arch, 228 * 1024) // (smem + SMEM_RESERVED))
    why = "regs" if limit == by_regs else ("threads" if limit == by_threads else ("blocks" if limit == MAX_BLOCKS else "smem"))
    return limit, why

print("<!-- generated by scripts/kernel_resources.sh; %s -->" % nvcc_version)
spills = []
for arch in archs:
    rows = []
    for log in sorted(f for f in os.listdir(tmp) if f.endswith("." + arch + ".log")):
        stem = log[: -len("." + arch + ".log")]
        bounds = launch_bounds(os.path.join("kernels", stem + ".cu"))
        text = open(os.path.join(tmp, log)).read()
        # ptxas prints, per entry: "Compiling entry function 'X' for 'sm_90'", "Function properties
        # for X" + "N bytes stack frame, S bytes spill stores, L bytes spill loads", "Used R
        # registers, ... B bytes smem ...".
        cur = None
        entries = {}
        for line in text.splitlines():
            m = re.search(r"Compiling entry function '(\w+)'", line)
            if m:
                cur = m.group(1); entries[cur] = {"regs": 0, "st": 0, "ld": 0, "smem": 0}; continue
            m = re.search(r"Function properties for (\w+)", line)
            if m:
                cur = m.group(1); continue
            m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m and cur in entries:
                entries[cur]["st"], entries[cur]["ld"] = int(m.group(1)), int(m.group(2)); continue
            m = re.search(r"Used (\d+) registers", line)
            if m and cur in entries:
                entries[cur]["regs"] = int(m.group(1))
                s = re.search(r"(\d+) bytes smem", line)
                entries[cur]["smem"] = int(s.group(1)) if s else 0
        names = list(entries)
        for mangled, d in zip(names, demangle(names)):
            e = entries[mangled]
            name = short(d)
            b = bounds.get(base_name(name))
            occ = []
            for t in (128, 256):
                n, why = blocks_per_sm(e["regs"], e["smem"], t, arch)
                occ.append("%d (%s)" % (n, why))
            if b:
                n, why = blocks_per_sm(e["regs"], e["smem"], b, arch)
                bound, at_bound = str(b), "%d (%s)" % (n, why)
            else:
                bound = "none" if base_name(name) not in bounds else "template"
                at_bound = "-"
            if e["st"] or e["ld"]:
                spills.append("%s %s" % (arch, name))
            rows.append((stem + ".cu", name, e["regs"], "%d / %d" % (e["st"], e["ld"]), e["smem"], bound,
                         occ[0], occ[1], at_bound))
    print()
    print("### %s" % arch)
    print()
    print("| File | Kernel | Regs | Spill st / ld (B) | Static smem (B) | `__launch_bounds__` | Blocks/SM @128 thr | @256 thr | @bound |")
    print("|---|---|---:|---:|---:|---:|---|---|---|")
    for r in sorted(rows):
        print("| %s | `%s` | %d | %s | %d | %s | %s | %s | %s |" % r)
print()
print("Blocks / SM for blocks of 128 and 256 threads and of the kernel's `__launch_bounds__` (the")
print("largest block its launcher may use; `template`: bounds computed from a template argument):")
print("the fewest that registers (65536 per SM, allocated per warp in units of 256), static shared")
print("memory (+1 KiB reserved per block), 2048 threads and 32 blocks per SM allow; the binding")
print("limit in parentheses. Dynamic shared memory (sized at launch) is not counted.")
if spills:
    print()
    print("**Spills:** " + "; ".join("`%s`" % s for s in spills))
EOF
