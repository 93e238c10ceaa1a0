#!/usr/bin/env bash
# The dependency floors of docs/architecture.md, checked on every #include "ltrain/..." of the
# sources: a file may include its own folder and the folders of lower floors, never a higher
# one. Floors, top to bottom:
#   5 cli (src/cli, src/main.cpp)
#   4 train, bench, estimate
#   3 checkpoint, optim, model, data, metrics, backends (the backend factory)
#   2 parallel, config, cpu, cuda (the backends and the NCCL communicator)
#   1 core, kernels
# On top of the floors, pairs on one floor that must not know each other: checkpoint and optim
# save and update a ParameterSet (core), not LlamaModel (checkpoint may read the model's layout
# table, for the Hugging Face names); checkpoint does not know the optimizer.
# Usage: test_layers.sh [ltrain binary (unused)] [work dir (unused)]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

floor_of() {
  case "$1" in
    cli|main) echo 5 ;;
    train|bench|estimate) echo 4 ;;
    checkpoint|optim|model|data|metrics|backends) echo 3 ;;
    parallel|config|cpu|cuda) echo 2 ;;
    core|kernels) echo 1 ;;
    *) echo "" ;;
  esac
}

# The folder a source file belongs to.
folder_of() {
  case "$1" in
    src/main.cpp) echo main ;;
    src/*/*) echo "$1" | cut -d/ -f2 ;;
    include/ltrain/*/*) echo "$1" | cut -d/ -f3 ;;
    kernels/*) echo kernels ;;
    *) echo "" ;;
  esac
}

forbidden_pair() {  # from-folder included-header (folder/file.h)
  case "$1>$2" in
    checkpoint\>model/llama.h|checkpoint\>optim/*|optim\>model/*|parallel\>model/*) return 0 ;;
  esac
  return 1
}

bad=0
checked=0
while IFS= read -r file; do
  from=$(folder_of "$file")
  [ -n "$from" ] || continue
  f_from=$(floor_of "$from")
  if [ -z "$f_from" ]; then
    echo "test_layers: $file is in folder '$from', which has no floor; add it to tests/scripts/test_layers.sh and docs/architecture.md" >&2
    bad=1
    continue
  fi
  while IFS= read -r header; do
    to=${header%%/*}
    checked=$((checked + 1))
    [ "$to" = "$from" ] && continue
    f_to=$(floor_of "$to")
    if [ -z "$f_to" ]; then
      echo "test_layers: $file includes ltrain/$to/, a folder without a floor" >&2
      bad=1
    elif [ "$f_to" -gt "$f_from" ]; then
      echo "test_layers: $file (floor $f_from, $from) includes ltrain/$to/ (floor $f_to): an arrow back up" >&2
      bad=1
    elif forbidden_pair "$from" "$header"; then
      echo "test_layers: $file ($from) includes ltrain/$header, which $from must not know" >&2
      bad=1
    fi
  done < <(grep -ho '^#include "ltrain/[a-z_]*/[a-z_0-9.]*"' "$file" | sed 's|#include "ltrain/||; s|"$||' | sort -u)
done < <(git ls-files --cached --others --exclude-standard src include kernels 2>/dev/null || find src include kernels -type f)

# Guard against a check that silently matches nothing.
if [ "$checked" -lt 100 ]; then
  echo "test_layers: only $checked includes found; is this the source tree?" >&2
  exit 1
fi
[ "$bad" = 0 ] || exit 1
echo "test_layers: $checked includes follow the floors"
