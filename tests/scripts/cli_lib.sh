# Shared by the command-line tests: cli_init, run_ok, run_bad, expect_file and a failure count.
# Source it, then call `cli_init "$@"` (or set LTRAIN yourself); end the script with `finish`.
failures=0

# cli_init /path/to/ltrain WORKDIR: the scripts' common start. Sets LTRAIN, WORK, ROOT (the
# repository), CORPUS (tests/data/tinyshakespeare.txt), PY, MPIRUN (oversubscribed, allowed to run
# as root), and starts in an empty WORK.
cli_init() {
  local usage="usage: $(basename "$0") /path/to/ltrain WORKDIR"
  LTRAIN=${1:?$usage}
  WORK=${2:?$usage}
  ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  CORPUS="$ROOT/tests/data/tinyshakespeare.txt"
  PY=/usr/bin/python3
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  MPIRUN="mpirun --oversubscribe"
  rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK" || exit 1
}

fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# run_ok DESCRIPTION ARGS...: must exit 0.
run_ok() {
  local what=$1
  shift
  local out rc
  out=$("$LTRAIN" "$@" 2>&1)
  rc=$?
  if [ $rc -ne 0 ]; then
    fail "$what: exit $rc (expected 0): ltrain $*"
    echo "$out" | sed 's/^/    /'
  else
    echo "ok: $what"
    echo "$out" | sed 's/^/    /'
  fi
}

# run_bad DESCRIPTION NEEDLE ARGS...: must exit 1..127 with one output line containing NEEDLE.
run_bad() {
  local what=$1 needle=$2
  shift 2
  local out rc lines
  out=$("$LTRAIN" "$@" 2>&1)
  rc=$?
  lines=$(printf '%s\n' "$out" | grep -c .)
  if [ $rc -eq 0 ]; then
    fail "$what: succeeded but should have failed: ltrain $*"
  elif [ $rc -ge 128 ]; then
    fail "$what: crashed (exit $rc): ltrain $*"
  elif [ "$lines" -ne 1 ]; then
    fail "$what: expected one line of output, got $lines"
  elif [[ "$out" != *"$needle"* ]]; then
    fail "$what: the message does not mention '$needle'"
  else
    echo "ok: $what (exit $rc): $out"
    return
  fi
  echo "$out" | sed 's/^/    /'
}

expect_file() {
  [ -s "$1" ] || fail "expected file '$1' to exist and be non-empty"
}

# finish: prints the summary line ctest shows and exits non-zero when any check failed.
finish() {
  if [ $failures -ne 0 ]; then
    echo "$failures check(s) failed"
    exit 1
  fi
  echo "all checks passed"
}
