# Hosts on one machine for the multi-host tests: each host is a network namespace with its own
# address on a bridge in the root namespace and, through a UTS namespace, its own host name.
# mpirun runs on the first host with a hostfile of the hosts' addresses; Open MPI's remote launch
# agent (plm_rsh_agent) is a script that enters the other host's namespaces where a cluster would
# ssh. Ranks talk TCP only (btl tcp,self) over the bridge's subnet, as across real hosts.
#
# The hosts give up on an unacknowledged TCP send after about 6 s (net.ipv4.tcp_retries2 = 4,
# a setting of each namespace's own network stack; Linux's default is about 15 minutes). That is
# what lets mpirun notice a host that dropped off the network: it waits for that host's daemon to
# confirm the job's end, and only a failed send tells it the daemon is gone.
#
# Source it after cli_lib.sh, then:
#   netns_require                  exit 77 (ctest: skipped) with the reason when it cannot run
#   netns_setup HOSTS SLOTS DIR    hosts ltrain-h0.. with SLOTS slots each; cleans up on exit
#   netns_mpirun ARGS...           mpirun across them (bounded by NETNS_MPIRUN_TIMEOUT seconds)
#   netns_link HOST up|down        the host's cable
#   netns_kill_processes           ends every process on the hosts
# Every namespace, bridge and process the fixture made is removed on exit, failed or not.

NETNS_MPIRUN_TIMEOUT=${NETNS_MPIRUN_TIMEOUT:-45}
NETNS_SKIP=77

netns_skip() {
  echo "SKIP: $*"
  exit $NETNS_SKIP
}

netns_require() {
  [ "$(id -u)" -eq 0 ] || netns_skip "network namespaces need root"
  command -v ip >/dev/null || netns_skip "no 'ip' (iproute2)"
  command -v unshare >/dev/null || netns_skip "no 'unshare' (util-linux)"
  command -v mpirun >/dev/null || netns_skip "no mpirun"
  mpirun --version 2>/dev/null | grep -q "Open MPI" || netns_skip "the launch agent is written for Open MPI's mpirun"
  local probe=ltprobe$$
  ip netns add $probe 2>/dev/null || netns_skip "'ip netns add' is not permitted here"
  ip netns exec $probe unshare --uts true 2>/dev/null
  local rc=$?
  ip netns del $probe
  [ $rc -eq 0 ] || netns_skip "'unshare --uts' inside a network namespace is not permitted here"
}

# Names unique to this script (ctest may run two netns tests at once): namespaces lt<pid>h<i>,
# root-side veths lt<pid>v<i> (interface names have at most 15 characters), bridge lt<pid>br.
# The root namespace holds no address on the bridge, so the hosts' /24 touches nothing outside.
netns_setup() {
  local hosts=$1 slots=$2
  netns_sweep
  NETNS_DIR=$3
  NETNS_PREFIX=lt$$
  NETNS_SUBNET=10.203.0
  NETNS_HOSTS=$hosts
  trap netns_cleanup EXIT
  trap 'exit 130' INT TERM
  mkdir -p "$NETNS_DIR/tmp"
  : > "$NETNS_DIR/hostfile"
  : > "$NETNS_DIR/hosts.map"
  ip link add ${NETNS_PREFIX}br type bridge || netns_skip "cannot create a bridge"
  ip link set ${NETNS_PREFIX}br up
  local i ns
  for ((i = 0; i < hosts; i++)); do
    ns=${NETNS_PREFIX}h$i
    ip netns add $ns
    ip link add ${NETNS_PREFIX}v$i type veth peer name eth0 netns $ns
    ip link set ${NETNS_PREFIX}v$i master ${NETNS_PREFIX}br up
    ip -n $ns addr add $NETNS_SUBNET.$((i + 1))/24 dev eth0
    ip -n $ns link set eth0 up
    ip -n $ns link set lo up
    ip netns exec $ns sysctl -qw net.ipv4.tcp_retries2=4
    echo "$NETNS_SUBNET.$((i + 1)) $ns ltrain-h$i" >> "$NETNS_DIR/hosts.map"
    echo "$NETNS_SUBNET.$((i + 1)) slots=$slots" >> "$NETNS_DIR/hostfile"
  done
  # Open MPI calls the agent as `agent HOST COMMAND...`, COMMAND a line for the remote shell
  # (it starts orted). The agent runs it in the host's network namespace under its host name.
  cat > "$NETNS_DIR/agent.sh" <<EOF
#!/bin/bash
read -r _ ns name < <(grep "^\$1 " "$NETNS_DIR/hosts.map")
[ -n "\$ns" ] || { echo "netns agent: unknown host '\$1'" >&2; exit 1; }
shift
exec ip netns exec "\$ns" unshare --uts bash -c "hostname \$name && \$*"
EOF
  chmod +x "$NETNS_DIR/agent.sh"
}

# What a killed run of these tests (ctest's timeout sends SIGKILL, which no trap sees) left:
# namespaces and bridges named after a process that no longer exists.
netns_sweep() {
  local ns br pid
  for ns in $(ip netns list 2>/dev/null | grep -oE '^lt[0-9]+h[0-9]+'); do
    pid=${ns#lt}
    pid=${pid%h*}
    [ -e /proc/$pid ] && continue
    ip netns pids $ns 2>/dev/null | xargs -r kill -9 2>/dev/null
    ip netns del $ns 2>/dev/null
  done
  for br in $(ip -o link show type bridge 2>/dev/null | grep -oE ' lt[0-9]+br' ); do
    pid=${br#lt}
    [ -e /proc/${pid%br} ] || ip link del $br 2>/dev/null
  done
}

# Ends every process inside the hosts: orted daemonizes, so it is no child of this script, and
# a daemon cut off from its mpirun stays behind.
netns_kill_processes() {
  local i pids
  for ((i = 0; i < ${NETNS_HOSTS:-0}; i++)); do
    pids=$(ip netns pids ${NETNS_PREFIX}h$i 2>/dev/null)
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null
  done
}

# Removes the namespaces (their veths go with them) and the bridge, after their processes.
netns_cleanup() {
  local i
  netns_kill_processes
  for ((i = 0; i < ${NETNS_HOSTS:-0}; i++)); do
    ip netns del ${NETNS_PREFIX}h$i 2>/dev/null
  done
  ip link del ${NETNS_PREFIX}br 2>/dev/null
  NETNS_HOSTS=0
}

# mpirun across the hosts, started on the first (ltrain-h0). Open MPI's runtime (oob) and MPI
# traffic (btl) both use only the bridge's subnet; mpirun starts every other host's daemon itself
# (no tree spawn). Open MPI's session files go under NETNS_DIR: they are named after the host,
# and two tests running at once have hosts of the same names.
netns_mpirun() {
  TMPDIR="$NETNS_DIR/tmp" timeout -k 5 $NETNS_MPIRUN_TIMEOUT ip netns exec ${NETNS_PREFIX}h0 unshare --uts \
    bash -c 'hostname ltrain-h0 && exec "$@"' - mpirun --hostfile "$NETNS_DIR/hostfile" \
    --mca plm_rsh_agent "$NETNS_DIR/agent.sh" --mca plm_rsh_no_tree_spawn 1 \
    --mca btl tcp,self --mca btl_tcp_if_include $NETNS_SUBNET.0/24 --mca oob_tcp_if_include $NETNS_SUBNET.0/24 \
    --mca orte_tmpdir_base "$NETNS_DIR/tmp" --mca mpi_yield_when_idle 1 -x OMP_NUM_THREADS "$@"
}

# Bringing a link back up also forgets the hosts' ARP entries: those that failed while it was down
# refuse new connections until the kernel's timers retry them, so mpirun's daemon on the mended
# host could not call back and the next job would hang at start. On a cluster the next job comes
# long after those timers; here it comes at once.
netns_link() {
  ip link set ${NETNS_PREFIX}v$1 "$2"
  [ "$2" == up ] || return 0
  local i
  for ((i = 0; i < NETNS_HOSTS; i++)); do ip -n ${NETNS_PREFIX}h$i neigh flush all; done
}
