// Launch logic without MPI: the local rank from each launcher's variables, Slurm's tasks-per-node
// list, placing ranks by host name, the refusal of tensor groups that span hosts, and the rank
// map of a single process. Multi-host behaviour runs under mpirun in tests/netns/.
#include <gtest/gtest.h>

#include <map>

#include "ltrain/config/config.h"
#include "ltrain/core/check.h"
#include "ltrain/parallel/communicator.h"
#include "ltrain/parallel/launch.h"
#include "test_util.h"

namespace ltrain {
namespace {

using test::user_error_of;

// An environment of the given variables only.
EnvLookup env_of(const std::map<std::string, std::string>& vars) {
  return [vars](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
}

TEST(Launch, LocalRankFromEachLauncher) {
  EXPECT_FALSE(local_rank_from_env(env_of({{"PATH", "/bin"}})).has_value());

  auto ompi = local_rank_from_env(
      env_of({{"OMPI_COMM_WORLD_LOCAL_RANK", "3"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "8"}}));
  ASSERT_TRUE(ompi.has_value());
  EXPECT_EQ(ompi->local_rank, 3);
  EXPECT_EQ(ompi->local_size, 8);
  EXPECT_EQ(ompi->source, "OMPI_COMM_WORLD_LOCAL_RANK");

  auto hydra = local_rank_from_env(env_of({{"MPI_LOCALRANKID", "1"}, {"MPI_LOCALNRANKS", "2"}}));
  ASSERT_TRUE(hydra.has_value());
  EXPECT_EQ(hydra->local_rank, 1);
  EXPECT_EQ(hydra->local_size, 2);
  EXPECT_EQ(hydra->source, "MPI_LOCALRANKID");

  auto slurm =
      local_rank_from_env(env_of({{"SLURM_LOCALID", "5"}, {"SLURM_NTASKS_PER_NODE", "6"}}));
  ASSERT_TRUE(slurm.has_value());
  EXPECT_EQ(slurm->local_rank, 5);
  EXPECT_EQ(slurm->local_size, 6);
  EXPECT_EQ(slurm->source, "SLURM_LOCALID");

  // Without --ntasks-per-node: this node's entry of SLURM_TASKS_PER_NODE.
  auto uneven = local_rank_from_env(
      env_of({{"SLURM_LOCALID", "2"}, {"SLURM_TASKS_PER_NODE", "4(x2),3"}, {"SLURM_NODEID", "2"}}));
  ASSERT_TRUE(uneven.has_value());
  EXPECT_EQ(uneven->local_size, 3);
}

TEST(Launch, MpirunInsideASlurmAllocationUsesTheMpirunVariables) {
  // The batch step's SLURM_LOCALID (0 on every rank) is inherited by what mpirun starts.
  auto e = local_rank_from_env(env_of({{"SLURM_LOCALID", "0"},
                                       {"SLURM_NTASKS_PER_NODE", "1"},
                                       {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                       {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}}));
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->local_rank, 1);
  EXPECT_EQ(e->source, "OMPI_COMM_WORLD_LOCAL_RANK");
}

TEST(Launch, MalformedVariablesAreOneLineErrorsNamingThem) {
  const std::string bad = user_error_of([] {
    local_rank_from_env(
        env_of({{"OMPI_COMM_WORLD_LOCAL_RANK", "x1"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}}));
  });
  EXPECT_NE(bad.find("OMPI_COMM_WORLD_LOCAL_RANK = 'x1' is not a non-negative integer"),
            std::string::npos)
      << bad;
  EXPECT_EQ(bad.find('\n'), std::string::npos);

  const std::string missing = user_error_of([] {
    local_rank_from_env(env_of({{"MPI_LOCALRANKID", "0"}}));
  });
  EXPECT_NE(missing.find("MPI_LOCALNRANKS is not"), std::string::npos) << missing;

  const std::string above = user_error_of([] {
    local_rank_from_env(
        env_of({{"OMPI_COMM_WORLD_LOCAL_RANK", "2"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}}));
  });
  EXPECT_NE(above.find("= 2 is not below OMPI_COMM_WORLD_LOCAL_SIZE = 2"), std::string::npos)
      << above;

  const std::string no_size = user_error_of([] {
    local_rank_from_env(env_of({{"SLURM_LOCALID", "0"}}));
  });
  EXPECT_NE(no_size.find("SLURM_TASKS_PER_NODE"), std::string::npos) << no_size;
}

TEST(Launch, SlurmTasksPerNode) {
  EXPECT_EQ(slurm_tasks_on_node("8", 0), 8);
  EXPECT_EQ(slurm_tasks_on_node("4(x2),3", 0), 4);
  EXPECT_EQ(slurm_tasks_on_node("4(x2),3", 1), 4);
  EXPECT_EQ(slurm_tasks_on_node("4(x2),3", 2), 3);
  EXPECT_EQ(slurm_tasks_on_node("2,1(x3)", 3), 1);
  EXPECT_NE(user_error_of([] {
              slurm_tasks_on_node("4(x2),3", 3);
            }).find("lists 3 nodes, but SLURM_NODEID is 3"),
            std::string::npos);
  for (const char* bad : {"", "x", "4(2)", "4(x)", "4(x2", ",", "-1"})
    EXPECT_NE(
        user_error_of([&] { slurm_tasks_on_node(bad, 0); }).find("does not read as Slurm's list"),
        std::string::npos)
        << "'" << bad << "'";
}

TEST(Launch, RanksWithoutLauncherVariablesAreGroupedByHostName) {
  // Two hosts, ranks dealt round-robin: each rank's local rank counts the earlier ranks of its
  // host.
  const auto ranks =
      place_ranks({"a", "b", "a", "b", "a"}, {-1, -1, -1, -1, -1}, {-1, -1, -1, -1, -1});
  ASSERT_EQ(ranks.size(), 5u);
  const int host_index[] = {0, 1, 0, 1, 0}, local_rank[] = {0, 0, 1, 1, 2},
            local_size[] = {3, 2, 3, 2, 3};
  for (int r = 0; r < 5; ++r) {
    EXPECT_EQ(ranks[r].host_index, host_index[r]) << r;
    EXPECT_EQ(ranks[r].local_rank, local_rank[r]) << r;
    EXPECT_EQ(ranks[r].local_size, local_size[r]) << r;
  }
  // What the launcher states wins over the host names (the host index still comes from them).
  const auto stated = place_ranks({"a", "a"}, {1, 0}, {2, 2});
  EXPECT_EQ(stated[0].local_rank, 1);
  EXPECT_EQ(stated[1].host_index, 0);
}

TEST(Launch, TensorGroupsThatSpanHostsAreNamedWithWhatWouldWork) {
  const std::vector<int> none(6, -1);
  const auto two_by_three = place_ranks({"n0", "n0", "n0", "n1", "n1", "n1"}, none, none);
  EXPECT_EQ(cross_host_tensor_groups(two_by_three, 1), "");
  EXPECT_EQ(cross_host_tensor_groups(two_by_three, 3), "");
  const std::string why = cross_host_tensor_groups(two_by_three, 2);
  EXPECT_NE(
      why.find("the tensor-parallel group of ranks 2-3 spans hosts: n0 (rank 2), n1 (rank 3)"),
      std::string::npos)
      << why;
  EXPECT_NE(why.find("parallel.tensor = 1 or 3 does with this placement"), std::string::npos)
      << why;
  EXPECT_NE(why.find("parallel.allow_cross_node_tensor: true"), std::string::npos) << why;
  EXPECT_EQ(why.find("round-robin"), std::string::npos) << why;
  EXPECT_NE(cross_host_tensor_groups(two_by_three, 6)
                .find("ranks 0-5 spans hosts: n0 (ranks 0-2), n1 (ranks 3-5)"),
            std::string::npos);

  const auto dealt = place_ranks({"n0", "n1", "n0", "n1"}, {-1, -1, -1, -1}, {-1, -1, -1, -1});
  const std::string rr = cross_host_tensor_groups(dealt, 2);
  EXPECT_NE(rr.find("parallel.tensor = 1 does"), std::string::npos) << rr;
  EXPECT_NE(rr.find("round-robin"), std::string::npos) << rr;
}

TEST(Launch, SingleProcessPlacementAndRankMap) {
  auto par = ParallelContext::single_process();
  ASSERT_EQ(par->placement().ranks.size(), 1u);
  EXPECT_EQ(par->host(), this_host_name());
  EXPECT_FALSE(par->host().empty());
  EXPECT_EQ(par->placement().local_source, "host names");
  EXPECT_NO_THROW(check_tensor_groups_on_hosts(*par, false));
  const auto lines = rank_map_lines(*par, -1);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], "rank map: 1 ranks on 1 host (local rank from host names)");
  EXPECT_EQ(lines[1], "rank map: rank 0 | host " + this_host_name() +
                          " (#0) | local rank 0 of 1 | device cpu | data 0 pipeline 0 tensor 0");
  EXPECT_NE(rank_map_lines(*par, 3)[1].find("device cuda:3"), std::string::npos);
}

TEST(Launch, AllowCrossNodeTensorIsAConfigKey) {
  EXPECT_FALSE(Config{}.parallel.allow_cross_node_tensor);
  EXPECT_TRUE(config_from_json({{"parallel", {{"allow_cross_node_tensor", true}}}}, "test")
                  .parallel.allow_cross_node_tensor);
  const std::string bad = user_error_of([] {
    config_from_json({{"parallel", {{"allow_cross_node_tensor", "maybe"}}}}, "test");
  });
  EXPECT_NE(bad.find("parallel.allow_cross_node_tensor"), std::string::npos) << bad;
}

}  // namespace
}  // namespace ltrain
