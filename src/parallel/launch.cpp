#include "ltrain/parallel/launch.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"
#include "ltrain/parallel/communicator.h"

namespace ltrain {

namespace {

// A non-negative integer variable; UserError naming the variable when it is not one.
int env_count(const char* name, const char* value) {
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(value, &end, 10);
  if (end == value || *end != '\0' || errno != 0 || x < 0 || x > INT_MAX)
    user_error("environment variable ", name, " = '", value,
               "' is not a non-negative integer; the launcher "
               "sets it, unset it to let ltrain find the ranks of each host by host name");
  return int(x);
}

// The pair (rank variable, size variable) of one launcher, when its rank variable is set.
std::optional<LocalRankEnv> from_pair(const EnvLookup& env, const char* rank_var,
                                      const char* size_var) {
  const char* r = env(rank_var);
  if (!r) return std::nullopt;
  const char* s = env(size_var);
  if (!s)
    user_error("environment variable ", rank_var, " is set but ", size_var,
               " is not; set both or neither");
  LocalRankEnv e{env_count(rank_var, r), env_count(size_var, s), rank_var};
  if (e.local_rank >= e.local_size)
    user_error("environment variable ", rank_var, " = ", e.local_rank, " is not below ", size_var,
               " = ", e.local_size);
  return e;
}

// Rank records exchanged at start-up: the host name, NUL-padded, then the launcher's local rank
// and size (-1 when it set none).
constexpr int kHostChars = 256;
constexpr int kRecordInts = kHostChars / 4 + 2;

std::string join_ints(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i)
    s += (i ? (i + 1 == v.size() ? " or " : ", ") : "") + std::to_string(v[i]);
  return s;
}

}  // namespace

std::optional<LocalRankEnv> local_rank_from_env(const EnvLookup& env) {
  if (auto e = from_pair(env, "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE")) return e;
  if (auto e = from_pair(env, "MPI_LOCALRANKID", "MPI_LOCALNRANKS")) return e;
  const char* id = env("SLURM_LOCALID");
  if (!id) return std::nullopt;
  LocalRankEnv e{env_count("SLURM_LOCALID", id), 0, "SLURM_LOCALID"};
  // SLURM_NTASKS_PER_NODE is set only when --ntasks-per-node was given; SLURM_TASKS_PER_NODE
  // always, one entry per node of the step.
  if (const char* n = env("SLURM_NTASKS_PER_NODE")) {
    e.local_size = env_count("SLURM_NTASKS_PER_NODE", n);
  } else if (const char* t = env("SLURM_TASKS_PER_NODE")) {
    const char* node = env("SLURM_NODEID");
    e.local_size = slurm_tasks_on_node(t, node ? env_count("SLURM_NODEID", node) : 0);
  } else {
    user_error(
        "environment variable SLURM_LOCALID is set but neither SLURM_NTASKS_PER_NODE nor "
        "SLURM_TASKS_PER_NODE is; launch with srun, or unset SLURM_LOCALID");
  }
  if (e.local_rank >= e.local_size)
    user_error("environment variable SLURM_LOCALID = ", e.local_rank, " is not below the ",
               e.local_size, " tasks Slurm places on this node");
  return e;
}

int slurm_tasks_on_node(const std::string& tasks_per_node, int node) {
  auto bad = [&]() -> int {
    user_error("environment variable SLURM_TASKS_PER_NODE = '", tasks_per_node,
               "' does not read as Slurm's list of counts (e.g. '4(x2),3')");
  };
  int first = 0;  // the index of the first node of the entry being read
  std::istringstream in(tasks_per_node);
  std::string entry;
  while (std::getline(in, entry, ',')) {
    // "N" or "N(xK)": N tasks on each of K nodes.
    const size_t paren = entry.find('(');
    const std::string count = entry.substr(0, paren);
    int repeat = 1;
    if (paren != std::string::npos) {
      if (entry.size() < paren + 4 || entry.compare(paren, 2, "(x") != 0 || entry.back() != ')')
        return bad();
      const std::string k = entry.substr(paren + 2, entry.size() - paren - 3);
      if (k.empty() || k.find_first_not_of("0123456789") != std::string::npos || k.size() > 6)
        return bad();
      repeat = std::atoi(k.c_str());
    }
    if (count.empty() || count.find_first_not_of("0123456789") != std::string::npos ||
        count.size() > 6)
      return bad();
    if (node < first + repeat) return std::atoi(count.c_str());
    first += repeat;
  }
  if (first == 0) return bad();
  user_error("environment variable SLURM_TASKS_PER_NODE = '", tasks_per_node, "' lists ", first,
             " nodes, but SLURM_NODEID is ", node);
}

int Placement::num_hosts() const {
  int n = 0;
  for (const auto& r : ranks) n = std::max(n, r.host_index + 1);
  return n;
}

std::string this_host_name() {
  char buf[kHostChars] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown-host";
  return buf;
}

std::vector<RankPlace> place_ranks(const std::vector<std::string>& hosts,
                                   const std::vector<int>& local_rank,
                                   const std::vector<int>& local_size) {
  const int n = int(hosts.size());
  std::vector<RankPlace> ranks(n);
  std::vector<std::string> seen;  // by host index
  for (int r = 0; r < n; ++r) {
    RankPlace& place = ranks[r];
    place.host = hosts[r];
    place.host_index = int(std::find(seen.begin(), seen.end(), hosts[r]) - seen.begin());
    if (place.host_index == int(seen.size())) seen.push_back(hosts[r]);
  }
  for (int r = 0; r < n; ++r) {
    RankPlace& place = ranks[r];
    if (local_rank[r] >= 0) {
      place.local_rank = local_rank[r];
      place.local_size = local_size[r];
      continue;
    }
    // The launcher said nothing: numbered in world-rank order among the ranks of the host.
    place.local_rank = place.local_size = 0;
    for (int q = 0; q < n; ++q) {
      if (ranks[q].host_index != place.host_index) continue;
      place.local_size++;
      if (q < r) place.local_rank++;
    }
  }
  return ranks;
}

Placement gather_placement(Communicator& world, const std::string& host,
                           const std::optional<LocalRankEnv>& env) {
  const int n = world.size();
  std::vector<int32_t> mine(kRecordInts, 0), all(size_t(kRecordInts) * n, 0);
  std::memcpy(mine.data(), host.data(), std::min<size_t>(host.size(), kHostChars - 1));
  mine[kRecordInts - 2] = env ? env->local_rank : -1;
  mine[kRecordInts - 1] = env ? env->local_size : -1;
  world.all_gather(Tensor{all.data(), DType::kI32, Shape{int64_t(kRecordInts) * n}},
                   Tensor{mine.data(), DType::kI32, Shape{kRecordInts}});
  std::vector<std::string> hosts(n);
  std::vector<int> local_rank(n), local_size(n);
  for (int r = 0; r < n; ++r) {
    const int32_t* rec = all.data() + size_t(r) * kRecordInts;
    const char* name = reinterpret_cast<const char*>(rec);
    hosts[r].assign(name, strnlen(name, kHostChars));
    local_rank[r] = rec[kRecordInts - 2];
    local_size[r] = rec[kRecordInts - 1];
  }
  return Placement{place_ranks(hosts, local_rank, local_size), env ? env->source : "host names"};
}

std::string cross_host_tensor_groups(const std::vector<RankPlace>& ranks, int tensor) {
  const int n = int(ranks.size());
  auto first_straddle = [&](int t) {  // the first rank of the first group of t ranks over two hosts
    for (int g = 0; g + t <= n; g += t)
      for (int r = g + 1; r < g + t; ++r)
        if (ranks[r].host_index != ranks[g].host_index) return g;
    return -1;
  };
  const int g = first_straddle(tensor);
  if (g < 0) return "";
  std::vector<int> fits;
  for (int t = 1; t <= n; ++t)
    if (n % t == 0 && first_straddle(t) < 0) fits.push_back(t);
  std::ostringstream os;
  os << "the tensor-parallel group of ranks " << g << "-" << g + tensor - 1 << " spans hosts:";
  for (int r = g; r < g + tensor;) {  // one "host (ranks a-b)" per run of ranks on one host
    int e = r;
    while (e + 1 < g + tensor && ranks[e + 1].host_index == ranks[r].host_index) ++e;
    os << (r == g ? " " : ", ") << ranks[r].host << (e > r ? " (ranks " : " (rank ") << r;
    if (e > r) os << "-" << e;
    os << ")";
    r = e + 1;
  }
  os << "; tensor groups are consecutive ranks and communicate every layer, so keep them inside a "
        "host: "
     << "parallel.tensor = " << join_ints(fits) << " does with this placement";
  // A host whose ranks are not consecutive (mpirun --map-by node deals ranks round-robin).
  std::vector<int> last(n, -2);
  bool scattered = false;
  for (int r = 0; r < n; ++r) {
    const int h = ranks[r].host_index;
    if (last[h] >= 0 && last[h] != r - 1) scattered = true;
    last[h] = r;
  }
  if (scattered)
    os << " (ranks are dealt across hosts round-robin; fill each host in turn, e.g. mpirun "
          "--map-by slot)";
  os << ", or set parallel.allow_cross_node_tensor: true";
  return os.str();
}

void check_tensor_groups_on_hosts(const ParallelContext& par, bool allow_cross_node) {
  if (allow_cross_node) return;
  const std::string why = cross_host_tensor_groups(par.placement().ranks, par.tensor_size());
  if (!why.empty()) user_error(why);
}

std::vector<std::string> rank_map_lines(ParallelContext& par, int cuda_device) {
  const int n = par.world_size();
  std::vector<int32_t> devices(n, 0);
  int32_t mine = cuda_device;
  par.world().all_gather(Tensor{devices.data(), DType::kI32, Shape{n}},
                         Tensor{&mine, DType::kI32, Shape{1}});
  const Placement& p = par.placement();
  std::vector<std::string> lines;
  lines.push_back(strfmt("rank map: %d ranks on %d host%s (local rank from %s)", n, p.num_hosts(),
                         p.num_hosts() == 1 ? "" : "s", p.local_source.c_str()));
  const int pp = par.pipeline_size(), tp = par.tensor_size();
  for (int r = 0; r < n; ++r) {
    const RankPlace& q = p.ranks[r];
    const std::string dev = devices[r] < 0 ? "cpu" : "cuda:" + std::to_string(devices[r]);
    lines.push_back(
        strfmt("rank map: rank %d | host %s (#%d) | local rank %d of %d | device %s | data %d "
               "pipeline %d tensor %d",
               r, q.host.c_str(), q.host_index, q.local_rank, q.local_size, dev.c_str(),
               r / (tp * pp), r / tp % pp, r % tp));
  }
  return lines;
}

}  // namespace ltrain
