// The communicators of one rank's data x pipeline x tensor layout, as training and bench use them.
#pragma once
#include <memory>
#include <vector>

#include "ltrain/parallel/communicator.h"

namespace ltrain {

class Backend;

// The collectives of this rank's layout: NCCL on device buffers when the backend is CUDA, the
// MPI groups of the ParallelContext otherwise. tp is null without tensor parallelism.
// Each is wrapped in a watchdog (parallel.timeout_s). tp_host is the tensor-parallel group for
// host-side values (MPI). pp (null without pipeline parallelism) carries the stages'
// activations and gradients (send_recv), pp_host the same ranks' host scalars.
struct ParallelComms {
  std::unique_ptr<Communicator> dp_nccl, tp_nccl, pp_nccl;
  std::vector<std::unique_ptr<Communicator>> watched;
  Communicator* dp = nullptr;
  Communicator* tp = nullptr;
  Communicator* tp_host = nullptr;
  Communicator* pp = nullptr;
  Communicator* pp_host = nullptr;
};
// par's grid must already be set up (ParallelContext::setup_grid) as dp_size x pipeline x
// tp_size.
ParallelComms make_parallel_comms(ParallelContext& par, Backend& backend, int dp_size, int tp_size,
                                  double timeout_s = 0);

}  // namespace ltrain
