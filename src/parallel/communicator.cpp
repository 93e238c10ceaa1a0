#include "ltrain/parallel/communicator.h"

// The C API only: OpenMPI's deprecated C++ bindings would need libmpi_cxx.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "ltrain/core/check.h"
#include "ltrain/core/check_lib.h"

namespace ltrain {

namespace {

class SingleCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "single"; }
  void all_reduce_sum(Tensor) override {}
  void all_reduce_max(Tensor) override {}
  void reduce_scatter_sum(Tensor out, const Tensor& in) override { copy(out, in); }
  void all_gather(Tensor out, const Tensor& in) override { copy(out, in); }
  void broadcast(Tensor, int) override {}
  int send_recv_start(const std::vector<P2p>& ops) override {
    // To itself: the i-th send lands in the i-th receive, at once.
    std::vector<const P2p*> sends, recvs;
    for (const auto& op : ops) {
      LTRAIN_CHECK(op.peer == 0, "point-to-point with rank " << op.peer << " of 1");
      (op.send ? sends : recvs).push_back(&op);
    }
    LTRAIN_CHECK(sends.size() == recvs.size(), "unmatched point-to-point messages");
    for (size_t i = 0; i < sends.size(); ++i) copy(recvs[i]->buf, sends[i]->buf);
    return 0;
  }
  int all_reduce_sum_start(Tensor) override { return 0; }
  void wait(int) override {}
  double sum(double x) override { return x; }
  double max(double x) override { return x; }
  void barrier() override {}

 private:
  static void copy(Tensor out, const Tensor& in) {
    LTRAIN_CHECK(out.bytes() == in.bytes(), "single-rank collective size mismatch");
    if (out.data != in.data) std::memcpy(out.data, in.data, in.bytes());
  }
};

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::kF32: return MPI_FLOAT;
    case DType::kF64: return MPI_DOUBLE;
    case DType::kI32: return MPI_INT;
    case DType::kBF16: break;
  }
  LTRAIN_CHECK(false, "MPI collectives run on host fp32/fp64/i32 buffers, got " << dtype_name(t));
  return MPI_DATATYPE_NULL;
}

constexpr int kP2pTag = 17;  // point-to-point messages; MPI matches them in order per pair

// MPI on host buffers, for the CPU backend.
class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm) : comm_(comm) {
    MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    MPI_CHECK(MPI_Comm_size(comm_, &size_));
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }

  void all_reduce_sum(Tensor buf) override {
    if (size_ == 1) return;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf.data, int(buf.numel()), mpi_type(buf.dtype), MPI_SUM, comm_));
  }
  void all_reduce_max(Tensor buf) override {
    if (size_ == 1) return;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf.data, int(buf.numel()), mpi_type(buf.dtype), MPI_MAX, comm_));
  }
  void reduce_scatter_sum(Tensor out, const Tensor& in) override {
    LTRAIN_CHECK(in.numel() == out.numel() * size_ && in.dtype == out.dtype, "reduce_scatter sizes");
    MPI_CHECK(MPI_Reduce_scatter_block(in.data, out.data, int(out.numel()), mpi_type(out.dtype), MPI_SUM, comm_));
  }
  void all_gather(Tensor out, const Tensor& in) override {
    LTRAIN_CHECK(out.numel() == in.numel() * size_ && in.dtype == out.dtype, "all_gather sizes");
    const size_t chunk = in.bytes();
    const void* own = static_cast<const char*>(out.data) + chunk * size_t(rank_);
    const void* send = in.data == own ? MPI_IN_PLACE : in.data;
    MPI_CHECK(MPI_Allgather(send, int(in.numel()), mpi_type(in.dtype), out.data, int(in.numel()),
                            mpi_type(out.dtype), comm_));
  }
  void broadcast(Tensor buf, int root) override {
    MPI_CHECK(MPI_Bcast(buf.data, int(buf.numel()), mpi_type(buf.dtype), root, comm_));
  }
  int send_recv_start(const std::vector<P2p>& ops) override {
    std::vector<MPI_Request> reqs(ops.size(), MPI_REQUEST_NULL);
    for (size_t i = 0; i < ops.size(); ++i) {
      const P2p& op = ops[i];
      if (op.send)
        MPI_CHECK(MPI_Isend(op.buf.data, int(op.buf.numel()), mpi_type(op.buf.dtype), op.peer, kP2pTag, comm_, &reqs[i]));
      else
        MPI_CHECK(MPI_Irecv(op.buf.data, int(op.buf.numel()), mpi_type(op.buf.dtype), op.peer, kP2pTag, comm_, &reqs[i]));
    }
    return add_ticket(std::move(reqs));
  }
  int all_reduce_sum_start(Tensor buf) override {
    MPI_Request req = MPI_REQUEST_NULL;
    if (size_ > 1)
      MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf.data, int(buf.numel()), mpi_type(buf.dtype), MPI_SUM, comm_, &req));
    return add_ticket({req});
  }
  void wait(int ticket) override {
    LTRAIN_CHECK(ticket >= 0 && ticket < int(tickets_.size()), "unknown ticket " << ticket);
    auto& reqs = tickets_[size_t(ticket)];
    MPI_CHECK(MPI_Waitall(int(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE));
    reqs.clear();
    // Tickets are reused once every outstanding operation has completed.
    bool all_done = true;
    for (const auto& r : tickets_) all_done = all_done && r.empty();
    if (all_done) tickets_.clear();
  }
  double sum(double x) override {
    double y = x;
    if (size_ > 1) MPI_CHECK(MPI_Allreduce(&x, &y, 1, MPI_DOUBLE, MPI_SUM, comm_));
    return y;
  }
  double max(double x) override {
    double y = x;
    if (size_ > 1) MPI_CHECK(MPI_Allreduce(&x, &y, 1, MPI_DOUBLE, MPI_MAX, comm_));
    return y;
  }
  void barrier() override { MPI_CHECK(MPI_Barrier(comm_)); }

 private:
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  int add_ticket(std::vector<MPI_Request> reqs) {
    tickets_.push_back(std::move(reqs));
    return int(tickets_.size()) - 1;
  }
  std::vector<std::vector<MPI_Request>> tickets_;  // each started operation's requests
};

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(v)) return true;
  return false;
}

bool g_initialized = false;  // MPI_Init may run once per process

}  // namespace

std::unique_ptr<Communicator> make_single_communicator() { return std::make_unique<SingleCommunicator>(); }

std::unique_ptr<ParallelContext> ParallelContext::init(int* argc, char*** argv) {
  LTRAIN_CHECK(!g_initialized, "ParallelContext::init called twice");
  g_initialized = true;
  std::unique_ptr<ParallelContext> ctx(new ParallelContext());
  ParallelContext& c = *ctx;
  if (launched_by_mpi()) {
    MPI_CHECK(MPI_Init(argc, argv));
    c.mpi_ = true;
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &c.world_rank_));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &c.world_size_));
    c.world_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
  } else {
    c.world_ = make_single_communicator();
  }
  set_error_rank(c.world_rank_);
  // An internal error (LTRAIN_CHECK, CUDA_CHECK, ...) on one rank ends the whole job at once.
  if (c.mpi_ && c.world_size_ > 1) set_fatal_exit([] { MPI_Abort(MPI_COMM_WORLD, 134); });
  // A malformed launcher variable: reported here, before main()'s handler exists, as it would.
  std::optional<LocalRankEnv> env;
  try {
    if (c.mpi_) env = local_rank_from_env(std::getenv);
  } catch (const UserError& e) {
    std::fprintf(stderr, "ltrain: error: [rank %d/%d] %s\n", c.world_rank_, c.world_size_, e.what());
    c.abort(2);
  }
  c.placement_ = gather_placement(*c.world_, this_host_name(), env);
  c.local_rank_ = c.placement_.ranks[c.world_rank_].local_rank;
  c.setup_grid(c.world_size_, 1, 1);
  return ctx;
}

std::unique_ptr<ParallelContext> ParallelContext::single_process() {
  std::unique_ptr<ParallelContext> ctx(new ParallelContext());
  ctx->world_ = make_single_communicator();
  ctx->placement_ = gather_placement(*ctx->world_, this_host_name(), std::nullopt);
  ctx->setup_grid(1, 1, 1);
  return ctx;
}

void ParallelContext::setup_grid(int data, int pipeline, int tensor) {
  if (data < 1 || pipeline < 1 || tensor < 1 || int64_t(data) * pipeline * tensor != world_size_)
    user_error("the world of ", world_size_, " ranks does not factor as parallel.data (", data,
               ") x parallel.pipeline (", pipeline, ") x parallel.tensor (", tensor,
               "); launch data x pipeline x tensor ranks");
  data_size_ = data;
  pipeline_size_ = pipeline;
  tensor_size_ = tensor;
  if (!mpi_) {
    data_ = make_single_communicator();
    pipeline_ = make_single_communicator();
    tensor_ = make_single_communicator();
    return;
  }
  // Each group is the ranks that share the other two coordinates, ranked by world rank.
  const int d = data_rank(), p = pipeline_rank(), t = tensor_rank();
  MPI_Comm data_comm, pipeline_comm, tensor_comm;
  MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, p * tensor + t, world_rank_, &data_comm));
  MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, d * tensor + t, world_rank_, &pipeline_comm));
  MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, d * pipeline + p, world_rank_, &tensor_comm));
  data_ = std::make_unique<MpiCommunicator>(data_comm);
  pipeline_ = std::make_unique<MpiCommunicator>(pipeline_comm);
  tensor_ = std::make_unique<MpiCommunicator>(tensor_comm);
}

void ParallelContext::abort(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  if (mpi_ && world_size_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

void ParallelContext::finalize() {
  if (mpi_) {
    data_.reset();
    pipeline_.reset();
    tensor_.reset();
    MPI_Finalize();
    mpi_ = false;
  }
}

}  // namespace ltrain
