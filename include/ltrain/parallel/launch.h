// Where the ranks of a job run: each rank's host, its index among the hosts, and its node-local
// rank, which selects the GPU. The launcher usually says (Open MPI, MPICH/Hydra, Slurm set
// variables); without one, ranks on the same host are found by comparing host names, because
// that is what distinguishes the hosts of a cluster and also the network namespaces of a test
// machine, which share one kernel and one shared-memory domain. Also the check that a
// tensor-parallel group stays inside one host, and the rank map the start-up log prints.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace ltrain {

class Communicator;
class ParallelContext;

// This rank's place on its node, as the launcher's variables state it.
struct LocalRankEnv {
  int local_rank = 0;
  int local_size = 1;
  std::string source;  // the variable the local rank came from, e.g. "OMPI_COMM_WORLD_LOCAL_RANK"
};

// Looks an environment variable up; nullptr when unset (std::getenv, or a table in the tests).
using EnvLookup = std::function<const char*(const char*)>;

// Open MPI's variables first, then MPICH/Hydra's, then Slurm's: mpirun started inside a Slurm
// allocation leaves the allocation's SLURM_LOCALID in every rank's environment, which describes
// the batch step, not the ranks. nullopt when none is set; UserError on a malformed value.
std::optional<LocalRankEnv> local_rank_from_env(const EnvLookup& env);

// The task count of node `node` in Slurm's SLURM_TASKS_PER_NODE ("4(x2),3" = 4, 4, 3); UserError
// when the text does not parse or has no such node.
int slurm_tasks_on_node(const std::string& tasks_per_node, int node);

struct RankPlace {
  std::string host;    // the host name (gethostname)
  int host_index = 0;  // hosts numbered in order of their lowest world rank
  int local_rank = 0;  // among the ranks of the host
  int local_size = 1;
};

// Every rank's place, indexed by world rank; the same on every rank.
struct Placement {
  std::vector<RankPlace> ranks;
  std::string local_source;  // where this rank's local rank came from: a variable, or "host names"
  int num_hosts() const;
};

std::string this_host_name();

// Every rank's place from every rank's host name and the local rank and size its launcher stated
// (-1 where it stated none: numbered then among the ranks of the same host name, in rank order).
std::vector<RankPlace> place_ranks(const std::vector<std::string>& hosts,
                                   const std::vector<int>& local_rank,
                                   const std::vector<int>& local_size);

// Gathers every rank's host name and launcher-stated local rank over `world` (a collective).
// A rank without launcher variables takes its local rank and size from the host names.
Placement gather_placement(Communicator& world, const std::string& host,
                           const std::optional<LocalRankEnv>& env);

// The tensor-parallel groups (consecutive runs of `tensor` world ranks) that span hosts: a
// one-line explanation naming the first such group, its ranks and hosts, and the tensor sizes
// that would keep every group inside a host; "" when every group stays inside one.
std::string cross_host_tensor_groups(const std::vector<RankPlace>& ranks, int tensor);

// After ParallelContext::setup_grid: UserError when a tensor-parallel group spans hosts, unless
// allowed (parallel.allow_cross_node_tensor).
void check_tensor_groups_on_hosts(const ParallelContext& par, bool allow_cross_node);

// The rank map, one line per world rank (host, local rank, device, data/pipeline/tensor
// coordinates), after a header line. A collective over the world: every rank passes its own
// device, -1 for the CPU or the CUDA device index; the result is the same on every rank.
std::vector<std::string> rank_map_lines(ParallelContext& par, int cuda_device);

}  // namespace ltrain
