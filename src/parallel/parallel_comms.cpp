#include "ltrain/parallel/parallel_comms.h"

#include "ltrain/core/backend.h"
#include "ltrain/cuda/cuda_backend.h"
#include "ltrain/parallel/nccl_communicator.h"
#include "ltrain/parallel/watchdog.h"

namespace ltrain {

ParallelComms make_parallel_comms(ParallelContext& par, Backend& backend, int dp_size, int tp_size,
                                  double timeout_s) {
  ParallelComms c;
  if (backend.is_cuda()) {
    const int gpu = cuda_device_for_rank(par.local_rank());
    if (dp_size > 1) c.dp_nccl = make_nccl_communicator(par.data(), gpu, &backend);
    if (tp_size > 1) c.tp_nccl = make_nccl_communicator(par.tensor(), gpu, &backend);
    if (par.pipeline_size() > 1) c.pp_nccl = make_nccl_communicator(par.pipeline(), gpu, &backend);
  }
  // Every collective of the step goes through a watchdog (parallel.timeout_s).
  const int rank = par.world_rank();
  const std::string& host = par.host();
  c.watched.push_back(
      with_watchdog(c.dp_nccl ? *c.dp_nccl : par.data(), timeout_s, rank, host, "data-parallel"));
  c.dp = c.watched.back().get();
  c.watched.push_back(with_watchdog(par.tensor(), timeout_s, rank, host, "tensor-parallel (host)"));
  c.tp_host = c.watched.back().get();
  if (tp_size > 1) {
    c.watched.push_back(
        with_watchdog(c.tp_nccl ? *c.tp_nccl : par.tensor(), timeout_s, rank, host, "tensor-parallel"));
    c.tp = c.watched.back().get();
  }
  if (par.pipeline_size() > 1) {
    const std::string stage =
        "pipeline (stage " + std::to_string(par.pipeline_rank()) + " of " + std::to_string(par.pipeline_size()) + ")";
    c.watched.push_back(with_watchdog(c.pp_nccl ? *c.pp_nccl : par.pipeline(), timeout_s, rank, host, stage));
    c.pp = c.watched.back().get();
    c.watched.push_back(with_watchdog(par.pipeline(), timeout_s, rank, host, stage + " (host)"));
    c.pp_host = c.watched.back().get();
  }
  return c;
}

}  // namespace ltrain
