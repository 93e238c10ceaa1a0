// NCCL on device buffers, for the CUDA backend. The communicator is bootstrapped through an MPI
// group of the same ranks (rank 0 creates the unique id and broadcasts it); host scalars and
// barriers go through that MPI group. Collectives run on the communicator's own stream, so a
// gradient bucket's all-reduce overlaps the backward kernels on the compute stream.
#pragma once
#include <memory>

#include "ltrain/parallel/communicator.h"

namespace ltrain {

class Backend;

// `bootstrap` must stay alive as long as the returned communicator. UserError without CUDA.
// With `producer` (a CUDA backend), every collective first makes the communicator's stream wait
// for an event recorded on the backend's stream, so it starts after the work that fills its
// buffers without the host waiting (orders_after_device_work() is true).
// A producer made with deterministic = true also pins NCCL's algorithm (below) first.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device,
                                                     Backend* producer = nullptr);

// Sets NCCL_ALGO=Ring and NCCL_PROTO=Simple in this process's environment, for the communicators
// created afterwards (a fixed reduction order), unless the user set them: then a warning on stderr
// if they differ. Available in every build (it only touches the environment).
void pin_deterministic_nccl_env();

}  // namespace ltrain
