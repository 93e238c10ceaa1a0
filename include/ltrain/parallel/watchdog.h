// A watchdog around a Communicator: every collective records its name and start time, and one
// background thread checks them once a second. A collective still running after
// parallel.timeout_s seconds (a dead peer, a network partition, a rank stuck elsewhere) is
// reported with the rank, its host, the group and the operation, and the process exits with code 4, which
// makes mpirun or srun end the whole job instead of leaving it hanging.
#pragma once
#include <memory>
#include <string>

#include "ltrain/parallel/communicator.h"

namespace ltrain {

constexpr int kExitCollectiveTimeout = 4;

// timeout_s <= 0 returns a wrapper that only forwards.
std::unique_ptr<Communicator> with_watchdog(Communicator& inner, double timeout_s, int world_rank,
                                            std::string host, std::string group);

}  // namespace ltrain
