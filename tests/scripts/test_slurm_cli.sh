#!/usr/bin/env bash
# Slurm end to end (issue 16): starts a one-node Slurm from Debian's packages (munged, slurmctld,
# slurmd; a generated slurm.conf, its own ports and state under a temporary directory) and runs
# scripts/slurm/train.sbatch on 2 ranks (data=2) of the CPU backend:
#  A. the default launcher (srun --mpi=pmix when Slurm lists pmix): `scancel --batch
#     --signal=TERM` stops the job with a checkpoint and it ends; `scontrol requeue` resumes it.
#  B. LTRAIN_LAUNCHER=mpirun: SIGUSR1 to the batch shell (what --signal=B:USR1@300 sends before
#     the time limit) saves, and the job requeues itself and finishes.
# Each is checked against an uninterrupted 2-rank run under mpirun: bitwise equal step losses,
# grad norms and learning rates, bitwise equal final weights and moments, and the data position
# (meta.json) at the stop and at the end. Skips (exit 77) with the reason when Slurm is not
# installed or its daemons cannot run here; the daemons and any job left are stopped on every exit.
# Usage: bash test_slurm_cli.sh /path/to/ltrain WORKDIR
set -uo pipefail

LTRAIN=${1:?usage: test_slurm_cli.sh /path/to/ltrain WORKDIR}
WORK=${2:?usage: test_slurm_cli.sh /path/to/ltrain WORKDIR}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CORPUS="$ROOT/tests/data/tinyshakespeare.txt"
JOB_SCRIPT="$ROOT/scripts/slurm/train.sbatch"
PY=/usr/bin/python3
source "$(dirname "$0")/cli_lib.sh"
export LTRAIN OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
SKIP=77
DEADLINE=${LTRAIN_SLURM_TEST_DEADLINE:-240}  # seconds; the ctest timeout is longer
start=$(date +%s)

skip() {
  echo "SKIP: $*"
  exit $SKIP
}
for tool in munged slurmctld slurmd sbatch scontrol scancel squeue sinfo srun; do
  command -v $tool > /dev/null || skip "no '$tool': Slurm and munge are not installed (scripts/install_deps.sh installs slurm-wlm and munge)"
done
[ "$(id -u)" -eq 0 ] || skip "slurmd must run as root to start job steps; run as root (CI does)"

# ---- the cluster: everything lives in $SL; every process it starts carries LTRAIN_SLURM_TEST_DIR=$SL
# in its environment (the daemons, and the jobs through sbatch), which is how cleanup finds them.
SL=$(mktemp -d /tmp/ltrain-slurm.XXXXXX)  # short: unix socket paths are limited to 108 bytes
watchdog=""
cleanup() {
  set +e
  [ -n "$watchdog" ] && kill "$watchdog" 2> /dev/null
  if [ -f "$SL/slurm.conf" ] && [ -f "$SL/slurmctld.pid" ]; then
    local jobs
    mapfile -t jobs < <(squeue -h -o %i 2> /dev/null)
    [ ${#jobs[@]} -gt 0 ] && scancel "${jobs[@]}" 2> /dev/null
    for _ in $(seq 20); do [ -z "$(squeue -h -o %i 2> /dev/null)" ] && break; sleep 0.25; done
  fi
  local pidfile pid
  for pidfile in "$SL/slurmd.pid" "$SL/slurmctld.pid" "$SL/munge/munged.pid"; do
    [ -f "$pidfile" ] && kill -TERM "$(cat "$pidfile")" 2> /dev/null
  done
  sleep 0.5
  # Whatever is left (a daemon that did not stop, a slurmstepd, a rank), by process id: the jobs
  # carry the variable, slurmstepd clears its environment but works in $SL/log.
  for proc in /proc/[0-9]*; do
    pid=${proc#/proc/}
    [ "$pid" = $$ ] && continue
    if [[ "$(readlink "$proc/cwd" 2> /dev/null)" == "$SL"/* ]] ||
      { tr '\0' '\n' < "$proc/environ"; } 2> /dev/null | grep -qx "LTRAIN_SLURM_TEST_DIR=$SL"; then
      kill -KILL "$pid" 2> /dev/null
    fi
  done
  rm -rf "$SL"
  echo "test_slurm_cli: $(( $(date +%s) - start )) s"
}
trap cleanup EXIT
trap 'echo "test_slurm_cli: stopped by a signal"; exit 1' TERM INT
# The watchdog: its sleep ends with it, so nothing keeps the test's output open after the test.
(
  trap 'kill $sleeper 2> /dev/null; exit 0' TERM
  sleep "$DEADLINE" & sleeper=$!
  wait $sleeper && { echo "FAIL: test_slurm_cli ran over ${DEADLINE} s"; kill -TERM $$; }
) &
watchdog=$!

# skip_with_logs REASON: the daemons could not run here; shows their logs.
skip_with_logs() {
  for f in "$SL"/log/* "$SL"/munge/munged.log; do [ -s "$f" ] && { echo "--- $f"; tail -15 "$f"; }; done
  skip "$*"
}

mkdir -p "$SL/munge" "$SL/socket" "$SL/state" "$SL/spool" "$SL/log"
chmod 700 "$SL/munge" && chmod 755 "$SL" "$SL/socket"  # munged checks both
head -c 1024 /dev/urandom > "$SL/munge/munge.key" && chmod 600 "$SL/munge/munge.key"
LTRAIN_SLURM_TEST_DIR=$SL munged --socket="$SL/socket/munge" --key-file="$SL/munge/munge.key" \
  --pid-file="$SL/munge/munged.pid" --log-file="$SL/munge/munged.log" --seed-file="$SL/munge/seed" \
  || skip_with_logs "munged does not start here"

# Two free ports (the kernel picks them; they are released again just before slurmctld binds).
read -r ctld_port slurmd_port < <($PY -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
host=$(hostname -s)
# One node with 2 CPUs (config_overrides: whatever the machine has), no cgroups (proctrack by
# process tree, no task plugin), no accounting. cred_expire is also how long a requeued job
# waits before it may start again (120 s by default).
cat > "$SL/slurm.conf" <<EOF
ClusterName=ltraintest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SL/socket/munge,cred_expire=5
StateSaveLocation=$SL/state
SlurmdSpoolDir=$SL/spool
SlurmctldPidFile=$SL/slurmctld.pid
SlurmdPidFile=$SL/slurmd.pid
SlurmctldLogFile=$SL/log/slurmctld.log
SlurmdLogFile=$SL/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
MpiDefault=none
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
NodeName=ltrainnode NodeHostname=$host NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=test Nodes=ltrainnode Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$SL/slurm.conf
LTRAIN_SLURM_TEST_DIR=$SL slurmctld -i || skip_with_logs "slurmctld does not start here"
LTRAIN_SLURM_TEST_DIR=$SL slurmd -N ltrainnode || skip_with_logs "slurmd does not start here"
for _ in $(seq 60); do [ "$(sinfo -h -n ltrainnode -o %T 2> /dev/null)" = idle ] && break; sleep 0.25; done
[ "$(sinfo -h -n ltrainnode -o %T 2> /dev/null)" = idle ] \
  || skip_with_logs "the node did not become idle within 15 s: $(sinfo -h -o '%T %E' 2>&1)"
echo "ok: slurm $(sinfo -V | cut -d' ' -f2) up in $(( $(date +%s) - start )) s (ports $ctld_port, $slurmd_port);" \
  "MPI plugins: $(srun --mpi=list 2>&1 | grep -v 'MPI plugin' | tr -d '\t' | tr '\n' ' ')"

# ---- the run: 300 steps of a tiny model on 2 data ranks, 8 windows of 32 tokens per step.
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK" || exit 1
cat > tiny.yaml <<'YAML'
model: {hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 32}
optim: {lr: 3.0e-3, warmup_steps: 3}
train: {steps: 300, seq_len: 32, micro_batch_size: 2, global_batch_tokens: 256, val_every: 0,
        val_batches: 4, log_every: 1}
data: {path: data}
checkpoint: {interval: 0}
YAML
STEPS=300
WINDOWS_PER_STEP=8
run_ok "tokenizer train" tokenizer train --input "$CORPUS" --vocab-size 512 --out tok
run_ok "prepare" prepare --tokenizer tok.model --input "$CORPUS" --out data --val-fraction 0.05
# In the background, so that the watchdog's signal is not held until it ends; cleanup finds it by
# the variable.
LTRAIN_SLURM_TEST_DIR=$SL timeout 120 mpirun --oversubscribe -np 2 "$LTRAIN" train --config tiny.yaml \
  train.run_dir=ref > ref.log 2>&1 &
wait $! || { fail "the uninterrupted 2-rank run"; tail -5 ref.log; }

# job_field JOB FIELD: one field of `scontrol show job` (JobState, Restarts, ExitCode, ...).
job_field() {
  scontrol show job -o "$1" 2> /dev/null | tr ' ' '\n' | sed -n "s/^$2=//p"
}
# wait_done JOB RESTARTS: waits (at most 90 s) until the job has ended after RESTARTS requeues.
wait_done() {
  local state t0
  t0=$(date +%s)
  for _ in $(seq 360); do
    state=$(job_field "$1" JobState)
    case "$state" in
      COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY)
        [ "$(job_field "$1" Restarts)" = "$2" ] && { echo "ok: job $1 $state after $2 requeue(s), waited $(( $(date +%s) - t0 )) s"; return 0; } ;;
    esac
    sleep 0.25
  done
  fail "job $1 did not end after $2 requeue(s) within 90 s (state $state)"
  return 1
}
# submit NAME [ENV=VALUE ...]: sbatch of the job script on 2 tasks; prints the job id.
submit() {
  local name=$1
  shift
  env LTRAIN_SLURM_TEST_DIR="$SL" "$@" sbatch --parsable --ntasks=2 --output="$WORK/$name.out" \
    "$JOB_SCRIPT" tiny.yaml train.run_dir="$name"
}
# signal_at_step3 JOB RUN SIGNAL: once the run has logged step 3, signals the job's batch shell.
signal_at_step3() {
  for _ in $(seq 1200); do grep -q '"step":3,' "$2/metrics.jsonl" 2> /dev/null && break; sleep 0.05; done
  grep -q '"step":3,' "$2/metrics.jsonl" 2> /dev/null || { fail "$2: no step 3 within 60 s"; cat "$2.out"; return 1; }
  scancel --batch --signal="$3" "$1" || fail "scancel --batch --signal=$3 $1"
}
# check_stop RUN: sets $stop to the step the run stopped at on the signal (its job output says so)
# and checks that step's checkpoint: it verifies, and its data position is stop x 8 windows.
check_stop() {
  stop=$(sed -n 's/^step *\([0-9]*\) | signal [0-9]*: saving and stopping.*/\1/p' "$1.out" | head -1)
  if [ -z "$stop" ] || [ "$stop" -lt 3 ] || [ "$stop" -ge $STEPS ]; then
    fail "$1: expected a stop between step 3 and $STEPS, got '$stop'"
    stop=0
    return 1
  fi
  local ck
  ck=$1/checkpoints/$(printf step_%08d "$stop")
  "$LTRAIN" ckpt verify "$ck" > /dev/null 2>&1 || fail "$ck does not verify"
  $PY - "$ck/meta.json" "$stop" $WINDOWS_PER_STEP <<'PYEOF' || fail "$ck: wrong data position"
import json, sys
meta, step, per_step = json.load(open(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3])
pos = meta["data"]["train"]
assert meta["step"] == step and pos["epoch"] == 0 and pos["cursor"] == step * per_step, (meta["step"], pos)
print(f"ok: the checkpoint of the stop at step {step} holds data position {pos['cursor']} = {step} steps x {per_step} windows")
PYEOF
}
# same_run REF RUN: bitwise equal losses, grad norms and lrs at every step, final weights and
# moments, and the final data position.
same_run() {
  $PY - "$1" "$2" $STEPS <<'PYEOF'
import json, os, sys
a, b, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
def logged(run):
    out = {}
    for l in open(f"{run}/metrics.jsonl"):
        r = json.loads(l)
        if "loss" in r:
            assert r["step"] not in out, f"{run}: step {r['step']} logged twice"
            out[r["step"]] = (r["loss"], r["grad_norm"], r["lr"])
    return out
la, lb = logged(a), logged(b)
assert sorted(la) == sorted(lb) == list(range(1, steps + 1)), (len(la), len(lb))
bad = [s for s in la if la[s] != lb[s]]
assert not bad, f"steps {bad[:5]} differ: {[(la[s], lb[s]) for s in bad[:5]]}"
ca, cb = f"{a}/checkpoints/step_{steps:08d}", f"{b}/checkpoints/step_{steps:08d}"
files = sorted(f for f in os.listdir(ca) if f.startswith(("model_", "optim_")))
assert files and files == sorted(f for f in os.listdir(cb) if f.startswith(("model_", "optim_"))), os.listdir(cb)
for f in files:
    assert open(f"{ca}/{f}", "rb").read() == open(f"{cb}/{f}", "rb").read(), f"{f} differs"
da, db = (json.load(open(f"{c}/meta.json"))["data"] for c in (ca, cb))
assert da == db, (da, db)
print(f"    {b}: {steps} step losses, grad norms and lrs, the final weights and moments ({len(files)} files)"
      f" and the data position {db['train']} equal {a}'s")
PYEOF
}

# A. Default launcher; SIGTERM to the batch shell saves and ends the job; scontrol requeue resumes.
job=$(submit A) || fail "sbatch A"
signal_at_step3 "$job" A TERM
wait_done "$job" 0
launcher=$(sed -n 's/.*tasks, launcher \([a-z]*\):.*/\1/p' A.out | head -1)
if srun --mpi=list 2>&1 | grep -qw pmix; then
  [ "$launcher" = srun ] && echo "ok: job $job ran under srun --mpi=pmix" || fail "A: pmix is listed but the launcher was '$launcher'"
else
  echo "ok: job $job ran under '$launcher' (this Slurm lists no pmix plugin, so srun is not tested)"
fi
[ "$(job_field "$job" JobState)" = COMPLETED ] && [ "$(job_field "$job" ExitCode)" = 0:0 ] \
  || fail "A: a stop on SIGTERM must complete with exit 0, got $(job_field "$job" JobState) $(job_field "$job" ExitCode)"
grep -q "parallel: 2 ranks = data 2" A/train.log || fail "A: not 2 data ranks"
grep -q "signal 10: saving and stopping" A.out && echo "ok: SIGTERM reached ltrain as SIGUSR1" || fail "A: the stop was not reported"
grep -q "requeueing" A.out && fail "A: SIGTERM must not requeue"
check_stop A
[ "$(cat A/checkpoints/latest)" = "$(printf step_%08d "$stop")" ] || fail "A: latest is not the stop's checkpoint"
scontrol requeue "$job" || fail "scontrol requeue $job"
wait_done "$job" 1
grep -q "resumed from A/checkpoints/$(printf step_%08d "$stop") at step $stop" A/train.log \
  && echo "ok: the requeued job resumed at step $stop" || fail "A: the requeued job did not resume at step $stop"
same_run ref A || fail "A: the run stopped by SIGTERM and requeued is not exact"

# B. mpirun; SIGUSR1 (the time-limit warning) saves, and the job requeues itself and finishes.
job=$(submit B LTRAIN_LAUNCHER=mpirun) || fail "sbatch B"
signal_at_step3 "$job" B USR1
wait_done "$job" 1
grep -q "tasks, launcher mpirun" B.out || fail "B: not launched with mpirun"
grep -q "mpirun: Forwarding signal 10" B.out || fail "B: mpirun did not forward SIGUSR1"
grep -q "requeueing job $job" B.out && echo "ok: the job requeued itself after SIGUSR1" || fail "B: no self-requeue"
check_stop B
grep -q "resumed from B/checkpoints/$(printf step_%08d "$stop") at step $stop" B/train.log \
  && echo "ok: the requeued job resumed at step $stop" || fail "B: the requeued job did not resume at step $stop"
[ "$(job_field "$job" JobState)" = COMPLETED ] && [ "$(job_field "$job" ExitCode)" = 0:0 ] \
  || fail "B: expected COMPLETED 0:0, got $(job_field "$job" JobState) $(job_field "$job" ExitCode)"
same_run ref B || fail "B: the run stopped by SIGUSR1 and requeued is not exact"

finish
