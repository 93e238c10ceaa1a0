// Communicator: the one interface parallel code talks to. Implementations: MPI on host buffers
// (the CPU backend; what CI tests under mpirun), NCCL on device buffers (the CUDA backend), and a
// single-process one. Collectives sum. The parallel logic (gradient buckets, ZeRO-1, tensor
// parallelism) is written once against this interface.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "ltrain/core/tensor.h"
#include "ltrain/parallel/launch.h"

namespace ltrain {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;

  // In place: buf = sum (max) over ranks of buf.
  virtual void all_reduce_sum(Tensor buf) = 0;
  virtual void all_reduce_max(Tensor buf) = 0;
  // in (size * n) summed over ranks; this rank receives chunk rank() in out (n).
  virtual void reduce_scatter_sum(Tensor out, const Tensor& in) = 0;
  // out (size * n) = the concatenation of every rank's in (n), in rank order. `in` may be this
  // rank's own chunk of `out` (an in-place gather).
  virtual void all_gather(Tensor out, const Tensor& in) = 0;
  virtual void broadcast(Tensor buf, int root) = 0;
  // Point to point (pipeline stages): every send and receive of `ops` as one operation (NCCL:
  // one group), so ranks that send to each other cannot deadlock. Between two ranks, messages
  // match in the order they are posted. send_recv_start returns at once with a ticket, like
  // all_reduce_sum_start; NCCL orders the messages after the producer's queued work. Until the
  // ticket is waited for, the caller must not write a sent buffer nor read a received one.
  // send_recv is the blocking form.
  struct P2p {
    Tensor buf;
    int peer;
    bool send;  // else receive into buf
  };
  virtual int send_recv_start(const std::vector<P2p>& ops) = 0;
  void send_recv(const std::vector<P2p>& ops) { wait(send_recv_start(ops)); }
  // Starts an in-place all-reduce and returns at once; wait() completes it. The caller must not
  // touch buf in between. Used to overlap gradient reduction with the rest of backward.
  virtual int all_reduce_sum_start(Tensor buf) = 0;
  // Completes a started operation; afterwards its buffers hold their final values, for the host
  // too.
  virtual void wait(int ticket) = 0;
  // Completes a started operation for the work queued from now on the backend's stream: NCCL
  // given that stream makes the stream wait for it on the device, so the host keeps queueing
  // (the pipeline's messages overlap the next op). The others wait() on the host.
  virtual void wait_on_stream(int ticket) { wait(ticket); }

  // True when a collective started now waits, on the device, for the work already queued on the
  // backend's stream (NCCL given that stream: an event, no host wait). Otherwise the caller
  // synchronizes the backend first so that the buffers hold their final values.
  virtual bool orders_after_device_work() const { return false; }

  // Host scalars (metrics, norms).
  virtual double sum(double x) = 0;
  virtual double max(double x) = 0;
  virtual void barrier() = 0;
};

// A communicator of one rank: collectives are identities.
std::unique_ptr<Communicator> make_single_communicator();

// The process grid: world = data x pipeline x tensor. Tensor-parallel groups are consecutive
// ranks (so they stay inside a node), pipeline stages come next, data replicas outermost:
//   world rank = (data_rank * pipeline + pipeline_rank) * tensor + tensor_rank.
// The local rank (from the launcher, or from the host names: launch.h) selects the GPU. Created
// once in main() and passed down to what needs it; there is no global to reach it through.
class ParallelContext {
 public:
  // The process's context. Initializes MPI when the process was started by a launcher (mpirun,
  // srun); otherwise a single process without MPI. Once per process (MPI_Init is).
  static std::unique_ptr<ParallelContext> init(int* argc, char*** argv);
  // A context of one process that never touches MPI: for tests and tools without a launcher.
  static std::unique_ptr<ParallelContext> single_process();

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  int local_rank() const { return local_rank_; }
  // Every rank's host, host index and local rank, gathered at init.
  const Placement& placement() const { return placement_; }
  const std::string& host() const { return placement_.ranks[world_rank_].host; }
  bool is_main() const { return world_rank_ == 0; }
  bool uses_mpi() const { return mpi_; }

  // Splits the world into data x pipeline x tensor groups. UserError when the world does not
  // factor.
  void setup_grid(int data, int pipeline, int tensor);
  int data_size() const { return data_size_; }
  int pipeline_size() const { return pipeline_size_; }
  int tensor_size() const { return tensor_size_; }
  int data_rank() const { return world_rank_ / (tensor_size_ * pipeline_size_); }
  int pipeline_rank() const { return world_rank_ / tensor_size_ % pipeline_size_; }
  int tensor_rank() const { return world_rank_ % tensor_size_; }
  Communicator& world() { return *world_; }
  Communicator& data() { return *data_; }
  // The ranks of this rank's pipeline (same data and tensor coordinates), ranked by stage.
  Communicator& pipeline() { return *pipeline_; }
  Communicator& tensor() { return *tensor_; }

  // Ends every rank: MPI_Abort under a launcher, exit otherwise.
  [[noreturn]] void abort(int code);
  void finalize();

 private:
  ParallelContext() = default;
  int world_rank_ = 0, world_size_ = 1, local_rank_ = 0;
  int data_size_ = 1, pipeline_size_ = 1, tensor_size_ = 1;
  bool mpi_ = false;
  Placement placement_;
  std::unique_ptr<Communicator> world_, data_, pipeline_, tensor_;
};

}  // namespace ltrain
