# Shared by the command-line tests: run_ok, run_bad, expect_file and a failure count.
# Source it after setting LTRAIN; end the script with `finish`.
failures=0

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
